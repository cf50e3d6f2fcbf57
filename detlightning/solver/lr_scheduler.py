"""Per-iteration learning-rate schedules (detectron2's ``detectron2/solver/lr_scheduler.py``).

``build_lr_scheduler(cfg, optimizer)`` composes a value schedule (multi-step or cosine) with a warmup
(:class:`WarmupParamScheduler`) and steps the optimizer's LRs with it (:class:`LRMultiplier`), as detectron2's
default does. :class:`WarmupMultiStepLR` and :class:`WarmupCosineLR` are detectron2's older, self-contained
schedulers with the same names and arguments. The ``*ParamScheduler`` classes follow fvcore's protocol: a value as a
function of training progress in [0, 1).
"""
from __future__ import annotations

import bisect
import logging
import math
from typing import Any

import torch

from ..config.reader import cfg_get

__all__ = [
    "CompositeParamScheduler",
    "ConstantParamScheduler",
    "CosineParamScheduler",
    "LRMultiplier",
    "LRScheduler",
    "LinearParamScheduler",
    "MultiStepParamScheduler",
    "ParamScheduler",
    "WarmupCosineLR",
    "WarmupMultiStepLR",
    "WarmupParamScheduler",
    "build_lr_scheduler",
]

logger = logging.getLogger(__name__)

# torch's scheduler base class under the name detectron2 re-exports (research code subclasses it)
LRScheduler = torch.optim.lr_scheduler.LRScheduler


class ParamScheduler:
    """A value as a function of training progress ``where`` in [0, 1) (fvcore's ParamScheduler protocol)."""

    def __call__(self, where: float) -> float:
        raise NotImplementedError


class ConstantParamScheduler(ParamScheduler):
    def __init__(self, value: float):
        self.value = float(value)

    def __call__(self, where: float) -> float:
        return self.value


class LinearParamScheduler(ParamScheduler):
    def __init__(self, start_value: float, end_value: float):
        self.start_value, self.end_value = float(start_value), float(end_value)

    def __call__(self, where: float) -> float:
        return self.start_value + (self.end_value - self.start_value) * where


class CosineParamScheduler(ParamScheduler):
    def __init__(self, start_value: float, end_value: float):
        self.start_value, self.end_value = float(start_value), float(end_value)

    def __call__(self, where: float) -> float:
        return self.end_value + 0.5 * (self.start_value - self.end_value) * (1 + math.cos(math.pi * where))


class MultiStepParamScheduler(ParamScheduler):
    """``values[i]`` between ``milestones[i-1]`` and ``milestones[i]`` (iterations out of ``num_updates``).

    As in fvcore, ``num_updates`` may be left out when ``milestones`` has one entry per value: its last entry is
    then the end of the schedule (``values=[1, 0.1, 0.01], milestones=[52500, 62500, 67500]``).
    """

    def __init__(self, values: list[float], num_updates: int | None = None, milestones: list[int] | None = None):
        values, milestones = list(values), list(milestones or [])
        if num_updates is None:
            if len(milestones) != len(values) or not milestones:
                raise ValueError(
                    "MultiStepParamScheduler without num_updates needs one milestone per value (the last one ends "
                    f"the schedule), got values {values}, milestones {milestones}"
                )
            num_updates, milestones = milestones[-1], milestones[:-1]
        if len(values) != len(milestones) + 1:
            raise ValueError(
                f"MultiStepParamScheduler needs len(values) == len(milestones) + 1, got {values}, {milestones}"
            )
        if list(milestones) != sorted(milestones):
            raise ValueError(f"milestones must be increasing, got {milestones}")
        self.values, self.num_updates, self.milestones = list(values), int(num_updates), list(milestones)

    def __call__(self, where: float) -> float:
        # the epsilon keeps where = k / num_updates from rounding down to k - 1
        step = int(where * self.num_updates + 1e-6)
        return self.values[bisect.bisect_right(self.milestones, step)]


class CompositeParamScheduler(ParamScheduler):
    """``schedulers[i]`` over a ``lengths[i]`` share of training; ``rescaled`` intervals see their own [0, 1)."""

    def __init__(self, schedulers: list[ParamScheduler], lengths: list[float], interval_scaling: list[str]):
        if not math.isclose(sum(lengths), 1.0, abs_tol=1e-6):
            raise ValueError(f"CompositeParamScheduler lengths must sum to 1, got {lengths}")
        self.schedulers, self.lengths, self.interval_scaling = schedulers, lengths, interval_scaling

    def __call__(self, where: float) -> float:
        start = 0.0
        for i, (sched, length) in enumerate(zip(self.schedulers, self.lengths)):
            if where < start + length or i == len(self.schedulers) - 1:
                if self.interval_scaling[i] == "rescaled":
                    return sched((where - start) / length if length > 0 else 0.0)
                return sched(where)
            start += length
        raise AssertionError("unreachable")


class WarmupParamScheduler(CompositeParamScheduler):
    """``scheduler`` with a warmup over the first ``warmup_length`` share of training: ``linear`` ramps from
    ``warmup_factor * scheduler(warmup_length)`` to ``scheduler(warmup_length)``; ``constant`` holds the first."""

    def __init__(
        self,
        scheduler: ParamScheduler,
        warmup_factor: float,
        warmup_length: float,
        warmup_method: str = "linear",
        rescale_interval: bool = False,
    ):
        end_value = scheduler(warmup_length)
        start_value = warmup_factor * end_value
        if warmup_method == "constant":
            warmup: ParamScheduler = ConstantParamScheduler(start_value)
        elif warmup_method == "linear":
            warmup = LinearParamScheduler(start_value, end_value)
        else:
            raise ValueError(f"Unknown warmup_method {warmup_method!r}: expected linear or constant")
        super().__init__(
            [warmup, scheduler],
            lengths=[warmup_length, 1 - warmup_length],
            interval_scaling=["rescaled", "rescaled" if rescale_interval else "fixed"],
        )


class LRMultiplier(torch.optim.lr_scheduler.LRScheduler):
    """LR of group g at iteration i = ``base_lr_g * multiplier(i / max_iter)``; step it once per iteration."""

    def __init__(
        self, optimizer: torch.optim.Optimizer, multiplier: ParamScheduler, max_iter: int, last_iter: int = -1
    ):
        if max_iter <= 0:
            raise ValueError(f"LRMultiplier needs max_iter > 0, got {max_iter}")
        self._multiplier = multiplier
        self._max_iter = int(max_iter)
        super().__init__(optimizer, last_epoch=last_iter)

    def state_dict(self) -> dict[str, Any]:
        # the multiplier is rebuilt from the config; only the position is state
        return {"base_lrs": self.base_lrs, "last_epoch": self.last_epoch}

    def get_lr(self) -> list[float]:
        m = self._multiplier(min(self.last_epoch / self._max_iter, 1.0))
        return [base_lr * m for base_lr in self.base_lrs]


def _get_warmup_factor_at_iter(method: str, iter: int, warmup_iters: int, warmup_factor: float) -> float:
    """LR multiplier at iteration ``iter`` of a warmup: 1.0 from ``warmup_iters`` on; before, ``warmup_factor``
    (``"constant"``) or a linear ramp from ``warmup_factor`` to 1 (``"linear"``). Research schedulers (DeepLab's
    WarmupPolyLR) import this private helper from detectron2."""
    if iter >= warmup_iters:
        return 1.0
    if method == "constant":
        return warmup_factor
    if method == "linear":
        alpha = iter / warmup_iters
        return warmup_factor * (1 - alpha) + alpha
    raise ValueError(f"Unknown warmup method {method!r}: expected 'linear' or 'constant'")


class _WarmupLR(torch.optim.lr_scheduler.LRScheduler):
    """``base_lr * warmup(it) * decay(it)``: the warmup ramps (``linear``) from, or holds (``constant``),
    ``warmup_factor`` over the first ``warmup_iters`` iterations; subclasses define ``decay``."""

    def __init__(self, optimizer: torch.optim.Optimizer, warmup: tuple[float, int, str], last_epoch: int) -> None:
        self.warmup_factor, self.warmup_iters, self.warmup_method = warmup
        if self.warmup_method not in ("linear", "constant"):
            raise ValueError(f"Unknown warmup_method {self.warmup_method!r}: expected linear or constant")
        super().__init__(optimizer, last_epoch)

    def decay(self, it: int) -> float:
        raise NotImplementedError

    def get_lr(self) -> list[float]:
        it = self.last_epoch
        scale = _get_warmup_factor_at_iter(self.warmup_method, it, self.warmup_iters, self.warmup_factor)
        scale *= self.decay(it)
        return [lr * scale for lr in self.base_lrs]


class WarmupMultiStepLR(_WarmupLR):
    """``base_lr * gamma ** (number of milestones <= it)`` with warmup (detectron2's older scheduler;
    ``build_lr_scheduler`` uses :class:`LRMultiplier`)."""

    def __init__(self, optimizer: torch.optim.Optimizer, milestones: list[int], gamma: float = 0.1,
                 warmup_factor: float = 0.001, warmup_iters: int = 1000, warmup_method: str = "linear",
                 last_epoch: int = -1) -> None:
        if list(milestones) != sorted(milestones):
            raise ValueError(f"WarmupMultiStepLR milestones must be increasing, got {milestones}")
        self.milestones, self.gamma = list(milestones), gamma
        super().__init__(optimizer, (warmup_factor, warmup_iters, warmup_method), last_epoch)

    def decay(self, it: int) -> float:
        return self.gamma ** bisect.bisect_right(self.milestones, it)


class WarmupCosineLR(_WarmupLR):
    """``base_lr * 0.5 * (1 + cos(pi * it / max_iters))`` (0 from ``max_iters`` on) with warmup (detectron2's
    older scheduler)."""

    def __init__(self, optimizer: torch.optim.Optimizer, max_iters: int, warmup_factor: float = 0.001,
                 warmup_iters: int = 1000, warmup_method: str = "linear", last_epoch: int = -1) -> None:
        self.max_iters = max_iters
        super().__init__(optimizer, (warmup_factor, warmup_iters, warmup_method), last_epoch)

    def decay(self, it: int) -> float:
        return 0.5 * (1.0 + math.cos(math.pi * it / self.max_iters)) if it < self.max_iters else 0.0


def build_lr_scheduler(cfg: Any, optimizer: torch.optim.Optimizer) -> LRMultiplier:
    """``WarmupMultiStepLR`` (gamma at each of ``solver.steps``) or ``WarmupCosineLR`` (to ``base_lr_end``), with
    linear/constant warmup over ``warmup_iters``; one step per iteration over ``solver.max_iter``."""
    solver = cfg_get(cfg, "solver")
    name = str(solver["lr_scheduler_name"])
    max_iter = int(solver["max_iter"])
    if name == "WarmupMultiStepLR":
        all_steps = [int(s) for s in solver["steps"]]
        steps = [s for s in all_steps if s <= max_iter]
        if len(steps) != len(all_steps):
            logger.warning(
                "solver.steps %s has values beyond solver.max_iter=%d: they are ignored", all_steps, max_iter
            )
        gamma = float(solver["gamma"])
        sched: ParamScheduler = MultiStepParamScheduler(
            values=[gamma**k for k in range(len(steps) + 1)], milestones=steps, num_updates=max_iter
        )
    elif name == "WarmupCosineLR":
        end_value = float(solver["base_lr_end"]) / float(solver["base_lr"])
        if not 0.0 <= end_value <= 1.0:
            raise ValueError(f"solver.base_lr_end / solver.base_lr must be in [0, 1], got {end_value}")
        sched = CosineParamScheduler(1.0, end_value)
    else:
        raise ValueError(f"Unknown solver.lr_scheduler_name {name!r}: expected WarmupMultiStepLR or WarmupCosineLR")
    warmup = WarmupParamScheduler(
        sched,
        float(solver["warmup_factor"]),
        min(int(solver["warmup_iters"]) / max_iter, 1.0),
        str(solver["warmup_method"]),
        bool(solver["rescale_interval"]),
    )
    return LRMultiplier(optimizer, multiplier=warmup, max_iter=max_iter)
