"""Mask head: layers and names, mask_rcnn_loss on a hand target, mask_rcnn_inference's class selection."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from detlightning.config import compose
from detlightning.layers import ShapeSpec
from detlightning.modeling.roi_heads.mask_head import (
    MaskRCNNConvUpsampleHead,
    build_mask_head,
    mask_rcnn_inference,
    mask_rcnn_loss,
)
from detlightning.structures import BitMasks, Boxes, Instances
from detlightning.utils.events import EventStorage


def _bce(x: np.ndarray, t: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0) - x * t + np.log1p(np.exp(-np.abs(x)))


def _fg_instances(m: int = 4) -> Instances:
    """One foreground proposal whose box is exactly the filled square of its gt mask (target: all ones)."""
    mask = torch.zeros(1, 20, 20, dtype=torch.bool)
    mask[0, 4:12, 4:12] = True
    inst = Instances((20, 20))
    inst.proposal_boxes = Boxes(torch.tensor([[4.0, 4.0, 12.0, 12.0]]))
    inst.gt_classes = torch.tensor([1])
    inst.gt_masks = BitMasks(mask)
    return inst


def test_mask_rcnn_loss_box_filling_mask_is_all_ones_target():
    m = 4
    logits = torch.full((1, 3, m, m), 50.0)  # channels 0 and 2 would give a ~0 loss if (wrongly) used
    ch1 = torch.linspace(-2.0, 3.0, m * m).view(m, m)
    logits[0, 1] = ch1
    with EventStorage() as storage:
        loss = mask_rcnn_loss(logits, [_fg_instances(m)])
        stats = {k: v[0] for k, v in storage.latest().items()}
    expected = _bce(ch1.numpy().astype(np.float64), np.ones((m, m))).mean()
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    num_wrong = int((ch1 <= 0).sum())  # a pixel is right when logit > 0 (target 1)
    assert stats["mask_rcnn/accuracy"] == pytest.approx(1 - num_wrong / (m * m))
    assert stats["mask_rcnn/false_negative"] == pytest.approx(num_wrong / (m * m))
    assert stats["mask_rcnn/false_positive"] == 0.0


def test_mask_rcnn_loss_class_agnostic_and_empty():
    m = 4
    logits = torch.zeros(1, 1, m, m)
    with EventStorage():
        loss = mask_rcnn_loss(logits, [_fg_instances(m)])
    assert loss.item() == pytest.approx(np.log(2.0), rel=1e-6)

    empty = Instances((20, 20))
    empty.proposal_boxes = Boxes(torch.zeros(0, 4))
    empty.gt_classes = torch.zeros(0, dtype=torch.long)
    empty.gt_masks = BitMasks(torch.zeros(0, 20, 20, dtype=torch.bool))
    logits = torch.zeros(0, 3, m, m, requires_grad=True)
    with EventStorage():
        loss = mask_rcnn_loss(logits, [empty])
    assert loss.item() == 0.0 and loss.requires_grad


def test_mask_rcnn_inference_picks_predicted_class_channel():
    logits = torch.randn(3, 4, 5, 5)
    a, b = Instances((10, 10)), Instances((10, 10))
    a.pred_classes = torch.tensor([2, 0])
    b.pred_classes = torch.tensor([3])
    mask_rcnn_inference(logits, [a, b])
    assert a.pred_masks.shape == (2, 1, 5, 5) and b.pred_masks.shape == (1, 1, 5, 5)
    assert torch.allclose(a.pred_masks[0, 0], torch.sigmoid(logits[0, 2]))
    assert torch.allclose(a.pred_masks[1, 0], torch.sigmoid(logits[1, 0]))
    assert torch.allclose(b.pred_masks[0, 0], torch.sigmoid(logits[2, 3]))

    c = Instances((10, 10))
    c.pred_classes = torch.tensor([5])
    agnostic = torch.randn(1, 1, 5, 5)
    mask_rcnn_inference(agnostic, [c])
    assert torch.allclose(c.pred_masks, torch.sigmoid(agnostic))


def test_conv_upsample_head_shapes_names_and_forward():
    head = MaskRCNNConvUpsampleHead(ShapeSpec(channels=8, height=7, width=7), num_classes=3, conv_dims=[16, 16, 12])
    assert {k: tuple(v.shape) for k, v in head.state_dict().items()} == {
        "mask_fcn1.weight": (16, 8, 3, 3),
        "mask_fcn1.bias": (16,),
        "mask_fcn2.weight": (16, 16, 3, 3),
        "mask_fcn2.bias": (16,),
        "deconv.weight": (16, 12, 2, 2),
        "deconv.bias": (12,),
        "predictor.weight": (3, 12, 1, 1),
        "predictor.bias": (3,),
    }
    x = torch.randn(2, 8, 7, 7)
    assert head.layers(x).shape == (2, 3, 14, 14)

    # no convs: the deconv reads the input directly; the output is predictor(relu(deconv(x)))
    tiny = MaskRCNNConvUpsampleHead(ShapeSpec(channels=8), num_classes=2, conv_dims=[4])
    ref = torch.nn.functional.conv2d(
        torch.relu(torch.nn.functional.conv_transpose2d(x, tiny.deconv.weight, tiny.deconv.bias, stride=2)),
        tiny.predictor.weight,
        tiny.predictor.bias,
    )
    assert torch.allclose(tiny.layers(x), ref, atol=1e-6)

    # training returns the weighted loss, inference fills pred_masks
    head = MaskRCNNConvUpsampleHead(
        ShapeSpec(channels=8), num_classes=3, conv_dims=[16, 8], loss_weight=2.0
    )
    feats = torch.randn(1, 8, 2, 2)  # -> 4 x 4 masks
    head.train()
    with EventStorage():
        losses = head(feats, [_fg_instances(4)])
        expected = 2.0 * mask_rcnn_loss(head.layers(feats), [_fg_instances(4)])
    assert set(losses) == {"loss_mask"}
    assert losses["loss_mask"].item() == pytest.approx(expected.item(), rel=1e-6)
    head.eval()
    inst = Instances((20, 20))
    inst.pred_boxes = Boxes(torch.tensor([[4.0, 4.0, 12.0, 12.0]]))
    inst.pred_classes = torch.tensor([2])
    (out,) = head(feats, [inst])
    assert out.pred_masks.shape == (1, 1, 4, 4)


def test_build_mask_head_from_config_gn_and_agnostic():
    cfg = compose(
        [
            "model=mask_rcnn",
            "backbone=resnet50",
            "model.roi_heads.num_classes=3",
            "model.roi_mask_head.conv_dim=32",
            "model.roi_mask_head.norm=GN",
        ]
    )
    head = build_mask_head(cfg, ShapeSpec(channels=16, height=14, width=14))
    keys = set(head.state_dict())
    assert {f"mask_fcn{i}.norm.weight" for i in range(1, 5)} <= keys
    assert not any(k.startswith("mask_fcn") and k.endswith(".bias") and ".norm." not in k for k in keys)
    assert head.predictor.weight.shape == (3, 32, 1, 1)
    assert head.vis_period == 0 and head.loss_weight == 1.0

    cfg = compose(["model=mask_rcnn", "backbone=resnet50", "model.roi_mask_head.cls_agnostic_mask=true"])
    assert build_mask_head(cfg, ShapeSpec(channels=8)).predictor.out_channels == 1
