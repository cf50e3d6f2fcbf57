"""SwinTransformer backbone: output names/shapes/strides, window helpers, the shifted-window attention mask,
relative position bias, frozen stages and state-dict names (detectron2's)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from detlightning.layers import ShapeSpec
from detlightning.modeling import FPN, SwinTransformer
from detlightning.modeling.backbone import SwinTransformer as SwinFromBackbone
from detlightning.modeling.backbone.fpn import LastLevelMaxPool
from detlightning.modeling.backbone.swin import (
    BasicLayer,
    PatchMerging,
    SwinTransformerBlock,
    WindowAttention,
    _shifted_window_mask,
    window_partition,
    window_reverse,
)


def tiny_swin(**kwargs) -> SwinTransformer:
    args = dict(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), window_size=4, drop_path_rate=0.0)
    args.update(kwargs)
    return SwinTransformer(**args)


def test_exported_like_detectron2():
    assert SwinTransformer is SwinFromBackbone


def test_output_shapes_strides_and_channels():
    torch.manual_seed(0)
    model = tiny_swin().eval()
    assert model.output_shape() == {
        "p0": ShapeSpec(channels=16, stride=4),
        "p1": ShapeSpec(channels=32, stride=8),
        "p2": ShapeSpec(channels=64, stride=16),
        "p3": ShapeSpec(channels=128, stride=32),
    }
    assert model.size_divisibility == 32
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 96))
    assert list(out) == ["p0", "p1", "p2", "p3"]
    for name, spec in model.output_shape().items():
        assert out[name].shape == (2, spec.channels, 64 // spec.stride, 96 // spec.stride)
        assert out[name].is_contiguous()


def test_odd_sizes_are_padded_inside_and_rounded_up():
    # 70x50 -> patch grid 18x13 (padded to whole patches), then ceil halving; windows of 4 need inner padding
    torch.manual_seed(0)
    model = tiny_swin(out_indices=(0, 2, 3)).eval()
    assert model._out_features == ["p0", "p2", "p3"]
    assert not hasattr(model, "norm1")
    with torch.no_grad():
        out = model(torch.randn(1, 3, 70, 50))
    assert out["p0"].shape == (1, 16, 18, 13)
    assert out["p2"].shape == (1, 64, 5, 4)
    assert out["p3"].shape == (1, 128, 3, 2)


def test_state_dict_names_follow_detectron2():
    model = tiny_swin(out_indices=(1, 3))
    keys = set(model.state_dict())
    expected = {
        "patch_embed.proj.weight",
        "patch_embed.norm.weight",
        "layers.0.blocks.1.attn.relative_position_bias_table",
        "layers.0.blocks.1.attn.relative_position_index",
        "layers.0.blocks.1.attn.qkv.bias",
        "layers.0.blocks.1.attn.proj.weight",
        "layers.0.blocks.1.mlp.fc1.weight",
        "layers.0.blocks.1.mlp.fc2.bias",
        "layers.0.blocks.1.norm2.bias",
        "layers.2.downsample.reduction.weight",
        "layers.2.downsample.norm.weight",
        "norm1.weight",
        "norm3.bias",
    }
    assert expected <= keys
    assert not any(k.startswith(("layers.3.downsample", "norm0", "norm2")) for k in keys)
    assert "layers.2.downsample.reduction.bias" not in keys
    assert model.layers[0].blocks[0].attn.relative_position_bias_table.shape == (7 * 7, 1)
    assert model.layers[3].blocks[0].attn.relative_position_index.shape == (16, 16)


def test_absolute_position_embedding_is_resized():
    torch.manual_seed(0)
    model = tiny_swin(ape=True, pretrain_img_size=32).eval()
    assert model.absolute_pos_embed.shape == (1, 16, 8, 8)
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64))
    assert out["p0"].shape == (1, 16, 16, 16)


def test_window_partition_round_trip():
    x = torch.arange(2 * 8 * 12 * 3, dtype=torch.float32).reshape(2, 8, 12, 3)
    windows = window_partition(x, 4)
    assert windows.shape == (2 * 2 * 3, 4, 4, 3)
    # the second window of the first image is rows 0..3, columns 4..7
    assert torch.equal(windows[1], x[0, 0:4, 4:8])
    assert torch.equal(windows[3], x[0, 4:8, 0:4])
    assert torch.equal(window_reverse(windows, 4, 8, 12), x)


def test_relative_position_index():
    attn = WindowAttention(8, (2, 3), num_heads=2)
    idx = attn.relative_position_index
    assert idx.shape == (6, 6) and idx.dtype == torch.int64
    assert attn.relative_position_bias_table.shape == (3 * 5, 2)
    # tokens in row-major order: (0,0),(0,1),(0,2),(1,0),(1,1),(1,2); offset (dy, dx) -> (dy + 1) * 5 + (dx + 2)
    assert int(idx[0, 0]) == 1 * 5 + 2  # zero offset, the same for every token
    assert torch.equal(idx.diagonal(), torch.full((6,), 7))
    assert int(idx[5, 0]) == 2 * 5 + 4  # (1, 2) - (0, 0)
    assert int(idx[0, 5]) == 0  # (0, 0) - (1, 2)
    assert "relative_position_index" in attn.state_dict()  # persistent, as in detectron2's checkpoints


def test_attention_matches_explicit_softmax_with_bias_and_mask():
    torch.manual_seed(0)
    attn = WindowAttention(8, (2, 2), num_heads=2).eval()
    nn.init.normal_(attn.relative_position_bias_table)
    x = torch.randn(2 * 3, 4, 8)  # 2 images x 3 windows
    mask = torch.zeros(3, 4, 4)
    mask[1, :2, 2:] = mask[1, 2:, :2] = -100.0
    with torch.no_grad():
        out = attn(x, mask)
        q, k, v = attn.qkv(x).reshape(6, 4, 3, 2, 4).permute(2, 0, 3, 1, 4)
        table = attn.relative_position_bias_table
        bias = table[attn.relative_position_index].permute(2, 0, 1)  # (heads, N, N)
        logits = (q @ k.transpose(-1, -2)) * 4**-0.5 + bias + mask.repeat(2, 1, 1)[:, None]
        expected = attn.proj((logits.softmax(-1) @ v).transpose(1, 2).reshape(6, 4, 8))
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)


def test_shifted_window_mask_separates_wrapped_regions():
    # 8x8 grid, windows of 4, shift 2: after rolling by -2 the last window row/column mixes rows 6..7 (the former
    # top) with rows 2..5 ... i.e. three bands per axis: [0, 4), [4, 6), [6, 8)
    mask = _shifted_window_mask(8, 8, 4, 2, torch.device("cpu"))
    assert mask.shape == (4, 16, 16)
    assert set(mask.unique().tolist()) <= {0.0, -100.0}
    assert (mask[0] == 0).all()  # the top-left window holds one region only
    # window 1 (top-right): columns 4,5 vs 6,7 are separate regions, rows all in band 0
    cols = torch.arange(16) % 4
    same = (cols[:, None] < 2) == (cols[None, :] < 2)
    assert torch.equal(mask[1] == 0, same)
    # window 3 (bottom-right): four regions (2x2 quadrants)
    rows = torch.arange(16) // 4
    quadrant = (rows < 2).long() * 2 + (cols < 2).long()
    assert torch.equal(mask[3] == 0, quadrant[:, None] == quadrant[None, :])
    assert torch.equal(mask, mask.transpose(1, 2))


def test_shifted_block_attends_only_within_regions_of_the_rolled_grid():
    """Rolled by -2, the original token (7, 7) lands at (5, 5) in the bottom-right window (rolled rows/cols 4..7 =
    original 6, 7, 0, 1). With the mask it only reaches the tokens of its own region (original rows/cols 6..7);
    without it, it would reach the whole window, including the wrapped-around tokens of the opposite border."""
    torch.manual_seed(0)
    block = BasicLayer(dim=8, depth=2, num_heads=2, window_size=4).eval().blocks[1]
    assert isinstance(block, SwinTransformerBlock) and block.shift_size == 2
    block.H = block.W = 8
    x = torch.randn(1, 64, 8)
    poked = x.clone()
    poked[0, 7 * 8 + 7] += 3 * torch.randn(8)  # not a constant: norm1 would remove that

    def reached(mask: torch.Tensor) -> set[tuple[int, int]]:
        with torch.no_grad():
            diff = (block(poked, mask) - block(x, mask)).abs().sum(-1).reshape(8, 8) > 1e-5
        return {(int(r), int(c)) for r, c in diff.nonzero()}

    mask = _shifted_window_mask(8, 8, 4, 2, x.device)
    assert reached(mask) == {(r, c) for r in (6, 7) for c in (6, 7)}
    assert reached(torch.zeros_like(mask)) == {(r, c) for r in (6, 7, 0, 1) for c in (6, 7, 0, 1)}


def test_patch_merging_concatenates_2x2_cells_in_detectron2_order():
    merge = PatchMerging(dim=1, norm_layer=nn.Identity)
    with torch.no_grad():
        merge.reduction.weight.copy_(torch.tensor([[1.0, 10.0, 100.0, 1000.0], [0, 0, 0, 0]]))
    grid = torch.tensor([[1.0, 3.0], [2.0, 4.0]])  # (row, col): (0,0)=1, (1,0)=2, (0,1)=3, (1,1)=4
    with torch.no_grad():
        out = merge(grid.reshape(1, 4, 1), 2, 2)
    assert out.shape == (1, 1, 2)
    assert out[0, 0, 0].item() == 1 + 20 + 300 + 4000
    with torch.no_grad():
        odd = merge(torch.ones(1, 15, 1), 3, 5)  # zero-padded to 4x6
    assert odd.shape == (1, 2 * 3, 2)


def test_frozen_stages():
    model = tiny_swin(frozen_stages=3, drop_path_rate=0.1)
    frozen = [model.patch_embed, model.layers[0], model.layers[1]]
    for m in frozen:
        assert not any(p.requires_grad for p in m.parameters())
    assert all(p.requires_grad for p in model.layers[2].parameters())
    assert all(p.requires_grad for p in model.norm0.parameters())
    model.train()
    assert all(not m.training for m in frozen) and model.layers[2].training
    assert model.layers[2].blocks[1].drop_path.training

    x = torch.randn(1, 3, 64, 64)
    sum(v.sum() for v in model(x).values()).backward()
    assert model.layers[1].blocks[0].attn.qkv.weight.grad is None
    assert model.layers[2].blocks[0].attn.qkv.weight.grad is not None

    assert all(p.requires_grad for p in tiny_swin(frozen_stages=-1).parameters())
    only_embed = tiny_swin(frozen_stages=1)
    assert not any(p.requires_grad for p in only_embed.patch_embed.parameters())
    assert all(p.requires_grad for p in only_embed.layers.parameters())


def test_drop_path_rates_rise_linearly():
    model = tiny_swin(drop_path_rate=0.7)
    rates = [
        blk.drop_path.drop_prob if not isinstance(blk.drop_path, nn.Identity) else 0.0
        for layer in model.layers
        for blk in layer.blocks
    ]
    assert rates == pytest.approx([0.1 * i for i in range(8)])


def test_activation_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    plain = tiny_swin()
    ckpt = tiny_swin(use_checkpoint=True)
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(1, 3, 64, 64)
    for m in (plain, ckpt):
        sum(v.square().sum() for v in m(x).values()).backward()
    g1 = plain.layers[1].blocks[1].attn.relative_position_bias_table.grad
    g2 = ckpt.layers[1].blocks[1].attn.relative_position_bias_table.grad
    torch.testing.assert_close(g1, g2)


def test_fpn_over_swin_pads_to_a_square():
    torch.manual_seed(0)
    fpn = FPN(
        bottom_up=tiny_swin(),
        in_features=["p0", "p1", "p2", "p3"],
        out_channels=8,
        norm="LN",
        top_block=LastLevelMaxPool(),
        square_pad=128,
    ).eval()
    assert fpn.padding_constraints == {"square_size": 128}
    assert fpn.size_divisibility == 32
    with torch.no_grad():
        out = fpn(torch.randn(1, 3, 128, 128))
    assert {k: tuple(v.shape[-2:]) for k, v in out.items()} == {
        "p2": (32, 32),
        "p3": (16, 16),
        "p4": (8, 8),
        "p5": (4, 4),
        "p6": (2, 2),
    }
