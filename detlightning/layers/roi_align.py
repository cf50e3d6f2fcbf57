"""ROIAlign / ROIPool modules over torchvision.ops."""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import torch
from torch import nn
from torchvision.ops import roi_align, roi_pool

from .memory_format import is_plain_eager, nchw_contiguous

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
        rois = rois.to(dtype=features.dtype)
        if not torch.jit.is_scripting():
            if can_pool_in_threads(features, rois.shape[0]):
                return self._forward_in_threads(features, rois)
        return roi_align(
            features,
            rois,
            output_size=self.output_size,
            spatial_scale=self.spatial_scale,
            sampling_ratio=self.sampling_ratio,
            aligned=self.aligned,
        )

    @torch.jit.unused
    def _forward_in_threads(self, features: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
        output = features.new_empty((rois.shape[0], features.shape[1], *self._output_hw()))
        pool_rois_in_threads(output, [(self, features, rois, None)])
        return output

    @torch.jit.unused
    def _output_hw(self) -> tuple[int, int]:
        size = self.output_size
        return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))

    def extra_repr(self) -> str:
        return (
            f"output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
            f"sampling_ratio={self.sampling_ratio}, aligned={self.aligned}"
        )


class _ThreadPool:
    """A process-wide thread pool of ``torch.get_num_threads()`` workers, made again after a fork."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._key: tuple[int, int] = (0, 0)

    @property
    def size(self) -> int:
        return max(1, torch.get_num_threads())

    def pool(self) -> ThreadPoolExecutor:
        key = (os.getpid(), self.size)
        with self._lock:
            if self._pool is None or self._key != key:
                # after a fork the parent's worker threads do not exist in the child: never reuse that pool
                self._pool = ThreadPoolExecutor(max_workers=key[1], thread_name_prefix="roi_align")
                self._key = key
            return self._pool


_ROI_THREADS = _ThreadPool()
# below this many rois per thread, starting the threads costs more than it saves
_MIN_ROIS_PER_THREAD = 16


def can_pool_in_threads(features: torch.Tensor, num_rois: int) -> bool:
    """Whether :func:`pool_rois_in_threads` applies: plain eager CPU inference (grad mode and autocast are
    thread-local and would not follow the work into the pool's threads) with enough rois for every thread."""
    if features.device.type != "cpu" or _ROI_THREADS.size < 2 or num_rois < _MIN_ROIS_PER_THREAD * _ROI_THREADS.size:
        return False
    if torch.is_grad_enabled() and features.requires_grad:
        return False
    if torch.is_autocast_enabled("cpu"):
        return False
    return is_plain_eager()


# height in image pixels of the bands of the raster order in which rois are pooled
_SORT_BAND = 16


def _raster_order(rois: torch.Tensor) -> torch.Tensor:
    """Indices ordering (K, 5) rois by batch image, band of centre y, then centre x."""
    cx = (rois[:, 1] + rois[:, 3]) * 0.5
    band = torch.floor((rois[:, 2] + rois[:, 4]) * (0.5 / _SORT_BAND))
    width = float(cx.abs().max()) + 1.0 if rois.shape[0] else 1.0
    height = float(band.abs().max()) + 1.0 if rois.shape[0] else 1.0
    key = (rois[:, 0].double() * height + band.double()) * width + cx.double()
    return key.argsort()


def pool_rois_in_threads(
    output: torch.Tensor, jobs: list[tuple[ROIAlign, torch.Tensor, torch.Tensor, torch.Tensor | None]]
) -> None:
    """Run ROIAlign jobs ``(pooler, features, rois, rows)`` on all cores, writing each job's result to
    ``output[rows]`` (``rows`` None: all of ``output``).

    torchvision's CPU kernel is single-threaded; it releases the GIL, so slices of the rois pooled in parallel
    threads use every core. Each roi is computed by the same kernel as before: the result is bit-identical.
    """
    threads = _ROI_THREADS.size
    total = sum(int(rois.shape[0]) for _, _, rois, _ in jobs)
    # ~8 pieces a thread: a roi costs in proportion to its area, so equal counts are not equal work
    piece = max(_MIN_ROIS_PER_THREAD, -(-total // (8 * threads)))
    tasks = []
    for pooler, features, rois, rows in jobs:
        features = nchw_contiguous(features)  # once here, not once per piece inside the kernel
        # Pool the rois in raster order of their centres (bands of _SORT_BAND pixels): neighbouring rois read the
        # same feature rows, which then come from cache (proposals crowd around objects). Results go to their rows.
        order = _raster_order(rois)
        rois = rois[order]
        rows = order if rows is None else rows[order]
        for start in range(0, int(rois.shape[0]), piece):
            end = start + piece
            tasks.append((pooler, features, rois[start:end], rows[start:end]))
    inference = torch.is_inference_mode_enabled()

    def run(task) -> None:
        pooler, features, rois, target = task
        with torch.inference_mode(inference), torch.no_grad():
            pooled = roi_align(
                features, rois, pooler._output_hw(), pooler.spatial_scale, pooler.sampling_ratio, pooler.aligned
            )
            output.index_put_((target,), pooled)

    for _ in _ROI_THREADS.pool().map(run, tasks):
        pass


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
