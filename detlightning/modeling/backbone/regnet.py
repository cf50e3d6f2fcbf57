"""RegNet / AnyNet backbones (Radosavovic et al., "Designing Network Design Spaces") with detectron2's module names.

Checkpoint keys follow detectron2 (which follows pycls): ``stem.conv``, ``stem.bn``, stages ``s1`` .. ``s4`` of
blocks ``b1`` .. ``bN``; a residual block has ``proj``/``bn`` (projection shortcut, only when the shape changes) and
``f`` (its residual branch: ``a``, ``a_bn``, ``b``, ``b_bn``, optional ``se.f_ex``, ``c``, ``c_bn``).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ...layers import CNNBlockBase, Conv2d, ShapeSpec, cpu_channels_last, get_norm
from .backbone import Backbone

__all__ = [
    "AnyNet",
    "RegNet",
    "ResStem",
    "SimpleStem",
    "VanillaBlock",
    "ResBasicBlock",
    "ResBottleneckBlock",
    "SE",
    "generate_regnet_parameters",
]

NormSpec = str | Callable[[int], nn.Module] | None
ActivationClass = Callable[[], nn.Module]


def _conv(in_ch: int, out_ch: int, kernel: int, *, stride: int = 1, groups: int = 1, bias: bool = False) -> Conv2d:
    """Square conv with "same" padding (odd kernels only), so only ``stride`` changes the spatial size."""
    if kernel % 2 != 1:
        raise ValueError(f"RegNet convs need an odd kernel size, got {kernel}")
    return Conv2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=bias)


def _default_activation() -> nn.Module:
    return nn.ReLU(inplace=True)


def _init_module(m: nn.Module) -> None:
    """He-normal conv weights (fan-out), unit/zero batch norms, N(0, 0.01) linear layers: pycls' initialisation."""
    if isinstance(m, nn.Conv2d):
        fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
        nn.init.normal_(m.weight, mean=0.0, std=math.sqrt(2.0 / fan_out))
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Linear):
        nn.init.normal_(m.weight, mean=0.0, std=0.01)
        nn.init.zeros_(m.bias)


class SimpleStem(CNNBlockBase):
    """3x3 stride-2 conv, norm, activation (output stride 2)."""

    def __init__(self, w_in: int, w_out: int, norm: NormSpec, activation_class: ActivationClass) -> None:
        super().__init__(w_in, w_out, 2)
        self.conv = _conv(w_in, w_out, 3, stride=2)
        self.bn = get_norm(norm, w_out)
        self.af = activation_class()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.af(self.bn(self.conv(x)))


class ResStem(CNNBlockBase):
    """ResNet-style stem: 7x7 stride-2 conv, norm, activation, 3x3 stride-2 max pool (output stride 4)."""

    def __init__(self, w_in: int, w_out: int, norm: NormSpec, activation_class: ActivationClass) -> None:
        super().__init__(w_in, w_out, 4)
        self.conv = _conv(w_in, w_out, 7, stride=2)
        self.bn = get_norm(norm, w_out)
        self.af = activation_class()
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.af(self.bn(self.conv(x))))


class SE(nn.Module):
    """Squeeze-and-excitation: channel gates from global average pooling through a 1x1 conv bottleneck of ``w_se``
    channels (``f_ex``: conv, activation, conv, sigmoid)."""

    def __init__(self, w_in: int, w_se: int, activation_class: ActivationClass) -> None:
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d((1, 1))
        self.f_ex = nn.Sequential(
            _conv(w_in, w_se, 1, bias=True),
            activation_class(),
            _conv(w_se, w_in, 1, bias=True),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.f_ex(self.avg_pool(x))


class VanillaBlock(CNNBlockBase):
    """Two 3x3 conv-norm-activation layers, no shortcut. ``_params`` is unused (same signature as other blocks)."""

    def __init__(
        self,
        w_in: int,
        w_out: int,
        stride: int,
        norm: NormSpec,
        activation_class: ActivationClass,
        _params: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(w_in, w_out, stride)
        self.a = _conv(w_in, w_out, 3, stride=stride)
        self.a_bn = get_norm(norm, w_out)
        self.a_af = activation_class()
        self.b = _conv(w_out, w_out, 3)
        self.b_bn = get_norm(norm, w_out)
        self.b_af = activation_class()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.a_af(self.a_bn(self.a(x)))
        return self.b_af(self.b_bn(self.b(x)))


class BasicTransform(nn.Module):
    """Residual branch of :class:`ResBasicBlock`: 3x3 conv-norm-activation, 3x3 conv-norm."""

    def __init__(
        self,
        w_in: int,
        w_out: int,
        stride: int,
        norm: NormSpec,
        activation_class: ActivationClass,
        _params: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.a = _conv(w_in, w_out, 3, stride=stride)
        self.a_bn = get_norm(norm, w_out)
        self.a_af = activation_class()
        self.b = _conv(w_out, w_out, 3)
        self.b_bn = get_norm(norm, w_out)
        self.b_bn.final_bn = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b_bn(self.b(self.a_af(self.a_bn(self.a(x)))))


class BottleneckTransform(nn.Module):
    """Residual branch of :class:`ResBottleneckBlock`: 1x1 conv to ``w_out * bot_mul`` channels, grouped 3x3 conv
    (groups of ``group_w`` channels, carries the stride), optional SE (``w_in * se_r`` channels), 1x1 conv to
    ``w_out``; each conv followed by a norm, the first two also by the activation."""

    def __init__(
        self,
        w_in: int,
        w_out: int,
        stride: int,
        norm: NormSpec,
        activation_class: ActivationClass,
        params: dict[str, Any],
    ) -> None:
        super().__init__()
        w_b = int(round(w_out * params["bot_mul"]))
        w_se = int(round(w_in * params["se_r"]))
        self.a = _conv(w_in, w_b, 1)
        self.a_bn = get_norm(norm, w_b)
        self.a_af = activation_class()
        self.b = _conv(w_b, w_b, 3, stride=stride, groups=w_b // params["group_w"])
        self.b_bn = get_norm(norm, w_b)
        self.b_af = activation_class()
        self.se = SE(w_b, w_se, activation_class) if w_se else None
        self.c = _conv(w_b, w_out, 1)
        self.c_bn = get_norm(norm, w_out)
        self.c_bn.final_bn = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.a_af(self.a_bn(self.a(x)))
        x = self.b_af(self.b_bn(self.b(x)))
        if self.se is not None:
            x = self.se(x)
        return self.c_bn(self.c(x))


class _ResidualBlock(CNNBlockBase):
    """``activation(shortcut(x) + f(x))``; the shortcut is a 1x1 conv + norm (``proj``, ``bn``) when the stride or
    the width changes, the identity otherwise."""

    transform_class: type[nn.Module]

    def __init__(
        self,
        w_in: int,
        w_out: int,
        stride: int,
        norm: NormSpec,
        activation_class: ActivationClass,
        params: dict[str, Any],
    ) -> None:
        super().__init__(w_in, w_out, stride)
        self.proj: nn.Module | None = None
        self.bn: nn.Module | None = None
        if w_in != w_out or stride != 1:
            self.proj = _conv(w_in, w_out, 1, stride=stride)
            self.bn = get_norm(norm, w_out)
        self.f = self.transform_class(w_in, w_out, stride, norm, activation_class, params)
        self.af = activation_class()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.proj is None else self.bn(self.proj(x))
        return self.af(shortcut + self.f(x))


class ResBasicBlock(_ResidualBlock):
    """Residual block whose branch is two 3x3 convs (:class:`BasicTransform`)."""

    transform_class = BasicTransform


class ResBottleneckBlock(_ResidualBlock):
    """Residual block whose branch is 1x1, grouped 3x3 [+ SE], 1x1 (:class:`BottleneckTransform`)."""

    transform_class = BottleneckTransform


class AnyStage(nn.Module):
    """``d`` blocks ``b1`` .. ``bd`` of width ``w_out``; only the first one changes the stride and the width."""

    def __init__(
        self,
        w_in: int,
        w_out: int,
        stride: int,
        d: int,
        block_class: Callable[..., CNNBlockBase],
        norm: NormSpec,
        activation_class: ActivationClass,
        params: dict[str, Any],
    ) -> None:
        super().__init__()
        for i in range(d):
            first = i == 0
            block = block_class(w_in if first else w_out, w_out, stride if first else 1, norm, activation_class, params)
            self.add_module(f"b{i + 1}", block)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.children():
            x = block(x)
        return x


class AnyNet(Backbone):
    """A stem followed by stages ``s1``, ``s2``, ... each given explicitly by its depth, width, stride, group width
    and bottleneck ratio.

    Args:
        stem_class: ``(in_channels, out_channels, norm, activation_class) -> stem`` (e.g. :class:`SimpleStem`).
        stem_width: output channels of the stem.
        block_class: ``(w_in, w_out, stride, norm, activation_class, params) -> block``, where ``params`` holds
            ``bot_mul``, ``group_w`` and ``se_r`` (e.g. :class:`ResBottleneckBlock`).
        depths, widths, group_widths, strides, bottleneck_ratios: one entry per stage.
        se_ratio: SE channels as a fraction of each block's input channels (0 = no SE).
        activation_class: zero-argument factory of the activation modules.
        freeze_at: freeze the stem (>= 1) and the first ``freeze_at - 1`` stages; see :meth:`freeze`.
        norm: norm of every conv (see :func:`detlightning.layers.get_norm`).
        out_features: names among "stem", "s1", "s2", ... to return; default: the last stage.
    """

    def __init__(
        self,
        *,
        stem_class: Callable[..., CNNBlockBase],
        stem_width: int,
        block_class: Callable[..., CNNBlockBase],
        depths: Sequence[int],
        widths: Sequence[int],
        group_widths: Sequence[int],
        strides: Sequence[int],
        bottleneck_ratios: Sequence[float],
        se_ratio: float,
        activation_class: ActivationClass,
        freeze_at: int = 0,
        norm: NormSpec = "BN",
        out_features: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        lengths = {len(depths), len(widths), len(group_widths), len(strides), len(bottleneck_ratios)}
        if len(lengths) != 1:
            raise ValueError("AnyNet: depths, widths, group_widths, strides and bottleneck_ratios differ in length")
        self.stem = stem_class(3, stem_width, norm, activation_class)
        stride = self.stem.stride
        self._out_feature_strides = {"stem": stride}
        self._out_feature_channels = {"stem": self.stem.out_channels}
        self.stages_and_names: list[tuple[AnyStage, str]] = []

        w_in = stem_width
        for i, (d, w, s, b, g) in enumerate(zip(depths, widths, strides, bottleneck_ratios, group_widths)):
            params = {"bot_mul": b, "group_w": g, "se_r": se_ratio}
            stage = AnyStage(w_in, w, s, d, block_class, norm, activation_class, params)
            name = f"s{i + 1}"
            self.add_module(name, stage)
            self.stages_and_names.append((stage, name))
            blocks = list(stage.children())
            stride = int(stride * math.prod(blk.stride for blk in blocks))
            self._out_feature_strides[name] = stride
            self._out_feature_channels[name] = blocks[-1].out_channels
            w_in = w

        self.apply(_init_module)

        names = [n for n, _ in self.named_children()]
        self._out_features = list(out_features) if out_features is not None else [names[-1]]
        if not self._out_features:
            raise ValueError("AnyNet: out_features is empty")
        unknown = [f for f in self._out_features if f not in names]
        if unknown:
            raise ValueError(f"AnyNet: out_features {unknown} not among {names}")
        self.freeze(freeze_at)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """(N, C, H, W) images -> {name: feature map} for every name in ``out_features``."""
        if x.dim() != 4:
            raise ValueError(f"AnyNet takes (N, C, H, W) input, got shape {tuple(x.shape)}")
        wanted = self._out_features
        outputs = {}
        x = self.stem(cpu_channels_last(x))  # the stages (and an FPN on top) then run in oneDNN's native layout
        if "stem" in wanted:
            outputs["stem"] = x
        for stage, name in self.stages_and_names:
            x = stage(x)
            if name in wanted:
                outputs[name] = x
        return outputs

    def output_shape(self) -> dict[str, ShapeSpec]:
        return {
            name: ShapeSpec(channels=self._out_feature_channels[name], stride=self._out_feature_strides[name])
            for name in self._out_features
        }

    def freeze(self, freeze_at: int = 0) -> AnyNet:
        """Freeze (no gradients, frozen batch norms) the stem when ``freeze_at >= 1`` and stage ``s{k}`` when
        ``freeze_at >= k + 1``. Returns self."""
        if freeze_at >= 1:
            self.stem.freeze()
        for k, (stage, _) in enumerate(self.stages_and_names, start=1):
            if freeze_at >= k + 1:
                for block in stage.children():
                    block.freeze()
        return self


def adjust_block_compatibility(
    ws: Sequence[int], bs: Sequence[float], gs: Sequence[int]
) -> tuple[list[int], list[float], list[int]]:
    """Make each stage's width, bottleneck ratio and group width consistent: the group width is capped by the
    bottleneck width, and the bottleneck width is rounded to a multiple of the group width."""
    if not len(ws) == len(bs) == len(gs):
        raise ValueError("widths, bottleneck ratios and group widths differ in length")
    if not all(w > 0 and b > 0 and g > 0 for w, b, g in zip(ws, bs, gs)):
        raise ValueError("widths, bottleneck ratios and group widths must be positive")
    bottleneck = [int(max(1, w * b)) for w, b in zip(ws, bs)]
    gs = [int(min(g, v)) for g, v in zip(gs, bottleneck)]
    multiples = [math.lcm(g, int(b)) if b > 1 else g for g, b in zip(gs, bs)]
    bottleneck = [max(m, int(round(v / m) * m)) for v, m in zip(bottleneck, multiples)]
    ws = [int(v / b) for v, b in zip(bottleneck, bs)]
    assert all(w * b % g == 0 for w, b, g in zip(ws, bs, gs))
    return ws, list(bs), gs


def generate_regnet_parameters(
    w_a: float, w_0: int, w_m: float, d: int, q: int = 8
) -> tuple[list[int], list[int], int, float, list[int], list[float]]:
    """Per-stage widths and depths of a RegNet from its linear width parameters.

    Block ``j`` (of ``d``) would have width ``w_0 + w_a * j``; widths are snapped to ``w_0 * w_m**k`` (integer
    ``k``) and rounded to multiples of ``q``; consecutive blocks of equal width form a stage.

    Returns: (stage widths, stage depths, number of stages, total possible stages, per-block quantised widths,
    per-block continuous widths).
    """
    if not (w_a >= 0 and w_0 > 0 and w_m > 1 and w_0 % q == 0):
        raise ValueError(f"invalid RegNet parameters w_a={w_a}, w_0={w_0}, w_m={w_m}, q={q}")
    continuous = np.arange(d) * w_a + w_0
    exponents = np.round(np.log(continuous / w_0) / np.log(w_m))
    quantised = (np.round(w_0 * np.power(w_m, exponents) / q).astype(int) * q)
    widths, depths = np.unique(quantised, return_counts=True)
    return (
        widths.tolist(),
        depths.tolist(),
        len(widths),
        exponents.max() + 1,
        quantised.tolist(),
        continuous.tolist(),
    )


class RegNet(AnyNet):
    """An :class:`AnyNet` whose stages come from RegNet's design parameters (see
    :func:`generate_regnet_parameters`); every stage has the same stride, bottleneck ratio and group width.

    Args:
        depth: total number of blocks.
        w_a, w_0, w_m: slope, initial width and quantisation multiplier of the block widths.
        group_width: channels per group of the grouped convs.
        stride: stride of every stage.
        bottleneck_ratio: bottleneck channels / block output channels.
        activation_class: default ``nn.ReLU(inplace=True)``.
        Other arguments: as :class:`AnyNet`.
    """

    def __init__(
        self,
        *,
        stem_class: Callable[..., CNNBlockBase],
        stem_width: int,
        block_class: Callable[..., CNNBlockBase],
        depth: int,
        w_a: float,
        w_0: int,
        w_m: float,
        group_width: int,
        stride: int = 2,
        bottleneck_ratio: float = 1.0,
        se_ratio: float = 0.0,
        activation_class: ActivationClass | None = None,
        freeze_at: int = 0,
        norm: NormSpec = "BN",
        out_features: Sequence[str] | None = None,
    ) -> None:
        widths, depths = generate_regnet_parameters(w_a, w_0, w_m, depth)[:2]
        n = len(widths)
        widths, ratios, groups = adjust_block_compatibility(widths, [bottleneck_ratio] * n, [group_width] * n)
        super().__init__(
            stem_class=stem_class,
            stem_width=stem_width,
            block_class=block_class,
            depths=depths,
            widths=widths,
            strides=[stride] * n,
            group_widths=groups,
            bottleneck_ratios=ratios,
            se_ratio=se_ratio,
            activation_class=_default_activation if activation_class is None else activation_class,
            freeze_at=freeze_at,
            norm=norm,
            out_features=out_features,
        )
