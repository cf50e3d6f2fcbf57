"""detectron2's training hooks for :class:`~detlightning.engine.train_loop.TrainerBase` loops.

===========================  ==================================================================================
hook                         what it does (when)
===========================  ==================================================================================
``CallbackHook``             calls user functions ``f(trainer)`` at the four events
``IterationTimer``           puts ``time`` per iteration; logs the overall speed after training
``PeriodicWriter``           runs EventWriters every ``period`` iterations and at the last one; closes them
``PeriodicCheckpointer``     ``detlightning.checkpoint.PeriodicCheckpointer``'s schedule, stepped every iteration
``BestCheckpointer``         saves ``model_best`` when the evaluation's ``val_metric`` improves
``LRScheduler``              steps the LR schedule after every iteration; puts the ``lr`` it used
``EvalHook``                 runs ``eval_function()`` every ``eval_period`` iterations and after training
``PreciseBN``                recomputes BatchNorm statistics every ``period`` iterations and at the last one
``TorchProfiler``            ``torch.profiler`` traces of the iterations a predicate selects
``AutogradProfiler``         the same with ``torch.autograd.profiler``
``TorchMemoryStats``         CUDA memory statistics every ``period`` iterations (``max_runs`` times)
===========================  ==================================================================================

The Lightning engine has callbacks in these roles (:mod:`detlightning.engine.callbacks`); the schedule and
BatchNorm helpers are shared with them.
"""
from __future__ import annotations

import datetime
import logging
import math
import operator
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn

from ..checkpoint import PeriodicCheckpointer as _IterationCheckpointer
from ..evaluation.testing import flatten_results_dict
from ..layers.batch_norm import get_bn_modules, update_bn_stats
from ..solver.lr_scheduler import LRMultiplier, ParamScheduler
from ..utils import comm
from ..utils.events import EventWriter
from ..utils.file_io import PathManager
from .train_loop import HookBase

__all__ = [
    "AutogradProfiler",
    "BestCheckpointer",
    "CallbackHook",
    "EvalHook",
    "HookBase",
    "IterationTimer",
    "LRScheduler",
    "PeriodicCheckpointer",
    "PeriodicWriter",
    "PreciseBN",
    "TorchMemoryStats",
    "TorchProfiler",
]

logger = logging.getLogger(__name__)

TrainerFn = Callable[[Any], Any]


def _finishing(trainer: Any) -> bool:
    """Whether the iteration that just ran is the last one."""
    return trainer.iter + 1 == trainer.max_iter


def _due(trainer: Any, period: int) -> bool:
    """Whether the iteration that just ran completes a multiple of ``period`` iterations (never for period <= 0)."""
    return period > 0 and (trainer.iter + 1) % period == 0


class CallbackHook(HookBase):
    """A hook from plain functions, each called with the trainer: ``CallbackHook(after_step=lambda t: ...)``."""

    def __init__(
        self,
        *,
        before_train: TrainerFn | None = None,
        after_train: TrainerFn | None = None,
        before_step: TrainerFn | None = None,
        after_step: TrainerFn | None = None,
    ) -> None:
        self._fns: dict[str, TrainerFn | None] = {
            "before_train": before_train,
            "after_train": after_train,
            "before_step": before_step,
            "after_step": after_step,
        }

    def _call(self, event: str) -> None:
        fn = self._fns.get(event)
        if fn is not None:
            fn(self.trainer)

    def before_train(self) -> None:
        self._call("before_train")

    def after_train(self) -> None:
        self._call("after_train")
        # the functions are often closures over the trainer: dropping them breaks that reference cycle
        self._fns = {}

    def before_step(self) -> None:
        self._call("before_step")

    def after_step(self) -> None:
        self._call("after_step")


class IterationTimer(HookBase):
    """Put ``time`` (seconds between this hook's ``before_step`` and ``after_step``) for each iteration once the
    first ``warmup_iter`` iterations are over, and log the overall speed and the total time after training.

    Register it first, so that its interval covers the other hooks' work of the iteration.
    """

    def __init__(self, warmup_iter: int = 3) -> None:
        self._warmup_iter = int(warmup_iter)
        self._step_start = 0.0
        self._train_start = 0.0
        self._timed_iters = 0
        self._timed_seconds = 0.0
        self._step_seconds = 0.0  # every iteration's, warm-up included: the rest of the run is hooks' time

    def before_train(self) -> None:
        self._train_start = time.perf_counter()
        self._timed_iters, self._timed_seconds, self._step_seconds = 0, 0.0, 0.0

    def before_step(self) -> None:
        self._step_start = time.perf_counter()

    def after_step(self) -> None:
        seconds = time.perf_counter() - self._step_start
        self._step_seconds += seconds
        done = self.trainer.storage.iter - self.trainer.start_iter + 1
        # d2-parity: the iteration that completes warmup_iter iterations is already timed
        if done >= self._warmup_iter:
            self._timed_iters += 1
            self._timed_seconds += seconds
            self.trainer.storage.put_scalars(time=seconds)

    def after_train(self) -> None:
        total = time.perf_counter() - self._train_start
        if self._timed_iters > 0:
            per_iter = self._timed_seconds / self._timed_iters
            logger.info(
                "Overall training speed: %d iterations in %s (%.4f s / it)",
                self._timed_iters, _hms(self._timed_seconds), per_iter,
            )
        logger.info("Total training time: %s (%s on hooks)", _hms(total), _hms(max(total - self._step_seconds, 0)))


def _hms(seconds: float) -> str:
    return str(datetime.timedelta(seconds=int(seconds)))


class PeriodicWriter(HookBase):
    """Call ``write()`` of every writer (``JSONWriter``, ``CommonMetricPrinter``, ``TensorboardXWriter``, ...)
    every ``period`` iterations and after the last one; after training, write what is new and ``close()`` them."""

    def __init__(self, writers: Iterable[EventWriter], period: int = 20) -> None:
        self._writers = list(writers)
        for w in self._writers:
            if not isinstance(w, EventWriter):
                raise TypeError(f"PeriodicWriter expects EventWriter instances, got {type(w).__name__}")
        self._period = int(period)

    def after_step(self) -> None:
        if _due(self.trainer, self._period) or _finishing(self.trainer):
            for w in self._writers:
                w.write()

    def after_train(self) -> None:
        # after_train hooks registered earlier (the final evaluation) may have put new scalars
        for w in self._writers:
            w.write()
            w.close()


class PeriodicCheckpointer(_IterationCheckpointer, HookBase):
    """:class:`detlightning.checkpoint.PeriodicCheckpointer` as a hook: ``{file_prefix}_{iter:07d}.pth`` every
    ``period`` iterations and ``{file_prefix}_final.pth`` after the last one (``max_iter`` is the trainer's).

    Only what the checkpointer holds is saved (add ``trainer=trainer`` to its checkpointables to resume the
    trainer and its hooks), plus the iteration.
    """

    def before_train(self) -> None:
        self.max_iter = self.trainer.max_iter

    def after_step(self) -> None:
        self.step(self.trainer.iter)


class BestCheckpointer(HookBase):
    """Save ``{file_prefix}.pth`` whenever the latest ``val_metric`` (e.g. ``"bbox/AP50"``) in the storage beats
    the best so far (``mode``: ``"max"`` or ``"min"``). It checks at the iterations where an ``EvalHook`` with
    the same ``eval_period`` evaluates, and after training: register it after that ``EvalHook``."""

    def __init__(
        self,
        eval_period: int,
        checkpointer: Any,
        val_metric: str,
        mode: str = "max",
        file_prefix: str = "model_best",
    ) -> None:
        if mode not in ("max", "min"):
            raise ValueError(f"BestCheckpointer mode must be 'max' or 'min', got {mode!r}")
        self._period = int(eval_period)
        self._checkpointer = checkpointer
        self._val_metric = val_metric
        self._mode = mode
        self._better = operator.gt if mode == "max" else operator.lt
        self._file_prefix = file_prefix
        self.best_metric: float | None = None
        self.best_iter: int | None = None

    def _check(self) -> None:
        entry = self.trainer.storage.latest().get(self._val_metric)
        if entry is None:
            logger.warning(
                "BestCheckpointer: metric %r is not in the storage (is an EvalHook producing it registered "
                "before this hook?); no best checkpoint", self._val_metric,
            )
            return
        value, metric_iter = entry
        if not math.isfinite(value):
            logger.warning("BestCheckpointer: %s = %s at iteration %d is not a number to compare; skipped",
                           self._val_metric, value, metric_iter)
            return
        if self.best_metric is not None and not self._better(value, self.best_metric):
            logger.info("Not saving: %s = %.5f is not better than the best %.5f (iteration %d)",
                        self._val_metric, value, self.best_metric, self.best_iter)
            return
        previous = self.best_metric
        self.best_metric, self.best_iter = value, metric_iter
        self._checkpointer.save(self._file_prefix, iteration=metric_iter)
        if previous is None:
            logger.info("Saved the first best model: %s = %.5f", self._val_metric, value)
        else:
            logger.info("Saved the best model: %s = %.5f beats %.5f", self._val_metric, value, previous)

    def after_step(self) -> None:
        # the evaluation of the last iteration happens in after_train; check there
        if _due(self.trainer, self._period) and not _finishing(self.trainer):
            self._check()

    def after_train(self) -> None:
        if self.trainer.iter + 1 >= self.trainer.max_iter:
            self._check()

    def state_dict(self) -> dict[str, Any]:
        return {"best_metric": self.best_metric, "best_iter": self.best_iter}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best_metric = state_dict.get("best_metric")
        self.best_iter = state_dict.get("best_iter")


class LRScheduler(HookBase):
    """Step an LR scheduler after every iteration and put the LR that iteration used as ``lr``.

    ``optimizer`` / ``scheduler`` default to ``trainer.optimizer`` / ``trainer.scheduler``. ``scheduler`` may be
    a torch LR scheduler or a :class:`~detlightning.solver.ParamScheduler` (a multiplier of the base LRs over
    training progress, wrapped in ``LRMultiplier`` with the trainer's ``max_iter`` at ``before_train``).
    """

    def __init__(self, optimizer: torch.optim.Optimizer | None = None, scheduler: Any = None) -> None:
        self._optimizer = optimizer
        self._scheduler = scheduler
        self._best_param_group_id = 0

    @property
    def scheduler(self) -> Any:
        if self._scheduler is not None:
            return self._scheduler
        sched = getattr(self.trainer, "scheduler", None)
        if sched is None:
            raise AttributeError("LRScheduler hook: no scheduler given and the trainer has no 'scheduler'")
        return sched

    def before_train(self) -> None:
        if self._optimizer is None:
            self._optimizer = self.trainer.optimizer
        if isinstance(self.scheduler, ParamScheduler):
            # resumes the multiplier at the trainer's start iteration
            self._scheduler = LRMultiplier(
                self._optimizer, self.scheduler, self.trainer.max_iter, last_iter=self.trainer.iter - 1
            )
        self._best_param_group_id = LRScheduler.get_best_param_group_id(self._optimizer)

    @staticmethod
    def get_best_param_group_id(optimizer: torch.optim.Optimizer) -> int:
        """Index of the param group whose LR summarises the optimizer: the one with the most parameters; when
        every group has a single parameter, the first group with the most common initial LR."""
        groups = optimizer.param_groups
        sizes = [len(g["params"]) for g in groups]
        if max(sizes) > 1:
            return sizes.index(max(sizes))
        initial = [g.get("initial_lr", g["lr"]) for g in groups]
        most_common = Counter(initial).most_common(1)[0][0]
        return initial.index(most_common)

    def after_step(self) -> None:
        assert self._optimizer is not None  # set in before_train
        lr = self._optimizer.param_groups[self._best_param_group_id]["lr"]
        self.trainer.storage.put_scalar("lr", lr, smoothing_hint=False)
        self.scheduler.step()

    def state_dict(self) -> dict[str, Any]:
        sched = self._scheduler if self._scheduler is not None else getattr(self.trainer, "scheduler", None)
        if isinstance(sched, torch.optim.lr_scheduler.LRScheduler):
            return sched.state_dict()
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        sched = self.scheduler
        if isinstance(sched, torch.optim.lr_scheduler.LRScheduler):
            logger.info("Loading the LR scheduler state")
            sched.load_state_dict(state_dict)


class EvalHook(HookBase):
    """Call ``eval_function()`` (no arguments; returns a possibly nested dict of numbers, e.g.
    ``{"bbox": {"AP": 40.1}}``) every ``eval_period`` iterations and, with ``eval_after_train``, after the last
    one; put the results flattened (``bbox/AP``) into the storage. ``eval_period`` 0: only after training.

    Every process calls the function (distributed evaluators gather inside it); the processes then wait for each
    other before training on.
    """

    def __init__(self, eval_period: int, eval_function: Callable[[], Any], eval_after_train: bool = True) -> None:
        self._period = int(eval_period)
        self._func: Callable[[], Any] | None = eval_function
        self._eval_after_train = eval_after_train

    def _do_eval(self) -> None:
        if self._func is None:
            return
        results = self._func()
        if results:
            if not isinstance(results, Mapping):
                raise TypeError(f"EvalHook: eval_function must return a dict, got {type(results).__name__}")
            storage = self.trainer.storage
            for key, value in flatten_results_dict(results).items():
                try:
                    number = float(value)
                except (TypeError, ValueError) as e:
                    raise ValueError(
                        f"EvalHook: eval_function must return a nested dict of numbers; {key!r} is {value!r}"
                    ) from e
                storage.put_scalar(key, number, smoothing_hint=False)
        # evaluation takes different times on different processes: start the next iteration together
        comm.synchronize()

    def after_step(self) -> None:
        # the last iteration is evaluated in after_train, so that it happens once
        if _due(self.trainer, self._period) and not _finishing(self.trainer):
            self._do_eval()

    def after_train(self) -> None:
        # a loop that failed before its last iteration is not evaluated
        if self._eval_after_train and self.trainer.iter + 1 >= self.trainer.max_iter:
            self._do_eval()
        # the function usually closes over the trainer: release it
        self._func = None


class PreciseBN(HookBase):
    """Every ``period`` iterations (0: never) and after the last one, set the running statistics of the model's
    BatchNorm layers in training mode to their true average over ``num_iter`` batches of ``data_loader``
    (:func:`detlightning.layers.batch_norm.update_bn_stats`, the Lightning ``PreciseBN`` callback's computation).
    Disabled, with a log line, when the model has no such layer (e.g. FrozenBN backbones)."""

    def __init__(self, period: int, model: nn.Module, data_loader: Iterable[Any], num_iter: int) -> None:
        self._period = int(period)
        self._model = model
        self._data_loader = data_loader
        self._num_iter = int(num_iter)
        self._data_iter: Any = None
        self._disabled = not get_bn_modules(model)
        if self._disabled:
            logger.info("PreciseBN is disabled: the model has no BatchNorm layer in training mode")

    def after_step(self) -> None:
        if _finishing(self.trainer) or _due(self.trainer, self._period):
            self.update_stats()

    def update_stats(self) -> None:
        """Recompute the statistics now; the data loader's iterator carries on from one call to the next."""
        if self._disabled:
            return
        if self._data_iter is None:
            self._data_iter = iter(self._data_loader)
        logger.info("Running PreciseBN over %d iterations (statistics vary with the batches drawn)", self._num_iter)
        update_bn_stats(self._model, self._data_iter, self._num_iter)


class TorchProfiler(HookBase):
    """Profile the iterations for which ``enable_predicate(trainer)`` is true with ``torch.profiler``, one trace
    per iteration: ``{output_dir}/log/profiler-tensorboard-iter{i}/`` (TensorBoard's profiler plugin; with
    ``save_tensorboard``) or ``{output_dir}/profiler-trace-iter{i}.json`` (``chrome://tracing``).

    ``activities``: as ``torch.profiler.profile``'s (default: CPU, and CUDA where available). Skip the first
    iterations, which are slower than the rest: ``TorchProfiler(lambda t: 10 < t.iter < 20, out_dir)``.
    """

    def __init__(
        self,
        enable_predicate: Callable[[Any], bool],
        output_dir: str,
        *,
        activities: Iterable[torch.profiler.ProfilerActivity] | None = None,
        save_tensorboard: bool = True,
    ) -> None:
        self._enable_predicate = enable_predicate
        self._activities = list(activities) if activities is not None else None
        self._output_dir = os.fspath(output_dir)
        self._save_tensorboard = save_tensorboard
        self._profiler: Any = None

    def _new_profiler(self) -> Any:
        on_trace_ready = None
        if self._save_tensorboard:
            on_trace_ready = torch.profiler.tensorboard_trace_handler(
                os.path.join(self._output_dir, "log", f"profiler-tensorboard-iter{self.trainer.iter}"),
                worker_name=f"worker{comm.get_rank()}",
            )
        return torch.profiler.profile(
            activities=self._activities,
            on_trace_ready=on_trace_ready,
            record_shapes=True,
            profile_memory=True,
            with_stack=True,
            with_flops=True,
        )

    def before_step(self) -> None:
        if self._enable_predicate(self.trainer):
            self._profiler = self._new_profiler()
            self._profiler.__enter__()
        else:
            self._profiler = None

    def after_step(self) -> None:
        if self._profiler is None:
            return
        self._profiler.__exit__(None, None, None)
        if not self._save_tensorboard:
            self._export_chrome_trace()
        self._profiler = None

    def after_train(self) -> None:
        # a step that raised leaves its profiler running
        if self._profiler is not None:
            self._profiler.__exit__(None, None, None)
            self._profiler = None

    def _export_chrome_trace(self) -> None:
        PathManager.mkdirs(self._output_dir)
        name = f"profiler-trace-iter{self.trainer.iter}.json"
        self._profiler.export_chrome_trace(os.path.join(self._output_dir, name))


class AutogradProfiler(TorchProfiler):
    """Like :class:`TorchProfiler` with ``torch.autograd.profiler.profile`` (``use_cuda``: also time CUDA
    kernels); writes ``{output_dir}/profiler-trace-iter{i}.json``.

    With NCCL on older GPUs the autograd profiler can deadlock (it allocates memory on every visible device);
    prefer :class:`TorchProfiler` there.
    """

    def __init__(self, enable_predicate: Callable[[Any], bool], output_dir: str, *, use_cuda: bool = False) -> None:
        super().__init__(enable_predicate, output_dir, save_tensorboard=False)
        self._use_cuda = use_cuda

    def _new_profiler(self) -> Any:
        return torch.autograd.profiler.profile(use_device="cuda" if self._use_cuda else None)


class TorchMemoryStats(HookBase):
    """Every ``period`` iterations and after the last one, at most ``max_runs`` times: put the CUDA memory
    statistics in MiB (``max_reserved_mem``, ``reserved_mem``, ``max_allocated_mem``, ``allocated_mem``), then
    reset the peaks; the last run also logs ``torch.cuda.memory_summary()``. Without CUDA it does nothing (one
    log line)."""

    def __init__(self, period: int = 20, max_runs: int = 10) -> None:
        self._period = int(period)
        self._max_runs = int(max_runs)
        self._runs = 0

    def before_train(self) -> None:
        if not torch.cuda.is_available():
            logger.info("TorchMemoryStats: CUDA is not available, no memory statistics are recorded")

    def after_step(self) -> None:
        if self._runs >= self._max_runs or not torch.cuda.is_available():
            return
        if not (_due(self.trainer, self._period) or _finishing(self.trainer)):
            return
        mib = 1024.0 * 1024.0
        self.trainer.storage.put_scalars(
            max_reserved_mem=torch.cuda.max_memory_reserved() / mib,
            reserved_mem=torch.cuda.memory_reserved() / mib,
            max_allocated_mem=torch.cuda.max_memory_allocated() / mib,
            allocated_mem=torch.cuda.memory_allocated() / mib,
        )
        self._runs += 1
        if self._runs == self._max_runs:
            logger.info("CUDA memory summary:\n%s", torch.cuda.memory_summary())
        torch.cuda.reset_peak_memory_stats()
