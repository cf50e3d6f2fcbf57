"""Conversion of detectron2 (yacs CfgNode, upper-case keys) configs to detlightning's config."""
from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

__all__ = ["to_detlightning_cfg"]


def to_detlightning_cfg(cfg: Any) -> DictConfig:
    """Convert a detectron2-style config object to a detlightning DictConfig."""
    raise NotImplementedError(
        "detectron2 CfgNode configs are not supported yet; compose a detlightning config with "
        "detlightning.config.get_cfg([...]) instead."
    )
