"""Environment helpers: RNG seeding and the torch version."""
from __future__ import annotations

import logging
import os
import random
from datetime import datetime

import numpy as np
import torch

__all__ = ["TORCH_VERSION", "seed_all_rng"]

logger = logging.getLogger(__name__)

TORCH_VERSION: tuple[int, ...] = tuple(int(x) for x in torch.__version__.split("+")[0].split(".")[:2])
"""``(major, minor)`` of the installed torch, for version checks like ``TORCH_VERSION >= (2, 1)``."""


def seed_all_rng(seed: int | None = None) -> int:
    """Seed python's ``random``, numpy and torch (all devices) with ``seed`` and return it.

    ``seed=None`` draws a fresh seed from the pid, the time and ``os.urandom`` (so that forked workers differ).
    """
    if seed is None:
        seed = (
            os.getpid() + int(datetime.now().strftime("%S%f")) + int.from_bytes(os.urandom(2), "big")
        ) % (2**31)
        logger.info("Using a generated random seed %d", seed)
    seed = int(seed)
    if not 0 <= seed < 2**32:
        raise ValueError(f"seed must be in [0, 2**32) (numpy's range), got {seed}")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device
    return seed
