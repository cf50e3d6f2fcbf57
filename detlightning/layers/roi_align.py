"""ROIAlign / ROIPool modules over torchvision.ops."""
from __future__ import annotations

import torch
from torch import nn
from torchvision.ops import roi_align, roi_pool

__all__ = ["ROIAlign", "ROIPool"]


def _check_rois(rois: torch.Tensor) -> None:
    if rois.dim() != 2 or rois.size(1) != 5:
        raise ValueError(f"rois must be (K, 5) [batch_index, x0, y0, x1, y1], got shape {list(rois.shape)}")


class ROIAlign(nn.Module):
    """ROIAlign on (N, C, H, W) features with (K, 5) rois ``[batch_index, x0, y0, x1, y1]`` in image coordinates.

    ``aligned=True`` shifts box coordinates by -0.5 so that pixel centres are sampled correctly ("ROIAlignV2");
    ``aligned=False`` is the legacy Detectron behaviour. Output: (K, C, *output_size).
    """

    def __init__(
        self, output_size: int | tuple[int, int], spatial_scale: float, sampling_ratio: int, aligned: bool = True
    ) -> None:
        super().__init__()
        self.output_size = output_size
        self.spatial_scale = spatial_scale
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned

    def forward(self, input: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
        _check_rois(rois)
        # torchvision's kernel has no quantized variant; quantized features are pooled in float
        features = input.dequantize() if input.is_quantized else input
        return roi_align(
            features,
            rois.to(dtype=features.dtype),
            output_size=self.output_size,
            spatial_scale=self.spatial_scale,
            sampling_ratio=self.sampling_ratio,
            aligned=self.aligned,
        )

    def extra_repr(self) -> str:
        return (
            f"output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
            f"sampling_ratio={self.sampling_ratio}, aligned={self.aligned}"
        )


class ROIPool(nn.Module):
    """Max ROI pooling (Fast R-CNN) with the same calling convention as ROIAlign."""

    def __init__(self, output_size: int | tuple[int, int], spatial_scale: float) -> None:
        super().__init__()
        self.output_size = output_size
        self.spatial_scale = spatial_scale

    def forward(self, input: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
        _check_rois(rois)
        return roi_pool(input, rois.to(dtype=input.dtype), self.output_size, self.spatial_scale)

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}, spatial_scale={self.spatial_scale}"
