"""How far one model's detections are from another's: the figures the compat parity tests and the fast-path
benchmark report (matched fraction, max box / score differences, mean mask IoU)."""
from __future__ import annotations

import torch

from ..structures import Instances, pairwise_iou
from ..structures.boxes import Boxes

__all__ = ["greedy_box_match", "compare_instances"]


def greedy_box_match(
    ref_boxes: torch.Tensor,
    other_boxes: torch.Tensor,
    ref_classes: torch.Tensor | None = None,
    other_classes: torch.Tensor | None = None,
    iou_threshold: float = 0.99,
) -> tuple[list[int], list[int]]:
    """Match each reference box, in reference order, to the unused other box of the same class (when classes are
    given) with the highest IoU above ``iou_threshold``. Returns the matched (reference, other) index lists."""
    if len(ref_boxes) == 0 or len(other_boxes) == 0:
        return [], []
    iou = pairwise_iou(Boxes(ref_boxes.double()), Boxes(other_boxes.double()))
    if ref_classes is not None and other_classes is not None:
        iou[ref_classes[:, None] != other_classes[None, :]] = -1
    used = torch.zeros(len(other_boxes), dtype=torch.bool)
    ref_idx, other_idx = [], []
    for i in range(len(ref_boxes)):
        row = iou[i].masked_fill(used, -1)
        j = int(row.argmax())
        if row[j] > iou_threshold:
            used[j] = True
            ref_idx.append(i)
            other_idx.append(j)
    return ref_idx, other_idx


def compare_instances(reference: Instances, other: Instances, iou_threshold: float = 0.99) -> dict[str, float]:
    """``match_fraction`` (of the reference detections), ``box`` and ``score`` (max abs differences of the matched
    pairs), ``mask_iou`` (mean, when both have ``pred_masks``) and ``keypoint`` (max abs x/y difference)."""
    ref_idx, other_idx = greedy_box_match(
        reference.pred_boxes.tensor, other.pred_boxes.tensor, reference.pred_classes, other.pred_classes,
        iou_threshold,
    )
    r, o = torch.tensor(ref_idx, dtype=torch.long), torch.tensor(other_idx, dtype=torch.long)
    out = {"match_fraction": len(ref_idx) / max(len(reference), 1), "num_ref": len(reference), "num_other": len(other)}
    matched = len(ref_idx) > 0
    out["box"] = float((reference.pred_boxes.tensor[r] - other.pred_boxes.tensor[o]).abs().max()) if matched else 0.0
    out["score"] = float((reference.scores[r] - other.scores[o]).abs().max()) if matched else 0.0
    if reference.has("pred_masks") and other.has("pred_masks") and matched:
        a = reference.pred_masks[r].flatten(1).bool()
        b = other.pred_masks[o].flatten(1).bool()
        inter, union = (a & b).sum(1).double(), (a | b).sum(1).double()
        out["mask_iou"] = float(torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union)).mean())
    if reference.has("pred_keypoints") and other.has("pred_keypoints") and matched:
        diff = reference.pred_keypoints[r][..., :2] - other.pred_keypoints[o][..., :2]
        out["keypoint"] = float(diff.abs().max())
    return out
