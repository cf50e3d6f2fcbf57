"""The values our YAML configs hand to each component's ``__init__`` (through ``from_config``) equal that
``__init__``'s own defaults, except for an explicit list of differences, each with its reason. Most of those are
detectron2's own: its ``__init__`` defaults and its config defaults disagree there, and we keep both for parity.
A new difference (a YAML default drifting from the code, or the other way round) fails this test, and so does a
listed difference that no longer exists."""
from __future__ import annotations

import inspect
import math
import sys
from typing import Any

import pytest
import torch

from detlightning.config import compose
from detlightning.modeling import build_model

KNOWN_DIFFERENCES = {
    ("DefaultAnchorGenerator", "offset"): "d2-parity: __init__ 0.5, MODEL.ANCHOR_GENERATOR.OFFSET 0.0",
    ("FastRCNNOutputLayers", "test_score_thresh"): "d2-parity: __init__ 0.0, MODEL.ROI_HEADS.SCORE_THRESH_TEST 0.05",
    ("GeneralizedRCNN", "input_format"): "d2-parity: __init__ None (no visualisation), INPUT.FORMAT BGR",
    ("SemSegFPNHead", "ignore_value"): "d2-parity: __init__ -1, MODEL.SEM_SEG_HEAD.IGNORE_VALUE 255",
    ("SemSegFPNHead", "norm"): "d2-parity: __init__ None, MODEL.SEM_SEG_HEAD.NORM GN",
    ("SemSegFPNHead", "loss_weight"): "model=panoptic_fpn: Base-Panoptic-FPN's SEM_SEG_HEAD.LOSS_WEIGHT 0.5",
    ("StandardROIHeads", "mask_in_features"): "__init__ None means 'no mask branch'; mask models set the features",
    ("StandardROIHeads", "keypoint_in_features"): "__init__ None means 'no keypoint branch'",
    ("FastRCNNOutputLayers", "cls_agnostic_bbox_reg"): "model=cascade_mask_rcnn: class-agnostic cascade stages",
    ("FastRCNNOutputLayers", "smooth_l1_beta"): "model=keypoint_rcnn: Base-Keypoint-RCNN-FPN's SMOOTH_L1_BETA 0.5",
}

MODELS = [
    ["model=faster_rcnn"],
    ["model=mask_rcnn"],
    ["model=keypoint_rcnn"],
    ["model=retinanet"],
    ["model=panoptic_fpn"],
    ["model=semantic_fpn"],
    ["model=cascade_mask_rcnn"],
    ["model=rpn"],
    ["model=mask_rcnn_c4", "backbone=resnet50_c4"],
]


def _same(value: Any, default: Any) -> bool:
    if isinstance(value, dict) and not isinstance(default, dict):  # per-loss weights vs one scalar weight
        return all(_same(v, default) for v in value.values())
    if isinstance(value, (list, tuple)) and isinstance(default, (list, tuple)):
        return len(value) == len(default) and all(_same(a, b) for a, b in zip(value, default))
    if isinstance(value, float) or isinstance(default, float):
        try:
            return math.isclose(float(value), float(default))
        except (TypeError, ValueError):
            return False
    try:
        return bool(value == default)
    except Exception:  # e.g. tensors: not a default-valued argument
        return False


@pytest.fixture(scope="module")
def from_config_calls() -> list[tuple[Any, dict[str, Any]]]:
    """(component, kwargs from_config produced) for every configurable component of every model config."""
    configurable_module = sys.modules["detlightning.config.configurable"]
    original = configurable_module._get_args_from_config
    calls: list[tuple[Any, dict[str, Any]]] = []

    def recording(func, *args, **kwargs):
        out = original(func, *args, **kwargs)
        calls.append((getattr(func, "__self__", func), dict(out)))
        return out

    configurable_module._get_args_from_config = recording
    try:
        for overrides in MODELS:
            build_model(compose(overrides + ["data=coco", "model.resnets.depth=50"]))
    finally:
        configurable_module._get_args_from_config = original
    return calls


def test_yaml_values_equal_init_defaults(from_config_calls) -> None:
    differences: dict[tuple[str, str], tuple[Any, Any]] = {}
    checked = set()
    for owner, kwargs in from_config_calls:
        name = getattr(owner, "__qualname__", repr(owner))
        signature = inspect.signature(owner.__init__ if inspect.isclass(owner) else owner)
        for key, value in kwargs.items():
            param = signature.parameters.get(key)
            if param is None or param.default is inspect.Parameter.empty or isinstance(value, torch.nn.Module):
                continue
            checked.add(name)
            if not _same(value, param.default):
                differences[(name, key)] = (value, param.default)
    assert len(checked) >= 10, sorted(checked)  # the recording saw the components (RPN, heads, anchors, ...)
    unexplained = {k: v for k, v in differences.items() if k not in KNOWN_DIFFERENCES}
    assert not unexplained, "config value vs __init__ default: " + repr(unexplained)
    stale = sorted(set(KNOWN_DIFFERENCES) - set(differences))
    assert not stale, f"listed differences that no longer exist: {stale}"
