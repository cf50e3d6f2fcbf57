"""Non-maximum suppression over torchvision.ops."""
from __future__ import annotations

import torch
from torchvision.ops import boxes as box_ops

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
        raise ValueError(f"batched_nms expects boxes of shape (N, 4), got {tuple(boxes.shape)}")
    if not (boxes.size(0) == scores.size(0) == idxs.size(0)):
        raise ValueError(
            f"batched_nms: boxes, scores and idxs must have equal length, got "
            f"{boxes.size(0)}, {scores.size(0)}, {idxs.size(0)}"
        )
    return box_ops.batched_nms(boxes.float(), scores.float(), idxs, iou_threshold)
