"""build_model: the whole model that ``cfg.model.meta_architecture`` selects."""
from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from ...config.d2_compat import as_detlightning_cfg
from ..build import build_component
from ..registry import META_ARCH_REGISTRY

__all__ = ["META_ARCH_REGISTRY", "build_model"]

logger = logging.getLogger(__name__)


def build_model(cfg: Any) -> nn.Module:
    """Build the model named by ``cfg.model.meta_architecture`` and move it to ``cfg.model.device``.

    ``meta_architecture`` is a registered name (``GeneralizedRCNN``, ``ProposalNetwork``, a user's
    ``@META_ARCH_REGISTRY.register()`` class, ...), called as ``cls(cfg)``, or a node with ``_target_``.
    No weights are loaded: use ``DetectionCheckpointer(model).load(cfg.model.weights)`` for that.
    """
    cfg = as_detlightning_cfg(cfg)  # a detectron2 CfgNode is converted here
    meta_arch = cfg.model.meta_architecture
    model = build_component(META_ARCH_REGISTRY, meta_arch, cfg)
    if not isinstance(model, nn.Module):
        raise TypeError(f"meta_architecture {meta_arch!r} built a {type(model).__name__}; expected an nn.Module")
    model.to(torch.device(cfg.model.device))
    num_params = sum(p.numel() for p in model.parameters())
    logger.info("Built %s (%.2fM parameters) on %s", type(model).__name__, num_params / 1e6, cfg.model.device)
    logger.debug("Model:\n%s", model)
    return model
