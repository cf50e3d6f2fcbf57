"""Optimizers, parameter groups, gradient clipping and LR schedules (detectron2's ``detectron2.solver``), plain
torch: a plain-PyTorch loop and the Lightning engine both build their solver here."""
from .build import (
    GradientClipType,
    build_lr_scheduler,
    build_optimizer,
    clip_gradients,
    clips_gradients,
    get_default_optimizer_params,
    maybe_add_gradient_clipping,
    reduce_param_groups,
)
from .lr_scheduler import (
    CompositeParamScheduler,
    ConstantParamScheduler,
    CosineParamScheduler,
    LinearParamScheduler,
    LRMultiplier,
    LRScheduler,
    MultiStepParamScheduler,
    ParamScheduler,
    WarmupCosineLR,
    WarmupMultiStepLR,
    WarmupParamScheduler,
)

__all__ = [
    "CompositeParamScheduler",
    "ConstantParamScheduler",
    "CosineParamScheduler",
    "GradientClipType",
    "LRMultiplier",
    "LRScheduler",
    "LinearParamScheduler",
    "MultiStepParamScheduler",
    "ParamScheduler",
    "WarmupCosineLR",
    "WarmupMultiStepLR",
    "WarmupParamScheduler",
    "build_lr_scheduler",
    "build_optimizer",
    "clip_gradients",
    "clips_gradients",
    "get_default_optimizer_params",
    "maybe_add_gradient_clipping",
    "reduce_param_groups",
]
