"""Pasting box-frame mask predictions (e.g. 28x28) into full-image masks, as Mask R-CNN inference does."""
from __future__ import annotations

import math
from typing import Any

import torch
from torch.nn import functional as F

__all__ = ["paste_masks_in_image", "pad_masks", "scale_boxes"]

BYTES_PER_FLOAT = 4
# GPU pastes whole chunks of masks at full image size at once; this caps the memory one chunk may take
GPU_MEM_LIMIT = 1024**3


def _do_paste_mask(
    masks: torch.Tensor, boxes: torch.Tensor, img_h: int, img_w: int, skip_empty: bool = True
) -> tuple[torch.Tensor, tuple[slice, ...]]:
    """Sample ``masks`` (N, 1, M, M) at the image pixels covered by ``boxes`` (N, 4) XYXY.

    Each output pixel centre (x + 0.5, y + 0.5) is mapped into its box's [-1, 1] frame and read from the mask with
    bilinear ``grid_sample`` (zeros outside the mask). With ``skip_empty`` only the region bounding all boxes
    (plus a pixel of margin) is computed and returned together with its (row, column) slices; otherwise the
    whole image is returned with empty slices. Returns (N, h', w') float.
    """
    device = masks.device
    if skip_empty:
        x0_int, y0_int = torch.clamp(boxes.min(dim=0).values.floor()[:2] - 1, min=0).to(dtype=torch.int32).tolist()
        x1_int = int(torch.clamp(boxes[:, 2].max().ceil() + 1, max=img_w).to(dtype=torch.int32))
        y1_int = int(torch.clamp(boxes[:, 3].max().ceil() + 1, max=img_h).to(dtype=torch.int32))
    else:
        x0_int, y0_int = 0, 0
        x1_int, y1_int = img_w, img_h
    x0, y0, x1, y1 = torch.split(boxes, 1, dim=1)  # each (N, 1)

    n = masks.shape[0]
    img_y = torch.arange(y0_int, y1_int, device=device, dtype=torch.float32) + 0.5
    img_x = torch.arange(x0_int, x1_int, device=device, dtype=torch.float32) + 0.5
    img_y = (img_y - y0) / (y1 - y0) * 2 - 1  # (N, h')
    img_x = (img_x - x0) / (x1 - x0) * 2 - 1  # (N, w')

    gx = img_x[:, None, :].expand(n, img_y.size(1), img_x.size(1))
    gy = img_y[:, :, None].expand(n, img_y.size(1), img_x.size(1))
    grid = torch.stack([gx, gy], dim=3)

    if not masks.dtype.is_floating_point:
        masks = masks.float()
    img_masks = F.grid_sample(masks, grid.to(masks.dtype), align_corners=False)

    if skip_empty:
        return img_masks[:, 0], (slice(y0_int, y1_int), slice(x0_int, x1_int))
    return img_masks[:, 0], ()


def paste_masks_in_image(
    masks: torch.Tensor, boxes: Any, image_shape: tuple[int, int], threshold: float = 0.5
) -> torch.Tensor:
    """Paste per-box masks into images of size ``image_shape``.

    Args:
        masks: (N, M, M) mask probabilities in [0, 1], mask i defined over ``boxes[i]``.
        boxes: (N, 4) XYXY tensor, or a ``Boxes``.
        image_shape: (height, width) of the output.
        threshold: binarisation threshold; a negative value instead returns the soft masks as uint8 in
            [0, 255] (``mask * 255`` truncated), for visualisation.
    Returns:
        (N, height, width) bool masks (uint8 when ``threshold < 0``).

    Pixels are modelled as unit squares with centres at +0.5, and masks are resampled bilinearly
    (``grid_sample``). On CPU each mask is pasted separately over the region its box covers; on GPU masks are
    pasted in chunks over the full image, the chunks sized to stay under ``GPU_MEM_LIMIT``.
    """
    if masks.shape[-1] != masks.shape[-2]:
        raise ValueError(f"paste_masks_in_image supports only square masks, got shape {tuple(masks.shape)}")
    n = len(masks)
    if n == 0:
        return masks.new_empty((0,) + tuple(image_shape), dtype=torch.uint8)
    if not isinstance(boxes, torch.Tensor):
        boxes = boxes.tensor
    device = boxes.device
    if len(boxes) != n:
        raise ValueError(f"paste_masks_in_image got {len(boxes)} boxes for {n} masks")

    img_h, img_w = int(image_shape[0]), int(image_shape[1])
    if device.type == "cpu":
        # on CPU one mask at a time over its own box region does the least work
        num_chunks = n
    else:
        num_chunks = int(math.ceil(n * img_h * img_w * BYTES_PER_FLOAT / GPU_MEM_LIMIT))
        if num_chunks > n:
            raise ValueError(
                f"A single {img_h}x{img_w} mask exceeds GPU_MEM_LIMIT={GPU_MEM_LIMIT} bytes in "
                f"detlightning.layers.mask_ops; raise GPU_MEM_LIMIT"
            )
    chunks = torch.chunk(torch.arange(n, device=device), num_chunks)

    img_masks = torch.zeros(
        n, img_h, img_w, device=device, dtype=torch.bool if threshold >= 0 else torch.uint8
    )
    for inds in chunks:
        masks_chunk, spatial_inds = _do_paste_mask(
            masks[inds, None, :, :], boxes[inds], img_h, img_w, skip_empty=device.type == "cpu"
        )
        if threshold >= 0:
            masks_chunk = masks_chunk >= threshold
        else:
            masks_chunk = (masks_chunk * 255).to(dtype=torch.uint8)
        img_masks[(inds,) + spatial_inds] = masks_chunk
    return img_masks


def pad_masks(masks: torch.Tensor, padding: int) -> tuple[torch.Tensor, float]:
    """Zero-pad (B, M, M) masks by ``padding`` cells per side; returns the padded masks and the scale
    (M + 2 * padding) / M to apply to their boxes (see ``scale_boxes``)."""
    b, m = masks.shape[0], masks.shape[-1]
    pad2 = 2 * padding
    scale = float(m + pad2) / m
    padded = masks.new_zeros((b, m + pad2, m + pad2))
    padded[:, padding:-padding, padding:-padding] = masks
    return padded, scale


def scale_boxes(boxes: torch.Tensor, scale: float) -> torch.Tensor:
    """Scale (B, 4) XYXY boxes about their centres by ``scale``."""
    w_half = (boxes[:, 2] - boxes[:, 0]) * 0.5 * scale
    h_half = (boxes[:, 3] - boxes[:, 1]) * 0.5 * scale
    x_c = (boxes[:, 2] + boxes[:, 0]) * 0.5
    y_c = (boxes[:, 3] + boxes[:, 1]) * 0.5
    return torch.stack([x_c - w_half, y_c - h_half, x_c + w_half, y_c + h_half], dim=1)
