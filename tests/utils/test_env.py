from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from detlightning.utils.env import TORCH_VERSION, seed_all_rng


def _draw() -> tuple[float, float, float]:
    return random.random(), float(np.random.rand()), float(torch.rand(()))


def test_seed_all_rng_reproducible():
    assert seed_all_rng(123) == 123
    a = _draw()
    seed_all_rng(123)
    assert _draw() == a
    seed_all_rng(124)
    assert _draw() != a


def test_seed_all_rng_generates_seed():
    seed = seed_all_rng()
    assert isinstance(seed, int) and 0 <= seed < 2**31
    first = _draw()
    seed_all_rng(seed)
    assert _draw() == first


def test_seed_out_of_range():
    with pytest.raises(ValueError, match="seed"):
        seed_all_rng(-1)


def test_torch_version_tuple():
    major, minor = torch.__version__.split(".")[:2]
    assert TORCH_VERSION == (int(major), int(minor))
