"""Non-maximum suppression over torchvision.ops."""
from __future__ import annotations

import torch
from torchvision.ops import boxes as box_ops

from .wrappers import is_exporting

__all__ = ["nms", "batched_nms"]


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Indices (long, by decreasing score) of the boxes (N, 4 XYXY) kept by NMS."""
    return box_ops.nms(boxes.float(), scores.float(), iou_threshold)


def batched_nms(
    boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou_threshold: float
) -> torch.Tensor:
    """NMS applied independently per category ``idxs`` (N,); boxes (N, 4 XYXY), scores (N,).

    Returns kept indices sorted by decreasing score.
    """
    if boxes.dim() != 2 or boxes.size(-1) != 4:
        raise ValueError(f"batched_nms expects boxes of shape (N, 4), got {list(boxes.shape)}")
    if not (boxes.size(0) == scores.size(0) == idxs.size(0)):
        raise ValueError(
            f"batched_nms: boxes, scores and idxs must have equal length, got "
            f"{boxes.size(0)}, {scores.size(0)}, {idxs.size(0)}"
        )
    boxes, scores = boxes.float(), scores.float()
    # Few boxes: torchvision offsets each category's boxes apart and runs one NMS. Many boxes: torchvision runs one
    # NMS per category, but finds each category's members with a full scan, which costs O(categories x boxes) (most
    # of an LVIS model's inference at its 1e-4 score threshold: ~1.2M candidates in 1230 classes). Sorting once by
    # category and splitting gives the same groups, hence the same result, at O(boxes log boxes).
    if torch.jit.is_scripting() or torch.jit.is_tracing():
        return box_ops.batched_nms(boxes, scores, idxs, iou_threshold)
    if is_exporting():
        return _batched_nms_exportable(boxes, scores, idxs, iou_threshold)
    if boxes.numel() <= (4000 if boxes.device.type == "cpu" else 20000):
        return box_ops.batched_nms(boxes, scores, idxs, iou_threshold)
    order = torch.argsort(idxs, stable=True)
    group_sizes = torch.unique_consecutive(idxs[order], return_counts=True)[1].tolist()
    keep_mask = torch.zeros(boxes.size(0), dtype=torch.bool, device=boxes.device)
    for members in torch.split(order, group_sizes):
        keep_mask[members[box_ops.nms(boxes[members], scores[members], iou_threshold)]] = True
    keep = keep_mask.nonzero().squeeze(1)
    return keep[scores[keep].sort(descending=True)[1]]


def _batched_nms_exportable(
    boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou_threshold: float
) -> torch.Tensor:
    """torchvision's coordinate-offset batched NMS without its ``numel() == 0`` branch, which ``torch.export``
    cannot decide for a data-dependent number of boxes: the offset is taken over the boxes and one zero, so that
    an empty input needs no special case."""
    max_coordinate = torch.cat([boxes.reshape(-1), boxes.new_zeros(1)]).max()
    offsets = idxs.to(boxes) * (max_coordinate + 1)
    return box_ops.nms(boxes + offsets[:, None], scores, iou_threshold)
