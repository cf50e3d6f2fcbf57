"""Training engine on Lightning: the LightningModule around a detection model, callbacks in place of detectron2's
hooks and writers, the train / evaluate jobs, and ``DefaultPredictor`` (detectron2's ``detectron2.engine`` role).

Importing this package imports Lightning. A plain-PyTorch loop needs none of it: the solver is
:mod:`detlightning.solver`, the model :mod:`detlightning.modeling`, the data :mod:`detlightning.data`.
"""
from . import hooks
from .callbacks import (
    BestCheckpointer,
    IterationTimer,
    LRLogger,
    MemoryStats,
    MetricsWriter,
    PeriodicCheckpointer,
    PreciseBN,
    ResumeState,
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
from .hooks import HookBase
from .launch import launch
from .lazy import LazyDetectionModule, build_lazy_trainer, lazy_evaluate, lazy_train
from .module import DetectionModule
from .predictor import DefaultPredictor
from .train_loop import AMPTrainer, SimpleTrainer, TrainerBase
from .trainer import DefaultTrainer

__all__ = [
    "AMPTrainer",
    "BestCheckpointer",
    "DefaultPredictor",
    "DefaultTrainer",
    "DetectionModule",
    "HookBase",
    "IterationTimer",
    "LRLogger",
    "LazyDetectionModule",
    "MemoryStats",
    "MetricsWriter",
    "PeriodicCheckpointer",
    "PreciseBN",
    "ResumeState",
    "SimpleTrainer",
    "TrainerBase",
    "VisualizePredictions",
    "build_callbacks",
    "build_lazy_trainer",
    "build_loggers",
    "build_trainer",
    "create_ddp_model",
    "default_argument_parser",
    "default_setup",
    "default_writers",
    "evaluate",
    "find_resume_checkpoint",
    "hooks",
    "launch",
    "lazy_evaluate",
    "lazy_train",
    "prepare_cfg",
    "primary_metric",
    "train",
]
