"""build_proposal_generator: the proposal generator that ``cfg.model.proposal_generator`` selects."""
from __future__ import annotations

from typing import Any

from torch import nn

from ...layers import ShapeSpec
from ..build import build_component, selected_name
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
    if selected_name(cfg, "model.proposal_generator") == "PrecomputedProposals":
        return None
    return build_component(PROPOSAL_GENERATOR_REGISTRY, "model.proposal_generator", cfg, input_shape)
