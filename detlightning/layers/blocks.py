"""Base class for CNN blocks that can be frozen (ResNet stages)."""
from __future__ import annotations

from torch import nn

from .batch_norm import FrozenBatchNorm2d

__all__ = ["CNNBlockBase"]


class CNNBlockBase(nn.Module):
    """A block with ``in_channels``, ``out_channels`` and ``stride`` attributes that can be frozen."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.stride = stride

    def freeze(self) -> "CNNBlockBase":
        """Stop gradients to every parameter and turn batch norms into FrozenBatchNorm2d. Returns self."""
        for p in self.parameters():
            p.requires_grad = False
        FrozenBatchNorm2d.convert_frozen_batchnorm(self)
        return self
