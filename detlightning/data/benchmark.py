"""Measure the training data loader alone: images per second delivered by ``build_detection_train_loader``."""
from __future__ import annotations

import logging
import time
from typing import Any

__all__ = ["benchmark_train_loader"]

logger = logging.getLogger(__name__)


def benchmark_train_loader(cfg: Any, num_iters: int = 100, *, warmup_iters: int = 5) -> float:
    """Images/second of the training loader of ``cfg`` over ``num_iters`` batches (after ``warmup_iters``).
    The datasets of ``cfg.datasets.train`` must be registered (``detlightning.cli.setup_cfg`` does that)."""
    from .build import build_detection_train_loader

    if num_iters <= 0:
        raise ValueError(f"num_iters must be positive, got {num_iters}")
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
