"""MViTv2 backbone: a hierarchical transformer whose stages halve the token grid and double the width, with
pooling attention (queries, keys and values pooled by depthwise convolutions) and residual pooling ("MViTv2:
Improved Multiscale Vision Transformers for Classification and Detection", Li et al. 2022)."""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .backbone import Backbone
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

__all__ = ["MViT"]


def attention_pool(x: torch.Tensor, pool: nn.Module, norm: nn.Module | None = None) -> torch.Tensor:
    """Apply the channels-first ``pool`` to a channels-last (B, H, W, C) map, then the optional token ``norm``."""
    x = pool(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
    return norm(x) if norm is not None else x


class MultiScaleAttention(nn.Module):
    """Pooling attention: per head, queries are pooled with stride ``stride_q`` and keys/values with ``stride_kv``
    (depthwise ``pool_kernel`` convs + norm); optional window attention, decomposed relative-position bias and
    residual pooling (the pooled queries are added to the attention output)."""

    def __init__(
        self,
        dim: int,
        dim_out: int,
        num_heads: int,
        qkv_bias: bool = True,
        norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
        pool_kernel: tuple[int, int] = (3, 3),
        stride_q: int = 1,
        stride_kv: int = 1,
        residual_pooling: bool = True,
        window_size: int = 0,
        use_rel_pos: bool = False,
        rel_pos_zero_init: bool = True,
        input_size: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        head_dim = dim_out // num_heads
        self.scale = head_dim**-0.5
        self.qkv = nn.Linear(dim, dim_out * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim_out, dim_out)

        padding = [k // 2 for k in pool_kernel]

        def depthwise(stride: int) -> nn.Conv2d:
            return nn.Conv2d(
                head_dim, head_dim, pool_kernel, stride=stride, padding=padding, groups=head_dim, bias=False
            )

        self.pool_q = depthwise(stride_q)
        self.norm_q = norm_layer(head_dim)
        self.pool_k = depthwise(stride_kv)
        self.norm_k = norm_layer(head_dim)
        self.pool_v = depthwise(stride_kv)
        self.norm_v = norm_layer(head_dim)

        self.window_size = window_size
        if window_size:
            self.q_win_size = window_size // stride_q
            self.kv_win_size = window_size // stride_kv
        self.residual_pooling = residual_pooling

        self.use_rel_pos = use_rel_pos
        if use_rel_pos:
            if input_size is None or input_size[0] != input_size[1]:
                raise ValueError(f"MultiScaleAttention: use_rel_pos needs a square input_size, got {input_size}")
            size = input_size[0]
            num_dist = 2 * max(size // stride_q, size // stride_kv) - 1
            self.rel_pos_h = nn.Parameter(torch.zeros(num_dist, head_dim))
            self.rel_pos_w = nn.Parameter(torch.zeros(num_dist, head_dim))
            if not rel_pos_zero_init:
                nn.init.trunc_normal_(self.rel_pos_h, std=0.02)
                nn.init.trunc_normal_(self.rel_pos_w, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, _ = x.shape
        # (B, H, W, 3 * C) -> 3 x (B * heads, H, W, head_dim)
        qkv = self.qkv(x).reshape(b, h, w, 3, self.num_heads, -1).permute(3, 0, 4, 1, 2, 5)
        q, k, v = qkv.reshape(3, b * self.num_heads, h, w, -1).unbind(0)
        q = attention_pool(q, self.pool_q, self.norm_q)
        k = attention_pool(k, self.pool_k, self.norm_k)
        v = attention_pool(v, self.pool_v, self.norm_v)

        pooled_q = q
        if self.window_size:
            q, q_pad_hw = window_partition(q, self.q_win_size)
            k, _ = window_partition(k, self.kv_win_size)
            v, _ = window_partition(v, self.kv_win_size)
        q_hw, kv_hw = (q.shape[1], q.shape[2]), (k.shape[1], k.shape[2])
        q = q.reshape(q.shape[0], q_hw[0] * q_hw[1], -1)
        k = k.reshape(k.shape[0], kv_hw[0] * kv_hw[1], -1)
        v = v.reshape(v.shape[0], kv_hw[0] * kv_hw[1], -1)

        bias = None
        if self.use_rel_pos:
            bias = decomposed_rel_pos_bias(q, self.rel_pos_h, self.rel_pos_w, q_hw, kv_hw).to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scale)
        out = out.reshape(out.shape[0], q_hw[0], q_hw[1], -1)
        if self.window_size:
            out = window_unpartition(out, self.q_win_size, q_pad_hw, (pooled_q.shape[1], pooled_q.shape[2]))
        if self.residual_pooling:
            out = out + pooled_q

        # (B * heads, H', W', head_dim) -> (B, H', W', C)
        oh, ow = out.shape[1], out.shape[2]
        out = out.reshape(b, self.num_heads, oh, ow, -1).permute(0, 2, 3, 1, 4).reshape(b, oh, ow, -1)
        return self.proj(out)


class MultiScaleBlock(nn.Module):
    """Pre-norm MViT block: pooling attention and MLP with residuals. When the width changes the shortcut is
    ``proj`` of the normalised input; when the queries are strided it is max-pooled (``pool_skip``) to match."""

    def __init__(
        self,
        dim: int,
        dim_out: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path: float = 0.0,
        norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
        act_layer: type[nn.Module] = nn.GELU,
        qkv_pool_kernel: tuple[int, int] = (3, 3),
        stride_q: int = 1,
        stride_kv: int = 1,
        residual_pooling: bool = True,
        window_size: int = 0,
        use_rel_pos: bool = False,
        rel_pos_zero_init: bool = True,
        input_size: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        pooling = dict(pool_kernel=qkv_pool_kernel, stride_q=stride_q, stride_kv=stride_kv)
        rel_pos = dict(use_rel_pos=use_rel_pos, rel_pos_zero_init=rel_pos_zero_init, input_size=input_size)
        self.norm1 = norm_layer(dim)
        self.attn = MultiScaleAttention(
            dim, dim_out, num_heads, qkv_bias=qkv_bias, norm_layer=norm_layer, residual_pooling=residual_pooling,
            window_size=window_size, **pooling, **rel_pos,
        )
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim_out)
        self.mlp = Mlp(dim_out, hidden_features=int(dim_out * mlp_ratio), out_features=dim_out, act_layer=act_layer)
        if dim != dim_out:
            self.proj = nn.Linear(dim, dim_out)
        if stride_q > 1:
            kernel = stride_q + 1
            self.pool_skip = nn.MaxPool2d(kernel, stride_q, kernel // 2, ceil_mode=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_norm = self.norm1(x)
        attended = self.attn(x_norm)
        shortcut = self.proj(x_norm) if hasattr(self, "proj") else x
        if hasattr(self, "pool_skip"):
            shortcut = attention_pool(shortcut, self.pool_skip)
        x = shortcut + self.drop_path(attended)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class MViT(Backbone):
    """MViTv2 backbone. Stages end at ``last_block_indexes``; each later stage starts with a stride-2 query pooling
    block that doubles width and heads. Window attention (window ``adaptive_window_size``, halved per stage) in all
    blocks except the last ones of stages 2-4, which attend globally. Outputs ``scale2`` ... ``scale5`` (strides
    4 ... 32 with the default patch stride), each through its own LayerNorm (``<name>_norm``)."""

    def __init__(
        self,
        img_size: int = 224,
        patch_kernel: tuple[int, int] = (7, 7),
        patch_stride: tuple[int, int] = (4, 4),
        patch_padding: tuple[int, int] = (3, 3),
        in_chans: int = 3,
        embed_dim: int = 96,
        depth: int = 16,
        num_heads: int = 1,
        last_block_indexes: Sequence[int] = (0, 2, 11, 15),
        qkv_pool_kernel: tuple[int, int] = (3, 3),
        adaptive_kv_stride: int = 4,
        adaptive_window_size: int = 56,
        residual_pooling: bool = True,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path_rate: float = 0.0,
        norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
        act_layer: type[nn.Module] = nn.GELU,
        use_abs_pos: bool = False,
        use_rel_pos: bool = True,
        rel_pos_zero_init: bool = True,
        use_act_checkpoint: bool = False,
        pretrain_img_size: int = 224,
        pretrain_use_cls_token: bool = True,
        out_features: Sequence[str] = ("scale2", "scale3", "scale4", "scale5"),
    ) -> None:
        """
        Args:
            img_size: input side the relative-position tables are sized for (resampled for other sizes).
            patch_kernel, patch_stride, patch_padding: the patch-embedding convolution.
            in_chans: image channels.
            embed_dim: width of the first stage.
            depth: number of blocks.
            num_heads: heads of the first stage.
            last_block_indexes: index of the last block of each of the four stages.
            qkv_pool_kernel: kernel of the depthwise pooling convs.
            adaptive_kv_stride: key/value pooling stride of the first stage (halved per stage, at least 1).
            adaptive_window_size: window side of the first stage (halved per stage).
            residual_pooling: add the pooled queries to the attention output.
            mlp_ratio: MLP hidden width / block width.
            qkv_bias: learnable biases of the query/key/value projection.
            drop_path_rate: stochastic-depth rate of the last block (linear from 0 over the blocks).
            norm_layer: token norm, e.g. ``partial(nn.LayerNorm, eps=1e-6)``.
            act_layer: MLP activation.
            use_abs_pos: learn absolute position embeddings (sized for ``pretrain_img_size``).
            use_rel_pos: add the decomposed relative-position bias in attention.
            rel_pos_zero_init: start the relative-position tables at zero (else truncated normal).
            use_act_checkpoint: recompute each block's activations in the backward pass (saves memory).
            pretrain_img_size: image side of pretraining, which sets the absolute embedding grid.
            pretrain_use_cls_token: the pretrained absolute embeddings have a leading class-token entry.
            out_features: stages to output, from "scale2" ... "scale5".
        """
        super().__init__()
        self.pretrain_use_cls_token = pretrain_use_cls_token
        self.use_act_checkpoint = use_act_checkpoint
        self.patch_embed = PatchEmbed(
            kernel_size=patch_kernel,
            stride=patch_stride,
            padding=patch_padding,
            in_chans=in_chans,
            embed_dim=embed_dim,
        )
        if use_abs_pos:
            num_patches = (pretrain_img_size // patch_stride[0]) * (pretrain_img_size // patch_stride[1])
            self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + int(pretrain_use_cls_token), embed_dim))
        else:
            self.pos_embed = None

        last_block_indexes = tuple(last_block_indexes)
        stage_ends = set(last_block_indexes)
        global_blocks = set(last_block_indexes[1:])
        # the last blocks of stages 2 and 3 pool keys/values twice as much as the rest of their stage
        double_kv_blocks = {last_block_indexes[1], last_block_indexes[2]}
        rates = torch.linspace(0, drop_path_rate, depth, device="cpu").tolist()

        dim, dim_out = embed_dim, embed_dim
        kv_stride, window = adaptive_kv_stride, adaptive_window_size
        grid = (img_size // patch_stride[0], img_size // patch_stride[1])
        stage, stride = 2, patch_stride[0]
        self._out_feature_strides: dict[str, int] = {}
        self._out_feature_channels: dict[str, int] = {}
        self.blocks = nn.ModuleList()
        for i in range(depth):
            starts_stage = (i - 1) in stage_ends
            self.blocks.append(
                MultiScaleBlock(
                    dim=dim,
                    dim_out=dim_out,
                    num_heads=num_heads,
                    mlp_ratio=mlp_ratio,
                    qkv_bias=qkv_bias,
                    drop_path=rates[i],
                    norm_layer=norm_layer,
                    act_layer=act_layer,
                    qkv_pool_kernel=qkv_pool_kernel,
                    stride_q=2 if starts_stage else 1,
                    stride_kv=kv_stride * 2 if i in double_kv_blocks else kv_stride,
                    residual_pooling=residual_pooling,
                    window_size=0 if i in global_blocks else window,
                    use_rel_pos=use_rel_pos,
                    rel_pos_zero_init=rel_pos_zero_init,
                    input_size=grid,
                )
            )
            dim = dim_out
            if i in stage_ends:
                name = f"scale{stage}"
                if name in out_features:
                    self._out_feature_channels[name] = dim_out
                    self._out_feature_strides[name] = stride
                    self.add_module(f"{name}_norm", norm_layer(dim_out))
                dim_out *= 2
                num_heads *= 2
                kv_stride = max(kv_stride // 2, 1)
                stride *= 2
                stage += 1
            if starts_stage:
                window //= 2
                grid = (grid[0] // 2, grid[1] // 2)

        self._out_features = out_features
        self._last_block_indexes = last_block_indexes

        if self.pos_embed is not None:
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.apply(init_transformer_weights)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """(N, C, H, W) image -> {"scale<k>": (N, C_k, H / stride_k, W / stride_k)} for the requested stages."""
        x = self.patch_embed(x)
        if self.pos_embed is not None:
            x = x + get_abs_pos(self.pos_embed, self.pretrain_use_cls_token, (x.shape[1], x.shape[2]))
        recompute = self.use_act_checkpoint and self.training and torch.is_grad_enabled()
        outputs: dict[str, torch.Tensor] = {}
        stage = 2
        for i, block in enumerate(self.blocks):
            x = checkpoint(block, x, use_reentrant=False) if recompute else block(x)
            if i in self._last_block_indexes:
                name = f"scale{stage}"
                if name in self._out_features:
                    outputs[name] = getattr(self, f"{name}_norm")(x).permute(0, 3, 1, 2)
                stage += 1
        return outputs

