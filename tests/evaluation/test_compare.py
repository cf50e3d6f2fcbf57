"""detlightning.evaluation.compare: the figures the parity tests and the fast-path benchmark report."""
from __future__ import annotations

import torch

from detlightning.evaluation.compare import compare_instances, greedy_box_match
from detlightning.structures import Boxes, Instances


def _instances(boxes, scores, classes, masks=None) -> Instances:
    inst = Instances((20, 20), pred_boxes=Boxes(torch.tensor(boxes, dtype=torch.float)),
                     scores=torch.tensor(scores), pred_classes=torch.tensor(classes))
    if masks is not None:
        inst.pred_masks = masks
    return inst


def test_identical_instances():
    masks = torch.zeros(2, 20, 20, dtype=torch.bool)
    masks[0, 2:8, 2:8] = True
    masks[1, 10:15, 10:15] = True
    a = _instances([[2, 2, 8, 8], [10, 10, 15, 15]], [0.9, 0.8], [1, 2], masks)
    figures = compare_instances(a, a)
    assert figures == {"match_fraction": 1.0, "num_ref": 2, "num_other": 2, "box": 0.0, "score": 0.0, "mask_iou": 1.0}


def test_differences_are_measured_on_matched_pairs_only():
    ref = _instances([[0, 0, 100, 100], [200, 200, 300, 300], [0, 0, 50, 50]], [0.9, 0.8, 0.7], [1, 1, 2])
    # the first box moved by 0.1 px (IoU 0.998), the second is of another class, the third far away
    other = _instances([[0.1, 0, 100, 100], [200, 200, 300, 300], [60, 60, 90, 90]], [0.85, 0.8, 0.7], [1, 3, 2])
    figures = compare_instances(ref, other)
    assert figures["match_fraction"] == 1 / 3
    assert abs(figures["box"] - 0.1) < 1e-5 and abs(figures["score"] - 0.05) < 1e-6
    # greedy, in reference order: the best unused box of the same class above the threshold
    assert greedy_box_match(ref.pred_boxes.tensor, other.pred_boxes.tensor) == ([0, 1], [0, 1])
