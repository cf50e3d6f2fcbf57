"""Base class for CNN blocks that can be frozen (ResNet stages), and the depthwise-separable conv block."""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .batch_norm import FrozenBatchNorm2d, get_norm
from .weight_init import c2_msra_fill
from .wrappers import Conv2d

__all__ = ["CNNBlockBase", "DepthwiseSeparableConv2d"]


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


class DepthwiseSeparableConv2d(nn.Module):
    """A depthwise k x k conv (``groups=in_channels``) followed by a pointwise 1x1 conv (Xception / MobileNet).

    Each of the two is a :class:`Conv2d` with its own optional norm and activation; a conv gets a bias only
    when it has no norm. Submodules ``depthwise`` and ``pointwise`` (detectron2's names).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        padding: int = 1,
        dilation: int = 1,
        *,
        norm1: str | Callable[[int], nn.Module] | None = None,
        activation1: Callable[[torch.Tensor], torch.Tensor] | None = None,
        norm2: str | Callable[[int], nn.Module] | None = None,
        activation2: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        super().__init__()
        self.depthwise = Conv2d(
            in_channels, in_channels, kernel_size=kernel_size, padding=padding, dilation=dilation,
            groups=in_channels, bias=not norm1, norm=get_norm(norm1, in_channels), activation=activation1,
        )
        self.pointwise = Conv2d(
            in_channels, out_channels, kernel_size=1, bias=not norm2, norm=get_norm(norm2, out_channels),
            activation=activation2,
        )
        c2_msra_fill(self.depthwise)
        c2_msra_fill(self.pointwise)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))
