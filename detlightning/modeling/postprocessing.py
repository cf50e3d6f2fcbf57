"""Rescaling model outputs from the resolution the network saw to the resolution the caller asked for."""
from __future__ import annotations

import torch
from torch.nn import functional as F

from ..structures import Boxes, Instances, ROIMasks

__all__ = ["detector_postprocess", "sem_seg_postprocess"]


def detector_postprocess(
    results: Instances,
    output_height: int | torch.Tensor,
    output_width: int | torch.Tensor,
    mask_threshold: float = 0.5,
) -> Instances:
    """Resize raw detector outputs to ``(output_height, output_width)``.

    Boxes (``pred_boxes``, else ``proposal_boxes``) are scaled by ``output / results.image_size`` per axis, clipped
    to the output size, and instances whose box became empty are dropped. ``pred_masks`` (``ROIMasks`` or
    (N, 1, M, M) box-frame mask probabilities) are pasted into (N, H, W) bool image masks thresholded at
    ``mask_threshold``; ``pred_keypoints`` (N, K, 3) x/y are scaled.

    The box (and keypoint) tensors of ``results`` may be modified in place.

    Returns:
        a new ``Instances`` of image size (output_height, output_width).
    """
    if not isinstance(results, Instances):
        raise TypeError(f"detector_postprocess expects Instances, got {type(results).__name__}")
    if isinstance(output_width, torch.Tensor):
        # traced sizes: divide as floats (integer tensors would floor-divide)
        output_width_tmp: float | torch.Tensor = output_width.float()
        output_height_tmp: float | torch.Tensor = output_height.float()
        new_size = torch.stack([output_height, output_width])
    else:
        new_size = (output_height, output_width)
        output_width_tmp = output_width
        output_height_tmp = output_height

    scale_x = output_width_tmp / results.image_size[1]
    scale_y = output_height_tmp / results.image_size[0]
    results = Instances(new_size, **results.get_fields())

    box_field = next((f for f in ("pred_boxes", "proposal_boxes") if results.has(f)), None)
    if box_field is None:
        raise ValueError(
            f"detector_postprocess: predictions must contain 'pred_boxes' or 'proposal_boxes'; fields are "
            f"{list(results.get_fields())}"
        )
    boxes = results.get(box_field)
    boxes.scale(scale_x, scale_y)
    boxes.clip(results.image_size)
    results = results[boxes.nonempty()]

    if results.has("pred_masks"):
        results.pred_masks = _paste_masks(
            results.pred_masks, results.pred_boxes, output_height, output_width, mask_threshold
        )
    if results.has("pred_keypoints"):
        for axis, scale in enumerate((scale_x, scale_y)):  # x, y of (N, K, 3) keypoints; the score is kept
            results.pred_keypoints[:, :, axis] *= scale
    return results


def _paste_masks(
    masks: ROIMasks | torch.Tensor,
    boxes: Boxes,
    height: int | torch.Tensor,
    width: int | torch.Tensor,
    threshold: float,
) -> torch.Tensor:
    """Box-frame mask probabilities (``ROIMasks`` or (N, 1, M, M)) -> (N, height, width) bool image masks."""
    roi_masks = masks if isinstance(masks, ROIMasks) else ROIMasks(masks[:, 0])
    return roi_masks.to_bitmasks(boxes, height, width, threshold).tensor


def sem_seg_postprocess(
    result: torch.Tensor, img_size: tuple[int, int], output_height: int, output_width: int
) -> torch.Tensor:
    """Crop the padding off per-pixel logits and resize them to the requested resolution.

    Args:
        result: (C, H, W) logits at the padded input resolution.
        img_size: (h, w) of the input image inside the padding.
        output_height, output_width: the requested resolution.
    Returns:
        (C, output_height, output_width) logits (bilinear, align_corners=False).
    """
    if result.dim() != 3:
        raise ValueError(f"sem_seg_postprocess expects (C, H, W) logits, got shape {tuple(result.shape)}")
    result = result[:, : img_size[0], : img_size[1]].expand(1, -1, -1, -1)
    return F.interpolate(result, size=(output_height, output_width), mode="bilinear", align_corners=False)[0]
