"""Caffe2-style weight initialisations (fvcore's ``fvcore.nn.weight_init``), used by detectron2's heads and FPN."""
from __future__ import annotations

from torch import nn

__all__ = ["c2_msra_fill", "c2_xavier_fill"]


def c2_msra_fill(module: nn.Module) -> None:
    """Caffe2 "MSRAFill" (fvcore's ``c2_msra_fill``): He-normal weights with fan-out, zero bias."""
    nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    if module.bias is not None:
        nn.init.constant_(module.bias, 0)


def c2_xavier_fill(module: nn.Module) -> None:
    """Caffe2 "XavierFill" (fvcore's ``c2_xavier_fill``): uniform in +-sqrt(3 / fan_in), zero bias."""
    nn.init.kaiming_uniform_(module.weight, a=1)
    if module.bias is not None:
        nn.init.constant_(module.bias, 0)
