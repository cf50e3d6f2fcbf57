"""``ImageList``: a batch of differently sized images padded into one tensor, with the true sizes kept."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch.nn import functional as F

__all__ = ["ImageList"]


class ImageList:
    """Images of different sizes padded to a common size and stacked into ``tensor``.

    Attributes:
        tensor: (N, H, W) or (N, C_1, ..., C_K, H, W), padded at the bottom and right.
        image_sizes: list of N (h, w) tuples, the sizes before padding (0-dim tensors while tracing).
    """

    def __init__(self, tensor: torch.Tensor, image_sizes: list[tuple[int, int]]) -> None:
        if not torch.jit.is_scripting():
            if not isinstance(tensor, torch.Tensor):
                raise TypeError(f"ImageList expects a torch.Tensor, got {type(tensor)}")
        if tensor.dim() < 3:
            raise ValueError(f"ImageList tensor must be (N, ..., H, W), got shape {list(tensor.shape)}")
        if len(image_sizes) != tensor.shape[0]:
            raise ValueError(
                f"ImageList got {len(image_sizes)} image sizes for a batch of {tensor.shape[0]} images"
            )
        self.tensor = tensor
        self.image_sizes = image_sizes

    def __len__(self) -> int:
        return len(self.image_sizes)

    def __getitem__(self, idx: int) -> torch.Tensor:
        """Image ``idx`` without its padding: (h, w) or (C_1, ..., C_K, h, w), a view of ``tensor``."""
        if not torch.jit.is_scripting():
            if isinstance(idx, torch.Tensor) and idx.dim() == 0:
                idx = int(idx)
            if not isinstance(idx, (int, np.integer)) or isinstance(idx, bool):
                raise TypeError(f"ImageList indices must be integers, got {type(idx)}")
        size = self.image_sizes[idx]
        return self.tensor[idx, ..., : size[0], : size[1]]

    @torch.jit.unused
    def to(self, *args: Any, **kwargs: Any) -> ImageList:
        return ImageList(self.tensor.to(*args, **kwargs), self.image_sizes)

    @property
    def device(self) -> torch.device:
        return self.tensor.device

    def __repr__(self) -> str:
        return f"ImageList(tensor shape={list(self.tensor.shape)}, image_sizes={self.image_sizes})"

    @staticmethod
    def from_tensors(
        tensors: list[torch.Tensor],
        size_divisibility: int = 0,
        pad_value: float = 0.0,
        padding_constraints: dict[str, int] | None = None,
    ) -> ImageList:
        """Pad ``tensors`` (each (H_i, W_i) or (C_1, ..., C_K, H_i, W_i), same leading dims) into one batch.

        The common size is the per-axis maximum of H_i and W_i, replaced by ``square_size`` x ``square_size``
        when ``padding_constraints["square_size"] > 0``, then rounded up to a multiple of ``size_divisibility``
        (``padding_constraints["size_divisibility"]``, when given, overrides the argument). Padding uses
        ``pad_value``.
        """
        if not torch.jit.is_scripting():
            _check_tensors(tensors)
        square_size = 0
        if padding_constraints is not None:
            square_size = int(padding_constraints.get("square_size", 0))
            if "size_divisibility" in padding_constraints:
                size_divisibility = padding_constraints["size_divisibility"]

        if not torch.jit.is_scripting():
            if torch.jit.is_tracing():
                return _from_tensors_traced(list(tensors), size_divisibility, pad_value, square_size)

        # shape entries are ints (eager, scripting) or symbolic sizes under torch.export: no int() (it would fix
        # the exported graph to the example's image size)
        image_sizes = [(im.shape[-2], im.shape[-1]) for im in tensors]
        max_h, max_w = 0, 0
        for h_i, w_i in image_sizes:
            max_h, max_w = max(max_h, h_i), max(max_w, w_i)
        if square_size > 0:
            if square_size < max(max_h, max_w):
                raise ValueError(
                    f"padding_constraints square_size={square_size} is smaller than the largest image side "
                    f"({max_h}x{max_w}); padding cannot shrink images"
                )
            max_h = max_w = square_size
        if size_divisibility > 1:
            stride = int(size_divisibility)
            max_h = (max_h + stride - 1) // stride * stride
            max_w = (max_w + stride - 1) // stride * stride

        if len(tensors) == 1:
            h, w = image_sizes[0]
            # a single F.pad is slightly faster than allocating and copying
            batched = F.pad(tensors[0], [0, max_w - w, 0, max_h - h], value=pad_value).unsqueeze_(0)
        else:
            batch_shape = [len(tensors)] + list(tensors[0].shape[:-2]) + [max_h, max_w]
            batched = tensors[0].new_full(batch_shape, pad_value)
            for i, img in enumerate(tensors):
                batched[i, ..., : img.shape[-2], : img.shape[-1]].copy_(img)
        return ImageList(batched.contiguous(), image_sizes)


def _check_tensors(tensors: Sequence[torch.Tensor]) -> None:
    if not isinstance(tensors, (list, tuple)):
        raise TypeError(f"ImageList.from_tensors expects a list or tuple of tensors, got {type(tensors)}")
    if len(tensors) == 0:
        raise ValueError("ImageList.from_tensors got an empty list of tensors")
    for i, t in enumerate(tensors):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"ImageList.from_tensors: element {i} is a {type(t)}, expected a torch.Tensor")
        if t.dim() < 2:
            raise ValueError(
                f"ImageList.from_tensors: element {i} has shape {tuple(t.shape)}, expected (..., H, W)"
            )
        if t.shape[:-2] != tensors[0].shape[:-2]:
            raise ValueError(
                f"ImageList.from_tensors: element {i} has leading dims {tuple(t.shape[:-2])}, but element 0 has "
                f"{tuple(tensors[0].shape[:-2])}; all images must agree on every dim but the last two"
            )


def _traced_size(shape: Sequence[Any]) -> torch.Tensor:
    """(2,) int64 (h, w); while tracing, the entries of ``tensor.shape`` are 0-dim tensors tied to the input."""
    if all(isinstance(s, torch.Tensor) for s in shape):
        return torch.stack(list(shape))
    return torch.tensor([int(s) for s in shape], dtype=torch.int64)


def _from_tensors_traced(
    tensors: list[torch.Tensor], size_divisibility: int, pad_value: float, square_size: int
) -> ImageList:
    # Under tracing the sizes must stay tensors so the traced graph works for other input sizes.
    # (torch.as_tensor would detach a traced size from the graph and record it as a constant)
    sizes = [_traced_size(im.shape[-2:]) for im in tensors]
    max_size = torch.stack(sizes).max(0).values
    if square_size > 0:
        max_size = torch.full_like(max_size, square_size)
    if size_divisibility > 1:
        stride = int(size_divisibility)
        max_size = (max_size + (stride - 1)).div(stride, rounding_mode="floor") * stride
    if len(tensors) == 1:
        size = sizes[0]
        batched = F.pad(tensors[0], [0, max_size[1] - size[1], 0, max_size[0] - size[0]], value=pad_value)
        batched = batched.unsqueeze(0)
    else:
        batch_shape = [len(tensors), *tensors[0].shape[:-2], *max_size]
        batched = tensors[0].new_full(batch_shape, pad_value)
        for i, img in enumerate(tensors):
            batched[i, ..., : img.shape[-2], : img.shape[-1]].copy_(img)
    return ImageList(batched.contiguous(), sizes)
