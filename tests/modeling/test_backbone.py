"""Backbone base class and build_backbone (registry name selection, default input shape, type check)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from detlightning.config import compose
from detlightning.layers import ShapeSpec
from detlightning.modeling.backbone import BACKBONE_REGISTRY, FPN, Backbone, ResNet, build_backbone


class _ToyBackbone(Backbone):
    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 5, kernel_size=3, stride=8, padding=1)
        self._out_features = ["toy"]
        self._out_feature_channels = {"toy": 5}
        self._out_feature_strides = {"toy": 8}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"toy": self.conv(x)}


def _toy_builder(cfg, input_shape: ShapeSpec) -> Backbone:
    return _ToyBackbone(input_shape.channels)


def _not_a_backbone(cfg, input_shape: ShapeSpec) -> nn.Module:
    return nn.Conv2d(input_shape.channels, 1, 1)


for _fn in (_toy_builder, _not_a_backbone):
    if _fn.__name__ not in BACKBONE_REGISTRY:  # the registry refuses duplicates (module re-imported)
        BACKBONE_REGISTRY.register(_fn)


def test_backbone_is_abstract() -> None:
    with pytest.raises(TypeError):
        Backbone()  # type: ignore[abstract]


def test_defaults_and_output_shape() -> None:
    b = _ToyBackbone(3)
    assert b.size_divisibility == 0
    assert b.padding_constraints == {}
    assert b.output_shape() == {"toy": ShapeSpec(channels=5, stride=8)}
    assert b(torch.zeros(1, 3, 16, 16))["toy"].shape == (1, 5, 2, 2)


def test_build_backbone_by_registry_name() -> None:
    cfg = compose(["model.backbone.name=_toy_builder", "model.pixel_mean=[1.0,2.0,3.0,4.0]"])
    b = build_backbone(cfg)  # input channels default to len(pixel_mean)
    assert isinstance(b, _ToyBackbone) and b.conv.in_channels == 4
    b = build_backbone(cfg, ShapeSpec(channels=2))
    assert b.conv.in_channels == 2


def test_build_backbone_rejects_non_backbone() -> None:
    cfg = compose(["model.backbone.name=_not_a_backbone"])
    with pytest.raises(TypeError, match="_not_a_backbone.*Backbone"):
        build_backbone(cfg)


def test_build_backbone_unknown_name() -> None:
    cfg = compose(["model.backbone.name=no_such_backbone"])
    with pytest.raises(KeyError, match="no_such_backbone"):
        build_backbone(cfg)


def test_default_configs_build_registered_backbones() -> None:
    assert isinstance(build_backbone(compose()), FPN)  # default group: resnet50 (+ FPN)
    c4 = build_backbone(compose(["backbone=resnet50_c4"]))
    assert isinstance(c4, ResNet) and not isinstance(c4, FPN)
