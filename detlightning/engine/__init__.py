"""Training engine: the LightningModule around a detection model, solver (optimizer + LR schedule), callbacks
in place of detectron2's hooks and writers, and the train / evaluate jobs (detectron2's ``detectron2.engine`` and
``detectron2.solver`` roles)."""
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
    DefaultPredictor,
    build_callbacks,
    build_loggers,
    build_trainer,
    default_setup,
    evaluate,
    find_resume_checkpoint,
    prepare_cfg,
    train,
)
from .module import DetectionModule
from .solver import build_lr_scheduler, build_optimizer, get_default_optimizer_params

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
    "build_lr_scheduler",
    "build_optimizer",
    "build_trainer",
    "default_setup",
    "evaluate",
    "find_resume_checkpoint",
    "get_default_optimizer_params",
    "prepare_cfg",
    "train",
]
