"""FastRCNNOutputLayers losses / inference and fast_rcnn_inference on hand-made cases."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from detlightning.layers import ShapeSpec
from detlightning.modeling.box_regression import Box2BoxTransform
from detlightning.modeling.roi_heads.fast_rcnn import (
    FastRCNNOutputLayers,
    fast_rcnn_inference,
    fast_rcnn_inference_single_image,
)
from detlightning.structures import Boxes, Instances
from detlightning.utils.events import EventStorage

WEIGHTS = (10.0, 10.0, 5.0, 5.0)


def _latest(storage: EventStorage) -> dict[str, float]:
    return {k: v[0] for k, v in storage.latest().items()}


def _predictor(num_classes: int = 2, **kwargs) -> FastRCNNOutputLayers:
    return FastRCNNOutputLayers(
        ShapeSpec(channels=4), box2box_transform=Box2BoxTransform(weights=WEIGHTS), num_classes=num_classes, **kwargs
    )


def _two_proposals() -> list[Instances]:
    """One foreground proposal (class 1) matched to a shifted gt box, one background proposal (label K=2)."""
    p = Instances((100, 100))
    p.proposal_boxes = Boxes(torch.tensor([[0.0, 0.0, 10.0, 10.0], [50.0, 50.0, 70.0, 60.0]]))
    p.gt_boxes = Boxes(torch.tensor([[1.0, 1.0, 11.0, 12.0], [0.0, 0.0, 1.0, 1.0]]))
    p.gt_classes = torch.tensor([1, 2])
    return [p]


def test_output_layer_shapes_and_names():
    m = _predictor(num_classes=3)
    assert set(m.state_dict()) == {"cls_score.weight", "cls_score.bias", "bbox_pred.weight", "bbox_pred.bias"}
    scores, deltas = m(torch.randn(5, 4, 1, 1))  # >2-d input is flattened
    assert scores.shape == (5, 4) and deltas.shape == (5, 12)
    agnostic = _predictor(num_classes=3, cls_agnostic_bbox_reg=True)
    assert agnostic(torch.randn(5, 4))[1].shape == (5, 4)
    # input size = channels * height * width
    assert FastRCNNOutputLayers(
        ShapeSpec(channels=2, height=3, width=3), box2box_transform=Box2BoxTransform(WEIGHTS), num_classes=1
    ).cls_score.in_features == 18


def test_losses_two_proposals_by_hand():
    m = _predictor(num_classes=2)
    scores = torch.tensor([[0.2, 1.5, -0.3], [0.1, 0.4, 2.0]])
    deltas = torch.zeros(2, 8)
    deltas[0, 4:8] = torch.tensor([0.5, 1.0, 0.2, 0.1])  # class 1 slot of the foreground proposal
    deltas[0, 0:4] = 100.0  # class 0 slot: must not be used
    deltas[1, :] = 100.0  # background proposal: must not be used
    with EventStorage() as storage:
        losses = m.losses((scores, deltas), _two_proposals())
        stats = _latest(storage)

    # cross entropy by hand (numpy log-sum-exp)
    s = scores.numpy().astype(np.float64)
    lse = np.log(np.exp(s).sum(1))
    expected_cls = np.mean([lse[0] - s[0, 1], lse[1] - s[1, 2]])
    assert losses["loss_cls"].item() == pytest.approx(expected_cls, rel=1e-6)

    # targets: proposal ctr (5, 5) size 10x10; gt ctr (6, 6.5) size 10x11
    target = np.array([10 * 1.0 / 10, 10 * 1.5 / 10, 5 * math.log(10 / 10), 5 * math.log(11 / 10)])
    pred = np.array([0.5, 1.0, 0.2, 0.1])
    expected_box = np.abs(pred - target).sum() / 2  # smooth-l1 with beta 0 = L1; divided by R = 2 sampled ROIs
    assert losses["loss_box_reg"].item() == pytest.approx(expected_box, rel=1e-5)

    # argmax: proposal 0 -> 1 (correct), proposal 1 -> 2 (correct background)
    assert stats["fast_rcnn/cls_accuracy"] == 1.0
    assert stats["fast_rcnn/fg_cls_accuracy"] == 1.0
    assert stats["fast_rcnn/false_negative"] == 0.0


def test_losses_weights_agnostic_and_stats():
    scores = torch.tensor([[0.2, -1.0, 3.0], [0.1, 0.4, 2.0]])  # fg proposal predicted as background
    deltas = torch.tensor([[0.5, 1.0, 0.2, 0.1], [9.0, 9.0, 9.0, 9.0]])
    m = _predictor(num_classes=2, cls_agnostic_bbox_reg=True, loss_weight={"loss_box_reg": 2.0})
    with EventStorage() as storage:
        losses = m.losses((scores, deltas), _two_proposals())
        stats = _latest(storage)
    target = np.array([1.0, 1.5, 0.0, 5 * math.log(1.1)])
    expected_box = 2.0 * np.abs(np.array([0.5, 1.0, 0.2, 0.1]) - target).sum() / 2
    assert losses["loss_box_reg"].item() == pytest.approx(expected_box, rel=1e-5)
    assert stats["fast_rcnn/cls_accuracy"] == 0.5
    assert stats["fast_rcnn/fg_cls_accuracy"] == 0.0
    assert stats["fast_rcnn/false_negative"] == 1.0

    m3 = _predictor(num_classes=2, cls_agnostic_bbox_reg=True, loss_weight=3.0)
    with EventStorage():
        l3 = m3.losses((scores, deltas), _two_proposals())
    assert l3["loss_box_reg"].item() == pytest.approx(1.5 * expected_box, rel=1e-5)
    s = scores.numpy().astype(np.float64)
    lse = np.log(np.exp(s).sum(1))
    assert l3["loss_cls"].item() == pytest.approx(3.0 * np.mean([lse[0] - s[0, 1], lse[1] - s[1, 2]]), rel=1e-6)


def test_losses_smooth_l1_beta_and_no_gt_boxes():
    m = _predictor(num_classes=2, smooth_l1_beta=1.0)
    deltas = torch.zeros(2, 8)
    with EventStorage():
        losses = m.losses((torch.zeros(2, 3), deltas), _two_proposals())
    target = np.array([1.0, 1.5, 0.0, 5 * math.log(1.1)])
    per = np.where(np.abs(target) < 1.0, 0.5 * target**2, np.abs(target) - 0.5)
    assert losses["loss_box_reg"].item() == pytest.approx(per.sum() / 2, rel=1e-5)

    # an image without ground truth: all background, no gt_boxes field -> zero box loss
    p = Instances((20, 20))
    p.proposal_boxes = Boxes(torch.tensor([[0.0, 0.0, 5.0, 5.0]]))
    p.gt_classes = torch.tensor([2])
    with EventStorage():
        losses = m.losses((torch.zeros(1, 3), torch.ones(1, 8)), [p])
    assert losses["loss_box_reg"].item() == 0.0
    assert losses["loss_cls"].item() == pytest.approx(math.log(3), rel=1e-6)


def test_sigmoid_ce_loss_and_probs():
    m = _predictor(num_classes=2, use_sigmoid_ce=True)
    scores = torch.tensor([[0.2, 1.5, -0.3], [0.1, 0.4, 2.0]])
    with EventStorage():
        losses = m.losses((scores, torch.zeros(2, 8)), _two_proposals())
    s = scores.numpy().astype(np.float64)[:, :2]
    t = np.array([[0.0, 1.0], [0.0, 0.0]])  # background row: negative for every class
    bce = np.log1p(np.exp(-np.abs(s))) + np.maximum(s, 0) - s * t
    assert losses["loss_cls"].item() == pytest.approx(bce.sum() / 2, rel=1e-6)
    probs = m.predict_probs((scores, torch.zeros(2, 8)), _two_proposals())[0]
    assert torch.allclose(probs, torch.sigmoid(scores))


def test_fed_loss_needs_weights_and_sigmoid():
    with pytest.raises(ValueError, match="use_sigmoid_ce"):
        _predictor(use_fed_loss=True)
    with pytest.raises(ValueError, match="get_fed_loss_cls_weights"):
        _predictor(use_fed_loss=True, use_sigmoid_ce=True)
    # gt classes {1, background}; 3 fed classes -> class 0 is sampled too, so every foreground class is covered
    # and the loss equals plain sigmoid CE
    m = _predictor(
        use_fed_loss=True, use_sigmoid_ce=True, get_fed_loss_cls_weights=lambda: torch.ones(2), fed_loss_num_classes=3
    )
    plain = _predictor(use_sigmoid_ce=True)
    scores = torch.tensor([[0.2, 1.5, -0.3], [0.1, 0.4, 2.0]])
    with EventStorage():
        a = m.losses((scores, torch.zeros(2, 8)), _two_proposals())["loss_cls"]
        b = plain.losses((scores, torch.zeros(2, 8)), _two_proposals())["loss_cls"]
    assert a.item() == pytest.approx(b.item(), rel=1e-6)
    assert "fed_loss_cls_weights" in m.state_dict()
    # 2 fed classes: {1, background} already reach it, so class 0's column is left out of the loss
    m2 = _predictor(
        use_fed_loss=True, use_sigmoid_ce=True, get_fed_loss_cls_weights=lambda: torch.ones(2), fed_loss_num_classes=2
    )
    with EventStorage():
        c = m2.losses((scores, torch.zeros(2, 8)), _two_proposals())["loss_cls"]
    x = scores.numpy().astype(np.float64)[:, 1]
    t = np.array([1.0, 0.0])
    bce = np.log1p(np.exp(-np.abs(x))) + np.maximum(x, 0) - x * t
    assert c.item() == pytest.approx(bce.sum() / 2, rel=1e-6)


def test_fast_rcnn_inference_threshold_clip_nms_topk():
    # 3 ROIs, K = 2 classes, class-specific boxes; image 50 x 40 (h, w)
    boxes = torch.tensor(
        [
            [0.0, 0.0, 10.0, 10.0, 0.0, 0.0, 10.0, 10.0],  # ROI 0
            [1.0, 1.0, 11.0, 11.0, 30.0, 30.0, 60.0, 45.0],  # ROI 1: class-0 box overlaps ROI 0's; class-1 box clipped
            [20.0, 20.0, 25.0, 25.0, 0.0, 0.0, 9.0, 9.0],  # ROI 2
        ]
    )
    scores = torch.tensor(
        [
            [0.625, 0.30, 0.075],  # 0.625: exact in binary, for the strict-threshold check below
            [0.50, 0.40, 0.10],
            [0.04, 0.45, 0.51],  # class 0 below threshold
        ]
    )
    inst, kept = fast_rcnn_inference_single_image(boxes, scores, (50, 40), 0.05, 0.5, -1)
    # class 0: ROI0 (0.625) suppresses ROI1 (IoU 81/119 = 0.68); class 1: ROI2 (0.45) and ROI1 (0.40) kept,
    # ROI0's class-1 box (0.30) is suppressed by ROI2's class-1 box (IoU 81/100)
    assert kept.tolist() == [0, 2, 1]
    assert inst.pred_classes.tolist() == [0, 1, 1]
    assert torch.allclose(inst.scores, torch.tensor([0.625, 0.45, 0.40]))
    expected_boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 9.0, 9.0], [30.0, 30.0, 40.0, 45.0]])
    assert torch.equal(inst.pred_boxes.tensor, expected_boxes)  # x clipped to width 40, y to height 50
    assert inst.image_size == (50, 40)

    # top-k keeps the highest scores
    inst2, kept2 = fast_rcnn_inference_single_image(boxes, scores, (50, 40), 0.05, 0.5, 2)
    assert kept2.tolist() == [0, 2] and len(inst2) == 2
    # threshold is strict ">" and drops everything here
    inst3, _ = fast_rcnn_inference_single_image(boxes, scores, (50, 40), 0.625, 0.5, 100)
    assert len(inst3) == 0


def test_fast_rcnn_inference_agnostic_nonfinite_and_batch():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [float("nan"), 0.0, 1.0, 1.0], [2.0, 2.0, 8.0, 8.0]])
    scores = torch.tensor([[0.7, 0.2, 0.1], [0.9, 0.05, 0.05], [0.1, 0.8, 0.1]])
    results, kept = fast_rcnn_inference([boxes, boxes[:1]], [scores, scores[:1]], [(20, 20), (20, 20)], 0.15, 0.5, 10)
    # the NaN row is dropped; class-agnostic boxes are shared by both classes, NMS is per class
    assert results[0].pred_classes.tolist() == [1, 0, 1]
    assert torch.allclose(results[0].scores, torch.tensor([0.8, 0.7, 0.2]))
    assert kept[0].tolist() == [1, 0, 0]  # indices into the rows that remain after dropping non-finite ones
    assert results[1].pred_classes.tolist() == [0, 1] and kept[1].tolist() == [0, 0]


def test_predictor_inference_and_predict_boxes():
    m = _predictor(num_classes=2, test_score_thresh=0.05, test_nms_thresh=0.5, test_topk_per_image=100)
    p = Instances((30, 30))
    p.proposal_boxes = Boxes(torch.tensor([[0.0, 0.0, 10.0, 10.0], [15.0, 15.0, 25.0, 25.0]]))
    scores = torch.tensor([[5.0, 0.0, 0.0], [0.0, 0.0, 5.0]])
    deltas = torch.zeros(2, 8)
    deltas[0, 0] = 1.0  # class 0: dx = 1/10 of the width -> shift right by 1 px
    (inst,), (kept,) = m.inference((scores, deltas), [p])
    probs = torch.softmax(scores, -1)
    # ROI 0: class 0 (p ~ 0.987), class 1 (p ~ 0.0066 < 0.05 dropped); ROI 1: both classes at p ~ 0.0066 dropped
    assert inst.pred_classes.tolist() == [0] and kept.tolist() == [0]
    assert torch.allclose(inst.scores, probs[0, :1])
    assert torch.allclose(inst.pred_boxes.tensor, torch.tensor([[1.0, 0.0, 11.0, 10.0]]), atol=1e-5)

    p.gt_classes = torch.tensor([0, 2])  # background label is clamped to the last class
    deltas[1, 4] = -1.0
    (per_gt,) = m.predict_boxes_for_gt_classes((scores, deltas), [p])
    assert torch.allclose(per_gt, torch.tensor([[1.0, 0.0, 11.0, 10.0], [14.0, 15.0, 24.0, 25.0]]), atol=1e-5)
    (all_boxes,) = m.predict_boxes((scores, deltas), [p])
    assert all_boxes.shape == (2, 8)
    assert m.predict_boxes((scores, deltas), []) == []


def test_from_config_reads_its_keys():
    from detlightning.config import compose

    cfg = compose(
        [
            "model=mask_rcnn",
            "backbone=resnet50",
            "model.roi_heads.num_classes=5",
            "model.roi_box_head.smooth_l1_beta=0.25",
            "model.roi_box_head.bbox_reg_loss_weight=2.0",
            "model.roi_heads.score_thresh_test=0.3",
            "test.detections_per_image=7",
        ]
    )
    m = FastRCNNOutputLayers(cfg, ShapeSpec(channels=16))
    assert m.cls_score.out_features == 6 and m.bbox_pred.out_features == 20
    assert m.smooth_l1_beta == 0.25 and m.test_score_thresh == 0.3 and m.test_topk_per_image == 7
    assert m.loss_weight == {"loss_box_reg": 2.0}
    assert tuple(m.box2box_transform.weights) == WEIGHTS
