"""The evaluator a dataset asks for: one place for the Lightning engine, scripts/plain_train_net.py and users."""
from __future__ import annotations

import logging
import os
from typing import Any

from ..config.reader import cfg_get
from ..data.catalog import MetadataCatalog
from .cityscapes_evaluation import CityscapesInstanceEvaluator, CityscapesSemSegEvaluator
from .coco_evaluation import COCOEvaluator
from .evaluator import DatasetEvaluator, DatasetEvaluators
from .lvis_evaluation import LVISEvaluator
from .panoptic_evaluation import COCOPanopticEvaluator
from .pascal_voc_evaluation import PascalVOCDetectionEvaluator
from .sem_seg_evaluation import SemSegEvaluator

__all__ = ["build_evaluator"]

logger = logging.getLogger(__name__)


def build_evaluator(cfg: Any, dataset_name: str, output_folder: str | None = None) -> DatasetEvaluator | None:
    """The ``DatasetEvaluator`` chosen by the dataset's metadata ``evaluator_type`` (detectron2's
    ``DefaultTrainer.build_evaluator`` rule): ``coco`` → COCOEvaluator (bbox/segm/keypoints as the model predicts,
    OKS sigmas from ``test.keypoint_oks_sigmas``), ``sem_seg`` → SemSegEvaluator, ``coco_panoptic_seg`` →
    COCOPanopticEvaluator + COCOEvaluator, ``cityscapes_instance`` / ``cityscapes_sem_seg`` → the Cityscapes
    evaluators, ``pascal_voc`` → PascalVOCDetectionEvaluator. ``output_folder`` None:
    ``<paths.output_dir>/inference`` when the config has an output dir. Returns None (with a warning) for a dataset
    without a known evaluator type."""
    if output_folder is None:
        out = cfg_get(cfg, "paths.output_dir")
        output_folder = os.path.join(out, "inference") if out else None
    evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type", "coco")
    sigmas = tuple(cfg_get(cfg, "test.keypoint_oks_sigmas") or ())
    if evaluator_type == "coco":
        return COCOEvaluator(dataset_name, output_dir=output_folder, kpt_oks_sigmas=sigmas)
    if evaluator_type == "lvis":
        return LVISEvaluator(dataset_name, output_dir=output_folder)
    if evaluator_type == "sem_seg":
        return SemSegEvaluator(dataset_name, distributed=True, output_dir=output_folder)
    if evaluator_type == "coco_panoptic_seg":
        return DatasetEvaluators([
            COCOPanopticEvaluator(dataset_name, output_folder),
            COCOEvaluator(dataset_name, output_dir=output_folder, kpt_oks_sigmas=sigmas),
        ])
    if evaluator_type == "cityscapes_instance":
        return CityscapesInstanceEvaluator(dataset_name)
    if evaluator_type == "cityscapes_sem_seg":
        return CityscapesSemSegEvaluator(dataset_name)
    if evaluator_type == "pascal_voc":
        return PascalVOCDetectionEvaluator(dataset_name)
    logger.warning("No evaluator for evaluator_type %r of dataset %s: no metrics", evaluator_type, dataset_name)
    return None
