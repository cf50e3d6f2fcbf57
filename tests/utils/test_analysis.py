"""FLOP and parameter counting: hand-computed counts on tiny layers, and a tiny Mask R-CNN with list[dict] inputs."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from detlightning.utils.analysis import (
    FlopCountAnalysis,
    flop_count_operators,
    parameter_count,
    parameter_count_table,
)


class Tiny(nn.Module):
    """conv (1->2, 3x3, no padding) on (1, 1, 5, 5) -> (1, 2, 3, 3), flattened to 18, then Linear(18, 4)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.head = nn.Sequential(nn.ReLU(), nn.Linear(18, 4))
        self.unused = nn.Linear(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(x).flatten(1))


# 2 FLOPs per multiply-add: conv has 2*3*3 outputs, each 1*3*3 MACs; linear 18*4 MACs for one row
CONV_FLOPS = 2 * (2 * 3 * 3) * (1 * 3 * 3)  # 324
LINEAR_FLOPS = 2 * 1 * 18 * 4  # 144


def test_linear_flops_follow_torch_convention():
    fca = FlopCountAnalysis(nn.Linear(4, 3), torch.randn(2, 4))
    assert fca.total() == 2 * 2 * 4 * 3
    assert dict(fca.by_operator()) == {"addmm": 48}


def test_tiny_model_by_module_and_operator():
    fca = FlopCountAnalysis(Tiny(), (torch.randn(1, 1, 5, 5),))  # a tuple: positional arguments
    assert fca.total() == CONV_FLOPS + LINEAR_FLOPS
    by_mod = fca.by_module()
    assert by_mod[""] == CONV_FLOPS + LINEAR_FLOPS
    assert by_mod["conv"] == CONV_FLOPS
    assert by_mod["head"] == by_mod["head.1"] == LINEAR_FLOPS
    assert by_mod["unused"] == 0 and "unused" in fca.uncalled_modules()
    assert dict(fca.by_operator()) == {"conv": CONV_FLOPS, "addmm": LINEAR_FLOPS}
    assert dict(fca.by_operator("head")) == {"addmm": LINEAR_FLOPS}
    assert fca.unsupported_ops_warnings(False).uncalled_modules_warnings(False) is fca
    with pytest.raises(KeyError, match="nope"):
        fca.total("nope")


def test_flop_count_operators_gflops_and_restores_mode():
    model = Tiny().train()
    ops = flop_count_operators(model, (torch.randn(1, 1, 5, 5),))
    assert ops["conv"] == pytest.approx(CONV_FLOPS / 1e9)
    assert ops["addmm"] == pytest.approx(LINEAR_FLOPS / 1e9)
    assert ops["bmm"] == 0.0  # a defaultdict, as detectron2 returns
    assert model.training


def test_parameter_count_and_table():
    model = Tiny()
    counts = parameter_count(model)
    conv, lin, unused = 2 * 9 + 2, 18 * 4 + 4, 2 * 2 + 2
    assert counts[""] == conv + lin + unused
    assert counts["conv"] == conv and counts["conv.weight"] == 18
    assert counts["head"] == counts["head.1"] == lin
    table = parameter_count_table(model, max_depth=1)
    lines = table.splitlines()
    assert "model" in lines[2] and str(conv + lin + unused) in lines[2]
    assert any(" conv " in ln and str(conv) in ln for ln in lines)
    assert "head.1" not in table  # deeper than max_depth
    deeper = parameter_count_table(model, max_depth=2)
    assert "|   conv.weight " in deeper and "(2, 1, 3, 3)" in deeper  # indented one space per level
    shared = nn.Sequential(model.conv, model.conv)
    assert parameter_count(shared)[""] == conv


def test_tiny_mask_rcnn_with_list_of_dicts(tmp_path: Path):
    from detlightning.config import compose
    from detlightning.modeling import build_model
    from tests.engine.conftest import tiny_overrides

    model = build_model(compose(tiny_overrides(tmp_path))).eval()
    inputs = [{"image": torch.randint(0, 255, (3, 64, 64), dtype=torch.uint8).float(), "height": 64, "width": 64}]
    fca = FlopCountAnalysis(model, inputs)
    by_mod = fca.by_module()
    assert fca.total() > 0
    assert 0 < by_mod["backbone"] <= by_mod[""]
    assert by_mod["backbone"] >= by_mod["backbone.bottom_up"] > 0
    ops = flop_count_operators(model, inputs)
    assert ops["conv"] > 0
    assert sum(ops.values()) == pytest.approx(fca.total() / 1e9)
