"""``Keypoints`` and the conversions between keypoints and the keypoint head's heatmaps."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch.nn import functional as F

from .boxes import Boxes

__all__ = ["Keypoints", "heatmaps_to_keypoints"]


class Keypoints:
    """Keypoints of N instances: ``tensor`` is (N, K, 3) float32 of (x, y, visibility) in image pixels.

    Visibility follows COCO: 0 = not labelled, 1 = labelled but hidden, 2 = visible. Continuous coordinates use
    Heckbert's convention: pixel index d covers [d, d + 1), its centre is d + 0.5.
    """

    def __init__(self, keypoints: torch.Tensor | np.ndarray | list) -> None:
        device = keypoints.device if isinstance(keypoints, torch.Tensor) else torch.device("cpu")
        keypoints = torch.as_tensor(keypoints, dtype=torch.float32, device=device)
        if keypoints.dim() != 3 or keypoints.shape[2] != 3:
            raise ValueError(f"Keypoints expects a tensor of shape (N, K, 3), got {tuple(keypoints.shape)}")
        self.tensor = keypoints

    def __len__(self) -> int:
        return self.tensor.size(0)

    def to(self, *args: Any, **kwargs: Any) -> Keypoints:
        return type(self)(self.tensor.to(*args, **kwargs))

    @property
    def device(self) -> torch.device:
        return self.tensor.device

    def to_heatmap(self, boxes: torch.Tensor | Boxes, heatmap_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Training targets for the keypoint head: where each keypoint falls in a ``heatmap_size`` grid laid over
        its instance's box.

        Args:
            boxes: (N, 4) XYXY, one box per instance.
            heatmap_size: side S of the square heatmap.
        Returns:
            heatmaps: (N, K) int64 flat index ``y * S + x`` of the keypoint's cell (0 where invalid).
            valid: (N, K) int64, 1 where the keypoint is labelled (visibility > 0) and inside the box.
        """
        rois = boxes.tensor if isinstance(boxes, Boxes) else boxes
        return _keypoints_to_heatmap(self.tensor, rois, heatmap_size)

    def __getitem__(self, item: int | slice | torch.Tensor) -> Keypoints:
        """Index like a tensor; always returns ``Keypoints`` (an int gives one instance, shape (1, K, 3))."""
        if isinstance(item, (int, np.integer)) and not isinstance(item, bool):
            return Keypoints(self.tensor[int(item)].unsqueeze(0))
        return Keypoints(self.tensor[item])

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(num_instances={len(self.tensor)})"

    @staticmethod
    def cat(keypoints_list: Sequence[Keypoints]) -> Keypoints:
        """Concatenate a non-empty list of ``Keypoints`` with the same K."""
        if not isinstance(keypoints_list, (list, tuple)) or len(keypoints_list) == 0:
            raise ValueError("Keypoints.cat expects a non-empty list of Keypoints")
        for k in keypoints_list:
            if not isinstance(k, Keypoints):
                raise TypeError(f"Keypoints.cat expects only Keypoints, got an element of type {type(k)}")
        return type(keypoints_list[0])(torch.cat([k.tensor for k in keypoints_list], dim=0))


def _keypoints_to_heatmap(
    keypoints: torch.Tensor, rois: torch.Tensor, heatmap_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """keypoints (N, K, 3), rois (N, 4) XYXY -> (heatmaps (N, K) int64 flat cell index, valid (N, K) int64).

    A keypoint at continuous x maps to cell floor((x - x0) * S / w). Those exactly on the right/bottom box edge
    would land in cell S; they are put into the last cell instead.
    """
    if rois.numel() == 0:
        return rois.new().long(), rois.new().long()
    if len(rois) != len(keypoints):
        raise ValueError(f"to_heatmap got {len(rois)} boxes for {len(keypoints)} instances")
    offset_x = rois[:, 0][:, None]
    offset_y = rois[:, 1][:, None]
    scale_x = (heatmap_size / (rois[:, 2] - rois[:, 0]))[:, None]
    scale_y = (heatmap_size / (rois[:, 3] - rois[:, 1]))[:, None]

    x = keypoints[..., 0]
    y = keypoints[..., 1]
    x_on_edge = x == rois[:, 2][:, None]
    y_on_edge = y == rois[:, 3][:, None]

    x = ((x - offset_x) * scale_x).floor().long()
    y = ((y - offset_y) * scale_y).floor().long()
    x[x_on_edge] = heatmap_size - 1
    y[y_on_edge] = heatmap_size - 1

    valid_loc = (x >= 0) & (y >= 0) & (x < heatmap_size) & (y < heatmap_size)
    vis = keypoints[..., 2] > 0
    # d2-parity: valid is an int64 0/1 tensor, not bool
    valid = (valid_loc & vis).long()
    heatmaps = (y * heatmap_size + x) * valid
    return heatmaps, valid


@torch.jit.script_if_tracing
def heatmaps_to_keypoints(maps: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
    """Read keypoint locations off the keypoint head's heatmap logits.

    Args:
        maps: (R, K, H, W) heatmap logits, one map per ROI and keypoint.
        rois: (R, 4) XYXY boxes the maps were predicted in.
    Returns:
        (R, K, 4) float: (x, y, logit, score) per keypoint, x/y in image pixels.

    Each map is resized bicubically to the ROI's size in pixels (rounded up) and its argmax cell d becomes the
    continuous coordinate d + 0.5 (as in ``Keypoints.to_heatmap``), scaled back by the rounding correction.
    The score is a softmax over the resized map normalised by the sum over the original-resolution map, so that
    scores of boxes of different size compare.
    """
    maps, rois = maps.detach(), rois.detach()
    num_rois, num_keypoints = maps.shape[:2]
    origin_xy = rois[:, :2]
    box_wh = (rois[:, 2:] - rois[:, :2]).clamp(min=1)  # (R, 2) ROI width, height in pixels
    resized_wh = box_wh.ceil()
    # A map cell of the resized map is ``box / ceil(box)`` pixels wide: undo the round-up when mapping back.
    cell_xy = box_wh / resized_wh
    # one host sync for all output sizes instead of one per ROI (annotated: scripted when traced)
    out_sizes: list[list[int]] = torch.flip(resized_wh, [1]).to(torch.int64).tolist()
    kp_index = torch.arange(num_keypoints, device=maps.device)
    result = maps.new_zeros(num_rois, num_keypoints, 4)

    # Each ROI is resized to its own size, which no single batched op does; the loop is over ROIs only.
    for i in range(num_rois):
        size = (out_sizes[i][0], out_sizes[i][1])
        resized = F.interpolate(maps[i : i + 1], size=size, mode="bicubic", align_corners=False)[0]
        flat = resized.reshape(num_keypoints, -1)
        # Softmax over the resized map, but normalised by the sum at the original map resolution.
        peak = flat.max(1).values.view(num_keypoints, 1, 1)
        denom = (maps[i] - peak).exp_().sum((1, 2), keepdim=True)
        scores = (resized - peak).exp_() / denom

        map_w = resized.shape[2]
        best = flat.argmax(1)
        col = best % map_w
        row = torch.div(best - col, map_w, rounding_mode="floor")
        cell_centre = torch.stack([col, row], dim=1).float() + 0.5
        result[i, :, :2] = cell_centre * cell_xy[i] + origin_xy[i]
        result[i, :, 2] = resized[kp_index, row, col]
        result[i, :, 3] = scores[kp_index, row, col]

    return result
