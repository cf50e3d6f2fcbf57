"""Feature Pyramid Network over a bottom-up backbone, with detectron2's names (``fpn_lateral2``, ``fpn_output2``,
``top_block.p6``, ``bottom_up.res2...``)."""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ...config.reader import cfg_view
from ...layers import Conv2d, ShapeSpec, get_norm
from ...layers.weight_init import c2_xavier_fill
from ..registry import BACKBONE_REGISTRY
from .backbone import Backbone
from .resnet import build_resnet_backbone

__all__ = [
    "FPN",
    "LastLevelMaxPool",
    "LastLevelP6P7",
    "build_resnet_fpn_backbone",
    "build_retinanet_resnet_fpn_backbone",
]


def _assert_strides_are_log2_contiguous(strides: Sequence[int]) -> None:
    for prev, stride in zip(strides[:-1], strides[1:]):
        if stride != 2 * prev:
            raise ValueError(f"FPN input strides must each double the previous one, got {list(strides)}")


class FPN(Backbone):
    """FPN (Lin et al. 2017): a 1x1 lateral conv per input level, nearest 2x top-down upsampling, a 3x3 output
    conv per level, and an optional ``top_block`` adding coarser levels.

    Outputs are named ``p<log2(stride)>`` (``p2`` ... ``p6``), all with ``out_channels`` channels.
    """

    def __init__(
        self,
        bottom_up: Backbone,
        in_features: Sequence[str],
        out_channels: int,
        norm: str = "",
        top_block: nn.Module | None = None,
        fuse_type: str = "sum",
        square_pad: int = 0,
    ) -> None:
        """
        Args:
            bottom_up: the backbone whose features feed the pyramid.
            in_features: a contiguous run of its output names, high to low resolution, e.g. ["res2", ..., "res5"].
            out_channels: channels of every pyramid level.
            norm: normalisation of the lateral and output convs ("" = none, then the convs have a bias).
            top_block: module with ``num_levels`` and ``in_feature`` (a bottom-up or pyramid name) attributes whose
                forward returns ``num_levels`` more maps, each half the size of the previous.
            fuse_type: "sum" or "avg" of the lateral and top-down features.
            square_pad: if > 0, inputs must be padded to a square of this size.
        """
        super().__init__()
        if not isinstance(bottom_up, Backbone):
            raise TypeError(f"FPN bottom_up must be a Backbone, got {type(bottom_up).__name__}")
        in_features = list(in_features)
        if not in_features:
            raise ValueError("FPN in_features must not be empty")
        if fuse_type not in ("avg", "sum"):
            raise ValueError(f"FPN fuse_type must be 'sum' or 'avg', got {fuse_type!r}")

        input_shapes = bottom_up.output_shape()
        missing = [f for f in in_features if f not in input_shapes]
        if missing:
            raise ValueError(
                f"FPN in_features {missing} are not outputs of the bottom-up backbone: {list(input_shapes)}"
            )
        strides = [input_shapes[f].stride for f in in_features]
        in_channels_per_feature = [input_shapes[f].channels for f in in_features]
        _assert_strides_are_log2_contiguous(strides)

        use_bias = norm == ""
        lateral_convs, output_convs = [], []
        for in_channels, stride in zip(in_channels_per_feature, strides):
            lateral_conv = Conv2d(
                in_channels, out_channels, kernel_size=1, bias=use_bias, norm=get_norm(norm, out_channels)
            )
            output_conv = Conv2d(
                out_channels,
                out_channels,
                kernel_size=3,
                stride=1,
                padding=1,
                bias=use_bias,
                norm=get_norm(norm, out_channels),
            )
            c2_xavier_fill(lateral_conv)
            c2_xavier_fill(output_conv)
            stage = int(math.log2(stride))
            self.add_module(f"fpn_lateral{stage}", lateral_conv)
            self.add_module(f"fpn_output{stage}", output_conv)
            lateral_convs.append(lateral_conv)
            output_convs.append(output_conv)
        # Top-down order (coarsest first), the order forward visits them; plain lists: the modules are registered
        # above under their detectron2 names.
        self.lateral_convs = lateral_convs[::-1]
        self.output_convs = output_convs[::-1]
        self.top_block = top_block
        self.in_features = tuple(in_features)
        self.bottom_up = bottom_up

        self._out_feature_strides = {f"p{int(math.log2(s))}": s for s in strides}
        if self.top_block is not None:
            last_stage = int(math.log2(strides[-1]))
            for s in range(last_stage, last_stage + self.top_block.num_levels):
                self._out_feature_strides[f"p{s + 1}"] = 2 ** (s + 1)
        self._out_features = list(self._out_feature_strides)
        self._out_feature_channels = {k: out_channels for k in self._out_features}
        self._size_divisibility = strides[-1]
        self._square_pad = square_pad
        self._fuse_type = fuse_type

    @property
    def size_divisibility(self) -> int:
        return self._size_divisibility

    @property
    def padding_constraints(self) -> dict[str, int]:
        return {"square_size": self._square_pad}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """
        Args:
            x: (N, C, H, W) images, H and W multiples of ``size_divisibility``.
        Returns:
            "p<k>" -> (N, out_channels, H / 2^k, W / 2^k), high to low resolution.
        """
        bottom_up_features = self.bottom_up(x)
        results = []
        prev_features = self.lateral_convs[0](bottom_up_features[self.in_features[-1]])
        results.append(self.output_convs[0](prev_features))
        for idx in range(1, len(self.lateral_convs)):
            features = bottom_up_features[self.in_features[-idx - 1]]
            top_down_features = F.interpolate(prev_features, scale_factor=2.0, mode="nearest")
            prev_features = self.lateral_convs[idx](features) + top_down_features
            if self._fuse_type == "avg":
                prev_features /= 2
            results.insert(0, self.output_convs[idx](prev_features))

        if self.top_block is not None:
            if self.top_block.in_feature in bottom_up_features:
                top_block_in_feature = bottom_up_features[self.top_block.in_feature]
            else:
                top_block_in_feature = results[self._out_features.index(self.top_block.in_feature)]
            results.extend(self.top_block(top_block_in_feature))
        if len(results) != len(self._out_features):
            raise RuntimeError(f"FPN produced {len(results)} maps for outputs {self._out_features}")
        return dict(zip(self._out_features, results))

    def output_shape(self) -> dict[str, ShapeSpec]:
        return {
            name: ShapeSpec(channels=self._out_feature_channels[name], stride=self._out_feature_strides[name])
            for name in self._out_features
        }


class LastLevelMaxPool(nn.Module):
    """P6 from P5 by a 1x1, stride-2 max pool (subsampling), as in the original FPN."""

    def __init__(self) -> None:
        super().__init__()
        self.num_levels = 1
        self.in_feature = "p5"

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [F.max_pool2d(x, kernel_size=1, stride=2, padding=0)]


class LastLevelP6P7(nn.Module):
    """RetinaNet's extra levels: P6 = conv3x3/2(in_feature), P7 = conv3x3/2(relu(P6))."""

    def __init__(self, in_channels: int, out_channels: int, in_feature: str = "res5") -> None:
        super().__init__()
        self.num_levels = 2
        self.in_feature = in_feature
        self.p6 = nn.Conv2d(in_channels, out_channels, 3, 2, 1)
        self.p7 = nn.Conv2d(out_channels, out_channels, 3, 2, 1)
        for module in (self.p6, self.p7):
            c2_xavier_fill(module)

    def forward(self, c5: torch.Tensor) -> list[torch.Tensor]:
        p6 = self.p6(c5)
        p7 = self.p7(F.relu(p6))
        return [p6, p7]


def _fpn_args(cfg: Any) -> dict[str, Any]:
    node = cfg.model.fpn
    return {
        "in_features": list(node.in_features),
        "out_channels": int(node.out_channels),
        "norm": node.norm,
        "fuse_type": node.fuse_type,
    }


@BACKBONE_REGISTRY.register()
def build_resnet_fpn_backbone(cfg: Any, input_shape: ShapeSpec) -> FPN:
    """ResNet + FPN with a max-pooled P6 (Faster/Mask R-CNN): outputs p2-p6 for in_features res2-res5."""
    cfg = cfg_view(cfg)
    bottom_up = build_resnet_backbone(cfg, input_shape)
    return FPN(bottom_up=bottom_up, top_block=LastLevelMaxPool(), **_fpn_args(cfg))


@BACKBONE_REGISTRY.register()
def build_retinanet_resnet_fpn_backbone(cfg: Any, input_shape: ShapeSpec) -> FPN:
    """ResNet + FPN with P6/P7 convolved from res5 (RetinaNet): outputs p3-p7 for in_features res3-res5."""
    cfg = cfg_view(cfg)
    bottom_up = build_resnet_backbone(cfg, input_shape)
    in_channels_p6p7 = bottom_up.output_shape()["res5"].channels
    args = _fpn_args(cfg)
    return FPN(bottom_up=bottom_up, top_block=LastLevelP6P7(in_channels_p6p7, args["out_channels"]), **args)
