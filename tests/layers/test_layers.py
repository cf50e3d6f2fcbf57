from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from detlightning.layers import (
    CNNBlockBase,
    Conv2d,
    FrozenBatchNorm2d,
    ROIAlign,
    ROIPool,
    ShapeSpec,
    batched_nms,
    cat,
    cross_entropy,
    get_norm,
    giou_loss,
    nonzero_tuple,
    sigmoid_focal_loss,
    smooth_l1_loss,
)


def test_shape_spec_defaults_and_frozen():
    s = ShapeSpec(channels=256, stride=4)
    assert (s.channels, s.height, s.width, s.stride) == (256, None, None, 4)
    with pytest.raises(AttributeError):
        s.channels = 3  # type: ignore[misc]


def test_frozen_bn_matches_eval_batchnorm():
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(5).eval()
    bn.weight.data.uniform_(0.5, 1.5)
    bn.bias.data.normal_()
    bn.running_mean.normal_()
    bn.running_var.uniform_(0.5, 2.0)
    frozen = FrozenBatchNorm2d.convert_frozen_batchnorm(bn)
    assert isinstance(frozen, FrozenBatchNorm2d)
    x = torch.randn(2, 5, 4, 4)
    torch.testing.assert_close(frozen(x), bn(x))
    # the autograd path (F.batch_norm) gives the same values
    torch.testing.assert_close(frozen(x.requires_grad_()), bn(x))
    assert set(dict(frozen.named_buffers())) == {"weight", "bias", "running_mean", "running_var"}
    assert list(frozen.parameters()) == []


def test_frozen_bn_convert_recursive_and_state_dict_names():
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Sequential(nn.BatchNorm2d(4)))
    FrozenBatchNorm2d.convert_frozen_batchnorm(m)
    assert isinstance(m[1], FrozenBatchNorm2d) and isinstance(m[2][0], FrozenBatchNorm2d)
    assert "1.running_var" in m.state_dict()


def test_frozen_bn_loads_folded_caffe2_style_weights():
    # A checkpoint with only weight/bias (no statistics, no version metadata) means identity statistics.
    bn = FrozenBatchNorm2d(3)
    bn.running_mean.fill_(5.0)
    result = bn.load_state_dict({"weight": torch.full((3,), 2.0), "bias": torch.full((3,), 1.0)}, strict=False)
    assert result.missing_keys == []
    x = torch.ones(1, 3, 1, 1)
    torch.testing.assert_close(bn(x), torch.full((1, 3, 1, 1), 2.0 / (1 + 1e-5) ** 0.5 + 1.0))


@pytest.mark.parametrize("norm,cls", [("BN", nn.BatchNorm2d), ("FrozenBN", FrozenBatchNorm2d),
                                      ("GN", nn.GroupNorm), ("SyncBN", nn.SyncBatchNorm)])
def test_get_norm(norm, cls):
    assert isinstance(get_norm(norm, 64), cls)


def test_get_norm_none_and_unknown():
    assert get_norm("", 8) is None and get_norm(None, 8) is None
    with pytest.raises(ValueError, match="Unknown norm 'XN'"):
        get_norm("XN", 8)
    assert isinstance(get_norm(lambda c: nn.LayerNorm(c), 8), nn.LayerNorm)


def test_conv2d_norm_activation_and_names():
    conv = Conv2d(3, 4, kernel_size=1, bias=False, norm=get_norm("BN", 4), activation=torch.relu)
    assert set(conv.state_dict()) >= {"weight", "norm.weight", "norm.running_mean"}
    conv.eval()
    x = torch.randn(1, 3, 5, 5)
    expected = torch.relu(conv.norm(nn.functional.conv2d(x, conv.weight)))
    torch.testing.assert_close(conv(x), expected)


def test_cnn_block_freeze():
    block = CNNBlockBase(3, 4, 1)
    block.conv = nn.Conv2d(3, 4, 1)
    block.bn = nn.BatchNorm2d(4)
    block.freeze()
    assert all(not p.requires_grad for p in block.parameters())
    assert isinstance(block.bn, FrozenBatchNorm2d)


def test_roi_align_constant_and_matches_torchvision():
    feat = torch.full((1, 2, 8, 8), 3.0)
    rois = torch.tensor([[0, 1.0, 1.0, 5.0, 5.0]])
    out = ROIAlign((2, 2), spatial_scale=1.0, sampling_ratio=0, aligned=True)(feat, rois)
    assert out.shape == (1, 2, 2, 2)
    torch.testing.assert_close(out, torch.full_like(out, 3.0))
    feat = torch.randn(2, 3, 10, 10)
    rois = torch.tensor([[1, 0.5, 1.5, 7.0, 9.0], [0, 2.0, 2.0, 4.0, 6.0]])
    ref = torchvision.ops.roi_align(feat, rois, (3, 3), 0.5, 2, False)
    torch.testing.assert_close(ROIAlign(3, 0.5, 2, aligned=False)(feat, rois), ref)
    with pytest.raises(ValueError, match=r"\(K, 5\)"):
        ROIAlign(3, 1.0, 0)(feat, rois[:, 1:])
    assert ROIPool(2, 1.0)(feat, rois).shape == (2, 3, 2, 2)


def test_batched_nms_per_class():
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 10, 10], [0, 0, 10, 10]], dtype=torch.float)
    scores = torch.tensor([0.9, 0.8, 0.7])
    # boxes 0 and 1 overlap (IoU 0.81) in class 0; box 2 is class 1 and survives
    keep = batched_nms(boxes, scores, torch.tensor([0, 0, 1]), 0.5)
    assert keep.tolist() == [0, 2]
    with pytest.raises(ValueError, match="equal length"):
        batched_nms(boxes, scores[:2], torch.tensor([0, 0, 1]), 0.5)


def test_batched_nms_many_boxes_equals_torchvision():
    # > 1000 boxes takes the sort-by-category path; clustered boxes so that NMS suppresses within each category
    from torchvision.ops import batched_nms as tv_batched_nms

    g = torch.Generator().manual_seed(0)
    centres = torch.rand(10, 2, generator=g) * 200
    xy = centres[torch.randint(0, 10, (3000,), generator=g)] + torch.randn(3000, 2, generator=g) * 3
    boxes = torch.cat([xy, xy + 20 + torch.rand(3000, 2, generator=g) * 5], dim=1)
    scores = torch.rand(3000, generator=g)
    idxs = torch.randint(0, 20, (3000,), generator=g)
    keep = batched_nms(boxes, scores, idxs, 0.5)
    assert 200 < len(keep) < 2000
    assert torch.equal(keep, tv_batched_nms(boxes, scores, idxs, 0.5))


def test_small_helpers():
    a = torch.ones(2)
    assert cat([a]) is a
    assert cat([a, a]).shape == (4,)
    assert nonzero_tuple(torch.tensor(True))[0].tolist() == [0]
    assert nonzero_tuple(torch.tensor([0, 1, 1]))[0].tolist() == [1, 2]
    logits = torch.randn(0, 3, requires_grad=True)
    loss = cross_entropy(logits, torch.zeros(0, dtype=torch.long))
    assert loss.item() == 0.0 and loss.requires_grad


def test_smooth_l1_by_hand():
    x, t = torch.tensor([0.0, 0.5, 3.0]), torch.zeros(3)
    # beta=1: 0, 0.5*0.25, 3-0.5
    torch.testing.assert_close(smooth_l1_loss(x, t, beta=1.0), torch.tensor([0.0, 0.125, 2.5]))
    torch.testing.assert_close(smooth_l1_loss(x, t, beta=0.0, reduction="sum"), torch.tensor(3.5))


def test_giou_loss_by_hand():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[1.0, 0.0, 3.0, 2.0]])
    # IoU = 2/6, hull area 6 = union, so GIoU = IoU
    torch.testing.assert_close(giou_loss(a, b), torch.tensor([1 - 2 / 6]), atol=1e-6, rtol=0)
    c = torch.tensor([[4.0, 0.0, 6.0, 2.0]])  # disjoint: IoU 0, hull 12, union 8 -> giou = -4/12
    torch.testing.assert_close(giou_loss(a, c), torch.tensor([1 + 4 / 12]), atol=1e-6, rtol=0)


def test_sigmoid_focal_loss_reduces_to_bce_with_gamma_zero():
    x = torch.randn(10)
    t = (torch.rand(10) > 0.5).float()
    bce = nn.functional.binary_cross_entropy_with_logits(x, t, reduction="none")
    torch.testing.assert_close(sigmoid_focal_loss(x, t, alpha=-1, gamma=0), bce)
    p = torch.sigmoid(x)
    p_t = p * t + (1 - p) * (1 - t)
    alpha_t = 0.25 * t + 0.75 * (1 - t)
    torch.testing.assert_close(sigmoid_focal_loss(x, t, 0.25, 2.0), alpha_t * bce * (1 - p_t) ** 2)


def test_channels_first_layer_norm_equals_torch_layer_norm_over_channels():
    from detlightning.layers import LayerNorm, get_norm

    torch.manual_seed(0)
    x = torch.randn(2, 8, 5, 7)
    ln = get_norm("LN", 8)
    assert isinstance(ln, LayerNorm) and ln.eps == 1e-6
    with torch.no_grad():
        ln.weight.copy_(torch.rand(8) + 0.5)
        ln.bias.copy_(torch.randn(8))
    ref = torch.nn.functional.layer_norm(x.permute(0, 2, 3, 1), (8,), ln.weight, ln.bias, eps=1e-6).permute(0, 3, 1, 2)
    torch.testing.assert_close(ln(x), ref, rtol=1e-5, atol=1e-5)
    assert sorted(ln.state_dict()) == ["bias", "weight"]
