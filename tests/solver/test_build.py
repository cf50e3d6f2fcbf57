from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

import detlightning.conf
from detlightning.solver import (
    build_lr_scheduler,
    build_optimizer,
    clip_gradients,
    get_default_optimizer_params,
)


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
        self.head = nn.Linear(4, 2)
        self.frozen = nn.Linear(2, 2)
        self.frozen.weight.requires_grad_(False)
        self.frozen.bias.requires_grad_(False)


_SGD_YAML = Path(detlightning.conf.__file__).parent / "solver" / "sgd.yaml"


def _solver(**kw):
    """The shipped solver defaults (conf/solver/sgd.yaml) with a short schedule and ``kw`` on top."""
    base = OmegaConf.load(_SGD_YAML)
    base.merge_with(dict(base_lr=0.1, max_iter=100, steps=[50, 80], warmup_factor=0.01, warmup_iters=10), kw)
    return OmegaConf.create({"solver": base})


def _group_of(opt: torch.optim.Optimizer, p: torch.Tensor) -> dict:
    (g,) = [g for g in opt.param_groups if any(q is p for q in g["params"])]
    return g


def test_param_groups_follow_detectron2_rules() -> None:
    net = _Net()
    opt = build_optimizer(_solver(bias_lr_factor=2.0, weight_decay_bias=0.0, backbone_multiplier=0.5), net)
    assert isinstance(opt, torch.optim.SGD)
    all_params = [p for g in opt.param_groups for p in g["params"]]
    # frozen parameters are left out, none twice
    assert len(all_params) == 6 and len({id(p) for p in all_params}) == 6
    conv, bn = net.backbone[0], net.backbone[1]
    assert _group_of(opt, conv.weight)["lr"] == pytest.approx(0.05)  # backbone multiplier
    assert _group_of(opt, conv.weight)["weight_decay"] == pytest.approx(1e-4)
    assert _group_of(opt, conv.bias)["lr"] == pytest.approx(0.2)  # bias override wins: base_lr * bias_lr_factor
    assert _group_of(opt, conv.bias)["weight_decay"] == 0.0
    assert _group_of(opt, bn.weight)["weight_decay"] == 0.0  # weight_decay_norm
    assert _group_of(opt, net.head.weight)["lr"] == pytest.approx(0.1)
    assert _group_of(opt, net.head.weight)["weight_decay"] == pytest.approx(1e-4)


def test_groups_are_merged() -> None:
    groups = get_default_optimizer_params(_Net(), base_lr=0.1, weight_decay_norm=0.0)
    # two kinds of hyperparameters: norm layers (wd 0) and the rest
    assert len(groups) == 2


def test_adamw_and_unknown_optimizer() -> None:
    opt = build_optimizer(_solver(optimizer="AdamW", base_lr=1e-3), _Net())
    assert isinstance(opt, torch.optim.AdamW)
    with pytest.raises(ValueError, match="Adam8"):
        build_optimizer(_solver(optimizer="Adam8"), _Net())


def _lrs(cfg, n):
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=cfg.solver.base_lr)
    sched = build_lr_scheduler(cfg, opt)
    out = []
    for _ in range(n):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_warmup_multistep_schedule() -> None:
    lrs = _lrs(_solver(), 100)
    # linear warmup from 0.1 * 0.01 to 0.1 over 10 iterations
    assert lrs[0] == pytest.approx(0.001)
    assert lrs[5] == pytest.approx(0.1 * (0.01 * 0.5 + 0.5))
    assert lrs[10] == pytest.approx(0.1)
    assert lrs[49] == pytest.approx(0.1)
    assert lrs[50] == pytest.approx(0.01)
    assert lrs[80] == pytest.approx(0.001)
    assert lrs[99] == pytest.approx(0.001)


def test_constant_warmup_and_cosine() -> None:
    lrs = _lrs(_solver(warmup_method="constant", lr_scheduler_name="WarmupCosineLR", base_lr_end=0.0), 100)
    cos = lambda i: 0.1 * 0.5 * (1 + math.cos(math.pi * i / 100))  # noqa: E731
    assert lrs[3] == pytest.approx(0.01 * cos(10))
    assert lrs[10] == pytest.approx(cos(10))
    assert lrs[60] == pytest.approx(cos(60))


def test_scheduler_state_roundtrip() -> None:
    cfg = _solver()
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.1)
    sched = build_lr_scheduler(cfg, opt)
    for _ in range(55):
        opt.step()
        sched.step()
    state = sched.state_dict()
    opt2 = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    sched2 = build_lr_scheduler(cfg, opt2)
    sched2.load_state_dict(state)
    opt2.step()
    sched2.step()
    opt.step()
    sched.step()
    assert opt2.param_groups[0]["lr"] == pytest.approx(opt.param_groups[0]["lr"]) == pytest.approx(0.01)


def test_unknown_scheduler() -> None:
    with pytest.raises(ValueError, match="WarmupPolyLR"):
        _lrs(_solver(lr_scheduler_name="WarmupPolyLR"), 1)


def _params_with_grads():
    a = nn.Parameter(torch.zeros(2))
    b = nn.Parameter(torch.zeros(2))
    a.grad = torch.tensor([3.0, 4.0])  # norm 5
    b.grad = torch.tensor([0.0, 0.5])  # norm 0.5
    return a, b


def test_clip_value() -> None:
    a, b = _params_with_grads()
    clip_gradients([a, b], dict(enabled=True, clip_type="value", clip_value=1.0, norm_type=2.0))
    assert a.grad.tolist() == [1.0, 1.0] and b.grad.tolist() == [0.0, 0.5]


def test_clip_norm_is_per_parameter() -> None:
    a, b = _params_with_grads()
    clip_gradients([a, b], dict(enabled=True, clip_type="norm", clip_value=1.0, norm_type=2.0))
    assert a.grad.tolist() == pytest.approx([0.6, 0.8], rel=1e-4)
    assert b.grad.tolist() == pytest.approx([0.0, 0.5])  # under the limit: unchanged


def test_clip_full_model() -> None:
    a, b = _params_with_grads()
    clip_gradients([a, b], dict(enabled=True, clip_type="full_model", clip_value=1.0, norm_type=2.0))
    total = math.sqrt(25 + 0.25)
    assert a.grad.tolist() == pytest.approx([3 / total, 4 / total], rel=1e-4)
    assert b.grad.tolist() == pytest.approx([0.0, 0.5 / total], rel=1e-4)


def test_clip_disabled_and_unknown() -> None:
    a, b = _params_with_grads()
    clip_gradients([a, b], dict(enabled=False, clip_type="value", clip_value=0.1))
    assert a.grad.tolist() == [3.0, 4.0]
    with pytest.raises(ValueError, match="bogus"):
        clip_gradients([a, b], dict(enabled=True, clip_type="bogus", clip_value=0.1))


def test_build_optimizer_applies_gradient_clipping_like_detectron2() -> None:
    """detectron2's build_optimizer returns an optimizer whose step() clips (SOLVER.CLIP_GRADIENTS); a CfgNode
    config works as well as ours."""
    from detlightning.config import get_cfg
    from detlightning.solver import clips_gradients, maybe_add_gradient_clipping

    cfg = get_cfg()
    cfg.SOLVER.BASE_LR, cfg.SOLVER.MOMENTUM, cfg.SOLVER.WEIGHT_DECAY = 1.0, 0.0, 0.0
    net = nn.Linear(2, 1, bias=False)
    opt = build_optimizer(cfg, net)
    assert not clips_gradients(opt)  # disabled by default
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = True
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "value"
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = 0.25
    opt = build_optimizer(cfg, net)
    assert clips_gradients(opt) and isinstance(opt, torch.optim.SGD)
    assert maybe_add_gradient_clipping(cfg, opt) is opt and type(opt).__mro__.count(type(opt)) == 1
    before = net.weight.detach().clone()
    net.weight.grad = torch.tensor([[2.0, -0.1]])
    opt.step()
    # the step used the clipped gradient [0.25, -0.1] with lr 1
    torch.testing.assert_close(net.weight.detach(), before - torch.tensor([[0.25, -0.1]]))
