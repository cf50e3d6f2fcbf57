"""Atrous Spatial Pyramid Pooling (DeepLabV3's ASPP head), with detectron2's parameter names."""
from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from .batch_norm import get_norm
from .blocks import DepthwiseSeparableConv2d
from .weight_init import c2_xavier_fill
from .wrappers import Conv2d

__all__ = ["ASPP"]

Activation = Callable[[torch.Tensor], torch.Tensor]


class ASPP(nn.Module):
    """Five parallel branches over the same input, concatenated and fused by a 1x1 ``project`` conv.

    ``convs.0`` is a 1x1 conv, ``convs.1``..``convs.3`` are 3x3 convs with the three ``dilations``, and ``convs.4``
    pools the image (global average, or a ``pool_kernel_size`` window at stride 1), applies a 1x1 conv and is
    resized back bilinearly. Input (N, in_channels, H, W) -> output (N, out_channels, H, W).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        dilations: Sequence[int],
        *,
        norm: str | Callable[[int], nn.Module] | None,
        activation: Activation | None,
        pool_kernel_size: Sequence[int] | None = None,
        dropout: float = 0.0,
        use_depthwise_separable_conv: bool = False,
    ) -> None:
        """
        Args:
            dilations: three dilation rates for the 3x3 branches.
            norm: a ``get_norm`` name (or callable) used after every conv but the pooling branch's; "" for none
                (convs then get a bias).
            activation: applied after every conv (a fresh deep copy per conv).
            pool_kernel_size: (kh, kw) of the stride-1 average pooling; ``None`` pools the whole image. With a
                kernel, the input size must be divisible by it (as when training on fixed crops).
            dropout: dropout probability after ``project`` (training only).
            use_depthwise_separable_conv: the dilated branches as :class:`DepthwiseSeparableConv2d`.
        """
        super().__init__()
        if len(dilations) != 3:
            raise ValueError(f"ASPP expects 3 dilations, got {len(dilations)}: {list(dilations)}")
        self.pool_kernel_size = tuple(pool_kernel_size) if pool_kernel_size is not None else None
        self.dropout = dropout
        use_bias = norm == "" or norm is None

        def act() -> Activation | None:
            return copy.deepcopy(activation)

        self.convs = nn.ModuleList()
        self.convs.append(
            Conv2d(in_channels, out_channels, 1, bias=use_bias, norm=get_norm(norm, out_channels), activation=act())
        )
        c2_xavier_fill(self.convs[-1])
        for d in dilations:
            if use_depthwise_separable_conv:
                self.convs.append(
                    DepthwiseSeparableConv2d(
                        in_channels, out_channels, kernel_size=3, padding=d, dilation=d,
                        norm1=norm, activation1=act(), norm2=norm, activation2=act(),
                    )
                )
            else:
                conv = Conv2d(
                    in_channels, out_channels, 3, padding=d, dilation=d, bias=use_bias,
                    norm=get_norm(norm, out_channels), activation=act(),
                )
                c2_xavier_fill(conv)
                self.convs.append(conv)
        pool: nn.Module
        if self.pool_kernel_size is None:
            pool = nn.AdaptiveAvgPool2d(1)
        else:
            pool = nn.AvgPool2d(kernel_size=self.pool_kernel_size, stride=1)
        # d2-parity: the pooling branch has a bias and no norm (a norm over a 1x1 map would be degenerate)
        pooled_conv = Conv2d(in_channels, out_channels, 1, bias=True, activation=act())
        c2_xavier_fill(pooled_conv)
        self.convs.append(nn.Sequential(pool, pooled_conv))

        self.project = Conv2d(
            5 * out_channels, out_channels, 1, bias=use_bias, norm=get_norm(norm, out_channels), activation=act()
        )
        c2_xavier_fill(self.project)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        if self.pool_kernel_size is not None:
            kh, kw = self.pool_kernel_size
            if size[0] % kh or size[1] % kw:
                raise ValueError(
                    f"ASPP: input size {tuple(size)} is not divisible by pool_kernel_size {self.pool_kernel_size}"
                )
        branches = [conv(x) for conv in self.convs]
        branches[-1] = F.interpolate(branches[-1], size=size, mode="bilinear", align_corners=False)
        out = self.project(torch.cat(branches, dim=1))
        if self.dropout > 0:
            out = F.dropout(out, self.dropout, training=self.training)
        return out
