"""Training engine on Lightning: the LightningModule around a detection model, callbacks in place of detectron2's
hooks and writers, the train / evaluate jobs, and ``DefaultPredictor`` (detectron2's ``detectron2.engine`` role).

Importing this package imports Lightning. A plain-PyTorch loop needs none of it: the solver is
:mod:`detlightning.solver`, the model :mod:`detlightning.modeling`, the data :mod:`detlightning.data`.
"""
from .callbacks import (
    BestCheckpointer,
    IterationTimer,
    LRLogger,
    MemoryStats,
    MetricsWriter,
    PeriodicCheckpointer,
    PreciseBN,
    VisualizePredictions,
)
from .defaults import (
    build_callbacks,
    build_loggers,
    build_trainer,
    create_ddp_model,
    default_argument_parser,
    default_setup,
    default_writers,
    evaluate,
    find_resume_checkpoint,
    prepare_cfg,
    primary_metric,
    train,
)
from .launch import launch
from .module import DetectionModule
from .predictor import DefaultPredictor

__all__ = [
    "BestCheckpointer",
    "DefaultPredictor",
    "DetectionModule",
    "IterationTimer",
    "LRLogger",
    "MemoryStats",
    "MetricsWriter",
    "PeriodicCheckpointer",
    "PreciseBN",
    "VisualizePredictions",
    "build_callbacks",
    "build_loggers",
    "build_trainer",
    "create_ddp_model",
    "default_argument_parser",
    "default_setup",
    "default_writers",
    "evaluate",
    "find_resume_checkpoint",
    "launch",
    "prepare_cfg",
    "primary_metric",
    "train",
]
