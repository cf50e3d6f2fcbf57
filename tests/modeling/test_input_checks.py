"""The meta-architectures' entry check (``check_batched_inputs``): empty images, non-numeric output sizes and NaN/inf
pixels are ValueErrors naming the input index and field; a float image in [0, 1] warns once."""
from __future__ import annotations

import warnings

import pytest
import torch

from detlightning.config import compose
from detlightning.modeling import build_model
from detlightning.modeling.meta_arch import inputs

TINY = ["model.resnets.depth=18", "model.resnets.res2_out_channels=64", "model.fpn.out_channels=32",
        "model.rpn.post_nms_topk_test=20", "model.rpn.pre_nms_topk_test=50"]


@pytest.fixture(scope="module", params=["faster_rcnn", "retinanet"])
def model(request: pytest.FixtureRequest) -> torch.nn.Module:
    torch.manual_seed(0)
    m = build_model(compose([f"model={request.param}", *TINY]))
    return m.eval()


def _image(scale: float = 255.0) -> torch.Tensor:
    return torch.rand(3, 32, 48, generator=torch.Generator().manual_seed(0)) * scale


@pytest.mark.parametrize("shape", [(3, 0, 0), (3, 0, 40), (3, 40, 0)])
def test_empty_image_is_named(model, shape):
    batch = [{"image": _image()}, {"image": torch.zeros(shape)}]
    with pytest.raises(ValueError, match=r"batched_inputs\[1\]\['image'\] is empty: shape \(3, \d+, \d+\)"):
        model(batch)


@pytest.mark.parametrize(("key", "value"), [("height", "96"), ("width", "96"), ("height", 0), ("width", None),
                                            ("height", True)])
def test_bad_output_size_is_named(model, key, value):
    with pytest.raises(ValueError, match=rf"batched_inputs\[0\]\['{key}'\] must be a positive int"):
        model([{"image": _image(), key: value}])


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_pixels_are_rejected(model, bad):
    img = _image()
    img[1, 5, 7] = bad
    img[2, 0, 0] = bad
    with pytest.raises(ValueError, match=r"batched_inputs\[0\]\['image'\] has 2 NaN/inf pixel value\(s\)"):
        model([{"image": img}])


def test_unit_range_float_image_warns_once(model, monkeypatch):
    monkeypatch.setattr(inputs, "_warned_unit_range", False)
    with pytest.warns(UserWarning, match=r"max [\d.]+ <= 1: it looks scaled to \[0, 1\]"):
        out = model([{"image": _image(scale=1.0)}])
    assert out[0]["instances"].image_size == (32, 48)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model([{"image": _image(scale=1.0)}])  # second time: silent
    # 0-255 floats and uint8 never warn
    monkeypatch.setattr(inputs, "_warned_unit_range", False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model([{"image": _image()}, {"image": _image().to(torch.uint8)}])


def test_valid_sizes_and_numpy_ints_pass(model):
    import numpy as np

    out = model([{"image": _image(), "height": np.int64(64), "width": 96}, {"image": _image(), "height": 16.0,
                                                                          "width": 24}])
    assert out[0]["instances"].image_size == (64, 96)
    assert out[1]["instances"].image_size == (16, 24)


def test_training_checks_the_same_way():
    model = build_model(compose(["model=faster_rcnn", *TINY]))
    model.train()
    with pytest.raises(ValueError, match=r"batched_inputs\[0\]\['image'\] is empty"):
        model([{"image": torch.zeros(3, 0, 0)}])
