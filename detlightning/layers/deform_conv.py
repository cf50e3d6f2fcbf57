"""Deformable convolutions (v1 and modulated v2) on ``torchvision.ops.deform_conv2d``, with detectron2's names.

The module keeps its kernel as ``weight`` (``(C_out, C_in / groups, kh, kw)``), an optional ``bias`` and the norm
as the submodule ``norm``, so ``res3.0.conv2.weight`` / ``res3.0.conv2.norm.*`` load from detectron2 checkpoints.
The offsets are a separate input (a plain conv, ``conv2_offset`` in the ResNet block, predicts them).
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn
from torch.nn.modules.utils import _pair
from torchvision.ops import deform_conv2d

__all__ = ["DeformConv", "ModulatedDeformConv"]


class _DeformConvBase(nn.Module):
    """Shared parameters and output-shape logic of the two deformable convolutions."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        deformable_groups: int = 1,
        bias: bool = False,
        norm: nn.Module | None = None,
        activation: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ValueError(
                f"{type(self).__name__}: in_channels={in_channels} and out_channels={out_channels} must both be "
                f"divisible by groups={groups}"
            )
        if in_channels % deformable_groups:
            raise ValueError(
                f"{type(self).__name__}: in_channels={in_channels} must be divisible by "
                f"deformable_groups={deformable_groups}"
            )
        self.in_channels, self.out_channels = in_channels, out_channels
        # every geometry argument as an (h, w) pair, the form deform_conv2d takes
        self.kernel_size, self.stride, self.padding, self.dilation = (
            _pair(v) for v in (kernel_size, stride, padding, dilation)
        )
        self.groups, self.deformable_groups = groups, deformable_groups
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, *self.kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.norm = norm
        self.activation = activation
        nn.init.kaiming_uniform_(self.weight, nonlinearity="relu")

    def _output_size(self, x: torch.Tensor) -> list[int]:
        size = [x.shape[0], self.out_channels]
        for i, extent in enumerate(x.shape[-2:]):
            span = self.dilation[i] * (self.kernel_size[i] - 1) + 1
            size.append(math.floor((extent + 2 * self.padding[i] - span) / self.stride[i]) + 1)
        return size

    def _run(self, x: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        if x.numel() == 0:
            # keep the graph connected to the weight so an empty batch still trains
            out = x.new_zeros(self._output_size(x)) + self.weight.sum() * 0.0
        else:
            out = deform_conv2d(
                x,
                offset.to(x.dtype),
                self.weight,
                self.bias,
                stride=self.stride,
                padding=self.padding,
                dilation=self.dilation,
                mask=None if mask is None else mask.to(x.dtype),
            )
        if self.norm is not None:
            out = self.norm(out)
        if self.activation is not None:
            out = self.activation(out)
        return out

    def extra_repr(self) -> str:
        return (
            f"in_channels={self.in_channels}, out_channels={self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, groups={self.groups}, "
            f"deformable_groups={self.deformable_groups}, bias={self.bias is not None}"
        )


class DeformConv(_DeformConvBase):
    """Deformable convolution (v1): every kernel tap samples at its grid position plus a learned offset.

    ``forward(x, offset)``: x (N, C_in, H, W); offset (N, 2 * deformable_groups * kh * kw, H_out, W_out), per
    tap the (dy, dx) pair in pixels. Returns (N, C_out, H_out, W_out).
    """

    def forward(self, x: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
        return self._run(x, offset, None)


class ModulatedDeformConv(_DeformConvBase):
    """Modulated deformable convolution (v2): DeformConv whose taps are also scaled by a mask in [0, 1].

    ``forward(x, offset, mask)``: as :class:`DeformConv`, with mask (N, deformable_groups * kh * kw, H_out, W_out).
    Has a bias by default, as in detectron2.
    """

    def __init__(self, *args, bias: bool = True, **kwargs) -> None:
        super().__init__(*args, bias=bias, **kwargs)

    def forward(self, x: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self._run(x, offset, mask)
