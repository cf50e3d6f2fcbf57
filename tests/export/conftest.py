"""Tiny detectors for the export tests: small, random weights, but well-conditioned (GroupNorm keeps the features
O(1)) and with spread-out scores, so that exported and eager outputs can be compared at 1e-4 and no two
detections tie."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from detlightning.config import compose
from detlightning.data.datasets.shapes import ShapesParams, _draw_image
from detlightning.modeling import build_model
from tests.engine.conftest import tiny_overrides

_RCNN = ["model.roi_heads.score_thresh_test=0.2"]
# test name -> (model config, extra overrides)
ARCHS: dict[str, tuple[str, list[str]]] = {
    "faster_rcnn": ("faster_rcnn", _RCNN),
    "faster_rcnn_c4": ("faster_rcnn_c4", ["backbone=resnet50_c4", *_RCNN]),
    "mask_rcnn": ("mask_rcnn", _RCNN),
    "cascade_mask_rcnn": ("cascade_mask_rcnn", _RCNN),
    "keypoint_rcnn": ("keypoint_rcnn", [*_RCNN, "model.roi_keypoint_head.conv_dims=[16,16]"]),
    "retinanet": ("retinanet", ["model.retinanet.score_thresh_test=0.5", "model.retinanet.topk_candidates_test=40"]),
    "rpn": ("rpn", []),
}


def tiny_model_cfg(arch: str):
    model, extra = ARCHS[arch]
    model_keys = [
        o for o in tiny_overrides(None, model)  # type: ignore[arg-type]
        if o.startswith(("model", "input")) and not o.startswith("model.resnets.norm")
    ]
    return compose(model_keys + ["model.resnets.norm=GN", "model.fpn.norm=GN"] + extra)


def build_tiny_model(arch: str) -> nn.Module:
    """Random weights (seeded); the class/mask predictors are re-drawn wider so that scores and mask
    probabilities are spread out rather than all near their initial constant."""
    torch.manual_seed(0)
    model = build_model(tiny_model_cfg(arch)).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        if arch == "retinanet":
            head = model.head.cls_score
            head.weight.copy_(torch.randn(head.weight.shape, generator=g) * 0.3)
            head.bias.copy_(torch.randn(head.bias.shape, generator=g))
        elif arch != "rpn":
            predictors = model.roi_heads.box_predictor  # one per stage in Cascade R-CNN
            for predictor in predictors if isinstance(predictors, nn.ModuleList) else [predictors]:
                cls = predictor.cls_score
                cls.weight.copy_(torch.randn(cls.weight.shape, generator=g) * 0.3)
            if getattr(model.roi_heads, "mask_on", False):
                pred = model.roi_heads.mask_head.predictor
                pred.weight.copy_(torch.randn(pred.weight.shape, generator=g) * 0.3)
    return model


def shapes_image(index: int) -> torch.Tensor:
    """Image ``index`` of the built-in shapes dataset (64 px side), as a (3, H, W) uint8 BGR tensor."""
    rgb, _, _ = _draw_image(index, ShapesParams(image_size=64))
    return torch.from_numpy(np.ascontiguousarray(rgb[:, :, ::-1].transpose(2, 0, 1)))


@pytest.fixture(scope="session")
def export_images() -> tuple[dict, dict]:
    """Two inputs of different sizes: (3, 85, 64) with a 2x output size, and (3, 64, 85) at input size."""
    a, b = shapes_image(0), shapes_image(1)
    assert a.shape[1:] != b.shape[1:]
    return {"image": a, "height": 170, "width": 128}, {"image": b}


_MODELS: dict[str, nn.Module] = {}


@pytest.fixture(scope="session")
def tiny_model():
    """``tiny_model(arch)``: a cached eval-mode tiny model."""

    def get(arch: str) -> nn.Module:
        if arch not in _MODELS:
            _MODELS[arch] = build_tiny_model(arch)
        return _MODELS[arch]

    return get


@pytest.fixture(scope="package", autouse=True)
def _fast_cpu():
    """While tests/export runs (package scope: restored afterwards), one thread per pytest worker (2 cores) and
    subnormal floats flushed to zero: the random-weight tiny models
    produce many subnormal activations, which slow CPU convolutions down ~20x. Eager and exported models run
    in the same process (onnxruntime too), so the comparisons are unaffected."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    flushed = torch.set_flush_denormal(True)
    yield
    if flushed:
        torch.set_flush_denormal(False)
    torch.set_num_threads(threads)
