"""Optimizer, parameter groups and gradient clipping from the ``solver`` config group (detectron2's
``detectron2/solver/build.py``: ``build_optimizer``, ``get_default_optimizer_params``, ``maybe_add_gradient_clipping``).

Config keys are detectron2's ``SOLVER.*`` lower-cased (``solver.base_lr``, ...), read through
:func:`detlightning.config.cfg_get`, so a detectron2 ``CfgNode`` works too. Extra keys: ``solver.optimizer``
(``SGD`` or ``AdamW``), ``solver.betas``/``solver.eps`` (AdamW), ``solver.backbone_multiplier`` (LR factor of
parameters under ``backbone.``) and ``solver.clip_gradients.clip_type: full_model`` (one norm over all parameters,
as detectron2's LazyConfig projects do). Plain torch: no Lightning.
"""
from __future__ import annotations

import copy
import logging
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from ..config.reader import cfg_get
from .lr_scheduler import build_lr_scheduler

__all__ = [
    "GradientClipType",
    "build_lr_scheduler",
    "build_optimizer",
    "clip_gradients",
    "clips_gradients",
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
    if not params:
        return
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
    """``optimizer`` whose ``step()`` first clips the gradients as ``solver.clip_gradients`` says (detectron2's API,
    for plain-PyTorch loops); ``optimizer`` itself when clipping is disabled.

    The optimizer's class is swapped for a subclass with a clipping ``step``, so it stays a real
    ``torch.optim.Optimizer`` (LR schedulers and ``state_dict`` work as before). Under AMP, unscale the gradients
    before ``step`` (``GradScaler.step`` does; Lightning's mixed precision does). :func:`build_optimizer` applies
    this, as detectron2's does; applying it twice clips once.
    """
    clip_cfg = cfg_get(cfg, "solver.clip_gradients")
    if not clip_cfg or not clip_cfg.get("enabled", False) or clips_gradients(optimizer):
        return optimizer
    base_cls = type(optimizer)

    def step(self: torch.optim.Optimizer, closure: Callable[[], Any] | None = None) -> Any:
        # a closure (Lightning passes one) computes the gradients: run it first, clip, then step
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        clip_gradients([p for group in self.param_groups for p in group["params"]], clip_cfg)
        base_cls.step(self)
        return loss

    attrs = {"step": step, "_gradient_clipping": True}
    optimizer.__class__ = type(base_cls.__name__ + "WithGradientClip", (base_cls,), attrs)
    return optimizer


def clips_gradients(optimizer: torch.optim.Optimizer) -> bool:
    """True when ``optimizer.step()`` clips gradients itself (:func:`maybe_add_gradient_clipping`)."""
    return bool(getattr(type(optimizer), "_gradient_clipping", False))


# ----------------------------------------------------------------------------------------------- optimizer
def build_optimizer(cfg: Any, model: nn.Module) -> torch.optim.Optimizer:
    """SGD (momentum, nesterov) or AdamW over ``get_default_optimizer_params`` groups, from ``cfg.solver``; its
    ``step()`` clips gradients first when ``solver.clip_gradients.enabled`` (as detectron2's ``build_optimizer``)."""
    solver = cfg_get(cfg, "solver")
    base_lr = float(solver["base_lr"])
    backbone_mult = float(solver["backbone_multiplier"])
    lr_factor_func = None
    if backbone_mult != 1.0:
        lr_factor_func = lambda name: backbone_mult if name.startswith("backbone.") else 1.0  # noqa: E731
    params = get_default_optimizer_params(
        model,
        base_lr=base_lr,
        weight_decay_norm=solver["weight_decay_norm"],
        bias_lr_factor=solver["bias_lr_factor"],
        weight_decay_bias=solver["weight_decay_bias"],
        lr_factor_func=lr_factor_func,
    )
    if not params:
        raise ValueError("build_optimizer: the model has no trainable parameters")
    name = str(solver["optimizer"]).lower()
    weight_decay = float(solver["weight_decay"])
    if name == "sgd":
        optimizer: torch.optim.Optimizer = torch.optim.SGD(
            params, lr=base_lr, momentum=float(solver["momentum"]), nesterov=bool(solver["nesterov"]),
            weight_decay=weight_decay,
        )
    elif name == "adamw":
        optimizer = torch.optim.AdamW(
            params, lr=base_lr, betas=tuple(solver["betas"]), eps=float(solver["eps"]), weight_decay=weight_decay
        )
    else:
        raise ValueError(f"Unknown solver.optimizer {solver['optimizer']!r}: expected SGD or AdamW")
    return maybe_add_gradient_clipping(cfg, optimizer)


