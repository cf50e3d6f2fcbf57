"""The evaluator protocol (reset / process / evaluate) and the loop that drives a model over a data loader.

``inference_on_dataset`` is detectron2's evaluation loop: the model runs in eval mode under ``torch.no_grad()``,
every (inputs, outputs) pair goes to the evaluator, progress is logged, and the total and per-iteration inference
times are logged in detectron2's format (the first ``min(5, len - 1)`` iterations are warm-up and not timed).
"""
from __future__ import annotations

import datetime
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, MutableSequence
from contextlib import ExitStack, contextmanager
from typing import Any

import torch
from torch import nn

from ..utils.comm import get_world_size, is_main_process
from ..utils.logger import log_every_n_seconds

__all__ = ["DatasetEvaluator", "DatasetEvaluators", "inference_context", "inference_on_dataset"]

logger = logging.getLogger(__name__)


class DatasetEvaluator:
    """Base class of dataset evaluators.

    ``inference_on_dataset`` calls ``reset()`` once, ``process(inputs, outputs)`` for every batch, and finally
    ``evaluate()``. ``evaluate`` returns ``{task: {metric: score}}`` (e.g. ``{"bbox": {"AP50": 80.0}}``), or
    ``None`` / ``{}`` on non-main ranks of a distributed run.
    """

    def reset(self) -> None:
        """Prepare for a new round of evaluation (drop everything accumulated so far)."""

    def process(self, inputs: Any, outputs: Any) -> None:
        """Accumulate one batch: ``inputs`` as given to the model (usually ``list[dict]``), ``outputs`` its return
        value (usually ``list[dict]`` with ``"instances"``, ``"sem_seg"`` or ``"panoptic_seg"``)."""

    def evaluate(self) -> dict[str, Any] | None:
        """Summarise everything processed since ``reset()``: ``{task: {metric: score}}``."""
        return None


class DatasetEvaluators(DatasetEvaluator):
    """Runs several evaluators side by side and merges their results into one dict.

    Two evaluators returning the same top-level key is an error (``ValueError``): one would silently hide the
    other's numbers.
    """

    def __init__(self, evaluators: Iterable[DatasetEvaluator]) -> None:
        super().__init__()
        self._evaluators: list[DatasetEvaluator] = list(evaluators)
        for i, e in enumerate(self._evaluators):
            if not all(callable(getattr(e, m, None)) for m in ("reset", "process", "evaluate")):
                raise TypeError(
                    f"DatasetEvaluators: element {i} ({type(e).__name__}) is not an evaluator "
                    "(needs reset(), process(inputs, outputs) and evaluate())"
                )

    def reset(self) -> None:
        for evaluator in self._evaluators:
            evaluator.reset()

    def process(self, inputs: Any, outputs: Any) -> None:
        for evaluator in self._evaluators:
            evaluator.process(inputs, outputs)

    def evaluate(self) -> OrderedDict[str, Any]:
        # every evaluate() runs on every rank before anything can raise: they may contain collective operations
        all_results = [evaluator.evaluate() for evaluator in self._evaluators]
        results: OrderedDict[str, Any] = OrderedDict()
        for evaluator, result in zip(self._evaluators, all_results):
            if is_main_process() and result is not None:
                for k, v in result.items():
                    if k in results:
                        raise ValueError(
                            f"Different evaluators produce results with the same key {k!r} "
                            f"(the second one is {type(evaluator).__name__})"
                        )
                    results[k] = v
        return results

    def __len__(self) -> int:
        return len(self._evaluators)

    def __iter__(self) -> Iterator[DatasetEvaluator]:
        return iter(self._evaluators)


@contextmanager
def inference_context(model: nn.Module) -> Iterator[None]:
    """Put ``model`` in eval mode for the block and restore its previous ``training`` flag afterwards (also when
    the block raises)."""
    training_mode = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(training_mode)


def inference_on_dataset(
    model: Callable[[Any], Any],
    data_loader: Iterable[Any],
    evaluator: DatasetEvaluator | MutableSequence[DatasetEvaluator] | None,
    callbacks: dict[str, Callable[[], None]] | None = None,
) -> dict[str, Any]:
    """Run ``model`` over ``data_loader`` and evaluate its outputs with ``evaluator``.

    Args:
        model: called as ``model(inputs)`` with each element of ``data_loader``. An ``nn.Module`` is put in eval
            mode for the duration and its previous mode restored; everything runs under ``torch.no_grad()``.
            To evaluate in training mode, wrap the model and override ``eval()``/``train()``.
        data_loader: iterable with a ``len()`` (the number of iterations, used for warm-up, timing and ETA).
        evaluator: a ``DatasetEvaluator``, a list of them (combined with ``DatasetEvaluators``), or ``None`` to
            only benchmark the model.
        callbacks: optional ``{"on_start", "before_inference", "after_inference", "on_end": fn()}``.

    Returns:
        ``evaluator.evaluate()``, with ``None`` replaced by ``{}``.
    """
    num_devices = get_world_size()
    try:
        total = len(data_loader)  # type: ignore[arg-type]
    except TypeError as e:
        raise TypeError(
            f"inference_on_dataset needs a data loader with a fixed length, got {type(data_loader).__name__} "
            "without __len__"
        ) from e
    logger.info("Start inference on %d batches", total)

    if evaluator is None:
        evaluator = DatasetEvaluators([])  # no-op: benchmark only
    elif isinstance(evaluator, MutableSequence):
        evaluator = DatasetEvaluators(evaluator)
    evaluator.reset()
    cb = callbacks or {}
    unknown = set(cb) - {"on_start", "before_inference", "after_inference", "on_end"}
    if unknown:
        raise KeyError(f"unknown inference_on_dataset callbacks {sorted(unknown)}; expected on_start, "
                       "before_inference, after_inference, on_end")

    def _call(name: str) -> None:
        fn = cb.get(name)
        if fn is not None:
            fn()

    # d2-parity: the first min(5, total - 1) iterations are warm-up and excluded from every timing
    num_warmup = max(min(5, total - 1), 0)
    start_time = time.perf_counter()
    total_data_time = total_compute_time = total_eval_time = 0.0
    with ExitStack() as stack:
        if isinstance(model, nn.Module):
            stack.enter_context(inference_context(model))
        stack.enter_context(torch.no_grad())

        start_data_time = time.perf_counter()
        _call("on_start")
        for idx, inputs in enumerate(data_loader):
            total_data_time += time.perf_counter() - start_data_time
            if idx == num_warmup:
                start_time = time.perf_counter()
                total_data_time = total_compute_time = total_eval_time = 0.0

            start_compute_time = time.perf_counter()
            _call("before_inference")
            outputs = model(inputs)
            _call("after_inference")
            if torch.cuda.is_available() and torch.cuda.is_initialized():
                torch.cuda.synchronize()  # CUDA kernels are asynchronous: wait for them to time the model
            total_compute_time += time.perf_counter() - start_compute_time

            start_eval_time = time.perf_counter()
            evaluator.process(inputs, outputs)
            total_eval_time += time.perf_counter() - start_eval_time

            iters_after_start = idx + 1 - num_warmup * int(idx >= num_warmup)
            data_per_iter = total_data_time / iters_after_start
            compute_per_iter = total_compute_time / iters_after_start
            eval_per_iter = total_eval_time / iters_after_start
            total_per_iter = (time.perf_counter() - start_time) / iters_after_start
            if idx >= num_warmup * 2 or compute_per_iter > 5:
                eta = datetime.timedelta(seconds=int(total_per_iter * (total - idx - 1)))
                log_every_n_seconds(
                    logging.INFO,
                    f"Inference done {idx + 1}/{total}. Dataloading: {data_per_iter:.4f} s/iter. "
                    f"Inference: {compute_per_iter:.4f} s/iter. Eval: {eval_per_iter:.4f} s/iter. "
                    f"Total: {total_per_iter:.4f} s/iter. ETA={eta}",
                    n=5,
                    name=__name__,
                )
            start_data_time = time.perf_counter()
        _call("on_end")

    # this worker's time only, measured before any synchronisation inside evaluate()
    total_time = time.perf_counter() - start_time
    timed_iters = max(total - num_warmup, 1)
    # NOTE: detectron2's format; tools grep for these lines
    logger.info(
        "Total inference time: %s (%.6f s / iter per device, on %d devices)",
        str(datetime.timedelta(seconds=total_time)),
        total_time / timed_iters,
        num_devices,
    )
    logger.info(
        "Total inference pure compute time: %s (%.6f s / iter per device, on %d devices)",
        str(datetime.timedelta(seconds=int(total_compute_time))),
        total_compute_time / timed_iters,
        num_devices,
    )

    results = evaluator.evaluate()
    # an evaluator may return None on non-main ranks; {} is easier for callers
    return {} if results is None else results
