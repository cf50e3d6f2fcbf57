"""The overridable builders of detectron2's ``DefaultTrainer``, shared by :class:`DefaultTrainer` and the
Lightning-native :class:`DetectionModule`: subclass either and override the same classmethods."""
from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from ..modeling import build_model
from ..solver import build_lr_scheduler, build_optimizer

__all__ = ["DefaultBuilders"]

logger = logging.getLogger(__name__)


class DefaultBuilders:
    """``build_model``, ``build_optimizer``, ``build_lr_scheduler``, ``build_evaluator`` as classmethods taking the
    config (a detectron2 ``CfgNode`` or our composed config)."""

    @classmethod
    def build_model(cls, cfg: Any) -> nn.Module:
        """The model (default: ``detlightning.modeling.build_model(cfg)``)."""
        model = build_model(cfg)
        logger.debug("Model:\n%s", model)
        return model

    @classmethod
    def build_optimizer(cls, cfg: Any, model: nn.Module) -> torch.optim.Optimizer:
        """The optimizer (default: ``detlightning.solver.build_optimizer``, which also applies
        ``solver.clip_gradients``)."""
        return build_optimizer(cfg, model)

    @classmethod
    def build_lr_scheduler(cls, cfg: Any, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
        """The per-iteration LR scheduler (default: ``detlightning.solver.build_lr_scheduler``)."""
        return build_lr_scheduler(cfg, optimizer)

    @classmethod
    def build_evaluator(cls, cfg: Any, dataset_name: str, output_folder: str | None = None) -> Any:
        """The ``DatasetEvaluator`` of one dataset, chosen by its metadata's ``evaluator_type`` (``coco``,
        ``sem_seg``, ``coco_panoptic_seg``); ``None`` means no metrics for that dataset. (detectron2's base class
        raises here instead; override it to choose your own.)"""
        from ..evaluation import build_evaluator

        return build_evaluator(cfg, dataset_name, output_folder)
