"""Keypoint head: layers and names, keypoint_rcnn_loss against a hand target, inference on a peaked heatmap."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from detlightning.config import compose
from detlightning.layers import ShapeSpec
from detlightning.modeling.roi_heads.keypoint_head import (
    KRCNNConvDeconvUpsampleHead,
    build_keypoint_head,
    keypoint_rcnn_inference,
    keypoint_rcnn_loss,
)
from detlightning.structures import Boxes, Instances, Keypoints
from detlightning.utils.events import EventStorage


def _proposals(side_box: float = 8.0) -> Instances:
    inst = Instances((32, 32))
    inst.proposal_boxes = Boxes(torch.tensor([[0.0, 0.0, side_box, side_box]]))
    # keypoint 0 visible at (5, 3); keypoint 1 not labelled (v = 0); keypoint 2 visible but outside the box
    inst.gt_keypoints = Keypoints(torch.tensor([[[5.0, 3.0, 2.0], [1.0, 1.0, 0.0], [20.0, 20.0, 2.0]]]))
    return inst


def test_head_shapes_and_names():
    head = KRCNNConvDeconvUpsampleHead(ShapeSpec(channels=8, height=7, width=7), num_keypoints=3, conv_dims=[16, 12])
    assert {k: tuple(v.shape) for k, v in head.state_dict().items()} == {
        "conv_fcn1.weight": (16, 8, 3, 3),
        "conv_fcn1.bias": (16,),
        "conv_fcn2.weight": (12, 16, 3, 3),
        "conv_fcn2.bias": (12,),
        "score_lowres.weight": (12, 3, 4, 4),
        "score_lowres.bias": (3,),
    }
    x = torch.randn(2, 8, 7, 7)
    out = head.layers(x)
    assert out.shape == (2, 3, 28, 28)  # deconv x2, then bilinear x2
    # the computation, re-done with torch.nn.functional
    F = torch.nn.functional
    y = F.relu(F.conv2d(x, head.conv_fcn1.weight, head.conv_fcn1.bias, padding=1))
    y = F.relu(F.conv2d(y, head.conv_fcn2.weight, head.conv_fcn2.bias, padding=1))
    y = F.conv_transpose2d(y, head.score_lowres.weight, head.score_lowres.bias, stride=2, padding=1)
    y = F.interpolate(y, scale_factor=2.0, mode="bilinear", align_corners=False)
    assert torch.allclose(out, y, atol=1e-5)


def test_keypoint_loss_hand_target():
    s = 4
    logits = torch.linspace(-1.0, 1.0, 3 * s * s).view(1, 3, s, s)
    # keypoint 0 at (5, 3) in box [0, 8]: heatmap cell (x, y) = (floor(5 * 4 / 8), floor(3 * 4 / 8)) = (2, 1)
    target = 1 * s + 2
    row = logits[0, 0].reshape(-1).numpy().astype(np.float64)
    ce = math.log(np.exp(row).sum()) - row[target]
    with EventStorage():
        loss_visible = keypoint_rcnn_loss(logits, [_proposals()], normalizer=None)  # 1 valid keypoint
        loss_fixed = keypoint_rcnn_loss(logits, [_proposals()], normalizer=4.0)
    assert loss_visible.item() == pytest.approx(ce, rel=1e-5)
    assert loss_fixed.item() == pytest.approx(ce / 4.0, rel=1e-5)


def test_keypoint_loss_no_valid_keypoint_is_zero():
    inst = _proposals()
    inst.gt_keypoints = Keypoints(torch.tensor([[[5.0, 3.0, 0.0], [1.0, 1.0, 0.0], [2.0, 2.0, 0.0]]]))
    logits = torch.randn(1, 3, 4, 4, requires_grad=True)
    with EventStorage() as storage:
        loss = keypoint_rcnn_loss(logits, [inst], normalizer=None)
        assert "kpts_num_skipped_batches" in storage.latest()
    assert loss.item() == 0.0 and loss.requires_grad


def test_keypoint_inference_peak():
    s = 6
    logits = torch.zeros(1, 2, s, s)
    logits[0, 0, 3, 5] = 10.0  # keypoint 0 peaks at row 3, col 5
    logits[0, 1, 0, 1] = 4.0  # keypoint 1 peaks at row 0, col 1
    inst = Instances((64, 64))
    inst.pred_boxes = Boxes(torch.tensor([[10.0, 20.0, 10.0 + s, 20.0 + s]]))  # box size = heatmap size
    keypoint_rcnn_inference(logits, [inst])
    kp = inst.pred_keypoints
    assert kp.shape == (1, 2, 3)
    # cell centres in image coordinates: (col + 0.5 + x0, row + 0.5 + y0)
    assert kp[0, 0, :2].tolist() == pytest.approx([10.0 + 5.5, 20.0 + 3.5], abs=1e-4)
    assert kp[0, 1, :2].tolist() == pytest.approx([10.0 + 1.5, 20.0 + 0.5], abs=1e-4)
    # score: the spatial softmax probability of the peak
    assert kp[0, 0, 2].item() == pytest.approx(1.0 / (1.0 + (s * s - 1) * math.exp(-10.0)), rel=1e-4)
    assert kp[0, 1, 2].item() == pytest.approx(1.0 / (1.0 + (s * s - 1) * math.exp(-4.0)), rel=1e-4)
    assert torch.equal(inst.pred_keypoint_heatmaps, logits)


def test_head_forward_train_and_eval():
    head = KRCNNConvDeconvUpsampleHead(
        ShapeSpec(channels=4), num_keypoints=3, conv_dims=[8], loss_weight=0.5, loss_normalizer=2.0
    )
    feats = torch.randn(1, 4, 1, 1)  # -> 4 x 4 heatmaps
    head.train()
    with EventStorage():
        losses = head(feats, [_proposals()])
        # a float normalizer is multiplied by the number of images (1 here)
        expected = 0.5 * keypoint_rcnn_loss(head.layers(feats), [_proposals()], normalizer=2.0)
    assert set(losses) == {"loss_keypoint"}
    assert losses["loss_keypoint"].item() == pytest.approx(expected.item(), rel=1e-6)

    head.eval()
    inst = Instances((32, 32))
    inst.pred_boxes = Boxes(torch.tensor([[0.0, 0.0, 8.0, 8.0]]))
    (out,) = head(feats, [inst])
    assert out.pred_keypoints.shape == (1, 3, 3) and out.pred_keypoint_heatmaps.shape == (1, 3, 4, 4)
    with pytest.raises(ValueError, match="loss_normalizer"):
        KRCNNConvDeconvUpsampleHead(ShapeSpec(channels=4), num_keypoints=3, conv_dims=[8], loss_normalizer="all")


def test_build_keypoint_head_from_config():
    cfg = compose(
        ["model=keypoint_rcnn", "backbone=resnet50", "data=coco_keypoints", "model.roi_keypoint_head.conv_dims=[16,16]"]
    )
    head = build_keypoint_head(cfg, ShapeSpec(channels=8, height=14, width=14))
    assert isinstance(head, KRCNNConvDeconvUpsampleHead)
    assert head.score_lowres.weight.shape == (16, 17, 4, 4)
    assert head.loss_normalizer == "visible"
    cfg = compose(
        [
            "model=keypoint_rcnn",
            "backbone=resnet50",
            "data=coco_keypoints",
            "model.roi_keypoint_head.conv_dims=[8]",
            "model.roi_keypoint_head.normalize_loss_by_visible_keypoints=false",
        ]
    )
    # K * batch_size_per_image * positive_fraction = 17 * 512 * 0.25
    assert build_keypoint_head(cfg, ShapeSpec(channels=8)).loss_normalizer == pytest.approx(17 * 512 * 0.25)
