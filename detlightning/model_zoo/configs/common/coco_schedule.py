# The "Nx" multi-step schedules of the COCO baselines, as LR multipliers (fractions of training).
from detlightning.config import LazyCall as L
from detlightning.solver import MultiStepParamScheduler, WarmupParamScheduler

_ITERS_PER_X = 90000  # "1x" = 90k iterations at 16 images per batch, about 12 COCO epochs
_WARMUP_ITERS = 1000


def default_X_scheduler(num_X):  # noqa: N802, N803  (detectron2's name)
    """The LR multiplier config of an ``num_X``-times-1x schedule: the LR drops 10x twice near the end (for
    schedules up to 2x at the 1x points 60k and 80k), after a 1000-iteration linear warmup from 0.001."""
    total = num_X * _ITERS_PER_X
    # the multiplier is scale-free: a schedule up to 2x keeps the 1x decay points
    milestones = [60000, 80000] if num_X <= 2 else [total - 60000, total - 20000]
    num_updates = _ITERS_PER_X if num_X <= 2 else total
    return L(WarmupParamScheduler)(
        scheduler=L(MultiStepParamScheduler)(values=[1.0, 0.1, 0.01], milestones=milestones, num_updates=num_updates),
        warmup_length=_WARMUP_ITERS / total,
        warmup_method="linear",
        warmup_factor=0.001,
    )


lr_multiplier_1x = default_X_scheduler(1)
lr_multiplier_2x = default_X_scheduler(2)
lr_multiplier_3x = default_X_scheduler(3)
lr_multiplier_6x = default_X_scheduler(6)
lr_multiplier_9x = default_X_scheduler(9)
