"""detector_postprocess / sem_seg_postprocess against hand-computed results."""
from __future__ import annotations

import pytest
import torch

from detlightning.modeling.postprocessing import detector_postprocess, sem_seg_postprocess
from detlightning.structures import Boxes, Instances, ROIMasks


def _detections() -> Instances:
    r = Instances((10, 20))  # (h, w) the network saw
    r.pred_boxes = Boxes(torch.tensor([[1.0, 1, 5, 5], [18, 8, 21, 11], [21, 1, 25, 5]]))
    r.scores = torch.tensor([0.9, 0.8, 0.7])
    r.pred_classes = torch.tensor([0, 1, 2])
    r.pred_keypoints = torch.tensor([[[1.0, 2.0, 1.0]], [[3.0, 4.0, 0.5]], [[5.0, 6.0, 2.0]]])
    return r


def test_boxes_are_scaled_clipped_and_empty_ones_dropped():
    out = detector_postprocess(_detections(), 20, 60)  # scale_x = 3, scale_y = 2
    assert out.image_size == (20, 60)
    # box 0 -> [3, 2, 15, 10]; box 1 -> [54, 16, 63, 22] clipped to [54, 16, 60, 20];
    # box 2 -> [63, 2, 75, 10] clipped to [60, 2, 60, 10]: empty, dropped
    torch.testing.assert_close(out.pred_boxes.tensor, torch.tensor([[3.0, 2, 15, 10], [54, 16, 60, 20]]))
    torch.testing.assert_close(out.scores, torch.tensor([0.9, 0.8]))
    torch.testing.assert_close(out.pred_classes, torch.tensor([0, 1]))
    # keypoint x * 3, y * 2, score unchanged
    torch.testing.assert_close(out.pred_keypoints, torch.tensor([[[3.0, 4.0, 1.0]], [[9.0, 8.0, 0.5]]]))


def test_proposal_boxes_are_used_without_pred_boxes():
    r = Instances((10, 10))
    r.proposal_boxes = Boxes(torch.tensor([[1.0, 2.0, 3.0, 4.0]]))
    r.objectness_logits = torch.tensor([1.0])
    out = detector_postprocess(r, 5, 20)  # scale_x = 2, scale_y = 0.5
    torch.testing.assert_close(out.proposal_boxes.tensor, torch.tensor([[2.0, 1.0, 6.0, 2.0]]))
    with pytest.raises(ValueError, match="pred_boxes"):
        detector_postprocess(Instances((10, 10), scores=torch.zeros(1)), 10, 10)


@pytest.mark.parametrize("as_roi_masks", [False, True])
def test_masks_are_pasted_into_the_output_image(as_roi_masks: bool):
    r = Instances((10, 10))
    r.pred_boxes = Boxes(torch.tensor([[2.0, 2.0, 6.0, 6.0]]))
    masks = torch.ones(1, 1, 28, 28)
    r.pred_masks = ROIMasks(masks[:, 0]) if as_roi_masks else masks
    out = detector_postprocess(r, 10, 10)
    assert out.pred_masks.shape == (1, 10, 10) and out.pred_masks.dtype == torch.bool
    expected = torch.zeros(10, 10, dtype=torch.bool)
    expected[2:6, 2:6] = True  # pixel centres 2.5 .. 5.5 lie inside the box
    assert torch.equal(out.pred_masks[0], expected)


def test_sem_seg_postprocess_crops_padding_then_resizes():
    logits = torch.full((2, 8, 8), 100.0)  # padding value
    logits[0, :4, :6] = 1.0  # the real (4, 6) image
    logits[1, :4, :6] = -2.0
    out = sem_seg_postprocess(logits, (4, 6), 8, 12)
    assert out.shape == (2, 8, 12)
    # bilinear resize of a constant is that constant: nothing of the padding leaks in
    torch.testing.assert_close(out[0], torch.ones(8, 12))
    torch.testing.assert_close(out[1], torch.full((8, 12), -2.0))
