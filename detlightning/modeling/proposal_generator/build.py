"""build_proposal_generator: the proposal generator that ``cfg.model.proposal_generator`` selects."""
from __future__ import annotations

from typing import Any

from omegaconf import DictConfig
from torch import nn

from ...config.d2_compat import as_detlightning_cfg
from ...layers import ShapeSpec
from ..build import build_component
from ..registry import PROPOSAL_GENERATOR_REGISTRY
from . import rpn  # noqa: F401  (registers RPN and StandardRPNHead)

__all__ = ["PROPOSAL_GENERATOR_REGISTRY", "build_proposal_generator"]


def build_proposal_generator(cfg: Any, input_shape: dict[str, ShapeSpec]) -> nn.Module | None:
    """Build the proposal generator named by ``cfg.model.proposal_generator.name`` (or its ``_target_``).

    The name ``"PrecomputedProposals"`` means no proposal generator: the model reads ``"proposals"`` from its
    inputs instead (Fast R-CNN), and ``None`` is returned.

    Args:
        input_shape: the backbone's output shapes, feature name -> ShapeSpec.
    """
    cfg = as_detlightning_cfg(cfg)  # a detectron2 CfgNode is converted here
    node = cfg.model.proposal_generator
    name = node.get("name") if isinstance(node, DictConfig) else node
    if name == "PrecomputedProposals" and not (isinstance(node, DictConfig) and "_target_" in node):
        return None
    return build_component(PROPOSAL_GENERATOR_REGISTRY, node, cfg, input_shape)
