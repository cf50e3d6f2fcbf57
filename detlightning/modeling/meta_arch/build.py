"""build_model: the whole model that ``cfg.model.meta_architecture`` selects."""
from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from ...config.reader import cfg_get, is_cfg_node
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
    if is_cfg_node(cfg):
        # read in place, a CfgNode is never converted: report here what of it nothing implements
        from ...config.d2_compat import warn_unsupported_d2_keys

        warn_unsupported_d2_keys(cfg, "build_model")
    model = build_component(META_ARCH_REGISTRY, "model.meta_architecture", cfg)
    if not isinstance(model, nn.Module):
        meta_arch = cfg_get(cfg, "model.meta_architecture")
        raise TypeError(f"meta_architecture {meta_arch!r} built a {type(model).__name__}; expected an nn.Module")
    device = str(cfg_get(cfg, "model.device"))
    if device.startswith("cuda") and not torch.cuda.is_available():
        # detectron2's default MODEL.DEVICE is "cuda": a detectron2 config still builds on a CPU-only machine
        logger.warning("model.device=%r but CUDA is not available: the model is built on the CPU", device)
        device = "cpu"
    model.to(torch.device(device))
    num_params = sum(p.numel() for p in model.parameters())
    logger.info("Built %s (%.2fM parameters) on %s", type(model).__name__, num_params / 1e6, device)
    logger.debug("Model:\n%s", model)
    return model
