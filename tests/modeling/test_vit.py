"""ViTDet backbones (ViT, SimpleFeaturePyramid, MViT) and their helpers, on tiny configurations."""
from __future__ import annotations

import math
from functools import partial

import pytest
import torch
from torch import nn

from detlightning.modeling import MViT, SimpleFeaturePyramid, ViT, get_vit_lr_decay_rate
from detlightning.modeling.backbone.fpn import LastLevelMaxPool
from detlightning.modeling.backbone.utils import (
    DropPath,
    add_decomposed_rel_pos,
    get_abs_pos,
    get_rel_pos,
    window_partition,
    window_unpartition,
)
from detlightning.modeling.backbone.vit import Attention, Block
from detlightning.structures import ImageList

LN6 = partial(nn.LayerNorm, eps=1e-6)


def _tiny_vit(**kwargs) -> ViT:
    args = dict(
        img_size=64,
        patch_size=8,
        embed_dim=32,
        depth=4,
        num_heads=4,
        window_size=3,
        window_block_indexes=[0, 2],
        use_rel_pos=True,
        rel_pos_zero_init=False,
        norm_layer=LN6,
    )
    args.update(kwargs)
    torch.manual_seed(0)
    return ViT(**args)


# ---------------------------------------------------------------------------------------------- helpers (utils.py)


@pytest.mark.parametrize("hw", [(6, 9), (7, 5), (4, 4)])
def test_window_partition_round_trip_with_padding(hw):
    x = torch.randn(2, *hw, 5)
    windows, pad_hw = window_partition(x, 4)
    hp, wp = math.ceil(hw[0] / 4) * 4, math.ceil(hw[1] / 4) * 4
    assert pad_hw == (hp, wp)
    assert windows.shape == (2 * (hp // 4) * (wp // 4), 4, 4, 5)
    # window (row i, column j) of image b holds the tokens [4i:4i+4, 4j:4j+4]; padding is zero
    padded = torch.zeros(2, hp, wp, 5)
    padded[:, : hw[0], : hw[1]] = x
    if wp > 4:
        assert torch.equal(windows[1], padded[0, 0:4, 4:8])
    assert torch.equal(windows[-1], padded[1, hp - 4 :, wp - 4 :])
    assert torch.equal(window_unpartition(windows, 4, pad_hw, hw), x)


def test_get_rel_pos_indexes_by_relative_distance():
    table = torch.arange(7.0)[:, None].repeat(1, 2)  # row r holds r
    out = get_rel_pos(4, 4, table)
    assert out.shape == (4, 4, 2)
    q, k = torch.meshgrid(torch.arange(4), torch.arange(4), indexing="ij")
    assert torch.equal(out[..., 0], (q - k + 3).float())
    # keys on a grid half as long: their coordinates are stretched by 2
    out = get_rel_pos(4, 2, table)
    q, k = torch.meshgrid(torch.arange(4), torch.arange(2), indexing="ij")
    assert torch.equal(out[..., 0], (q - 2 * k + 2).float())
    # a table of another length is linearly resampled to 2 * max - 1 rows
    assert get_rel_pos(3, 3, torch.randn(9, 2)).shape == (3, 3, 2)


def test_add_decomposed_rel_pos_matches_the_definition():
    torch.manual_seed(0)
    qh, qw, kh, kw, c = 3, 4, 3, 2, 5
    q = torch.randn(2, qh * qw, c)
    attn = torch.randn(2, qh * qw, kh * kw)
    rel_h, rel_w = torch.randn(5, c), torch.randn(7, c)
    out = add_decomposed_rel_pos(attn, q, rel_h, rel_w, (qh, qw), (kh, kw))
    table_h, table_w = get_rel_pos(qh, kh, rel_h), get_rel_pos(qw, kw, rel_w)
    expected = attn.clone().view(2, qh, qw, kh, kw)
    for y in range(qh):
        for x in range(qw):
            qv = q[:, y * qw + x]
            for ky in range(kh):
                for kx in range(kw):
                    expected[:, y, x, ky, kx] += qv @ table_h[y, ky] + qv @ table_w[x, kx]
    torch.testing.assert_close(out, expected.view_as(attn))


def test_get_abs_pos_drops_cls_token_and_resizes():
    pos = torch.randn(1, 1 + 16, 6)
    same = get_abs_pos(pos, True, (4, 4))
    assert torch.equal(same, pos[:, 1:].reshape(1, 4, 4, 6))
    resized = get_abs_pos(pos[:, 1:], False, (8, 6))
    assert resized.shape == (1, 8, 6, 6)
    with pytest.raises(ValueError):
        get_abs_pos(torch.randn(1, 15, 6), False, (4, 4))


def test_drop_path_is_identity_in_eval_and_drops_whole_samples_in_training():
    drop = DropPath(0.5)
    x = torch.ones(64, 3, 2)
    assert torch.equal(drop.eval()(x), x)
    torch.manual_seed(0)
    y = drop.train()(x)
    per_sample = y.reshape(64, -1)
    assert set(per_sample.unique().tolist()) <= {0.0, 2.0}
    assert (per_sample == per_sample[:, :1]).all()


# ---------------------------------------------------------------------------------------------------- attention


def test_attention_matches_an_explicit_softmax_with_rel_pos():
    torch.manual_seed(0)
    attn = Attention(16, num_heads=2, use_rel_pos=True, rel_pos_zero_init=False, input_size=(3, 5)).eval()
    x = torch.randn(2, 3, 5, 16)
    b, h, w, c = x.shape
    qkv = attn.qkv(x).reshape(b, h * w, 3, 2, -1).permute(2, 0, 3, 1, 4).reshape(3, b * 2, h * w, -1)
    q, k, v = qkv.unbind(0)
    logits = (q * 8**-0.5) @ k.transpose(1, 2)
    logits = add_decomposed_rel_pos(logits, q, attn.rel_pos_h, attn.rel_pos_w, (h, w), (h, w))
    out = (logits.softmax(-1) @ v).view(b, 2, h, w, -1).permute(0, 2, 3, 1, 4).reshape(b, h, w, c)
    torch.testing.assert_close(attn(x), attn.proj(out), rtol=1e-5, atol=1e-5)


def test_window_block_with_one_window_equals_global_block():
    torch.manual_seed(0)
    windowed = Block(16, 2, use_rel_pos=True, rel_pos_zero_init=False, window_size=6).eval()
    global_ = Block(16, 2, use_rel_pos=True, input_size=(6, 6)).eval()
    global_.load_state_dict(windowed.state_dict())
    x = torch.randn(1, 6, 6, 16)
    torch.testing.assert_close(windowed(x), global_(x))
    # a smaller map is padded into the window: tokens see zero-padded neighbours, output keeps the map's size
    assert windowed(torch.randn(1, 4, 5, 16)).shape == (1, 4, 5, 16)


# ------------------------------------------------------------------------------------------------------------- ViT


def test_vit_output_and_parameter_shapes():
    vit = _tiny_vit(residual_block_indexes=[1]).eval()
    out = vit(torch.randn(2, 3, 64, 48))
    assert list(out) == ["last_feat"]
    assert out["last_feat"].shape == (2, 32, 8, 6)
    spec = vit.output_shape()["last_feat"]
    assert (spec.channels, spec.stride) == (32, 8)
    sd = vit.state_dict()
    assert sd["pos_embed"].shape == (1, (224 // 8) ** 2 + 1, 32)  # pretraining grid + cls token
    assert sd["blocks.0.attn.rel_pos_h"].shape == (2 * 3 - 1, 8)  # window blocks: window-sized tables
    assert sd["blocks.1.attn.rel_pos_h"].shape == (2 * 8 - 1, 8)  # global blocks: img_size / patch_size
    assert sd["blocks.1.residual.conv1.weight"].shape == (16, 32, 1, 1)
    assert sd["blocks.1.residual.norm3.weight"].abs().sum() == 0  # residual block starts as the identity
    assert not any(".residual." in k for k in sd if k.startswith("blocks.0."))
    assert {k for k in sd if k.startswith("blocks.3.mlp")} == {
        "blocks.3.mlp.fc1.weight", "blocks.3.mlp.fc1.bias", "blocks.3.mlp.fc2.weight", "blocks.3.mlp.fc2.bias"
    }


def test_vit_without_abs_pos_and_cls_token():
    vit = _tiny_vit(use_abs_pos=False)
    assert vit.pos_embed is None and "pos_embed" not in vit.state_dict()
    vit = _tiny_vit(pretrain_img_size=32, pretrain_use_cls_token=False)
    assert vit.pos_embed.shape == (1, 16, 32)
    assert vit(torch.randn(1, 3, 32, 32))["last_feat"].shape == (1, 32, 4, 4)


def test_vit_activation_checkpointing_gives_the_same_gradients():
    x = torch.randn(1, 3, 32, 40)
    grads = []
    for use_ckpt in (False, True):
        vit = _tiny_vit(use_act_checkpoint=use_ckpt, drop_path_rate=0.0).train()
        vit(x)["last_feat"].square().sum().backward()
        grads.append({k: p.grad.clone() for k, p in vit.named_parameters()})
    assert grads[0].keys() == grads[1].keys()
    for k in grads[0]:
        torch.testing.assert_close(grads[0][k], grads[1][k], msg=k)


# ----------------------------------------------------------------------------------------- SimpleFeaturePyramid


def test_simple_feature_pyramid_levels_and_keys():
    vit = _tiny_vit(patch_size=16)
    sfp = SimpleFeaturePyramid(
        vit, "last_feat", 16, scale_factors=(4.0, 2.0, 1.0, 0.5), top_block=LastLevelMaxPool(), square_pad=64
    ).eval()
    out = sfp(torch.randn(1, 3, 64, 64))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "p2": (1, 16, 16, 16), "p3": (1, 16, 8, 8), "p4": (1, 16, 4, 4), "p5": (1, 16, 2, 2), "p6": (1, 16, 1, 1)
    }
    assert {k: v.stride for k, v in sfp.output_shape().items()} == {"p2": 4, "p3": 8, "p4": 16, "p5": 32, "p6": 64}
    torch.testing.assert_close(out["p6"], out["p5"][:, :, ::2, ::2])
    sd = sfp.state_dict()
    # x4: deconv, LN, GELU, deconv, then 1x1 + 3x3 convs with LN (no bias); x0.5: maxpool then the convs
    assert sd["simfp_2.0.weight"].shape == (32, 16, 2, 2) and "simfp_2.1.weight" in sd
    assert sd["simfp_2.3.weight"].shape == (16, 8, 2, 2)
    assert sd["simfp_2.4.weight"].shape == (16, 8, 1, 1) and "simfp_2.4.norm.weight" in sd
    assert "simfp_2.4.bias" not in sd
    assert sd["simfp_5.1.weight"].shape == (16, 32, 1, 1)
    assert not any(k.startswith("stages") for k in sd)
    assert sum(k.startswith("net.") for k in sd) == len(vit.state_dict())


def test_simple_feature_pyramid_without_norm_has_conv_biases():
    sfp = SimpleFeaturePyramid(_tiny_vit(), "last_feat", 8, scale_factors=(2.0, 1.0), norm="")
    assert "simfp_2.1.bias" in sfp.state_dict() and "simfp_2.1.norm.weight" not in sfp.state_dict()
    assert list(sfp.output_shape()) == ["p2", "p3"]
    with pytest.raises(NotImplementedError):
        SimpleFeaturePyramid(_tiny_vit(), "last_feat", 8, scale_factors=(3.0,))


def test_simple_feature_pyramid_padding_constraints_pad_to_square():
    sfp = SimpleFeaturePyramid(_tiny_vit(), "last_feat", 8, scale_factors=(2.0, 1.0, 0.5), square_pad=64)
    assert sfp.padding_constraints["square_size"] == 64
    batch = [torch.ones(3, 40, 56), torch.ones(3, 50, 30)]
    images = ImageList.from_tensors(batch, sfp.size_divisibility, padding_constraints=sfp.padding_constraints)
    assert images.tensor.shape == (2, 3, 64, 64)
    assert images.image_sizes == [(40, 56), (50, 30)]
    # as in detectron2, no square pad means no padding beyond the batch's largest size
    sfp = SimpleFeaturePyramid(_tiny_vit(), "last_feat", 8, scale_factors=(1.0,))
    images = ImageList.from_tensors([torch.ones(3, 40, 50)], sfp.size_divisibility, 0.0, sfp.padding_constraints)
    assert images.tensor.shape == (1, 3, 40, 50)


# ------------------------------------------------------------------------------------------------------------ MViT


def _tiny_mvit(**kwargs) -> MViT:
    args = dict(
        img_size=64, embed_dim=8, depth=6, num_heads=1, last_block_indexes=(0, 2, 4, 5), adaptive_window_size=8
    )
    args.update(kwargs)
    torch.manual_seed(0)
    return MViT(**args)


def test_mvit_stage_shapes():
    mvit = _tiny_mvit(norm_layer=LN6).eval()
    out = mvit(torch.randn(2, 3, 64, 64))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "scale2": (2, 8, 16, 16), "scale3": (2, 16, 8, 8), "scale4": (2, 32, 4, 4), "scale5": (2, 64, 2, 2)
    }
    assert {k: (v.channels, v.stride) for k, v in mvit.output_shape().items()} == {
        "scale2": (8, 4), "scale3": (16, 8), "scale4": (32, 16), "scale5": (64, 32)
    }
    # a non-square input that is not a multiple of the windows: windows are padded, the grid follows the input
    out = mvit(torch.randn(1, 3, 72, 40))
    assert out["scale2"].shape == (1, 8, 18, 10) and out["scale5"].shape == (1, 64, 3, 2)


def test_mvit_parameters_follow_the_stage_layout():
    sd = _tiny_mvit().state_dict()
    # block 1 starts stage 3: width 8 -> 16, 2 heads of 8, stride-2 queries, shortcut projected
    assert sd["blocks.1.attn.qkv.weight"].shape == (48, 8)
    assert sd["blocks.1.proj.weight"].shape == (16, 8)
    assert sd["blocks.1.attn.pool_q.weight"].shape == (8, 1, 3, 3)
    assert "blocks.2.proj.weight" not in sd
    # relative-position tables: 2 * max(grid / stride_q, grid / stride_kv) - 1 rows on a 16-token grid
    assert sd["blocks.0.attn.rel_pos_h"].shape == (31, 8)  # stride_q 1
    assert sd["blocks.1.attn.rel_pos_h"].shape == (15, 8)  # stride_q 2 on the stage-2 grid
    assert {k for k in sd if k.endswith("_norm.weight")} == {f"scale{i}_norm.weight" for i in range(2, 6)}


def test_mvit_selected_out_features_only():
    mvit = _tiny_mvit(out_features=("scale3", "scale5")).eval()
    assert set(mvit(torch.randn(1, 3, 64, 64))) == {"scale3", "scale5"}
    assert {k for k in mvit.state_dict() if k.endswith("_norm.weight")} == {"scale3_norm.weight", "scale5_norm.weight"}


def test_mvit_trains_with_drop_path_and_checkpointing():
    mvit = _tiny_mvit(drop_path_rate=0.2, use_act_checkpoint=True, use_abs_pos=True, pretrain_img_size=32).train()
    assert mvit.pos_embed.shape == (1, 65, 8)
    loss = sum(v.mean() for v in mvit(torch.randn(2, 3, 32, 32)).values())
    loss.backward()
    assert mvit.blocks[0].attn.rel_pos_h.grad is not None
    assert mvit.patch_embed.proj.weight.grad.abs().sum() > 0


# --------------------------------------------------------------------------------------------- lr decay rate


def test_get_vit_lr_decay_rate_values():
    rate = partial(get_vit_lr_decay_rate, lr_decay_rate=0.7, num_layers=12)
    assert rate("backbone.net.pos_embed") == pytest.approx(0.7**13)
    assert rate("backbone.net.patch_embed.proj.weight") == pytest.approx(0.7**13)
    assert rate("backbone.net.blocks.0.attn.qkv.weight") == pytest.approx(0.7**12)
    assert rate("backbone.net.blocks.5.norm1.weight") == pytest.approx(0.7**7)
    assert rate("backbone.net.blocks.11.mlp.fc2.bias") == pytest.approx(0.7)
    assert rate("backbone.net.blocks.3.residual.conv1.weight") == 1.0
    assert rate("backbone.simfp_2.0.weight") == 1.0
    assert rate("roi_heads.box_head.fc1.weight") == 1.0
    assert rate("proposal_generator.rpn_head.conv.conv0.weight") == 1.0
    assert get_vit_lr_decay_rate("backbone.net.blocks.23.attn.proj.weight", 0.8, 24) == pytest.approx(0.8)
    assert get_vit_lr_decay_rate("backbone.net.blocks.0.attn.proj.weight") == 1.0  # default rate 1.0
