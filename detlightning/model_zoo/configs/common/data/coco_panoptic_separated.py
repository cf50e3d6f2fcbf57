# COCO panoptic, "separated" form: instances for things + a semantic map for stuff, for Panoptic FPN.
from detlightning.config import LazyCall as L
from detlightning.evaluation import COCOEvaluator, COCOPanopticEvaluator, DatasetEvaluators, SemSegEvaluator

from .coco import dataloader

dataloader.train.dataset.update(names="coco_2017_train_panoptic_separated", filter_empty=False)
dataloader.test.dataset.names = "coco_2017_val_panoptic_separated"

# instance AP, stuff mIoU and PQ on the same predictions
dataloader.evaluator = L(DatasetEvaluators)(
    evaluators=[
        L(evaluator)(dataset_name="${....test.dataset.names}")
        for evaluator in (COCOEvaluator, SemSegEvaluator, COCOPanopticEvaluator)
    ]
)
