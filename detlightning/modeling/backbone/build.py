"""build_backbone: the backbone that ``cfg.model.backbone`` selects."""
from __future__ import annotations

from typing import Any

from ...config.d2_compat import as_detlightning_cfg
from ...layers import ShapeSpec
from ..build import build_component
from ..registry import BACKBONE_REGISTRY
from .backbone import Backbone

__all__ = ["BACKBONE_REGISTRY", "build_backbone"]


def build_backbone(cfg: Any, input_shape: ShapeSpec | None = None) -> Backbone:
    """Build the backbone named by ``cfg.model.backbone.name`` (or its ``_target_``).

    Args:
        input_shape: shape of the input images; default ``ShapeSpec(channels=len(cfg.model.pixel_mean))``.
    Returns:
        a :class:`Backbone` (registered builders are called as ``builder(cfg, input_shape)``).
    """
    cfg = as_detlightning_cfg(cfg)  # a detectron2 CfgNode is converted here
    if input_shape is None:
        input_shape = ShapeSpec(channels=len(cfg.model.pixel_mean))
    backbone = build_component(BACKBONE_REGISTRY, cfg.model.backbone, cfg, input_shape)
    if not isinstance(backbone, Backbone):
        raise TypeError(
            f"backbone {cfg.model.backbone.get('name') or cfg.model.backbone.get('_target_')!r} returned "
            f"{type(backbone).__name__}; a backbone builder must return an instance of "
            f"detlightning.modeling.backbone.Backbone"
        )
    return backbone
