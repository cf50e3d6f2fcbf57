"""ROIPooler: pool fixed-size features for boxes from one feature map or an FPN pyramid (level chosen per box)."""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from ..layers import ROIAlign, ROIPool, cat, nonzero_tuple, shapes_to_tensor
from ..layers.roi_align import can_pool_in_threads, pool_rois_in_threads
from ..layers.wrappers import is_exporting
from ..structures import Boxes

__all__ = ["ROIPooler", "assign_boxes_to_levels", "convert_boxes_to_pooler_format"]

_POOLER_TYPES = ("ROIAlign", "ROIAlignV2", "ROIPool")


def assign_boxes_to_levels(
    box_lists: list[Boxes],
    min_level: int,
    max_level: int,
    canonical_box_size: int,
    canonical_level: int,
) -> torch.Tensor:
    """FPN level of every box (Eqn. 1 of the FPN paper), as an offset from ``min_level``.

    A box of size ``canonical_box_size`` (sqrt of its area) goes to ``canonical_level``; each doubling of the size
    moves it one level up. Levels are clamped to ``[min_level, max_level]``.

    Args:
        box_lists: one Boxes per image.
    Returns:
        (M,) int64 in ``[0, max_level - min_level]``, M = total number of boxes, in concatenation order.
    """
    box_sizes = torch.sqrt(cat([boxes.area() for boxes in box_lists]))
    # d2-parity: the 1e-8 keeps log2 finite for empty boxes (they land on min_level).
    level_assignments = torch.floor(canonical_level + torch.log2(box_sizes / canonical_box_size + 1e-8))
    level_assignments = torch.clamp(level_assignments, min=min_level, max=max_level)
    return level_assignments.to(torch.int64) - min_level


def _convert_boxes_to_pooler_format(boxes: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
    sizes = sizes.to(device=boxes.device)
    indices = torch.repeat_interleave(torch.arange(len(sizes), dtype=boxes.dtype, device=boxes.device), sizes)
    return cat([indices[:, None], boxes], dim=1)


def convert_boxes_to_pooler_format(box_lists: list[Boxes]) -> torch.Tensor:
    """All boxes as the (M, 5) ``[batch_index, x0, y0, x1, y1]`` rois that ROIAlign / ROIPool take."""
    boxes = torch.cat([x.tensor for x in box_lists], dim=0)
    if not torch.jit.is_scripting():
        if is_exporting():
            # torch.export: the box counts are symbolic sizes, which cannot become the values of a tensor
            indices = [boxes.new_full((x.tensor.shape[0], 1), float(i)) for i, x in enumerate(box_lists)]
            return torch.cat([torch.cat(indices), boxes], dim=1)
    # __len__() rather than len(): under tracing it stays a tensor tied to the input (len() would bake it in)
    sizes = shapes_to_tensor([x.__len__() for x in box_lists])
    return _convert_boxes_to_pooler_format(boxes, sizes)


class ROIPooler(nn.Module):
    """Pools an ``output_size`` feature for each box, from the level of ``x`` that matches the box size."""

    def __init__(
        self,
        output_size: int | Sequence[int],
        scales: Sequence[float],
        sampling_ratio: int,
        pooler_type: str,
        canonical_box_size: int = 224,
        canonical_level: int = 4,
    ) -> None:
        """
        Args:
            output_size: pooled height/width, an int or (h, w).
            scales: 1 / stride of each input feature map, from high to low resolution; a pyramid (each half the
                previous) of powers of 2.
            sampling_ratio: ROIAlign sampling points per bin (0 = adaptive).
            pooler_type: "ROIAlign" (legacy, unaligned), "ROIAlignV2" (aligned, the detectron2 default) or "ROIPool".
            canonical_box_size: box size (sqrt area, pixels) that maps to ``canonical_level``.
            canonical_level: level (log2 stride) for a canonically-sized box; 4 = stride 16.
        """
        super().__init__()
        if isinstance(output_size, int):
            output_size = (output_size, output_size)
        output_size = tuple(int(s) for s in output_size)
        if len(output_size) != 2:
            raise ValueError(f"ROIPooler output_size must be an int or a pair, got {output_size}")
        self.output_size = output_size

        scales = [float(s) for s in scales]
        if not scales:
            raise ValueError("ROIPooler needs at least one scale")
        if pooler_type in ("ROIAlign", "ROIAlignV2"):
            aligned = pooler_type == "ROIAlignV2"
            poolers = [
                ROIAlign(output_size, spatial_scale=s, sampling_ratio=sampling_ratio, aligned=aligned) for s in scales
            ]
        elif pooler_type == "ROIPool":
            poolers = [ROIPool(output_size, spatial_scale=s) for s in scales]
        else:
            raise ValueError(f"Unknown pooler type {pooler_type!r}; expected one of {list(_POOLER_TYPES)}")
        self.level_poolers = nn.ModuleList(poolers)

        # A scale is 1 / stride with stride a power of 2, so its level is -log2(scale).
        min_level = -math.log2(scales[0])
        max_level = -math.log2(scales[-1])
        if not (math.isclose(min_level, round(min_level)) and math.isclose(max_level, round(max_level))):
            raise ValueError(f"ROIPooler scales must be 1 / (power of 2), got {scales}")
        self.min_level = int(round(min_level))
        self.max_level = int(round(max_level))
        if len(scales) != self.max_level - self.min_level + 1 or not 0 <= self.min_level <= self.max_level:
            raise ValueError(f"ROIPooler scales {scales} do not form a pyramid (each half the previous)")
        if canonical_box_size <= 0:
            raise ValueError(f"canonical_box_size must be positive, got {canonical_box_size}")
        self.canonical_level = canonical_level
        self.canonical_box_size = canonical_box_size

    @torch.jit.unused
    def _all_levels_in_threads(self, x: list[torch.Tensor], num_boxes: int) -> bool:
        """All levels pooled by ROIAlign, on the CPU, in inference: one pass over the thread pool for the whole
        pyramid, each piece written straight into its rows of the output."""
        return (
            all(type(p) is ROIAlign for p in self.level_poolers)
            and all(not t.is_quantized for t in x)
            and can_pool_in_threads(x[0], num_boxes)
            and not any(t.requires_grad for t in x)
        )

    @torch.jit.unused
    def _forward_in_threads(
        self, x: list[torch.Tensor], pooler_fmt_boxes: torch.Tensor, level_assignments: torch.Tensor
    ) -> torch.Tensor:
        # every box has a level, so every row of the output is written
        output = x[0].new_empty((pooler_fmt_boxes.shape[0], x[0].shape[1], *self.output_size))
        jobs = []
        for level, pooler in enumerate(self.level_poolers):
            inds = nonzero_tuple(level_assignments == level)[0]
            if inds.numel():
                jobs.append((pooler, x[level], pooler_fmt_boxes[inds].to(x[level].dtype), inds))
        pool_rois_in_threads(output, jobs)
        return output

    def forward(self, x: list[torch.Tensor], box_lists: list[Boxes]) -> torch.Tensor:
        """
        Args:
            x: one (N, C, Hi, Wi) feature map per scale, in the order of ``scales``.
            box_lists: N Boxes, XYXY in input-image pixels.
        Returns:
            (M, C, output_h, output_w), M = total number of boxes, in the order of the concatenated box lists.
        """
        num_levels = len(self.level_poolers)
        if not torch.jit.is_scripting():
            if not isinstance(x, list) or not isinstance(box_lists, list):
                raise TypeError(
                    f"ROIPooler arguments must be lists, got x: {type(x).__name__}, "
                    f"box_lists: {type(box_lists).__name__}"
                )
        if len(x) != num_levels:
            raise ValueError(
                f"ROIPooler was built for {num_levels} feature maps (num_level_assignments={num_levels}), "
                f"but x is a list of {len(x)} Tensors"
            )
        if len(box_lists) != x[0].size(0):
            raise ValueError(
                f"ROIPooler: x[0] has batch size {x[0].size(0)}, but box_lists has length {len(box_lists)}"
            )
        num_channels = x[0].shape[1]
        if len(box_lists) == 0:
            return x[0].new_zeros((0, num_channels, self.output_size[0], self.output_size[1]))

        pooler_fmt_boxes = convert_boxes_to_pooler_format(box_lists)
        if num_levels == 1:
            return self.level_poolers[0](x[0], pooler_fmt_boxes)

        level_assignments = assign_boxes_to_levels(
            box_lists, self.min_level, self.max_level, self.canonical_box_size, self.canonical_level
        )
        if not torch.jit.is_scripting():
            if self._all_levels_in_threads(x, pooler_fmt_boxes.shape[0]):
                return self._forward_in_threads(x, pooler_fmt_boxes, level_assignments)
        output = x[0].new_zeros((pooler_fmt_boxes.shape[0], num_channels, self.output_size[0], self.output_size[1]))
        # One pooling call per level over all images' boxes.
        for level, pooler in enumerate(self.level_poolers):
            inds = nonzero_tuple(level_assignments == level)[0]
            # index_put_ rather than output[inds] = ... (pytorch/pytorch#49852 under autocast)
            output.index_put_((inds,), pooler(x[level], pooler_fmt_boxes[inds]).to(output.dtype))
        return output
