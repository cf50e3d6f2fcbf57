"""Memory layouts for the CPU fast path.

oneDNN, which runs PyTorch's CPU convolutions, works natively in channels-last (NHWC) memory: fed NCHW tensors it
reorders every input and output, which costs about a quarter of a ResNet-50-FPN's convolution time at 800x1200.
Convolution outputs keep the layout of their input, so switching the image batch once at the entry of a
convolutional backbone keeps the whole backbone, FPN, RPN head and dense heads in channels-last. The values are the
same: only the order of the elements in memory changes, never a shape.

On CUDA the layout is left alone (cuDNN's best layout depends on dtype and GPU generation).
"""
from __future__ import annotations

import torch

from .wrappers import check_if_dynamo_compiling, is_exporting

__all__ = ["cpu_channels_last", "nchw_contiguous", "nchw_for_pooling", "is_plain_eager"]


def is_plain_eager() -> bool:
    """False while TorchScript scripts/traces, ``torch.compile`` traces or ``torch.export`` exports the caller: the
    blocked NCHW copy and the threaded ROIAlign are eager-mode optimisations that those tracers need not see."""
    if torch.jit.is_scripting() or torch.jit.is_tracing():
        return False
    return not (check_if_dynamo_compiling() or is_exporting())


def cpu_channels_last(x: torch.Tensor) -> torch.Tensor:
    """``x`` in channels-last memory when it is a 4-d CPU tensor; otherwise ``x`` unchanged. (Also under
    TorchScript, tracing and ``torch.export``, so that exported models compute exactly what the eager one does.)"""
    if x.dim() == 4 and x.device.type == "cpu":
        return x.contiguous(memory_format=torch.channels_last)
    return x


# pixels per block of the channels-last -> NCHW copy: a block's source rows and destination columns stay in cache
_TRANSPOSE_BLOCK = 512


def nchw_contiguous(x: torch.Tensor) -> torch.Tensor:
    """``x.contiguous()``, with a faster copy out of 4-d channels-last memory on the CPU in eager mode.

    torch's generic copy from NHWC to NCHW walks the destination with a stride of C in the source and runs at a
    third of memory speed here; copying blocks of ``_TRANSPOSE_BLOCK`` pixels (each an (P, C) -> (C, P) transpose
    that fits in cache) is ~2.5x faster. The values are copied, never computed.
    """
    if not torch.jit.is_scripting():
        if (
            x.dim() == 4
            and x.device.type == "cpu"
            and not x.is_contiguous()
            and x.is_contiguous(memory_format=torch.channels_last)
            and not (torch.is_grad_enabled() and x.requires_grad)  # autograd would chain a CopySlices per block
            and is_plain_eager()
        ):
            return _blocked_nchw_copy(x)
    return x.contiguous()


def _blocked_nchw_copy(x: torch.Tensor) -> torch.Tensor:
    n, c, h, w = x.shape
    source = x.permute(0, 2, 3, 1).reshape(n, h * w, c)  # a view: the memory is already (N, H, W, C)
    out = torch.empty((n, c, h * w), dtype=x.dtype)
    for start in range(0, h * w, _TRANSPOSE_BLOCK):
        end = start + _TRANSPOSE_BLOCK
        out[:, :, start:end].copy_(source[:, start:end].transpose(1, 2))
    return out.view(n, c, h, w)


def nchw_for_pooling(features: dict[str, torch.Tensor], names: list[str]) -> dict[str, torch.Tensor]:
    """``features`` with the CPU maps named in ``names`` in NCHW memory, converted once for all the ROI poolers of
    a forward pass (torchvision's CPU ROIAlign reads NCHW and would otherwise convert at every pooler call)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in features.items():
        out[key] = value
    for name in names:
        if name in out:
            x = out[name]
            if x.dim() == 4 and x.device.type == "cpu" and not x.is_contiguous():
                out[name] = nchw_contiguous(x)
    return out
