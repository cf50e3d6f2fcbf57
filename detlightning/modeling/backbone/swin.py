"""Swin Transformer backbone (Liu et al. 2021, "Hierarchical Vision Transformer using Shifted Windows").

Four stages of windowed self-attention; every second block of a stage shifts its windows by half a window so that
information crosses window borders, and a patch-merging layer halves the resolution between stages. Module and
parameter names follow detectron2's ``detectron2.modeling.backbone.swin`` (itself the mmdetection layout), so its
checkpoints load unchanged: ``patch_embed.proj``, ``layers.<i>.blocks.<j>.attn.relative_position_bias_table``,
``layers.<i>.downsample.reduction``, ``norm<i>`` (one LayerNorm per output stage). Outputs are named ``p<i>``.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.utils import _pair
from torch.utils import checkpoint as activation_checkpoint

from .backbone import Backbone
from .utils import DropPath, Mlp

__all__ = [
    "Mlp",
    "window_partition",
    "window_reverse",
    "WindowAttention",
    "SwinTransformerBlock",
    "PatchMerging",
    "BasicLayer",
    "PatchEmbed",
    "SwinTransformer",
]

# logit added between tokens of a shifted window that come from different image regions (detectron2's value)
_MASKED_LOGIT = -100.0


def window_partition(x: torch.Tensor, window_size: int) -> torch.Tensor:
    """(B, H, W, C) with H, W multiples of ``window_size`` -> (B * num_windows, window_size, window_size, C),
    windows in row-major order within each image."""
    b, h, w, c = x.shape
    s = window_size
    x = x.reshape(b, h // s, s, w // s, s, c).transpose(2, 3)
    return x.reshape(-1, s, s, c)


def window_reverse(windows: torch.Tensor, window_size: int, H: int, W: int) -> torch.Tensor:  # noqa: N803
    """Inverse of :func:`window_partition`: (B * num_windows, s, s, C) -> (B, H, W, C)."""
    s = window_size
    c = windows.shape[-1]
    x = windows.reshape(-1, H // s, W // s, s, s, c).transpose(2, 3)
    return x.reshape(-1, H, W, c)


def _relative_position_index(height: int, width: int) -> torch.Tensor:
    """(N, N) int64, N = height * width: for tokens i, j of a window, the row of the bias table holding the bias
    of their offset (dy, dx) = pos_i - pos_j, i.e. (dy + height - 1) * (2 * width - 1) + (dx + width - 1)."""
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    dy = ys[:, None] - ys[None, :] + (height - 1)
    dx = xs[:, None] - xs[None, :] + (width - 1)
    return dy * (2 * width - 1) + dx


def _shifted_window_mask(
    padded_h: int, padded_w: int, window_size: int, shift_size: int, device: torch.device
) -> torch.Tensor:
    """(num_windows, N, N) additive attention mask of the shifted-window blocks.

    After the cyclic shift by ``shift_size`` the last windows of each row/column gather tokens from the opposite
    image border. Each axis splits into three bands (before the last window, the last window up to the wrapped
    part, the wrapped part); tokens may attend only to tokens of the same (row band, column band) region.
    """

    def bands(n: int) -> torch.Tensor:
        idx = torch.arange(n, device=device)
        return (idx >= n - window_size).long() + (idx >= n - shift_size).long()

    region = bands(padded_h)[:, None] * 3 + bands(padded_w)[None, :]
    region = window_partition(region[None, :, :, None], window_size).reshape(-1, window_size * window_size)
    different = region[:, None, :] != region[:, :, None]
    return torch.zeros(different.shape, device=device).masked_fill_(different, _MASKED_LOGIT)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside each window, with a learned bias per relative offset and head."""

    def __init__(
        self,
        dim: int,
        window_size: tuple[int, int],
        num_heads: int,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        """
        Args:
            dim: token channels.
            window_size: (height, width) of a window.
            num_heads: attention heads (``dim`` must be divisible by it).
            qkv_bias: whether the qkv projection has a bias.
            qk_scale: attention logit scale; default ``head_dim ** -0.5``.
            attn_drop, proj_drop: dropout on the attention weights / the output projection.
        """
        super().__init__()
        self.dim = dim
        self.window_size = tuple(window_size)
        self.num_heads = num_heads
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        wh, ww = self.window_size
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * wh - 1) * (2 * ww - 1), num_heads))
        self.register_buffer("relative_position_index", _relative_position_index(wh, ww))
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def relative_position_bias(self) -> torch.Tensor:
        """(num_heads, N, N) bias added to the attention logits of every window."""
        n = self.relative_position_index.shape[0]
        bias = self.relative_position_bias_table[self.relative_position_index.reshape(-1)]
        return bias.reshape(n, n, self.num_heads).permute(2, 0, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """
        Args:
            x: (B * num_windows, N, C) tokens of each window.
            mask: optional (num_windows, N, N) additive mask (0 / large negative), the same for every image.
        """
        bw, n, c = x.shape
        q, k, v = self.qkv(x).reshape(bw, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4).unbind(0)
        bias = self.relative_position_bias()[None]  # (1, heads, N, N)
        if mask is not None:
            num_windows = mask.shape[0]
            bias = bias + mask[:, None].to(bias.dtype)  # (windows, heads, N, N)
            bias = bias[None].expand(bw // num_windows, -1, -1, -1, -1).reshape(bw, self.num_heads, n, n)
        out = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=bias.to(q.dtype),
            dropout_p=self.attn_drop.p if self.training else 0.0,
            scale=self.scale,
        )
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(bw, n, c)))


def _drop_path(rate: float) -> nn.Module:
    return DropPath(rate) if rate > 0.0 else nn.Identity()


class SwinTransformerBlock(nn.Module):
    """Pre-norm transformer block with (optionally shifted) window attention and an MLP.

    Set the attributes ``H`` and ``W`` (the token grid) before calling it, as :class:`BasicLayer` does.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: int = 7,
        shift_size: int = 0,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        act_layer: Callable[[], nn.Module] = nn.GELU,
        norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
    ) -> None:
        """
        Args:
            dim, num_heads: channels and attention heads.
            window_size: side of the square attention windows.
            shift_size: cyclic shift of the windows (0 = regular windows); must be < ``window_size``.
            mlp_ratio: MLP hidden width / ``dim``.
            qkv_bias, qk_scale, attn_drop: see :class:`WindowAttention`.
            drop: dropout after the attention projection and in the MLP.
            drop_path: stochastic-depth rate of both residual branches.
            act_layer, norm_layer: MLP activation and the norm (called with ``dim``).
        """
        super().__init__()
        if not 0 <= shift_size < window_size:
            raise ValueError(f"shift_size must be in [0, window_size={window_size}), got {shift_size}")
        self.dim = dim
        self.num_heads = num_heads
        self.window_size = window_size
        self.shift_size = shift_size
        self.mlp_ratio = mlp_ratio
        self.norm1 = norm_layer(dim)
        self.attn = WindowAttention(
            dim,
            window_size=_pair(window_size),
            num_heads=num_heads,
            qkv_bias=qkv_bias,
            qk_scale=qk_scale,
            attn_drop=attn_drop,
            proj_drop=drop,
        )
        self.drop_path = _drop_path(drop_path)
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, hidden_features=int(dim * mlp_ratio), act_layer=act_layer, drop=drop)
        self.H: int | None = None
        self.W: int | None = None

    def _attention(self, x: torch.Tensor, h: int, w: int, mask_matrix: torch.Tensor | None) -> torch.Tensor:
        """Window attention over the (B, h, w, C) grid ``x``, which is padded to whole windows and shifted."""
        b, _, _, c = x.shape
        s, shift = self.window_size, self.shift_size
        pad_h, pad_w = (-h) % s, (-w) % s
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
        hp, wp = h + pad_h, w + pad_w
        if shift > 0:
            x = torch.roll(x, shifts=(-shift, -shift), dims=(1, 2))
        windows = window_partition(x, s).reshape(-1, s * s, c)
        windows = self.attn(windows, mask=mask_matrix if shift > 0 else None)
        x = window_reverse(windows.reshape(-1, s, s, c), s, hp, wp)
        if shift > 0:
            x = torch.roll(x, shifts=(shift, shift), dims=(1, 2))
        return x[:, :h, :w, :]

    def forward(self, x: torch.Tensor, mask_matrix: torch.Tensor | None) -> torch.Tensor:
        """
        Args:
            x: (B, H * W, C) tokens, row-major.
            mask_matrix: (num_windows, N, N) mask of the shifted windows (see :class:`BasicLayer`); unused when
                ``shift_size`` is 0.
        """
        b, length, c = x.shape
        h, w = self.H, self.W
        if h is None or w is None or length != h * w:
            raise ValueError(f"SwinTransformerBlock: set H, W to the token grid; got {h}x{w} for {length} tokens")
        attended = self._attention(self.norm1(x).reshape(b, h, w, c), h, w, mask_matrix)
        x = x + self.drop_path(attended.reshape(b, length, c))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchMerging(nn.Module):
    """Halves the token grid: each 2x2 neighbourhood is concatenated (4C), normalised and projected to 2C."""

    def __init__(self, dim: int, norm_layer: Callable[[int], nn.Module] = nn.LayerNorm) -> None:
        super().__init__()
        self.dim = dim
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = norm_layer(4 * dim)

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:  # noqa: N803
        """(B, H * W, C) -> (B, ceil(H / 2) * ceil(W / 2), 2C); an odd side is zero-padded first."""
        b, length, c = x.shape
        if length != H * W:
            raise ValueError(f"PatchMerging: {length} tokens for a {H}x{W} grid")
        x = F.pad(x.reshape(b, H, W, c), (0, 0, 0, W % 2, 0, H % 2))
        h2, w2 = (H + 1) // 2, (W + 1) // 2
        # channel blocks ordered (row 0, col 0), (row 1, col 0), (row 0, col 1), (row 1, col 1) of each 2x2 cell
        x = x.reshape(b, h2, 2, w2, 2, c).permute(0, 1, 3, 4, 2, 5).reshape(b, h2 * w2, 4 * c)
        return self.reduction(self.norm(x))


class BasicLayer(nn.Module):
    """One Swin stage: ``depth`` blocks alternating regular and shifted windows, then an optional downsample."""

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        window_size: int = 7,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float | Sequence[float] = 0.0,
        norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
        downsample: Callable[..., nn.Module] | None = None,
        use_checkpoint: bool = False,
    ) -> None:
        """
        Args:
            dim, depth, num_heads: channels, number of blocks and heads of the stage.
            window_size, mlp_ratio, qkv_bias, qk_scale, drop, attn_drop, norm_layer: see
                :class:`SwinTransformerBlock`.
            drop_path: one stochastic-depth rate for all blocks, or one per block.
            downsample: class called as ``downsample(dim=dim, norm_layer=norm_layer)`` (e.g. :class:`PatchMerging`)
                applied after the blocks, or None.
            use_checkpoint: recompute the blocks' activations in the backward pass (saves memory).
        """
        super().__init__()
        self.window_size = window_size
        self.shift_size = window_size // 2
        self.depth = depth
        self.use_checkpoint = use_checkpoint
        rates = list(drop_path) if isinstance(drop_path, (list, tuple)) else [drop_path] * depth
        self.blocks = nn.ModuleList(
            SwinTransformerBlock(
                dim=dim,
                num_heads=num_heads,
                window_size=window_size,
                shift_size=self.shift_size if i % 2 == 1 else 0,
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                qk_scale=qk_scale,
                drop=drop,
                attn_drop=attn_drop,
                drop_path=rates[i],
                norm_layer=norm_layer,
            )
            for i in range(depth)
        )
        self.downsample = downsample(dim=dim, norm_layer=norm_layer) if downsample is not None else None

    def forward(self, x: torch.Tensor, H: int, W: int) -> tuple[torch.Tensor, int, int, torch.Tensor, int, int]:  # noqa: N803
        """(B, H * W, C) -> (stage output, H, W, input of the next stage, its height, its width)."""
        s = self.window_size
        mask = _shifted_window_mask(-(-H // s) * s, -(-W // s) * s, s, self.shift_size, x.device)
        for blk in self.blocks:
            blk.H, blk.W = H, W
            if self.use_checkpoint and torch.is_grad_enabled():
                x = activation_checkpoint.checkpoint(blk, x, mask, use_reentrant=False)
            else:
                x = blk(x, mask)
        if self.downsample is None:
            return x, H, W, x, H, W
        return x, H, W, self.downsample(x, H, W), (H + 1) // 2, (W + 1) // 2


class PatchEmbed(nn.Module):
    """Non-overlapping ``patch_size`` patches -> ``embed_dim`` channels (a strided conv), optionally normalised.

    The input is zero-padded on the right/bottom to whole patches. Output: (B, embed_dim, H / patch, W / patch).
    """

    def __init__(
        self,
        patch_size: int | tuple[int, int] = 4,
        in_chans: int = 3,
        embed_dim: int = 96,
        norm_layer: Callable[[int], nn.Module] | None = None,
    ) -> None:
        super().__init__()
        self.patch_size = _pair(patch_size)
        self.in_chans = in_chans
        self.embed_dim = embed_dim
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=self.patch_size, stride=self.patch_size)
        self.norm = norm_layer(embed_dim) if norm_layer is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ph, pw = self.patch_size
        x = F.pad(x, (0, (-x.shape[-1]) % pw, 0, (-x.shape[-2]) % ph))
        x = self.proj(x)
        if self.norm is not None:
            x = self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return x


class SwinTransformer(Backbone):
    """Swin Transformer backbone. Outputs ``p<i>`` for each ``i`` in ``out_indices``: stage ``i``'s tokens after
    its LayerNorm ``norm<i>``, as (B, embed_dim * 2**i, H / (patch * 2**i), W / (patch * 2**i))."""

    def __init__(
        self,
        pretrain_img_size: int | tuple[int, int] = 224,
        patch_size: int = 4,
        in_chans: int = 3,
        embed_dim: int = 96,
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        window_size: int = 7,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.2,
        norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
        ape: bool = False,
        patch_norm: bool = True,
        out_indices: Sequence[int] = (0, 1, 2, 3),
        frozen_stages: int = -1,
        use_checkpoint: bool = False,
    ) -> None:
        """
        Args:
            pretrain_img_size: pre-training image size; sets the grid of the absolute position embedding (``ape``).
            patch_size, in_chans, embed_dim: patch embedding (stage 0 has ``embed_dim`` channels, each later stage
                twice the previous).
            depths, num_heads: blocks and attention heads of each stage.
            window_size, mlp_ratio, qkv_bias, qk_scale: see :class:`SwinTransformerBlock`.
            drop_rate, attn_drop_rate: dropout rates.
            drop_path_rate: stochastic depth, rising linearly from 0 over all blocks to this value.
            norm_layer: norm class called with a channel count (blocks, patch merging, outputs).
            ape: add a learned absolute position embedding (resized bicubically to the input's patch grid).
            patch_norm: normalise the patch embedding.
            out_indices: stages to output (``p<i>``); each gets a norm ``norm<i>``.
            frozen_stages: -1 = train everything; >= 0 freezes the patch embedding, >= 1 also ``ape``, k >= 2 also
                stages 0 .. k - 2 (no gradients, kept in eval mode).
            use_checkpoint: activation checkpointing of every block.
        """
        super().__init__()
        depths, num_heads, out_indices = list(depths), list(num_heads), tuple(out_indices)
        if len(num_heads) != len(depths):
            raise ValueError(f"SwinTransformer: {len(depths)} depths but {len(num_heads)} num_heads")
        self.num_layers = len(depths)
        if any(not 0 <= i < self.num_layers for i in out_indices):
            raise ValueError(f"SwinTransformer: out_indices {out_indices} must lie in [0, {self.num_layers})")
        self.pretrain_img_size = pretrain_img_size
        self.embed_dim = embed_dim
        self.ape = ape
        self.patch_norm = patch_norm
        self.out_indices = out_indices
        self.frozen_stages = frozen_stages

        self.patch_embed = PatchEmbed(
            patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim, norm_layer=norm_layer if patch_norm else None
        )
        if ape:
            grid = [s // p for s, p in zip(_pair(pretrain_img_size), _pair(patch_size))]
            self.absolute_pos_embed = nn.Parameter(torch.zeros(1, embed_dim, *grid))
            nn.init.trunc_normal_(self.absolute_pos_embed, std=0.02)
        self.pos_drop = nn.Dropout(p=drop_rate)

        rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        starts = [sum(depths[:i]) for i in range(self.num_layers + 1)]
        self.num_features = [int(embed_dim * 2**i) for i in range(self.num_layers)]
        self.layers = nn.ModuleList(
            BasicLayer(
                dim=self.num_features[i],
                depth=depths[i],
                num_heads=num_heads[i],
                window_size=window_size,
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                qk_scale=qk_scale,
                drop=drop_rate,
                attn_drop=attn_drop_rate,
                drop_path=rates[starts[i] : starts[i + 1]],
                norm_layer=norm_layer,
                downsample=PatchMerging if i < self.num_layers - 1 else None,
                use_checkpoint=use_checkpoint,
            )
            for i in range(self.num_layers)
        )
        for i in out_indices:
            self.add_module(f"norm{i}", norm_layer(self.num_features[i]))

        base_stride = _pair(patch_size)[0]
        self._out_features = [f"p{i}" for i in out_indices]
        self._out_feature_channels = {f"p{i}": self.num_features[i] for i in out_indices}
        self._out_feature_strides = {f"p{i}": base_stride * 2**i for i in out_indices}
        self._size_divisibility = base_stride * 2 ** (self.num_layers - 1)

        self.apply(self._init_weights)
        self._freeze_stages()

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def _frozen_modules(self) -> list[nn.Module]:
        frozen: list[nn.Module] = []
        if self.frozen_stages >= 0:
            frozen.append(self.patch_embed)
        if self.frozen_stages >= 2:
            frozen.append(self.pos_drop)
            frozen.extend(self.layers[: self.frozen_stages - 1])
        return frozen

    def _freeze_stages(self) -> None:
        for m in self._frozen_modules():
            m.eval()
            m.requires_grad_(False)
        if self.frozen_stages >= 1 and self.ape:
            self.absolute_pos_embed.requires_grad_(False)

    def train(self, mode: bool = True) -> SwinTransformer:
        """Like ``nn.Module.train``, but frozen stages stay in eval mode."""
        super().train(mode)
        for m in self._frozen_modules():
            m.eval()
        return self

    @property
    def size_divisibility(self) -> int:
        return self._size_divisibility

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, C, H, W) images -> {"p<i>": (B, C_i, ceil(H / stride_i), ceil(W / stride_i))}."""
        x = self.patch_embed(x)
        h, w = x.shape[-2:]
        if self.ape:
            x = x + F.interpolate(self.absolute_pos_embed, size=(h, w), mode="bicubic")
        x = self.pos_drop(x.flatten(2).transpose(1, 2))
        outputs: dict[str, torch.Tensor] = {}
        for i, layer in enumerate(self.layers):
            stage_out, out_h, out_w, x, h, w = layer(x, h, w)
            if i in self.out_indices:
                stage_out = getattr(self, f"norm{i}")(stage_out)
                outputs[f"p{i}"] = stage_out.reshape(-1, out_h, out_w, self.num_features[i]).permute(0, 3, 1, 2)
        return {name: t.contiguous() for name, t in outputs.items()}
