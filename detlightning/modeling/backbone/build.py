"""build_backbone: the backbone that ``cfg.model.backbone`` selects."""
from __future__ import annotations

from typing import Any

from ...config.reader import cfg_get
from ...layers import ShapeSpec
from ..build import build_component, selected_name
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
    if input_shape is None:
        input_shape = ShapeSpec(channels=len(cfg_get(cfg, "model.pixel_mean")))
    backbone = build_component(BACKBONE_REGISTRY, "model.backbone", cfg, input_shape)
    if not isinstance(backbone, Backbone):
        selected = selected_name(cfg, "model.backbone") or cfg_get(cfg, "model.backbone._target_")
        raise TypeError(
            f"backbone {selected!r} returned "
            f"{type(backbone).__name__}; a backbone builder must return an instance of "
            f"detlightning.modeling.backbone.Backbone"
        )
    return backbone
