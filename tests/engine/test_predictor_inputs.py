"""DefaultPredictor's input checks: empty, non-finite and wrongly typed images are ValueErrors at the entry (not a
ZeroDivisionError in the resize); a [0, 1] float image warns once."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from detlightning.config import compose
from detlightning.engine import DefaultPredictor
from detlightning.modeling.meta_arch import inputs

from .conftest import tiny_overrides


@pytest.fixture(scope="module")
def predictor(shapes_root: Path) -> DefaultPredictor:
    return DefaultPredictor(compose(tiny_overrides(shapes_root, model="faster_rcnn") + ["input.min_size_test=32"]))


def _image(dtype: str = "uint8", scale: float = 255.0) -> np.ndarray:
    return (np.random.default_rng(0).random((24, 36, 3)) * scale).astype(dtype)


@pytest.mark.parametrize("shape", [(0, 0, 3), (0, 20, 3), (20, 0, 3)])
def test_empty_image(predictor, shape):
    with pytest.raises(ValueError, match=r"empty image of shape \(\d+, \d+, 3\): height and width must be > 0"):
        predictor(np.zeros(shape, dtype=np.uint8))


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_float_image(predictor, bad):
    img = _image("float32")
    img[3, 4, 0] = bad
    with pytest.raises(ValueError, match=r"1 NaN/inf pixel value\(s\)"):
        predictor(img)


def test_non_numeric_dtype(predictor):
    with pytest.raises(ValueError, match="got dtype bool"):
        predictor(np.zeros((8, 8, 3), dtype=bool))


def test_unit_range_float_image_warns_once(predictor, monkeypatch):
    monkeypatch.setattr(inputs, "_warned_unit_range", False)
    with pytest.warns(UserWarning, match=r"scaled to \[0, 1\].*expects 0-255"):
        out = predictor(_image("float32", scale=1.0))
    assert out["instances"].image_size == (24, 36)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        predictor(_image("float32", scale=1.0))


def test_valid_float_and_uint8_images_pass(predictor):
    """uint8 and 0-255 float images run without a warning (their resize rounds differently: no equality here)."""
    img = _image()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        a = predictor(img)["instances"]
        b = predictor(img.astype("float32"))["instances"]
    assert a.image_size == b.image_size == (24, 36)
    assert len(a) > 0 and len(b) > 0
