"""ViTDet: a plain Vision Transformer backbone (windowed + global attention) and the simple feature pyramid built on
its single output map ("Exploring Plain Vision Transformer Backbones for Object Detection", Li et al. 2022)."""
from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ...layers import CNNBlockBase, Conv2d, get_norm
from ...layers.weight_init import c2_msra_fill
from .backbone import Backbone
from .fpn import _assert_strides_are_log2_contiguous
from .utils import (
    DropPath,
    Mlp,
    PatchEmbed,
    decomposed_rel_pos_bias,
    get_abs_pos,
    init_transformer_weights,
    window_partition,
    window_unpartition,
)

logger = logging.getLogger(__name__)

__all__ = ["ViT", "SimpleFeaturePyramid", "get_vit_lr_decay_rate"]


class Attention(nn.Module):
    """Multi-head self-attention over a (B, H, W, C) token map, optionally with the decomposed relative-position
    bias (parameters ``rel_pos_h`` / ``rel_pos_w`` sized for an ``input_size`` grid)."""

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = True,
        use_rel_pos: bool = False,
        rel_pos_zero_init: bool = True,
        input_size: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.scale = head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.use_rel_pos = use_rel_pos
        if use_rel_pos:
            if input_size is None:
                raise ValueError("Attention: use_rel_pos needs input_size")
            self.rel_pos_h = nn.Parameter(torch.zeros(2 * input_size[0] - 1, head_dim))
            self.rel_pos_w = nn.Parameter(torch.zeros(2 * input_size[1] - 1, head_dim))
            if not rel_pos_zero_init:
                nn.init.trunc_normal_(self.rel_pos_h, std=0.02)
                nn.init.trunc_normal_(self.rel_pos_w, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        n = h * w
        # (B, N, 3 * C) -> (3, B, heads, N, head_dim)
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        bias = None
        if self.use_rel_pos:
            flat_q = q.reshape(b * self.num_heads, n, -1)
            bias = decomposed_rel_pos_bias(flat_q, self.rel_pos_h, self.rel_pos_w, (h, w), (h, w))
            bias = bias.view(b, self.num_heads, n, n).to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scale)
        # (B, heads, N, head_dim) -> (B, H, W, C)
        out = out.transpose(1, 2).reshape(b, h, w, c)
        return self.proj(out)


class ResBottleneckBlock(CNNBlockBase):
    """Residual 1x1 -> 3x3 -> 1x1 conv bottleneck (normalised, ``act_layer`` between, none after the sum) on a
    channels-first map; the last norm starts at zero so that the block starts as the identity."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        bottleneck_channels: int,
        norm: str | Callable[[int], nn.Module] = "LN",
        act_layer: type[nn.Module] = nn.GELU,
    ) -> None:
        super().__init__(in_channels, out_channels, 1)
        self.conv1 = Conv2d(in_channels, bottleneck_channels, 1, bias=False)
        self.norm1 = get_norm(norm, bottleneck_channels)
        self.act1 = act_layer()
        self.conv2 = Conv2d(bottleneck_channels, bottleneck_channels, 3, padding=1, bias=False)
        self.norm2 = get_norm(norm, bottleneck_channels)
        self.act2 = act_layer()
        self.conv3 = Conv2d(bottleneck_channels, out_channels, 1, bias=False)
        self.norm3 = get_norm(norm, out_channels)
        for conv in (self.conv1, self.conv2, self.conv3):
            c2_msra_fill(conv)
        for norm_layer in (self.norm1, self.norm2):
            nn.init.ones_(norm_layer.weight)
            nn.init.zeros_(norm_layer.bias)
        nn.init.zeros_(self.norm3.weight)
        nn.init.zeros_(self.norm3.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        for layer in self.children():
            out = layer(out)
        return x + out


class Block(nn.Module):
    """Pre-norm transformer block: (windowed or global) attention and MLP, each residual with stochastic depth,
    optionally followed by a :class:`ResBottleneckBlock` ("residual propagation")."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path: float = 0.0,
        norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
        act_layer: type[nn.Module] = nn.GELU,
        use_rel_pos: bool = False,
        rel_pos_zero_init: bool = True,
        window_size: int = 0,
        use_residual_block: bool = False,
        input_size: tuple[int, int] | None = None,
    ) -> None:
        """
        Args:
            window_size: attend within non-overlapping windows of this side; 0 = global attention over the map.
            use_residual_block: append a conv bottleneck block (bottleneck width dim // 2, "LN").
            input_size: token grid of a global block (sizes its relative-position tables); window blocks size
                them for (window_size, window_size).
        Other arguments as for :class:`ViT`.
        """
        super().__init__()
        attn_grid = (window_size, window_size) if window_size > 0 else input_size
        self.norm1 = norm_layer(dim)
        self.attn = Attention(
            dim, num_heads, qkv_bias, use_rel_pos=use_rel_pos, rel_pos_zero_init=rel_pos_zero_init, input_size=attn_grid
        )
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(in_features=dim, hidden_features=int(dim * mlp_ratio), act_layer=act_layer)
        self.window_size = window_size
        self.use_residual_block = use_residual_block
        if use_residual_block:
            self.residual = ResBottleneckBlock(dim, dim, dim // 2, norm="LN", act_layer=act_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm1(x)
        if self.window_size > 0:
            hw = (y.shape[1], y.shape[2])
            y, pad_hw = window_partition(y, self.window_size)
            y = window_unpartition(self.attn(y), self.window_size, pad_hw, hw)
        else:
            y = self.attn(y)
        x = x + self.drop_path(y)
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        if self.use_residual_block:
            x = self.residual(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return x


class ViT(Backbone):
    """Plain ViT backbone of ViTDet: patch embedding, absolute position embeddings (resized from the pretraining
    grid), ``depth`` blocks with windowed attention in ``window_block_indexes`` and global attention elsewhere.
    One output: ``out_feature`` with ``embed_dim`` channels at stride ``patch_size``."""

    def __init__(
        self,
        img_size: int = 1024,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path_rate: float = 0.0,
        norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
        act_layer: type[nn.Module] = nn.GELU,
        use_abs_pos: bool = True,
        use_rel_pos: bool = False,
        rel_pos_zero_init: bool = True,
        window_size: int = 0,
        window_block_indexes: Sequence[int] = (),
        residual_block_indexes: Sequence[int] = (),
        use_act_checkpoint: bool = False,
        pretrain_img_size: int = 224,
        pretrain_use_cls_token: bool = True,
        out_feature: str = "last_feat",
    ) -> None:
        """
        Args:
            img_size: input side the global blocks' relative-position tables are sized for.
            patch_size: side (and stride) of the patch-embedding convolution.
            in_chans: image channels.
            embed_dim: token width.
            depth: number of blocks.
            num_heads: attention heads per block.
            mlp_ratio: MLP hidden width / embed_dim.
            qkv_bias: learnable biases of the query/key/value projection.
            drop_path_rate: stochastic-depth rate of the last block (linear from 0 over the blocks).
            norm_layer: token norm, e.g. ``partial(nn.LayerNorm, eps=1e-6)``.
            act_layer: MLP activation.
            use_abs_pos: learn absolute position embeddings (sized for ``pretrain_img_size``).
            use_rel_pos: add the decomposed relative-position bias in attention.
            rel_pos_zero_init: start the relative-position tables at zero (else truncated normal).
            window_size: window side of the windowed blocks.
            window_block_indexes: blocks that use windowed attention; the others attend globally.
            residual_block_indexes: blocks followed by a conv bottleneck block.
            use_act_checkpoint: recompute each block's activations in the backward pass (saves memory).
            pretrain_img_size: image side of pretraining, which sets the absolute embedding grid.
            pretrain_use_cls_token: the pretrained absolute embeddings have a leading class-token entry.
            out_feature: name of the output feature.
        """
        super().__init__()
        self.pretrain_use_cls_token = pretrain_use_cls_token
        self.use_act_checkpoint = use_act_checkpoint
        self.patch_embed = PatchEmbed(
            kernel_size=(patch_size, patch_size),
            stride=(patch_size, patch_size),
            in_chans=in_chans,
            embed_dim=embed_dim,
        )
        if use_abs_pos:
            grid = pretrain_img_size // patch_size
            num_positions = grid * grid + int(pretrain_use_cls_token)
            self.pos_embed = nn.Parameter(torch.zeros(1, num_positions, embed_dim))
        else:
            self.pos_embed = None

        rates = torch.linspace(0, drop_path_rate, depth, device="cpu").tolist()
        window_blocks, residual_blocks = set(window_block_indexes), set(residual_block_indexes)
        grid_size = (img_size // patch_size, img_size // patch_size)
        self.blocks = nn.ModuleList(
            Block(
                dim=embed_dim,
                num_heads=num_heads,
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                drop_path=rates[i],
                norm_layer=norm_layer,
                act_layer=act_layer,
                use_rel_pos=use_rel_pos,
                rel_pos_zero_init=rel_pos_zero_init,
                window_size=window_size if i in window_blocks else 0,
                use_residual_block=i in residual_blocks,
                input_size=grid_size,
            )
            for i in range(depth)
        )

        self._out_feature_channels = {out_feature: embed_dim}
        self._out_feature_strides = {out_feature: patch_size}
        self._out_features = [out_feature]

        if self.pos_embed is not None:
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.apply(init_transformer_weights)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """(N, C, H, W) image -> {out_feature: (N, embed_dim, H / patch_size, W / patch_size)}."""
        x = self.patch_embed(x)
        if self.pos_embed is not None:
            x = x + get_abs_pos(self.pos_embed, self.pretrain_use_cls_token, (x.shape[1], x.shape[2]))
        recompute = self.use_act_checkpoint and self.training and torch.is_grad_enabled()
        for block in self.blocks:
            x = checkpoint(block, x, use_reentrant=False) if recompute else block(x)
        return {self._out_features[0]: x.permute(0, 3, 1, 2)}


class SimpleFeaturePyramid(Backbone):
    """Multi-scale features from a single-scale backbone map: per scale factor, deconvolutions (x4, x2), identity
    (x1) or max pooling (x0.5), then a 1x1 and a 3x3 conv to ``out_channels``. Outputs ``p<log2(stride)>``, plus
    the levels of ``top_block``."""

    def __init__(
        self,
        net: Backbone,
        in_feature: str,
        out_channels: int,
        scale_factors: Sequence[float],
        top_block: nn.Module | None = None,
        norm: str | Callable[[int], nn.Module] = "LN",
        square_pad: int = 0,
    ) -> None:
        """
        Args:
            net: the single-scale backbone.
            in_feature: the output of ``net`` to build on.
            out_channels: channels of every pyramid level.
            scale_factors: resampling of that map per level, high to low resolution, from {4.0, 2.0, 1.0, 0.5}.
            top_block: module with ``num_levels`` and ``in_feature`` attributes adding ``num_levels`` coarser
                levels (e.g. LastLevelMaxPool on "p5").
            norm: normalisation of the convs and of the first deconvolution of x4 ("" = none, then convs have
                biases).
            square_pad: if > 0, inputs are padded to a square of this side.
        """
        super().__init__()
        if not isinstance(net, Backbone):
            raise TypeError(f"SimpleFeaturePyramid: net must be a Backbone, got {type(net).__name__}")
        self.scale_factors = scale_factors
        in_shape = net.output_shape()[in_feature]
        strides = [int(in_shape.stride / scale) for scale in scale_factors]
        _assert_strides_are_log2_contiguous(strides)
        dim = in_shape.channels
        use_bias = norm == ""

        self.stages: list[nn.Sequential] = []
        for scale, stride in zip(scale_factors, strides):
            if scale == 4.0:
                resample = [
                    nn.ConvTranspose2d(dim, dim // 2, kernel_size=2, stride=2),
                    get_norm(norm, dim // 2),
                    nn.GELU(),
                    nn.ConvTranspose2d(dim // 2, dim // 4, kernel_size=2, stride=2),
                ]
                level_dim = dim // 4
            elif scale == 2.0:
                resample = [nn.ConvTranspose2d(dim, dim // 2, kernel_size=2, stride=2)]
                level_dim = dim // 2
            elif scale == 1.0:
                resample, level_dim = [], dim
            elif scale == 0.5:
                resample, level_dim = [nn.MaxPool2d(kernel_size=2, stride=2)], dim
            else:
                raise NotImplementedError(f"SimpleFeaturePyramid: scale_factor={scale} is not supported")
            convs = [
                Conv2d(level_dim, out_channels, kernel_size=1, bias=use_bias, norm=get_norm(norm, out_channels)),
                Conv2d(
                    out_channels,
                    out_channels,
                    kernel_size=3,
                    padding=1,
                    bias=use_bias,
                    norm=get_norm(norm, out_channels),
                ),
            ]
            stage = nn.Sequential(*resample, *convs)
            self.add_module(f"simfp_{int(math.log2(stride))}", stage)
            self.stages.append(stage)

        self.net = net
        self.in_feature = in_feature
        self.top_block = top_block
        self._out_feature_strides = {f"p{int(math.log2(s))}": s for s in strides}
        if top_block is not None:
            last = int(math.log2(strides[-1]))
            for level in range(last + 1, last + 1 + top_block.num_levels):
                self._out_feature_strides[f"p{level}"] = 2**level
        self._out_features = list(self._out_feature_strides)
        self._out_feature_channels = {name: out_channels for name in self._out_features}
        self._size_divisibility = strides[-1]
        self._square_pad = square_pad

    @property
    def padding_constraints(self) -> dict[str, int]:
        # detectron2 spells the first key "size_divisiblity", which ImageList.from_tensors does not read: the
        # effective divisibility is the Backbone default (0). Kept as is for identical padding.
        return {"size_divisiblity": self._size_divisibility, "square_size": self._square_pad}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """(N, C, H, W) images -> {"p2": ..., "p6": ...} pyramid maps, high to low resolution."""
        bottom_up = self.net(x)
        feature = bottom_up[self.in_feature]
        results = [stage(feature) for stage in self.stages]
        if self.top_block is not None:
            name = self.top_block.in_feature
            top_in = bottom_up[name] if name in bottom_up else results[self._out_features.index(name)]
            results.extend(self.top_block(top_in))
        if len(results) != len(self._out_features):
            raise RuntimeError(f"SimpleFeaturePyramid: {len(results)} maps for {len(self._out_features)} names")
        return dict(zip(self._out_features, results))


def get_vit_lr_decay_rate(name: str, lr_decay_rate: float = 1.0, num_layers: int = 12) -> float:
    """Layer-wise learning-rate decay factor of parameter ``name``: ``lr_decay_rate ** (num_layers + 1 - layer)``
    where layer is 0 for the backbone's patch/position embeddings, i + 1 for the parameters of block i (except its
    residual conv block) and num_layers + 1 (factor 1) for everything else."""
    layer = num_layers + 1
    if name.startswith("backbone"):
        if ".pos_embed" in name or ".patch_embed" in name:
            layer = 0
        elif ".blocks." in name and ".residual." not in name:
            layer = int(name.split(".blocks.", 1)[1].split(".", 1)[0]) + 1
    return lr_decay_rate ** (num_layers + 1 - layer)
