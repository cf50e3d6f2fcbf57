"""Building blocks shared by the transformer backbones (ViT, MViT): windowing, relative and absolute position
embeddings, patch embedding, MLP and stochastic depth.

Token maps are channels-last, (B, H, W, C), throughout.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "window_partition",
    "window_unpartition",
    "add_decomposed_rel_pos",
    "get_abs_pos",
    "PatchEmbed",
]


def window_partition(x: torch.Tensor, window_size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Cut a (B, H, W, C) map into non-overlapping ``window_size`` squares, zero-padding H and W up to multiples of
    ``window_size`` first.

    Returns:
        (B * num_windows, window_size, window_size, C) windows, row-major per image, and the padded (Hp, Wp).
    """
    b, h, w, c = x.shape
    hp = math.ceil(h / window_size) * window_size
    wp = math.ceil(w / window_size) * window_size
    if (hp, wp) != (h, w):
        x = F.pad(x, (0, 0, 0, wp - w, 0, hp - h))
    nh, nw = hp // window_size, wp // window_size
    grid = x.reshape(b, nh, window_size, nw, window_size, c).transpose(2, 3)
    return grid.reshape(b * nh * nw, window_size, window_size, c), (hp, wp)


def window_unpartition(
    windows: torch.Tensor, window_size: int, pad_hw: tuple[int, int], hw: tuple[int, int]
) -> torch.Tensor:
    """Inverse of :func:`window_partition`: (B * num_windows, ws, ws, C) windows of a (Hp, Wp) = ``pad_hw`` map ->
    the (B, H, W, C) map with the padding beyond ``hw`` = (H, W) removed."""
    hp, wp = pad_hw
    h, w = hw
    nh, nw = hp // window_size, wp // window_size
    b = windows.shape[0] // (nh * nw)
    grid = windows.reshape(b, nh, nw, window_size, window_size, -1).transpose(2, 3)
    x = grid.reshape(b, hp, wp, -1)
    if (hp, wp) != (h, w):
        x = x[:, :h, :w].contiguous()
    return x


def get_rel_pos(q_size: int, k_size: int, rel_pos: torch.Tensor) -> torch.Tensor:
    """Relative-position embeddings for every (query, key) pair along one axis.

    Args:
        q_size, k_size: number of query / key positions on the axis.
        rel_pos: (L, C) table, one row per relative distance; linearly resampled to 2 * max(q_size, k_size) - 1
            rows when L differs.

    Returns:
        (q_size, k_size, C). When the sizes differ, the shorter axis is stretched onto the longer one's grid.
    """
    num_dist = 2 * max(q_size, k_size) - 1
    table = rel_pos
    if table.shape[0] != num_dist:
        # (L, C) -> (1, C, L) -> resample along L -> (num_dist, C)
        table = F.interpolate(table.t().unsqueeze(0), size=num_dist, mode="linear").squeeze(0).t()
    q_step = max(k_size / q_size, 1.0)
    k_step = max(q_size / k_size, 1.0)
    q_pos = torch.arange(q_size, device=rel_pos.device)[:, None] * q_step
    k_pos = torch.arange(k_size, device=rel_pos.device)[None, :] * k_step
    index = (q_pos - k_pos + (k_size - 1) * k_step).long()
    return table[index]


def _decomposed_rel_pos_bias(
    q: torch.Tensor,
    rel_pos_h: torch.Tensor,
    rel_pos_w: torch.Tensor,
    q_size: tuple[int, int],
    k_size: tuple[int, int],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Height and width terms of the decomposed relative-position bias (MViTv2) for (B, q_h * q_w, C) queries:
    (B, q_h, q_w, k_h) and (B, q_h, q_w, k_w)."""
    (qh, qw), (kh, kw) = q_size, k_size
    table_h = get_rel_pos(qh, kh, rel_pos_h)  # (qh, kh, C)
    table_w = get_rel_pos(qw, kw, rel_pos_w)  # (qw, kw, C)
    q_grid = q.reshape(q.shape[0], qh, qw, q.shape[-1])
    bias_h = torch.einsum("byxc,ykc->byxk", q_grid, table_h)
    bias_w = torch.einsum("byxc,xkc->byxk", q_grid, table_w)
    return bias_h, bias_w


def decomposed_rel_pos_bias(
    q: torch.Tensor,
    rel_pos_h: torch.Tensor,
    rel_pos_w: torch.Tensor,
    q_size: tuple[int, int],
    k_size: tuple[int, int],
) -> torch.Tensor:
    """The full (B, q_h * q_w, k_h * k_w) additive attention bias of :func:`add_decomposed_rel_pos`."""
    bias_h, bias_w = _decomposed_rel_pos_bias(q, rel_pos_h, rel_pos_w, q_size, k_size)
    bias = bias_h[..., :, None] + bias_w[..., None, :]  # (B, qh, qw, kh, kw)
    return bias.reshape(q.shape[0], q_size[0] * q_size[1], k_size[0] * k_size[1])


def add_decomposed_rel_pos(
    attn: torch.Tensor,
    q: torch.Tensor,
    rel_pos_h: torch.Tensor,
    rel_pos_w: torch.Tensor,
    q_size: tuple[int, int],
    k_size: tuple[int, int],
) -> torch.Tensor:
    """Add the decomposed relative-position bias of MViTv2 to attention logits.

    Args:
        attn: (B, q_h * q_w, k_h * k_w) logits.
        q: (B, q_h * q_w, C) queries.
        rel_pos_h, rel_pos_w: (L_h, C) / (L_w, C) embedding tables of the height and width axes.
        q_size, k_size: (h, w) of the query and key grids.

    Returns:
        logits + q . R_h(dy) + q . R_w(dx), same shape as ``attn``.
    """
    bias_h, bias_w = _decomposed_rel_pos_bias(q, rel_pos_h, rel_pos_w, q_size, k_size)
    (qh, qw), (kh, kw) = q_size, k_size
    grid = attn.view(attn.shape[0], qh, qw, kh, kw) + bias_h[..., :, None] + bias_w[..., None, :]
    return grid.view(attn.shape[0], qh * qw, kh * kw)


def get_abs_pos(abs_pos: torch.Tensor, has_cls_token: bool, hw: tuple[int, int]) -> torch.Tensor:
    """Absolute position embeddings for an (H, W) = ``hw`` token grid.

    Args:
        abs_pos: (1, N, C) pretraining embeddings of a square grid, with one leading class-token row when
            ``has_cls_token``.
        has_cls_token: drop that first row.
        hw: target grid size; the square grid is bicubically resized to it when the sizes differ.

    Returns:
        (1, H, W, C).
    """
    h, w = hw
    if has_cls_token:
        abs_pos = abs_pos[:, 1:]
    side = math.isqrt(abs_pos.shape[1])
    if side * side != abs_pos.shape[1]:
        raise ValueError(f"get_abs_pos: {abs_pos.shape[1]} position embeddings do not form a square grid")
    grid = abs_pos.reshape(1, side, side, -1)
    if (side, side) == (h, w):
        return grid
    resized = F.interpolate(grid.permute(0, 3, 1, 2), size=(h, w), mode="bicubic", align_corners=False)
    return resized.permute(0, 2, 3, 1)


class PatchEmbed(nn.Module):
    """Image -> channels-last patch tokens with one strided convolution (``proj``)."""

    def __init__(
        self,
        kernel_size: tuple[int, int] = (16, 16),
        stride: tuple[int, int] = (16, 16),
        padding: tuple[int, int] = (0, 0),
        in_chans: int = 3,
        embed_dim: int = 768,
    ) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=kernel_size, stride=stride, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, H', W', embed_dim)."""
        return self.proj(x).permute(0, 2, 3, 1)


class Mlp(nn.Module):
    """Two-layer perceptron ``fc2(act(fc1(x)))`` on the last dimension (timm's ``Mlp`` layout), with dropout ``drop``
    after each layer (Swin's; 0 for ViT/MViT)."""

    def __init__(
        self,
        in_features: int,
        hidden_features: int | None = None,
        out_features: int | None = None,
        act_layer: type[nn.Module] = nn.GELU,
        drop: float = 0.0,
    ) -> None:
        super().__init__()
        hidden_features = hidden_features or in_features
        out_features = out_features or in_features
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden_features, out_features)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class DropPath(nn.Module):
    """Stochastic depth: in training, zero a residual branch for a random ``drop_prob`` fraction of the samples and
    rescale the kept ones by 1 / (1 - drop_prob); the identity in eval mode."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = float(drop_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.drop_prob == 0.0:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob:.3f}"


def init_transformer_weights(module: nn.Module) -> None:
    """Transformer initialisation, for ``model.apply``: truncated-normal (std 0.02) linear weights with zero
    biases, LayerNorms at the identity."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
