"""Recovering from CUDA out-of-memory errors (detectron2's ``detectron2.utils.memory``)."""
from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import torch

__all__ = ["retry_if_cuda_oom"]

logger = logging.getLogger(__name__)

_F = TypeVar("_F", bound=Callable[..., Any])


def _is_cuda_oom(e: BaseException) -> bool:
    return isinstance(e, torch.cuda.OutOfMemoryError) or (
        isinstance(e, RuntimeError) and "CUDA out of memory" in str(e)
    )


@contextmanager
def _ignore_torch_cuda_oom() -> Iterator[None]:
    """Swallow a CUDA OOM raised inside the block; anything else propagates."""
    try:
        yield
    except RuntimeError as e:  # torch.cuda.OutOfMemoryError is a RuntimeError
        if not _is_cuda_oom(e):
            raise


def _to_cpu_if_cuda(x: Any) -> Any:
    device = getattr(x, "device", None)
    if getattr(device, "type", None) == "cuda" and hasattr(x, "to"):
        return x.to(device="cpu")
    return x


def retry_if_cuda_oom(func: _F) -> _F:
    """Wrap ``func`` so that a CUDA out-of-memory error is retried: once after ``torch.cuda.empty_cache()``,
    then with every CUDA argument (anything with ``.device.type == "cuda"`` and ``.to``) moved to the CPU.

    Without an OOM (and on CPU-only machines) the wrapper just calls ``func``. The CPU retry returns CPU
    results, and the function itself must work on CPU inputs; arguments nested in containers are not moved.
    Example: ``retry_if_cuda_oom(pairwise_iou)(boxes1, boxes2)``.
    """

    @functools.wraps(func)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        with _ignore_torch_cuda_oom():
            return func(*args, **kwargs)
        torch.cuda.empty_cache()
        with _ignore_torch_cuda_oom():
            return func(*args, **kwargs)
        logger.info("CUDA out of memory in %s twice; retrying with its inputs on the CPU", func)
        cpu_args = [_to_cpu_if_cuda(x) for x in args]
        cpu_kwargs = {k: _to_cpu_if_cuda(v) for k, v in kwargs.items()}
        return func(*cpu_args, **cpu_kwargs)

    return wrapped  # type: ignore[return-value]
