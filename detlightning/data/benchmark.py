"""Measure the training data loader alone: images per second delivered by ``build_detection_train_loader``."""
from __future__ import annotations

import logging
import time
from typing import Any

__all__ = ["benchmark_train_loader"]

logger = logging.getLogger(__name__)


def benchmark_train_loader(
    cfg_or_dataset: Any,
    num_iters: int = 100,
    *,
    warmup_iters: int = 5,
    overrides: list[str] | None = None,
) -> float:
    """Images/second of the training loader over ``num_iters`` batches (after ``warmup_iters``).

    ``cfg_or_dataset``: a config (``get_cfg([...])``) or a registered dataset name, for which the default
    config (plus ``overrides``) is composed with ``datasets.train=[name]``.
    """
    from .build import build_detection_train_loader  # noqa: PLC0415

    if isinstance(cfg_or_dataset, str):
        from detlightning.config import get_cfg  # noqa: PLC0415

        cfg = get_cfg([*(overrides or []), f"datasets.train=[{cfg_or_dataset}]"])
    else:
        cfg = cfg_or_dataset
    if num_iters <= 0:
        raise ValueError(f"num_iters must be positive, got {num_iters}")
    from .datasets.shapes import register_shapes_from_cfg  # noqa: PLC0415

    register_shapes_from_cfg(cfg)
    loader = build_detection_train_loader(cfg)
    it = iter(loader)
    for _ in range(warmup_iters):
        next(it)
    num_images = 0
    start = time.perf_counter()
    for _ in range(num_iters):
        num_images += len(next(it))
    elapsed = time.perf_counter() - start
    rate = num_images / elapsed
    logger.info("Train loader: %d images in %.2fs = %.1f images/s", num_images, elapsed, rate)
    return rate
