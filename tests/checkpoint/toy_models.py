"""Tiny modules with detectron2 parameter names, for checkpoint tests (no detlightning.modeling needed)."""
from __future__ import annotations

import torch
from torch import nn


class ToyFrozenBN(nn.Module):
    """Frozen batch norm like detectron2's: four buffers, ``y = (x - mean) / sqrt(var + eps) * w + b``."""

    def __init__(self, n: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(n))
        self.register_buffer("bias", torch.zeros(n))
        self.register_buffer("running_mean", torch.zeros(n))
        self.register_buffer("running_var", torch.ones(n) - eps)


class ToyConv(nn.Module):
    """A detectron2 ``Conv2d`` with a norm: parameter ``weight`` and submodule ``norm``."""

    def __init__(self, cin: int, cout: int, k: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin, k, k))
        self.norm = ToyFrozenBN(cout)


class ToyBlock(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = ToyConv(c, c, 1)


class ToyBottomUp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Module()
        self.stem.conv1 = ToyConv(3, 4, 3)
        self.res2 = nn.Sequential(ToyBlock(4))


class ToyBackbone(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.bottom_up = ToyBottomUp()
        self.fpn_lateral2 = nn.Conv2d(4, 2, 1)


class ToyBoxPredictor(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.cls_score = nn.Linear(8, 3)
        self.bbox_pred = nn.Linear(8, 8)


class ToyROIHeads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.box_predictor = ToyBoxPredictor()


class ToyDetector(nn.Module):
    """``backbone.bottom_up.{stem,res2}``, ``backbone.fpn_lateral2``, ``roi_heads.box_predictor.*``."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.backbone = ToyBackbone()
        self.roi_heads = ToyROIHeads()
        # like detectron2's GeneralizedRCNN: configured values, not part of the checkpoint
        self.register_buffer("pixel_mean", torch.tensor([103.53, 116.28, 123.675]).view(-1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.ones(3, 1, 1), persistent=False)
        with torch.no_grad():  # give the buffers non-default values so a load is observable
            for name, buf in self.named_buffers():
                if name.endswith(("norm.weight", "norm.bias", "running_mean")):
                    buf.copy_(torch.randn(buf.shape))


class TreeOfTensors(nn.Module):
    """A module with exactly the given state-dict keys (dotted names become nested modules), as buffers."""

    def __init__(self, shapes: dict[str, list[int]], fill: float = 0.0) -> None:
        super().__init__()
        for key, shape in shapes.items():
            *path, leaf = key.split(".")
            mod: nn.Module = self
            for part in path:
                if part not in mod._modules:
                    mod.add_module(part, nn.Module())
                mod = mod._modules[part]
            mod.register_buffer(leaf, torch.full(list(shape), fill))
