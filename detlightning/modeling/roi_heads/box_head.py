"""Box heads: per-ROI feature transforms (convs then fcs) that feed the Fast R-CNN predictor."""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from ...config import configurable
from ...config.reader import cfg_view
from ...layers import Conv2d, Linear, ShapeSpec, get_norm
from ...layers.weight_init import c2_msra_fill, c2_xavier_fill
from ..build import build_component
from ..registry import ROI_BOX_HEAD_REGISTRY

__all__ = ["FastRCNNConvFCHead", "build_box_head", "ROI_BOX_HEAD_REGISTRY"]


@ROI_BOX_HEAD_REGISTRY.register()
class FastRCNNConvFCHead(nn.Sequential):
    """``conv1..convN`` (3x3, norm, ReLU) then ``fc1..fcM`` (each with ReLU) on pooled ROI features.

    Input (R, C, H, W); output (R, fc_dims[-1]) when there are fc layers, else (R, conv_dims[-1], H, W).
    A ``nn.Sequential`` whose children run in registration order (the ``flatten`` and ``fc_relu*`` children carry
    no parameters, so state-dict keys are detectron2's ``conv1.weight``, ``conv1.norm.weight``, ``fc1.weight``...).
    """

    @configurable
    def __init__(
        self,
        input_shape: ShapeSpec,
        *,
        conv_dims: Sequence[int],
        fc_dims: Sequence[int],
        conv_norm: str | Callable[[int], nn.Module] = "",
    ) -> None:
        """
        Args:
            input_shape: channels, height, width of the pooled ROI feature.
            conv_dims: output channels of each 3x3 conv.
            fc_dims: output size of each fc layer.
            conv_norm: norm of the convs (see :func:`detlightning.layers.get_norm`); with a norm the convs have
                no bias.
        """
        super().__init__()
        if len(conv_dims) + len(fc_dims) == 0:
            raise ValueError("FastRCNNConvFCHead needs at least one conv or fc layer (conv_dims and fc_dims are empty)")
        if input_shape.channels is None:
            raise ValueError(f"FastRCNNConvFCHead: input_shape.channels is required, got {input_shape!r}")

        height, width = input_shape.height, input_shape.width
        # 3x3 convs keep the spatial size, so only the channel count changes along the conv stack
        channels = input_shape.channels
        self.conv_norm_relus: list[nn.Module] = []
        for idx, out_channels in enumerate(conv_dims, 1):
            block = Conv2d(
                channels,
                out_channels,
                kernel_size=3,
                padding=1,
                bias=not conv_norm,  # a norm layer carries the shift
                norm=get_norm(conv_norm, out_channels),
                activation=nn.ReLU(),
            )
            self.add_module(f"conv{idx}", block)
            self.conv_norm_relus.append(block)
            channels = out_channels
        self._output_size: int | tuple[int, int | None, int | None] = (channels, height, width)

        self.fcs: list[nn.Module] = []
        if fc_dims:
            if height is None or width is None:
                raise ValueError(f"FastRCNNConvFCHead: fc layers need input height and width, got {input_shape!r}")
            self.add_module("flatten", nn.Flatten())
            features = int(channels * height * width)
            for idx, out_features in enumerate(fc_dims, 1):
                fc = Linear(features, out_features)
                self.add_module(f"fc{idx}", fc)
                self.add_module(f"fc_relu{idx}", nn.ReLU())
                self.fcs.append(fc)
                features = out_features
            self._output_size = features

        for layer in self.conv_norm_relus:
            c2_msra_fill(layer)
        for layer in self.fcs:
            c2_xavier_fill(layer)

    @classmethod
    def from_config(cls, cfg, input_shape: ShapeSpec) -> dict:
        cfg = cfg_view(cfg)
        head = cfg.model.roi_box_head
        return {
            "input_shape": input_shape,
            "conv_dims": [head.conv_dim] * head.num_conv,
            "fc_dims": [head.fc_dim] * head.num_fc,
            "conv_norm": head.norm,
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self:
            x = layer(x)
        return x

    @property
    def output_shape(self) -> ShapeSpec:
        """Shape of the output feature: ``ShapeSpec(channels=fc_dim)`` after fcs, else (C, H, W)."""
        o = self._output_size
        if isinstance(o, int):
            return ShapeSpec(channels=o)
        return ShapeSpec(channels=o[0], height=o[1], width=o[2])


def build_box_head(cfg, input_shape: ShapeSpec) -> nn.Module:
    """The box head selected by ``cfg.model.roi_box_head`` (``name`` in ROI_BOX_HEAD_REGISTRY or ``_target_``)."""
    return build_component(ROI_BOX_HEAD_REGISTRY, "model.roi_box_head", cfg, input_shape)
