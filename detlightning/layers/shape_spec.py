"""ShapeSpec: the shape of a feature map, passed between backbone and heads."""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ShapeSpec"]


@dataclass(frozen=True)
class ShapeSpec:
    """Channels, spatial size and stride of a tensor; any field may be unknown (``None``)."""

    channels: int | None = None
    height: int | None = None
    width: int | None = None
    stride: int | None = None
