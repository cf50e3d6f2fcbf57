"""Training engine: the LightningModule around a detection model, solver (optimizer + LR schedule), callbacks
in place of detectron2's hooks and writers, and the train / evaluate jobs (detectron2's ``detectron2.engine`` and
``detectron2.solver`` roles).

Names are resolved lazily: ``detlightning.engine.solver`` (plain torch) and ``DefaultPredictor`` import without
Lightning, so a plain-PyTorch loop (``scripts/plain_train_net.py``) can use them.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "BestCheckpointer": "callbacks",
    "IterationTimer": "callbacks",
    "LRLogger": "callbacks",
    "MemoryStats": "callbacks",
    "MetricsWriter": "callbacks",
    "PeriodicCheckpointer": "callbacks",
    "PreciseBN": "callbacks",
    "VisualizePredictions": "callbacks",
    "DefaultPredictor": "predictor",
    "build_callbacks": "defaults",
    "build_loggers": "defaults",
    "build_trainer": "defaults",
    "default_setup": "defaults",
    "evaluate": "defaults",
    "find_resume_checkpoint": "defaults",
    "prepare_cfg": "defaults",
    "primary_metric": "defaults",
    "train": "defaults",
    "DetectionModule": "module",
    "build_lr_scheduler": "solver",
    "build_optimizer": "solver",
    "get_default_optimizer_params": "solver",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'detlightning.engine' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
