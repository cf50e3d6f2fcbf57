# COCO 2017 instance detection/segmentation loaders and evaluator (detectron2's configs/common/data).
from omegaconf import OmegaConf

from detlightning import data as D
from detlightning.config import LazyCall as L
from detlightning.data import transforms as T
from detlightning.evaluation import COCOEvaluator

# multi-scale training: shorter side drawn from 640..800 in steps of 32, longer side at most 1333, random flip
_train_mapper = L(D.DatasetMapper)(
    is_train=True,
    image_format="BGR",
    use_instance_mask=True,
    augmentations=[
        L(T.ResizeShortestEdge)(short_edge_length=tuple(range(640, 801, 32)), max_size=1333, sample_style="choice"),
        L(T.RandomFlip)(horizontal=True),
    ],
)
_test_mapper = L(D.DatasetMapper)(
    is_train=False,
    image_format="${...train.mapper.image_format}",
    augmentations=[L(T.ResizeShortestEdge)(short_edge_length=800, max_size=1333)],
)

dataloader = OmegaConf.create()
dataloader.train = L(D.build_detection_train_loader)(
    dataset=L(D.get_detection_dataset_dicts)(names="coco_2017_train"),
    mapper=_train_mapper,
    total_batch_size=16,
    num_workers=4,
)
dataloader.test = L(D.build_detection_test_loader)(
    dataset=L(D.get_detection_dataset_dicts)(names="coco_2017_val", filter_empty=False),
    mapper=_test_mapper,
    num_workers=4,
)
dataloader.evaluator = L(COCOEvaluator)(dataset_name="${..test.dataset.names}")
