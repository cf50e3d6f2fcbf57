from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from detlightning.config import get_d2_cfg
from detlightning.solver import (
    WarmupCosineLR,
    WarmupMultiStepLR,
    build_lr_scheduler,
    build_optimizer,
    maybe_add_gradient_clipping,
)


def _lrs(sched: torch.optim.lr_scheduler.LRScheduler, n: int) -> list[float]:
    out = []
    for _ in range(n):
        out.append(sched.optimizer.param_groups[0]["lr"])
        sched.optimizer.step()
        sched.step()
    return out


def _opt(lr: float = 1.0) -> torch.optim.Optimizer:
    return torch.optim.SGD([nn.Parameter(torch.zeros(2))], lr=lr)


def test_warmup_multistep_lr_values():
    lrs = _lrs(WarmupMultiStepLR(_opt(), milestones=[6, 8], gamma=0.5, warmup_factor=0.2, warmup_iters=4), 10)
    # linear warmup 0.2 -> 1 over 4 iterations, then halved at 6 and again at 8
    expected = [0.2, 0.4, 0.6, 0.8, 1.0, 1.0, 0.5, 0.5, 0.25, 0.25]
    assert lrs == pytest.approx(expected)


def test_warmup_multistep_lr_constant_warmup_and_order_check():
    sched = WarmupMultiStepLR(_opt(), milestones=[3], warmup_factor=0.1, warmup_iters=2, warmup_method="constant")
    lrs = _lrs(sched, 4)
    assert lrs == pytest.approx([0.1, 0.1, 1.0, 0.1])
    with pytest.raises(ValueError, match="increasing"):
        WarmupMultiStepLR(_opt(), milestones=[5, 3])


def test_warmup_cosine_lr_values():
    lrs = _lrs(WarmupCosineLR(_opt(), max_iters=10, warmup_factor=1.0, warmup_iters=0), 12)
    expected = [0.5 * (1 + math.cos(math.pi * i / 10)) for i in range(10)] + [0.0, 0.0]
    assert lrs == pytest.approx(expected)


def test_gradient_clipping_composes_with_lr_scheduler():
    """detectron2's plain-loop recipe: wrap the optimizer for clipping, then schedule it (used to raise)."""
    cfg = get_d2_cfg()
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = True
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "value"
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = 0.5
    cfg.SOLVER.MAX_ITER, cfg.SOLVER.STEPS, cfg.SOLVER.WARMUP_ITERS = 10, (5,), 0
    param = nn.Parameter(torch.zeros(3))
    opt = maybe_add_gradient_clipping(cfg, torch.optim.SGD([param], lr=1.0))
    assert isinstance(opt, torch.optim.SGD)
    sched = build_lr_scheduler(cfg, opt)
    param.grad = torch.tensor([3.0, -0.2, -7.0])
    opt.step()
    sched.step()
    lr0 = 1.0  # the optimizer's lr (no warmup)
    # the step used the clipped gradient [0.5, -0.2, -0.5]
    assert param.detach().tolist() == pytest.approx([-0.5 * lr0, 0.2 * lr0, 0.5 * lr0])
    assert "state" in opt.state_dict()


def test_build_optimizer_and_scheduler_read_a_detectron2_cfgnode():
    cfg = get_d2_cfg()
    cfg.SOLVER.BASE_LR, cfg.SOLVER.MOMENTUM, cfg.SOLVER.MAX_ITER, cfg.SOLVER.STEPS = 0.02, 0.8, 100, (60,)
    cfg.SOLVER.WARMUP_ITERS = 0
    opt = build_optimizer(cfg, nn.Linear(2, 2))
    assert isinstance(opt, torch.optim.SGD)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.02) and opt.param_groups[0]["momentum"] == 0.8
    lrs = _lrs(build_lr_scheduler(cfg, opt), 62)
    assert lrs[59] == pytest.approx(0.02) and lrs[61] == pytest.approx(0.002)


def test_multistep_param_scheduler_takes_fvcores_form_without_num_updates():
    from detlightning.solver import MultiStepParamScheduler

    explicit = MultiStepParamScheduler(values=[1.0, 0.1, 0.01], milestones=[6, 8], num_updates=10)
    implicit = MultiStepParamScheduler(values=[1.0, 0.1, 0.01], milestones=[6, 8, 10])
    points = [i / 10 for i in range(10)]
    assert [implicit(w) for w in points] == [explicit(w) for w in points] == [1.0] * 6 + [0.1] * 2 + [0.01] * 2
    with pytest.raises(ValueError, match="one milestone per value"):
        MultiStepParamScheduler(values=[1.0, 0.1], milestones=[6])
