"""find_top_rpn_proposals (per-level top-k, clipping, size filter, per-level NMS, post-NMS top-k) and
add_ground_truth_to_proposals, checked against hand-computed expectations."""
from __future__ import annotations

import math

import pytest
import torch

from detlightning.modeling.proposal_generator.proposal_utils import (
    add_ground_truth_to_proposals,
    find_top_rpn_proposals,
)
from detlightning.structures import Boxes, Instances

# image (h, w) = (20, 30)
# level 0: a, b (IoU(a, b) = 81/100 -> suppressed by a), c (clipped to [0, 0, 8, 8]: IoU with a = 0.64, kept),
#          d (valid, but 4th best of its level: cut by pre_nms_topk=3)
# level 1: e (same box as a but another level: not suppressed), f (best score, but clipped to width 0.5 < min size 1),
#          g (kept)
LEVEL0_BOXES = [[0, 0, 10, 10], [1, 1, 10, 10], [-5, -5, 8, 8], [20, 0, 28, 10]]
LEVEL0_LOGITS = [5.0, 4.0, 3.0, -1.0]
LEVEL1_BOXES = [[0, 0, 10, 10], [29.5, 5, 35, 15], [12, 12, 25, 19]]
LEVEL1_LOGITS = [4.5, 6.0, 2.0]


def _hand_case(post_nms_topk: int, training: bool = False) -> list[Instances]:
    proposals = [torch.tensor([LEVEL0_BOXES]), torch.tensor([LEVEL1_BOXES])]
    logits = [torch.tensor([LEVEL0_LOGITS]), torch.tensor([LEVEL1_LOGITS])]
    return find_top_rpn_proposals(
        proposals, logits, [(20, 30)], nms_thresh=0.7, pre_nms_topk=3, post_nms_topk=post_nms_topk,
        min_box_size=1.0, training=training,
    )


def test_hand_case_topk_clip_min_size_and_per_level_nms():
    (res,) = _hand_case(post_nms_topk=10)
    assert res.image_size == (20, 30)
    expected_boxes = [[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 8, 8], [12, 12, 25, 19]]  # a, e, c (clipped), g
    expected_logits = [5.0, 4.5, 3.0, 2.0]
    assert isinstance(res.proposal_boxes, Boxes)
    torch.testing.assert_close(res.proposal_boxes.tensor, torch.tensor(expected_boxes, dtype=torch.float32))
    torch.testing.assert_close(res.objectness_logits, torch.tensor(expected_logits))


def test_post_nms_topk_keeps_the_best_over_all_levels():
    (res,) = _hand_case(post_nms_topk=3)
    torch.testing.assert_close(res.objectness_logits, torch.tensor([5.0, 4.5, 3.0]))
    assert len(res.proposal_boxes) == 3


def test_batch_of_images_is_handled_per_image():
    # image 0 as in the hand case; image 1 (h, w) = (8, 8) with reversed scores on level 0
    p0 = torch.tensor([LEVEL0_BOXES, LEVEL0_BOXES])
    p1 = torch.tensor([LEVEL1_BOXES, LEVEL1_BOXES])
    l0 = torch.tensor([LEVEL0_LOGITS, [1.0, 2.0, 3.0, 4.0]])
    l1 = torch.tensor([LEVEL1_LOGITS, [0.0, 0.0, 0.0]])
    res = find_top_rpn_proposals([p0, p1], [l0, l1], [(20, 30), (8, 8)], 0.7, 3, 10, 1.0, False)
    torch.testing.assert_close(res[0].objectness_logits, torch.tensor([5.0, 4.5, 3.0, 2.0]))
    # image 1, level 0 top-3: d (4.0) -> clipped [8, 0, 8, 8] empty; c (3.0) -> [0, 0, 8, 8];
    # b (2.0) -> [1, 1, 8, 8] IoU with c = 49/64 > 0.7 suppressed.
    # level 1 (all 0.0): a-like [0, 0, 8, 8] kept (other level); f -> [8, 5, 8, 8] empty; g -> [8, 8, 8, 8] empty.
    assert res[1].image_size == (8, 8)
    torch.testing.assert_close(res[1].proposal_boxes.tensor, torch.tensor([[0.0, 0, 8, 8], [0, 0, 8, 8]]))
    torch.testing.assert_close(res[1].objectness_logits, torch.tensor([3.0, 0.0]))


def test_non_finite_predictions_raise_in_training_and_are_dropped_in_inference():
    proposals = [torch.tensor([[[0, 0, 10, 10], [0, 0, float("nan"), 5]]])]
    logits = [torch.tensor([[1.0, 2.0]])]
    with pytest.raises(FloatingPointError, match="Inf/NaN"):
        find_top_rpn_proposals(proposals, logits, [(20, 20)], 0.7, 10, 10, 0.0, training=True)
    (res,) = find_top_rpn_proposals(proposals, logits, [(20, 20)], 0.7, 10, 10, 0.0, training=False)
    torch.testing.assert_close(res.proposal_boxes.tensor, torch.tensor([[0.0, 0, 10, 10]]))
    logits_inf = [torch.tensor([[float("inf"), 2.0]])]
    proposals_ok = [torch.tensor([[[0, 0, 10, 10], [10, 10, 15, 15]]], dtype=torch.float32)]
    (res,) = find_top_rpn_proposals(proposals_ok, logits_inf, [(20, 20)], 0.7, 10, 10, 0.0, training=False)
    torch.testing.assert_close(res.objectness_logits, torch.tensor([2.0]))


def test_add_ground_truth_to_proposals():
    props = Instances((30, 30))
    props.proposal_boxes = Boxes(torch.tensor([[0.0, 0, 5, 5], [1, 1, 9, 9]]))
    props.objectness_logits = torch.tensor([0.5, -0.5])
    gt = Instances((30, 30))
    gt.gt_boxes = Boxes(torch.tensor([[2.0, 2, 20, 20]]))
    gt.gt_classes = torch.tensor([1])

    for g in (gt, gt.gt_boxes):  # Instances or plain Boxes
        (out,) = add_ground_truth_to_proposals([g], [props])
        assert len(out) == 3
        torch.testing.assert_close(out.proposal_boxes.tensor[2], torch.tensor([2.0, 2, 20, 20]))
        torch.testing.assert_close(out.objectness_logits[:2], props.objectness_logits)
        # logit of P = 1 - 1e-10: log(p / (1 - p)) ~ log(1e10)
        assert out.objectness_logits[2].item() == pytest.approx(math.log(1e10), rel=1e-5)
        assert set(out.get_fields()) == {"proposal_boxes", "objectness_logits"}

    with pytest.raises(ValueError, match="same length"):
        add_ground_truth_to_proposals([gt, gt], [props])
    props.extra = torch.zeros(2)
    with pytest.raises(ValueError, match="extra"):
        add_ground_truth_to_proposals([gt], [props])
