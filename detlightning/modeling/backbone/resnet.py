"""ResNet / ResNeXt backbones with detectron2's module names (``stem.conv1``, ``res2.0.conv1``, ``res2.0.shortcut``)."""
from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ...config.reader import cfg_view
from ...layers import CNNBlockBase, Conv2d, DeformConv, ModulatedDeformConv, ShapeSpec, cpu_channels_last, get_norm
from ...layers.weight_init import c2_msra_fill, c2_xavier_fill  # noqa: F401  (c2_xavier_fill: old import path)
from ..registry import BACKBONE_REGISTRY
from .backbone import Backbone

__all__ = [
    "ResNetBlockBase",
    "BasicBlock",
    "BottleneckBlock",
    "DeformBottleneckBlock",
    "BasicStem",
    "ResNet",
    "make_stage",
    "build_resnet_backbone",
]

logger = logging.getLogger(__name__)

NormSpec = str | Callable[[int], nn.Module] | None

_NUM_BLOCKS_PER_STAGE = {
    18: [2, 2, 2, 2],
    34: [3, 4, 6, 3],
    50: [3, 4, 6, 3],
    101: [3, 4, 23, 3],
    152: [3, 8, 36, 3],
}


def _conv_norm(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    norm: NormSpec,
    *,
    stride: int = 1,
    dilation: int = 1,
    groups: int = 1,
) -> Conv2d:
    """Bias-free square conv + ``norm``, padded so that only the stride changes the spatial size."""
    return Conv2d(
        in_channels,
        out_channels,
        kernel_size=kernel_size,
        stride=stride,
        padding=dilation * (kernel_size // 2),
        dilation=dilation,
        groups=groups,
        bias=False,
        norm=get_norm(norm, out_channels),
    )


def _projection(in_channels: int, out_channels: int, stride: int, norm: NormSpec) -> Conv2d | None:
    """The 1x1 shortcut of a residual block, or None (identity) when the channels already agree."""
    if in_channels == out_channels:
        return None
    return _conv_norm(in_channels, out_channels, 1, norm, stride=stride)


def _msra_init(*layers: nn.Module | None) -> None:
    for layer in layers:
        if layer is not None:
            c2_msra_fill(layer)


class BasicBlock(CNNBlockBase):
    """The two-3x3-conv residual block of ResNet-18/34, with a 1x1 projection shortcut when channels change."""

    def __init__(self, in_channels: int, out_channels: int, *, stride: int = 1, norm: NormSpec = "BN") -> None:
        """
        Args:
            stride: stride of the first conv (and of the shortcut).
            norm: normalisation after every conv, see :func:`detlightning.layers.get_norm`.
        """
        super().__init__(in_channels, out_channels, stride)
        self.shortcut = _projection(in_channels, out_channels, stride, norm)
        self.conv1 = _conv_norm(in_channels, out_channels, 3, norm, stride=stride)
        self.conv2 = _conv_norm(out_channels, out_channels, 3, norm)
        _msra_init(self.conv1, self.conv2, self.shortcut)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu_(self.conv1(x))
        out = self.conv2(out)
        out += self.shortcut(x) if self.shortcut is not None else x
        return F.relu_(out)


class BottleneckBlock(CNNBlockBase):
    """The 1x1 -> 3x3 -> 1x1 residual block of ResNet-50/101/152 and ResNeXt (grouped 3x3)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        bottleneck_channels: int,
        stride: int = 1,
        num_groups: int = 1,
        norm: NormSpec = "BN",
        stride_in_1x1: bool = False,
        dilation: int = 1,
    ) -> None:
        """
        Args:
            bottleneck_channels: channels of the 3x3 conv.
            num_groups: groups of the 3x3 conv (ResNeXt cardinality).
            norm: normalisation after every conv, see :func:`detlightning.layers.get_norm`.
            stride_in_1x1: put the stride in the first 1x1 conv (original MSRA models) instead of the 3x3 conv
                (torchvision / FAIR ResNeXt models).
            dilation: dilation of the 3x3 conv.
        """
        super().__init__(in_channels, out_channels, stride)
        self.shortcut = _projection(in_channels, out_channels, stride, norm)
        # the block's stride sits either in the reducing 1x1 conv or in the 3x3 conv
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = _conv_norm(in_channels, bottleneck_channels, 1, norm, stride=stride_1x1)
        self.conv2 = _conv_norm(
            bottleneck_channels,
            bottleneck_channels,
            3,
            norm,
            stride=stride_3x3,
            dilation=dilation,
            groups=num_groups,
        )
        self.conv3 = _conv_norm(bottleneck_channels, out_channels, 1, norm)
        _msra_init(self.conv1, self.conv2, self.conv3, self.shortcut)
        # d2-parity: the last norm of the branch is NOT zero-initialised (detectron2 found it hurts GN from scratch).

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu_(self.conv1(x))
        out = F.relu_(self.conv2(out))
        out = self.conv3(out)
        out += self.shortcut(x) if self.shortcut is not None else x
        return F.relu_(out)


class DeformBottleneckBlock(CNNBlockBase):
    """BottleneckBlock whose 3x3 conv is deformable: a plain 3x3 conv ``conv2_offset`` predicts the sampling
    offsets (and, when modulated, the masks) of the deformable ``conv2`` from the block's own 1x1 output."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        bottleneck_channels: int,
        stride: int = 1,
        num_groups: int = 1,
        norm: NormSpec = "BN",
        stride_in_1x1: bool = False,
        dilation: int = 1,
        deform_modulated: bool = False,
        deform_num_groups: int = 1,
    ) -> None:
        """
        Args:
            deform_modulated: deformable conv v2 (offsets and a sigmoid mask per tap) instead of v1.
            deform_num_groups: channel groups that get their own offsets.
            others: as :class:`BottleneckBlock`.
        """
        super().__init__(in_channels, out_channels, stride)
        self.deform_modulated = deform_modulated
        self.shortcut = _projection(in_channels, out_channels, stride, norm)
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = _conv_norm(in_channels, bottleneck_channels, 1, norm, stride=stride_1x1)
        # per tap of the 3x3 kernel: (dy, dx), plus a mask logit when modulated
        values_per_tap = 3 if deform_modulated else 2
        self.conv2_offset = Conv2d(
            bottleneck_channels,
            values_per_tap * 9 * deform_num_groups,
            kernel_size=3,
            stride=stride_3x3,
            padding=dilation,
            dilation=dilation,
        )
        conv_cls = ModulatedDeformConv if deform_modulated else DeformConv
        self.conv2 = conv_cls(
            bottleneck_channels,
            bottleneck_channels,
            kernel_size=3,
            stride=stride_3x3,
            padding=dilation,
            dilation=dilation,
            groups=num_groups,
            deformable_groups=deform_num_groups,
            bias=False,
            norm=get_norm(norm, bottleneck_channels),
        )
        self.conv3 = _conv_norm(bottleneck_channels, out_channels, 1, norm)
        _msra_init(self.conv1, self.conv2, self.conv3, self.shortcut)
        # zero offsets at start: the block begins as an ordinary bottleneck
        nn.init.zeros_(self.conv2_offset.weight)
        nn.init.zeros_(self.conv2_offset.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu_(self.conv1(x))
        if self.deform_modulated:
            predicted = self.conv2_offset(out)
            num_offsets = predicted.shape[1] * 2 // 3
            # d2-parity: the first two thirds of the channels are the offsets, the last third the mask logits
            offset, mask = predicted[:, :num_offsets], predicted[:, num_offsets:].sigmoid()
            out = self.conv2(out, offset, mask)
        else:
            out = self.conv2(out, self.conv2_offset(out))
        out = F.relu_(out)
        out = self.conv3(out)
        out += self.shortcut(x) if self.shortcut is not None else x
        return F.relu_(out)


class BasicStem(CNNBlockBase):
    """The ResNet stem: 7x7 stride-2 conv + norm + ReLU, then 3x3 stride-2 max pool (total stride 4)."""

    def __init__(self, in_channels: int = 3, out_channels: int = 64, norm: NormSpec = "BN") -> None:
        super().__init__(in_channels, out_channels, 4)
        self.conv1 = _conv_norm(in_channels, out_channels, 7, norm, stride=2)
        _msra_init(self.conv1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu_(self.conv1(x))
        return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)


_STAGE_INDEX = {"res2": 1, "res3": 2, "res4": 3, "res5": 4}


class ResNet(Backbone):
    """A stem followed by stages ``res2``, ``res3``, ... (each an ``nn.Sequential`` of blocks), optionally a
    classifier ``linear``."""

    def __init__(
        self,
        stem: CNNBlockBase,
        stages: Sequence[Sequence[CNNBlockBase]],
        num_classes: int | None = None,
        out_features: Sequence[str] | None = None,
        freeze_at: int = 0,
    ) -> None:
        """
        Args:
            stem: the stem module (has ``stride`` and ``out_channels``).
            stages: blocks of each stage (typically 4); stage i is named ``res{i + 2}``.
            num_classes: if given, add global average pooling and a ``linear`` classifier.
            out_features: names to return from forward, among "stem", "res2", ..., "linear"; default: the last.
                Stages after the last requested one are dropped (they would have no gradients).
            freeze_at: see :meth:`freeze`.
        """
        super().__init__()
        self.stem = stem
        self.num_classes = num_classes

        if out_features is not None and "linear" not in out_features:
            num_stages = max(_STAGE_INDEX.get(f, 0) for f in out_features)
            stages = stages[:num_stages]

        current_stride = self.stem.stride
        self._out_feature_strides: dict[str, int] = {"stem": current_stride}
        self._out_feature_channels: dict[str, int] = {"stem": self.stem.out_channels}

        stage_names: list[str] = []
        self.stages: list[nn.Sequential] = []
        name = "stem"
        curr_channels = self.stem.out_channels
        for i, blocks in enumerate(stages):
            if len(blocks) == 0:
                raise ValueError(f"ResNet stage {i} (res{i + 2}) has no blocks")
            for block in blocks:
                if not isinstance(block, CNNBlockBase):
                    raise TypeError(f"ResNet blocks must be CNNBlockBase, got {type(block).__name__} in res{i + 2}")
            name = f"res{i + 2}"
            stage = nn.Sequential(*blocks)
            self.add_module(name, stage)
            stage_names.append(name)
            self.stages.append(stage)
            current_stride = int(current_stride * math.prod(k.stride for k in blocks))
            self._out_feature_strides[name] = current_stride
            self._out_feature_channels[name] = curr_channels = blocks[-1].out_channels
        self.stage_names = tuple(stage_names)

        if num_classes is not None:
            self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
            self.linear = nn.Linear(curr_channels, num_classes)
            # "Accurate, Large Minibatch SGD" Sec. 5.1: classifier weights ~ N(0, 0.01^2).
            nn.init.normal_(self.linear.weight, std=0.01)
            name = "linear"

        if out_features is None:
            out_features = [name]
        self._out_features = list(out_features)
        if not self._out_features:
            raise ValueError("ResNet out_features must not be empty")
        children = [n for n, _ in self.named_children()]
        for out_feature in self._out_features:
            if out_feature not in children:
                raise ValueError(f"ResNet out_feature {out_feature!r} is not available; available: {children}")
        self.freeze(freeze_at)

    @property
    def stages_and_names(self) -> list[tuple[nn.Sequential, str]]:
        """(stage module, name) pairs, in order (older detectron2 attribute)."""
        return list(zip(self.stages, self.stage_names))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """
        Args:
            x: (N, C, H, W) image batch.
        Returns:
            requested feature name -> (N, C_f, ceil-ish(H / stride_f), ...) tensor; "linear" -> (N, num_classes).
        """
        if x.dim() != 4:
            raise ValueError(f"ResNet takes an input of shape (N, C, H, W), got {tuple(x.shape)}")
        wanted = self._out_features
        outputs: dict[str, torch.Tensor] = {}
        x = cpu_channels_last(x)  # the stages (and an FPN on top) then run in oneDNN's native layout
        for name, module in (("stem", self.stem), *zip(self.stage_names, self.stages)):
            x = module(x)
            if name in wanted:
                outputs[name] = x
        if self.num_classes is not None:
            logits = self.linear(torch.flatten(self.avgpool(x), 1))
            if "linear" in wanted:
                outputs["linear"] = logits
        return outputs

    def output_shape(self) -> dict[str, ShapeSpec]:
        return {
            name: ShapeSpec(channels=self._out_feature_channels[name], stride=self._out_feature_strides[name])
            for name in self._out_features
        }

    def freeze(self, freeze_at: int = 0) -> ResNet:
        """Freeze the first ``freeze_at`` stages: 1 = the stem, 2 = stem and res2, ...

        Frozen blocks stop gradients and have their BatchNorms converted to FrozenBatchNorm2d. Returns self.
        """
        # stage k (res{k + 1}) is frozen when freeze_at >= k, the stem being stage 1
        frozen_stages = self.stages[: max(freeze_at - 1, 0)]
        to_freeze = ([self.stem] if freeze_at >= 1 else []) + [block for stage in frozen_stages for block in stage]
        for module in to_freeze:
            module.freeze()
        return self

    @staticmethod
    def make_stage(
        block_class: type[CNNBlockBase],
        num_blocks: int,
        first_stride: int | None = None,
        *,
        in_channels: int,
        out_channels: int,
        **kwargs: Any,
    ) -> list[CNNBlockBase]:
        """The blocks of one stage.

        Args:
            block_class: block type (a CNNBlockBase taking ``in_channels``, ``out_channels`` and ``kwargs``).
            num_blocks: number of blocks.
            first_stride: deprecated; use ``stride_per_block=[s, 1, ...]``.
            in_channels: input channels of the first block.
            out_channels: output channels of every block.
            kwargs: passed to every block; a key ``<arg>_per_block`` is a list giving ``<arg>`` for each block
                (e.g. ``stride_per_block=[2, 1, 1]``).
        """
        if first_stride is not None:
            if "stride" in kwargs or "stride_per_block" in kwargs:
                raise ValueError("make_stage: give either first_stride or stride / stride_per_block, not both")
            kwargs["stride_per_block"] = [first_stride] + [1] * (num_blocks - 1)
            logger.warning("ResNet.make_stage(first_stride=) is deprecated; use 'stride_per_block' or 'stride'.")

        for k, v in kwargs.items():
            if k.endswith("_per_block"):
                if len(v) != num_blocks:
                    raise ValueError(
                        f"make_stage argument {k!r} must have num_blocks={num_blocks} entries, got {len(v)}"
                    )
                if k[: -len("_per_block")] in kwargs:
                    raise ValueError(f"make_stage got both {k!r} and {k[: -len('_per_block')]!r}")

        blocks = []
        for i in range(num_blocks):
            block_kwargs = {
                (k[: -len("_per_block")] if k.endswith("_per_block") else k): (v[i] if k.endswith("_per_block") else v)
                for k, v in kwargs.items()
            }
            blocks.append(block_class(in_channels=in_channels, out_channels=out_channels, **block_kwargs))
            in_channels = out_channels
        return blocks

    @staticmethod
    def make_default_stages(
        depth: int, block_class: type[CNNBlockBase] | None = None, **kwargs: Any
    ) -> list[list[CNNBlockBase]]:
        """The four stages of a standard ResNet-``depth`` (18, 34, 50, 101 or 152).

        Args:
            block_class: default BasicBlock for depth < 50, else BottleneckBlock (which gets
                ``bottleneck_channels = out_channels // 4``).
            kwargs: passed to every :meth:`make_stage` (e.g. ``norm``); not strides or channels.
        """
        if depth not in _NUM_BLOCKS_PER_STAGE:
            raise ValueError(f"ResNet depth must be one of {sorted(_NUM_BLOCKS_PER_STAGE)}, got {depth}")
        if block_class is None:
            block_class = BasicBlock if depth < 50 else BottleneckBlock
        if depth < 50:
            in_channels, out_channels = [64, 64, 128, 256], [64, 128, 256, 512]
        else:
            in_channels, out_channels = [64, 256, 512, 1024], [256, 512, 1024, 2048]
        stages = []
        for n, s, i, o in zip(_NUM_BLOCKS_PER_STAGE[depth], [1, 2, 2, 2], in_channels, out_channels):
            stage_kwargs = dict(kwargs)
            if depth >= 50:
                stage_kwargs["bottleneck_channels"] = o // 4
            stages.append(
                ResNet.make_stage(
                    block_class=block_class,
                    num_blocks=n,
                    stride_per_block=[s] + [1] * (n - 1),
                    in_channels=i,
                    out_channels=o,
                    **stage_kwargs,
                )
            )
        return stages


ResNetBlockBase = CNNBlockBase  # backward-compatible alias


def make_stage(*args: Any, **kwargs: Any) -> list[CNNBlockBase]:
    """Deprecated alias of :meth:`ResNet.make_stage`."""
    return ResNet.make_stage(*args, **kwargs)


@BACKBONE_REGISTRY.register()
def build_resnet_backbone(cfg: Any, input_shape: ShapeSpec) -> ResNet:
    """A ResNet from ``cfg.model.resnets`` and ``cfg.model.backbone.freeze_at``; ``input_shape.channels`` is the
    number of image channels.

    Only the stages up to the last of ``model.resnets.out_features`` are built (C4 models keep res5 in the ROI
    heads).
    """
    cfg = cfg_view(cfg)
    r = cfg.model.resnets
    norm = r.norm
    freeze_at = int(cfg.model.backbone.freeze_at)
    out_features = list(r.out_features)
    depth = int(r.depth)
    num_groups = int(r.num_groups)
    width_per_group = int(r.width_per_group)
    bottleneck_channels = num_groups * width_per_group
    in_channels = int(r.stem_out_channels)
    out_channels = int(r.res2_out_channels)
    stride_in_1x1 = bool(r.stride_in_1x1)
    res5_dilation = int(r.res5_dilation)
    deform_on_per_stage = list(r.deform_on_per_stage)

    if depth not in _NUM_BLOCKS_PER_STAGE:
        raise ValueError(f"model.resnets.depth must be one of {sorted(_NUM_BLOCKS_PER_STAGE)}, got {depth}")
    if res5_dilation not in (1, 2):
        raise ValueError(f"model.resnets.res5_dilation must be 1 or 2, got {res5_dilation}")
    if len(deform_on_per_stage) != 4:
        raise ValueError(
            "model.resnets.deform_on_per_stage (MODEL.RESNETS.DEFORM_ON_PER_STAGE) needs one flag per stage "
            f"res2..res5, got {deform_on_per_stage}"
        )
    if depth in (18, 34):
        if out_channels != 64:
            raise ValueError(f"ResNet-{depth} needs model.resnets.res2_out_channels=64, got {out_channels}")
        if res5_dilation != 1:
            raise ValueError(f"ResNet-{depth} needs model.resnets.res5_dilation=1, got {res5_dilation}")
        if num_groups != 1:
            raise ValueError(f"ResNet-{depth} needs model.resnets.num_groups=1, got {num_groups}")
        if any(deform_on_per_stage):
            raise ValueError(
                f"ResNet-{depth} has no deformable blocks: model.resnets.deform_on_per_stage "
                f"(MODEL.RESNETS.DEFORM_ON_PER_STAGE) must be all false, got {deform_on_per_stage}"
            )
    unknown = [f for f in out_features if f not in _STAGE_INDEX]
    if not out_features or unknown:
        raise ValueError(
            f"model.resnets.out_features must be a non-empty subset of {list(_STAGE_INDEX)}, got {out_features}"
        )

    stem = BasicStem(in_channels=input_shape.channels, out_channels=in_channels, norm=norm)
    num_blocks_per_stage = _NUM_BLOCKS_PER_STAGE[depth]
    max_stage_idx = max(_STAGE_INDEX[f] + 1 for f in out_features)
    stages = []
    for idx, stage_idx in enumerate(range(2, max_stage_idx + 1)):
        dilation = res5_dilation if stage_idx == 5 else 1
        # A dilated res5 keeps stride 16 instead of downsampling.
        first_stride = 1 if idx == 0 or (stage_idx == 5 and dilation == 2) else 2
        num_blocks = num_blocks_per_stage[idx]
        stage_kwargs: dict[str, Any] = {
            "num_blocks": num_blocks,
            "stride_per_block": [first_stride] + [1] * (num_blocks - 1),
            "in_channels": in_channels,
            "out_channels": out_channels,
            "norm": norm,
        }
        if depth in (18, 34):
            stage_kwargs["block_class"] = BasicBlock
        else:
            stage_kwargs.update(
                block_class=BottleneckBlock,
                bottleneck_channels=bottleneck_channels,
                stride_in_1x1=stride_in_1x1,
                dilation=dilation,
                num_groups=num_groups,
            )
            if deform_on_per_stage[idx]:
                stage_kwargs.update(
                    block_class=DeformBottleneckBlock,
                    deform_modulated=bool(r.deform_modulated),
                    deform_num_groups=int(r.deform_num_groups),
                )
        stages.append(ResNet.make_stage(**stage_kwargs))
        in_channels = out_channels
        out_channels *= 2
        bottleneck_channels *= 2
    return ResNet(stem, stages, out_features=out_features, freeze_at=freeze_at)
