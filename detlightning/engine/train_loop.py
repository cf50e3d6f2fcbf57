"""detectron2's plain iteration-based training loop: ``HookBase``, ``TrainerBase``, ``SimpleTrainer``, ``AMPTrainer``.

A trainer owns the loop and an ``EventStorage``; everything around the optimisation step (checkpoints, LR schedule,
evaluation, metric writers, timing) is a hook from :mod:`detlightning.engine.hooks`::

    trainer = SimpleTrainer(model, data_loader, optimizer)
    trainer.register_hooks([hooks.IterationTimer(), hooks.LRScheduler(scheduler=sched), hooks.PeriodicWriter(ws)])
    trainer.train(0, max_iter)

Call order: ``before_train``; then for every iteration ``before_step``, the step (``after_backward`` between the
backward pass and the optimizer step), ``after_step``; finally ``after_train``, also when the loop raised. During an
iteration ``trainer.iter == trainer.storage.iter`` is the 0-based index of the running iteration; after a completed
loop ``trainer.iter == max_iter`` (a failed one leaves the index of the iteration that failed), which is how
``after_train`` hooks tell the two apart. The Lightning engine (``DetectionModule`` + callbacks) is the other way
to train the same models.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import time
import weakref
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from ..utils import comm
from ..utils.events import EventStorage, check_losses_finite, get_event_storage

__all__ = ["AMPTrainer", "HookBase", "SimpleTrainer", "TrainerBase"]

logger = logging.getLogger(__name__)


class HookBase:
    """Base of the hooks a :class:`TrainerBase` calls around its loop; every method is a no-op here.

    ``self.trainer`` is set by ``trainer.register_hooks`` (a weak proxy: hooks do not keep the trainer alive).
    Hooks registered together run in registration order for every event. ``before_step`` and ``after_step``
    run on every iteration, so they should be cheap unless they act only every N iterations.
    """

    trainer: Any = None

    def before_train(self) -> None:
        """Once, before the first iteration."""

    def after_train(self) -> None:
        """Once, after the last iteration or after the loop raised."""

    def before_step(self) -> None:
        """Before each iteration (``trainer.iter`` is the iteration about to run)."""

    def after_backward(self) -> None:
        """Between the backward pass and the optimizer step of each iteration (trainers that call it)."""

    def after_step(self) -> None:
        """After each iteration (``trainer.iter`` is still the iteration that just ran)."""

    def state_dict(self) -> dict[str, Any]:
        """State to keep in the trainer's checkpoint; empty: nothing to keep."""
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""


class TrainerBase:
    """An iteration loop with hooks; subclasses implement :meth:`run_step` (one iteration).

    Attributes:
        iter: index of the current iteration (see the module docstring for its value after training).
        start_iter: the iteration ``train`` started from.
        max_iter: the iteration at which training ends (exclusive).
        storage: the ``EventStorage`` opened for the run (``get_event_storage()`` inside the loop).
    """

    def __init__(self) -> None:
        self._hooks: list[HookBase] = []
        self.iter: int = 0
        self.start_iter: int = 0
        self.max_iter: int = 0
        self.storage: EventStorage

    def register_hooks(self, hooks: Iterable[HookBase | None]) -> None:
        """Append ``hooks`` (``None`` entries are skipped) to the hooks, which run in registration order."""
        new = [h for h in hooks if h is not None]
        for h in new:
            if not isinstance(h, HookBase):
                raise TypeError(f"register_hooks expects HookBase instances, got {type(h).__name__}")
            # a proxy, not the trainer itself: trainer -> hook -> trainer would be a reference cycle, which would
            # keep the model, data loader and optimizer alive until the garbage collector runs
            h.trainer = weakref.proxy(self)
        self._hooks.extend(new)

    def train(self, start_iter: int, max_iter: int) -> None:
        """Run iterations ``start_iter .. max_iter - 1`` with the hooks around them."""
        self.iter = self.start_iter = int(start_iter)
        self.max_iter = int(max_iter)
        logger.info("Starting training from iteration %d", self.start_iter)
        with EventStorage(self.start_iter) as self.storage:
            try:
                self.before_train()
                while self.iter < self.max_iter:
                    self.before_step()
                    self.run_step()
                    self.after_step()
                    self.iter += 1
            except Exception:
                logger.exception("Exception during training at iteration %d:", self.iter)
                raise
            finally:
                self.after_train()

    # ------------------------------------------------------------------ events, dispatched to the hooks
    def before_train(self) -> None:
        for h in self._hooks:
            h.before_train()

    def after_train(self) -> None:
        # metrics put by after_train hooks (the final evaluation) are tagged max_iter after a completed run
        self.storage.iter = self.iter
        for h in self._hooks:
            h.after_train()

    def before_step(self) -> None:
        self.storage.iter = self.iter
        for h in self._hooks:
            h.before_step()

    def after_backward(self) -> None:
        for h in self._hooks:
            h.after_backward()

    def after_step(self) -> None:
        for h in self._hooks:
            h.after_step()

    def run_step(self) -> None:
        raise NotImplementedError(f"{type(self).__name__} must implement run_step()")

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict[str, Any]:
        """``{"iteration": self.iter, "hooks": {hook class qualname: its state}}`` (``hooks`` only when some hook
        has state; of several hooks of one class, the first one's)."""
        states: dict[str, Any] = {}
        for h in self._hooks:
            state = h.state_dict()
            key = type(h).__qualname__
            if state and key not in states:
                states[key] = state
        out: dict[str, Any] = {"iteration": self.iter}
        if states:
            out["hooks"] = states
        return out

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore ``iter`` and the hooks' states; a saved hook state with no registered hook of that class is
        skipped with a warning. To continue, ``train(trainer.iter + 1, max_iter)``."""
        self.iter = int(state_dict["iteration"])
        logger.info("Loaded trainer state at iteration %d", self.iter)
        by_name: dict[str, HookBase] = {}
        for h in self._hooks:
            by_name.setdefault(type(h).__qualname__, h)
        for key, value in state_dict.get("hooks", {}).items():
            hook = by_name.get(key)
            if hook is None:
                logger.warning("No registered hook of class %r: its saved state is ignored", key)
                continue
            hook.load_state_dict(value)


class SimpleTrainer(TrainerBase):
    """One data source, one loss (the sum of the model's loss dict), one optimizer: per iteration, fetch a batch,
    ``loss_dict = model(batch)``, backward, ``after_backward`` hooks, write the metrics, ``optimizer.step()``.

    Args:
        model: takes one element of ``data_loader``, returns a dict of scalar losses (or one loss tensor, which
            is reported as ``total_loss``). The trainer calls ``model.train()``.
        data_loader: an iterable of batches; iterated lazily, once (detectron2's loaders are infinite).
        optimizer: a torch optimizer over the model's parameters.
        gather_metric_period: losses and ``data_time`` are written (and checked for NaN/inf) every this many
            iterations; writing costs a synchronisation across processes.
        zero_grad_before_forward: zero the gradients before the forward pass instead of after it.
        async_write_metrics: write metrics in a background thread (overlaps the optimizer step); a NaN/inf
            loss found there is logged, not raised.

    Scalars it puts: ``data_time`` (the slowest process's), ``rank_data_time`` (this process's), ``total_loss``
    and, when the model returns several losses, each of them; losses are averaged over processes.
    """

    def __init__(
        self,
        model: nn.Module,
        data_loader: Iterable[Any],
        optimizer: torch.optim.Optimizer,
        gather_metric_period: int = 1,
        zero_grad_before_forward: bool = False,
        async_write_metrics: bool = False,
    ) -> None:
        super().__init__()
        if int(gather_metric_period) <= 0:
            raise ValueError(f"gather_metric_period must be a positive iteration count, got {gather_metric_period}")
        # Training mode is set here rather than in run_step, so that a user who overrides model.train() (to keep
        # a submodule in eval mode) keeps that behaviour.
        model.train()
        self.model = model
        self.data_loader = data_loader
        self._data_loader_iter_obj: Iterator[Any] | None = None
        self.optimizer = optimizer
        self.gather_metric_period = int(gather_metric_period)
        self.zero_grad_before_forward = zero_grad_before_forward
        self.async_write_metrics = async_write_metrics
        self._metrics_executor: concurrent.futures.ThreadPoolExecutor | None = None

    @property
    def _data_loader_iter(self) -> Iterator[Any]:
        if self._data_loader_iter_obj is None:
            self._data_loader_iter_obj = iter(self.data_loader)
        return self._data_loader_iter_obj

    def reset_data_loader(self, data_loader_builder: Any) -> None:
        """Replace the data loader by ``data_loader_builder()`` (e.g. after changing the dataset); the old
        iterator is dropped first so its worker processes can exit."""
        self._data_loader_iter_obj = None
        del self.data_loader
        self.data_loader = data_loader_builder()

    def _next_batch(self) -> tuple[Any, float]:
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        return data, time.perf_counter() - start

    def _forward(self, data: Any) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """``(loss_dict, summed loss)`` of one batch."""
        out = self.model(data)
        if isinstance(out, torch.Tensor):
            return {"total_loss": out}, out
        if not isinstance(out, Mapping) or not out:
            raise TypeError(
                f"{type(self).__name__}: in training mode the model must return a non-empty dict of losses or a "
                f"loss tensor, got {type(out).__name__}"
            )
        loss_dict = dict(out)
        return loss_dict, sum(loss_dict.values())  # type: ignore[return-value]

    def run_step(self) -> None:
        if not self.model.training:
            raise RuntimeError(f"{type(self).__name__}: the model was switched to eval mode during training")
        data, data_time = self._next_batch()
        if self.zero_grad_before_forward:
            self.optimizer.zero_grad()
        with self._forward_context():
            loss_dict, losses = self._forward(data)
        if not self.zero_grad_before_forward:
            self.optimizer.zero_grad()
        self._backward(losses)
        self.after_backward()
        self._submit_metrics(loss_dict, data_time)
        self._optimizer_step()

    # the three points where mixed precision (AMPTrainer) differs
    def _forward_context(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def _backward(self, losses: torch.Tensor) -> None:
        losses.backward()

    def _optimizer_step(self) -> None:
        self.optimizer.step()

    # ------------------------------------------------------------------ metrics
    def _submit_metrics(self, loss_dict: Mapping[str, torch.Tensor], data_time: float) -> None:
        if not self.async_write_metrics:
            self._write_metrics(loss_dict, data_time)
            return
        if self._metrics_executor is None:
            self._metrics_executor = concurrent.futures.ThreadPoolExecutor(max_workers=1)
        # the iteration is captured now: the thread may run after self.iter moved on
        detached = {k: v.detach() for k, v in loss_dict.items()}
        self._metrics_executor.submit(self._write_metrics, detached, data_time, iter=self.iter)

    def _write_metrics(
        self, loss_dict: Mapping[str, torch.Tensor], data_time: float, prefix: str = "", iter: int | None = None
    ) -> None:
        cur_iter = self.iter if iter is None else iter
        if (cur_iter + 1) % self.gather_metric_period != 0:
            return
        try:
            self.write_metrics(loss_dict, data_time, cur_iter, prefix)
        except Exception:
            logger.exception("Writing the metrics of iteration %d failed:", cur_iter)
            raise

    @staticmethod
    def write_metrics(
        loss_dict: Mapping[str, torch.Tensor], data_time: float, cur_iter: int, prefix: str = ""
    ) -> None:
        """Put one iteration's losses (averaged over processes) and data time into the current storage;
        ``FloatingPointError`` naming the non-finite losses. Every process must call it (it gathers)."""
        local = {k: float(v.detach().float().sum()) for k, v in loss_dict.items()}
        storage = get_event_storage()
        storage.put_scalar("rank_data_time", data_time, cur_iter=cur_iter)
        # every rank gets every rank's values, so a NaN on one rank stops all of them together
        per_rank = comm.all_gather({"losses": local, "data_time": data_time})
        storage.put_scalar("data_time", max(r["data_time"] for r in per_rank), cur_iter=cur_iter)
        averaged = {k: float(np.mean([r["losses"][k] for r in per_rank])) for k in local}
        values = check_losses_finite(averaged, cur_iter)
        # d2-parity: the prefix names the total only; a lone loss is not repeated beside the total
        storage.put_scalar(f"{prefix}total_loss", sum(values.values()), cur_iter=cur_iter)
        if len(values) > 1:
            storage.put_scalars(cur_iter=cur_iter, **values)

    def after_train(self) -> None:
        try:
            super().after_train()
        finally:
            if self._metrics_executor is not None:
                self._metrics_executor.shutdown(wait=True)
                self._metrics_executor = None

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict[str, Any]:
        out = super().state_dict()
        out["optimizer"] = self.optimizer.state_dict()
        return out

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.optimizer.load_state_dict(state_dict["optimizer"])


def _device_type(model: nn.Module) -> str:
    for p in model.parameters():
        return p.device.type
    return "cuda" if torch.cuda.is_available() else "cpu"


class AMPTrainer(SimpleTrainer):
    """:class:`SimpleTrainer` with automatic mixed precision: the forward pass runs under ``torch.autocast`` on the
    model's device type with ``precision`` (``torch.float16`` or ``torch.bfloat16``), the backward pass through a
    ``GradScaler``.

    Args:
        grad_scaler: the scaler; default: a ``torch.amp.GradScaler`` for float16, a disabled one (a pass-through:
            bfloat16 has float32's range) for bfloat16.
        precision: the autocast dtype.
        log_grad_scaler: put the scaler's current scale as ``[metric]grad_scaler`` every iteration.

    CPU training works with bfloat16 (and float16 where the CPU autocast supports it).
    """

    def __init__(
        self,
        model: nn.Module,
        data_loader: Iterable[Any],
        optimizer: torch.optim.Optimizer,
        gather_metric_period: int = 1,
        zero_grad_before_forward: bool = False,
        grad_scaler: torch.amp.GradScaler | None = None,
        precision: torch.dtype = torch.float16,
        log_grad_scaler: bool = False,
        async_write_metrics: bool = False,
    ) -> None:
        if isinstance(model, nn.DataParallel) or (
            isinstance(model, nn.parallel.DistributedDataParallel) and model.device_ids and len(model.device_ids) > 1
        ):
            raise ValueError("AMPTrainer does not support one process driving several devices; use one per device")
        if precision not in (torch.float16, torch.bfloat16):
            raise ValueError(f"AMPTrainer precision must be torch.float16 or torch.bfloat16, got {precision}")
        super().__init__(
            model, data_loader, optimizer, gather_metric_period, zero_grad_before_forward, async_write_metrics
        )
        self.device_type = _device_type(model)
        if grad_scaler is None:
            grad_scaler = torch.amp.GradScaler(self.device_type, enabled=precision == torch.float16)
        self.grad_scaler = grad_scaler
        self.precision = precision
        self.log_grad_scaler = log_grad_scaler

    def _forward_context(self) -> contextlib.AbstractContextManager:
        return torch.autocast(self.device_type, dtype=self.precision)

    def _backward(self, losses: torch.Tensor) -> None:
        self.grad_scaler.scale(losses).backward()
        if self.log_grad_scaler:
            self.storage.put_scalar("[metric]grad_scaler", self.grad_scaler.get_scale())

    def _optimizer_step(self) -> None:
        # the scaler unscales first and skips the step when the gradients overflowed
        self.grad_scaler.step(self.optimizer)
        self.grad_scaler.update()

    def state_dict(self) -> dict[str, Any]:
        out = super().state_dict()
        out["grad_scaler"] = self.grad_scaler.state_dict()
        return out

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        super().load_state_dict(state_dict)
        if "grad_scaler" in state_dict:
            self.grad_scaler.load_state_dict(state_dict["grad_scaler"])

