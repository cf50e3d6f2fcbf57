"""Thin wrappers over torch ops: Conv2d with norm/activation, empty-safe losses, small tensor helpers."""
from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from .batch_norm import FrozenBatchNorm2d

__all__ = [
    "Conv2d",
    "ConvTranspose2d",
    "BatchNorm2d",
    "Linear",
    "interpolate",
    "cat",
    "cross_entropy",
    "empty_input_loss_func_wrapper",
    "nonzero_tuple",
    "move_device_like",
    "shapes_to_tensor",
    "check_if_dynamo_compiling",
    "disable_torch_compiler",
    "is_exporting",
]

_F = TypeVar("_F", bound=Callable[..., Any])

ConvTranspose2d = nn.ConvTranspose2d
BatchNorm2d = nn.BatchNorm2d
Linear = nn.Linear
interpolate = F.interpolate


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` with optional ``norm`` and ``activation`` applied after the convolution.

    Keeps the norm as the submodule ``norm`` so parameter names match detectron2 (``conv1.weight``,
    ``conv1.norm.weight``). A FrozenBatchNorm2d is a fixed per-channel affine, so it is folded into the convolution's
    weight and bias (``conv(x, w * s) + b * s + t``) instead of costing a pass over the output; gradients to the
    weight are the same.
    """

    def __init__(
        self,
        *args,
        norm: nn.Module | None = None,
        activation: Callable[[torch.Tensor], torch.Tensor] | None = None,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.norm = norm
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.numel() == 0 and isinstance(self.norm, nn.SyncBatchNorm):
            raise ValueError("SyncBatchNorm does not support empty inputs in training.")
        if isinstance(self.norm, FrozenBatchNorm2d):
            scale, shift = self.norm.scale_and_shift()
            weight = self.weight * scale.to(self.weight.dtype).view(-1, 1, 1, 1)
            bias = shift if self.bias is None else self.bias * scale + shift
            x = F.conv2d(x, weight, bias.to(weight.dtype), self.stride, self.padding, self.dilation, self.groups)
        else:
            x = F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
            if self.norm is not None:
                x = self.norm(x)
        if self.activation is not None:
            x = self.activation(x)
        return x


def cat(tensors: list[torch.Tensor], dim: int = 0) -> torch.Tensor:
    """``torch.cat`` that skips the copy for a single tensor (a list, or in eager mode a tuple)."""
    if not torch.jit.is_scripting():
        if not isinstance(tensors, (list, tuple)):
            raise TypeError(f"cat() expects a list or tuple of tensors, got {type(tensors).__name__}")
    if len(tensors) == 1:
        return tensors[0]
    return torch.cat(tensors, dim)


def empty_input_loss_func_wrapper(loss_func: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """Make a mean-reduced loss return 0 (connected to the graph) on an empty target instead of NaN."""

    def wrapped(input: torch.Tensor, target: torch.Tensor, *, reduction: str = "mean", **kwargs) -> torch.Tensor:
        if target.numel() == 0 and reduction == "mean":
            return input.sum() * 0.0
        return loss_func(input, target, reduction=reduction, **kwargs)

    return wrapped


cross_entropy = empty_input_loss_func_wrapper(F.cross_entropy)


def nonzero_tuple(x: torch.Tensor) -> list[torch.Tensor]:
    """``x.nonzero(as_tuple=True)`` (one index tensor per dim), also for 0-dim input (treated as 1-element).

    Scriptable: TorchScript has no ``as_tuple`` overload, so the (K, D) index matrix is unbound instead.
    """
    if x.dim() == 0:
        x = x.unsqueeze(0)
    if torch.jit.is_scripting():
        return x.nonzero().unbind(1)
    return list(x.nonzero(as_tuple=True))


def move_device_like(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """``src`` on ``dst``'s device."""
    return src.to(dst.device)


def shapes_to_tensor(x: list[int], device: torch.device | None = None) -> torch.Tensor:
    """A list of ints as a 1-D long tensor; while tracing the entries are 0-dim tensors and are stacked, so that
    the result stays tied to the traced input sizes (``torch.as_tensor`` would record constants)."""
    if not torch.jit.is_scripting():
        if len(x) > 0 and all(isinstance(t, torch.Tensor) for t in x):
            return torch.stack([t.to(device) for t in x])  # type: ignore[union-attr]
    return torch.as_tensor(x, device=device)


def is_exporting() -> bool:
    """True while ``torch.export`` traces the caller (False on torch versions without ``is_exporting``)."""
    fn = getattr(torch.compiler, "is_exporting", None)
    return bool(fn()) if fn is not None else False


def check_if_dynamo_compiling() -> bool:
    """True while ``torch.compile`` (dynamo) traces the caller."""
    if torch.jit.is_scripting():
        return False
    return bool(torch.compiler.is_compiling())


def disable_torch_compiler(func: _F) -> _F:
    """Decorator: run ``func`` eagerly even inside a ``torch.compile``d model (a graph break around it)."""

    @torch.compiler.disable
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return func(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


class _NewEmptyTensorOp(torch.autograd.Function):
    """``x.new_empty(new_shape)`` with a backward that returns an empty gradient of ``x``'s shape (detectron2's
    old empty-tensor helper, kept for code that still imports it)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, new_shape: Sequence[int]) -> torch.Tensor:
        ctx.shape = x.shape
        return x.new_empty(new_shape)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return _NewEmptyTensorOp.apply(grad, ctx.shape), None
