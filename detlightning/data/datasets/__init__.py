"""Dataset loaders and registration helpers; importing this package registers the built-in datasets
(COCO under detectron2's names, and the generated "shapes" dataset)."""
from . import builtin as _builtin
from .cityscapes import load_cityscapes_instances, load_cityscapes_semantic
from .coco import convert_to_coco_dict, convert_to_coco_json, load_coco_json, load_sem_seg, register_coco_instances
from .coco_panoptic import load_coco_panoptic_json, register_coco_panoptic, register_coco_panoptic_separated
from .lvis import get_lvis_instances_meta, load_lvis_json, register_lvis_instances
from .pascal_voc import load_voc_instances, register_pascal_voc
from .shapes import generate_shapes, get_shapes_metadata, register_shapes

__all__ = [
    "convert_to_coco_dict",
    "convert_to_coco_json",
    "generate_shapes",
    "get_lvis_instances_meta",
    "get_shapes_metadata",
    "load_coco_json",
    "load_cityscapes_instances",
    "load_cityscapes_semantic",
    "load_coco_panoptic_json",
    "load_lvis_json",
    "load_sem_seg",
    "load_voc_instances",
    "register_coco_instances",
    "register_coco_panoptic",
    "register_coco_panoptic_separated",
    "register_lvis_instances",
    "register_pascal_voc",
    "register_shapes",
]
