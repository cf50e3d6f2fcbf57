"""Optimizer, per-iteration LR schedule and gradient clipping from the ``solver`` config group
(detectron2's ``detectron2.solver``: ``build_optimizer``, ``get_default_optimizer_params``, ``build_lr_scheduler``,
``WarmupParamScheduler``, ``LRMultiplier``, ``maybe_add_gradient_clipping``).

Config keys are detectron2's ``SOLVER.*`` lower-cased (``solver.base_lr``, ``solver.steps``, ...). Extra keys:
``solver.optimizer`` (``SGD`` or ``AdamW``), ``solver.betas``/``solver.eps`` (AdamW), ``solver.backbone_multiplier``
(LR factor of parameters under ``backbone.``) and ``solver.clip_gradients.clip_type: full_model`` (one norm over all
parameters, as detectron2's LazyConfig projects do).
"""
from __future__ import annotations

import bisect
import copy
import itertools
import logging
import math
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

__all__ = [
    "CompositeParamScheduler",
    "ConstantParamScheduler",
    "CosineParamScheduler",
    "GradientClipType",
    "LRMultiplier",
    "LinearParamScheduler",
    "MultiStepParamScheduler",
    "ParamScheduler",
    "WarmupParamScheduler",
    "build_lr_scheduler",
    "build_optimizer",
    "clip_gradients",
    "get_default_optimizer_params",
    "maybe_add_gradient_clipping",
    "reduce_param_groups",
]

logger = logging.getLogger(__name__)

_NORM_MODULE_TYPES: tuple[type[nn.Module], ...] = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.SyncBatchNorm,
    nn.GroupNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
    nn.LayerNorm,
    nn.LocalResponseNorm,
)


def _get(cfg: Any, key: str, default: Any = None) -> Any:
    """``cfg.solver.<key>`` with a default when the key is absent (plain dicts and DictConfigs alike)."""
    node = cfg["solver"] if "solver" in cfg else cfg
    return node[key] if key in node and node[key] is not None else default


# ----------------------------------------------------------------------------------------------- param groups
def get_default_optimizer_params(
    model: nn.Module,
    base_lr: float | None = None,
    weight_decay: float | None = None,
    weight_decay_norm: float | None = None,
    bias_lr_factor: float | None = 1.0,
    weight_decay_bias: float | None = None,
    overrides: dict[str, dict[str, float]] | None = None,
    lr_factor_func: Callable[[str], float] | None = None,
) -> list[dict[str, Any]]:
    """Parameter groups with detectron2's rules: norm-layer parameters get ``weight_decay_norm``; parameters
    named ``bias`` get ``base_lr * bias_lr_factor`` and ``weight_decay_bias``; ``overrides[name]`` sets
    hyperparameters of parameters with that attribute name; ``lr_factor_func(full_name)`` scales the LR
    (e.g. a backbone multiplier). Frozen parameters are left out; shared ones appear once.
    Returns as few groups as possible (groups with equal hyperparameters are merged)."""
    overrides = dict(overrides or {})
    defaults: dict[str, Any] = {}
    if base_lr is not None:
        defaults["lr"] = base_lr
    if weight_decay is not None:
        defaults["weight_decay"] = weight_decay
    bias_overrides: dict[str, float] = {}
    if bias_lr_factor is not None and bias_lr_factor != 1.0:
        if base_lr is None:
            raise ValueError("bias_lr_factor requires base_lr")
        bias_overrides["lr"] = base_lr * bias_lr_factor
    if weight_decay_bias is not None:
        bias_overrides["weight_decay"] = weight_decay_bias
    if bias_overrides:
        if "bias" in overrides:
            raise ValueError("Conflicting overrides for 'bias': set either overrides['bias'] or the bias options")
        overrides["bias"] = bias_overrides
    if lr_factor_func is not None and base_lr is None:
        raise ValueError("lr_factor_func requires base_lr")

    params: list[dict[str, Any]] = []
    memo: set[nn.Parameter] = set()
    for module_name, module in model.named_modules():
        for param_name, value in module.named_parameters(recurse=False):
            if not value.requires_grad or value in memo:
                continue
            memo.add(value)
            hyperparams = copy.copy(defaults)
            if isinstance(module, _NORM_MODULE_TYPES) and weight_decay_norm is not None:
                hyperparams["weight_decay"] = weight_decay_norm
            if lr_factor_func is not None:
                full = f"{module_name}.{param_name}" if module_name else param_name
                hyperparams["lr"] = hyperparams["lr"] * lr_factor_func(full)
            hyperparams.update(overrides.get(param_name, {}))
            params.append({"params": [value], **hyperparams})
    return reduce_param_groups(params)


def reduce_param_groups(params: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Merge parameter groups with identical hyperparameters (multi-tensor optimizers are faster on few groups).
    Later entries override earlier ones for the same parameter."""
    per_param: dict[nn.Parameter, dict[str, Any]] = defaultdict(dict)
    for item in params:
        if "params" not in item:
            raise ValueError(f"parameter group without 'params': {sorted(item)}")
        hyper = {k: v for k, v in item.items() if k != "params"}
        for p in item["params"]:
            per_param[p].update(hyper)
    groups: dict[tuple[tuple[str, Any], ...], list[nn.Parameter]] = defaultdict(list)
    for p, hyper in per_param.items():
        groups[tuple(sorted(hyper.items()))].append(p)
    return [{**dict(key), "params": values} for key, values in groups.items()]


# ----------------------------------------------------------------------------------------------- clipping
class GradientClipType:
    """``solver.clip_gradients.clip_type`` values."""

    VALUE = "value"  # clamp every gradient element to [-clip_value, clip_value]
    NORM = "norm"  # d2-parity: the norm of EACH parameter's gradient is clipped separately
    FULL_MODEL = "full_model"  # one norm over all parameters (torch's usual clip_grad_norm_)


def clip_gradients(params: Iterable[nn.Parameter], clip_cfg: Any) -> None:
    """Clip ``.grad`` of ``params`` in place as ``clip_cfg`` (``solver.clip_gradients``) says; no-op if disabled."""
    if not clip_cfg or not clip_cfg.get("enabled", False):
        return
    clip_type = str(clip_cfg.get("clip_type", "value"))
    value = float(clip_cfg.get("clip_value", 1.0))
    norm_type = float(clip_cfg.get("norm_type", 2.0))
    params = [p for p in params if p.grad is not None]
    if clip_type == GradientClipType.VALUE:
        torch.nn.utils.clip_grad_value_(params, value)
    elif clip_type == GradientClipType.NORM:
        for p in params:
            torch.nn.utils.clip_grad_norm_(p, value, norm_type)
    elif clip_type == GradientClipType.FULL_MODEL:
        torch.nn.utils.clip_grad_norm_(params, value, norm_type)
    else:
        raise ValueError(f"Unknown solver.clip_gradients.clip_type {clip_type!r}: expected value, norm or full_model")


def maybe_add_gradient_clipping(cfg: Any, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """Make ``optimizer.step()`` clip gradients first when ``solver.clip_gradients.enabled`` (detectron2's API, for
    plain-PyTorch loops). ``DetectionModule`` clips in ``configure_gradient_clipping`` instead, after AMP
    unscaling, and does not use this."""
    clip_cfg = _get(cfg, "clip_gradients")
    if not clip_cfg or not clip_cfg.get("enabled", False):
        return optimizer
    base_step = optimizer.step

    def step_with_clipping(closure: Callable[[], Any] | None = None) -> Any:
        clip_gradients(itertools.chain(*[g["params"] for g in optimizer.param_groups]), clip_cfg)
        return base_step(closure)

    optimizer.step = step_with_clipping  # type: ignore[method-assign]
    return optimizer


# ----------------------------------------------------------------------------------------------- optimizer
def build_optimizer(cfg: Any, model: nn.Module) -> torch.optim.Optimizer:
    """SGD (momentum, nesterov) or AdamW over ``get_default_optimizer_params`` groups, from ``cfg.solver``."""
    base_lr = float(_get(cfg, "base_lr"))
    backbone_mult = float(_get(cfg, "backbone_multiplier", 1.0))
    lr_factor_func = None
    if backbone_mult != 1.0:
        lr_factor_func = lambda name: backbone_mult if name.startswith("backbone.") else 1.0  # noqa: E731
    params = get_default_optimizer_params(
        model,
        base_lr=base_lr,
        weight_decay_norm=_get(cfg, "weight_decay_norm"),
        bias_lr_factor=_get(cfg, "bias_lr_factor", 1.0),
        weight_decay_bias=_get(cfg, "weight_decay_bias"),
        lr_factor_func=lr_factor_func,
    )
    if not params:
        raise ValueError("build_optimizer: the model has no trainable parameters")
    name = str(_get(cfg, "optimizer", "SGD"))
    weight_decay = float(_get(cfg, "weight_decay", 0.0))
    if name.lower() == "sgd":
        return torch.optim.SGD(
            params,
            lr=base_lr,
            momentum=float(_get(cfg, "momentum", 0.9)),
            nesterov=bool(_get(cfg, "nesterov", False)),
            weight_decay=weight_decay,
        )
    if name.lower() == "adamw":
        return torch.optim.AdamW(
            params,
            lr=base_lr,
            betas=tuple(_get(cfg, "betas", (0.9, 0.999))),
            eps=float(_get(cfg, "eps", 1e-8)),
            weight_decay=weight_decay,
        )
    raise ValueError(f"Unknown solver.optimizer {name!r}: expected SGD or AdamW")


# ----------------------------------------------------------------------------------------------- schedules
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
    """``values[i]`` between ``milestones[i-1]`` and ``milestones[i]`` (iterations out of ``num_updates``)."""

    def __init__(self, values: list[float], num_updates: int, milestones: list[int]):
        if len(values) != len(milestones) + 1:
            raise ValueError(f"MultiStepParamScheduler needs len(values) == len(milestones) + 1, got {values}, {milestones}")
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

    def __init__(self, optimizer: torch.optim.Optimizer, multiplier: ParamScheduler, max_iter: int, last_iter: int = -1):
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


def build_lr_scheduler(cfg: Any, optimizer: torch.optim.Optimizer) -> LRMultiplier:
    """``WarmupMultiStepLR`` (gamma at each of ``solver.steps``) or ``WarmupCosineLR`` (to ``base_lr_end``), with
    linear/constant warmup over ``warmup_iters``; one step per iteration over ``solver.max_iter``."""
    name = str(_get(cfg, "lr_scheduler_name", "WarmupMultiStepLR"))
    max_iter = int(_get(cfg, "max_iter"))
    if name == "WarmupMultiStepLR":
        all_steps = [int(s) for s in _get(cfg, "steps", [])]
        steps = [s for s in all_steps if s <= max_iter]
        if len(steps) != len(all_steps):
            logger.warning("solver.steps %s has values beyond solver.max_iter=%d: they are ignored", all_steps, max_iter)
        gamma = float(_get(cfg, "gamma", 0.1))
        sched: ParamScheduler = MultiStepParamScheduler(
            values=[gamma**k for k in range(len(steps) + 1)], milestones=steps, num_updates=max_iter
        )
    elif name == "WarmupCosineLR":
        end_value = float(_get(cfg, "base_lr_end", 0.0)) / float(_get(cfg, "base_lr"))
        if not 0.0 <= end_value <= 1.0:
            raise ValueError(f"solver.base_lr_end / solver.base_lr must be in [0, 1], got {end_value}")
        sched = CosineParamScheduler(1.0, end_value)
    else:
        raise ValueError(f"Unknown solver.lr_scheduler_name {name!r}: expected WarmupMultiStepLR or WarmupCosineLR")
    warmup = WarmupParamScheduler(
        sched,
        float(_get(cfg, "warmup_factor", 0.001)),
        min(int(_get(cfg, "warmup_iters", 0)) / max_iter, 1.0),
        str(_get(cfg, "warmup_method", "linear")),
        bool(_get(cfg, "rescale_interval", False)),
    )
    return LRMultiplier(optimizer, multiplier=warmup, max_iter=max_iter)
