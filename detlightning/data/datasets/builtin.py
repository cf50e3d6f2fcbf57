"""Register the built-in datasets: COCO (2014/2017 instances, person keypoints, panoptic) under detectron2's names,
Cityscapes, Pascal VOC, ADE20K, and the generated "shapes" dataset.

COCO is expected under ``$DETLIGHTNING_DATASETS`` (default ``./datasets``) with detectron2's layout
(``coco/train2017``, ``coco/annotations/instances_train2017.json``, ...). Registration is free and does not
look at the disk; loading a split whose files are missing raises FileNotFoundError naming the expected paths.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from ..catalog import DatasetCatalog, MetadataCatalog
from .ade20k import register_all_ade20k
from .builtin_meta import _get_builtin_metadata
from .cityscapes import (
    CITYSCAPES_STUFF_CLASSES,
    CITYSCAPES_THING_CLASSES,
    load_cityscapes_instances,
    load_cityscapes_semantic,
)
from .coco import register_coco_instances
from .coco_panoptic import register_coco_panoptic, register_coco_panoptic_separated
from .lvis import register_all_lvis
from .pascal_voc import register_pascal_voc
from .shapes import register_shapes

__all__ = ["register_all_coco", "register_all_lvis", "datasets_root"]
__all__ += ["register_all_cityscapes", "register_all_pascal_voc", "register_all_ade20k"]

_PREDEFINED_SPLITS_COCO: dict[str, dict[str, tuple[str, str]]] = {
    "coco": {
        "coco_2014_train": ("coco/train2014", "coco/annotations/instances_train2014.json"),
        "coco_2014_val": ("coco/val2014", "coco/annotations/instances_val2014.json"),
        "coco_2014_minival": ("coco/val2014", "coco/annotations/instances_minival2014.json"),
        "coco_2014_valminusminival": ("coco/val2014", "coco/annotations/instances_valminusminival2014.json"),
        "coco_2017_train": ("coco/train2017", "coco/annotations/instances_train2017.json"),
        "coco_2017_val": ("coco/val2017", "coco/annotations/instances_val2017.json"),
        "coco_2017_test": ("coco/test2017", "coco/annotations/image_info_test2017.json"),
        "coco_2017_test-dev": ("coco/test2017", "coco/annotations/image_info_test-dev2017.json"),
        "coco_2017_val_100": ("coco/val2017", "coco/annotations/instances_val2017_100.json"),
    },
    "coco_person": {
        "keypoints_coco_2014_train": ("coco/train2014", "coco/annotations/person_keypoints_train2014.json"),
        "keypoints_coco_2014_val": ("coco/val2014", "coco/annotations/person_keypoints_val2014.json"),
        "keypoints_coco_2014_minival": ("coco/val2014", "coco/annotations/person_keypoints_minival2014.json"),
        "keypoints_coco_2014_valminusminival": (
            "coco/val2014",
            "coco/annotations/person_keypoints_valminusminival2014.json",
        ),
        "keypoints_coco_2017_train": ("coco/train2017", "coco/annotations/person_keypoints_train2017.json"),
        "keypoints_coco_2017_val": ("coco/val2017", "coco/annotations/person_keypoints_val2017.json"),
        "keypoints_coco_2017_val_100": ("coco/val2017", "coco/annotations/person_keypoints_val2017_100.json"),
    },
}

# prefix -> (panoptic PNG folder, panoptic json, Panoptic-FPN semantic folder made by prepare_panoptic_fpn.py)
_PREDEFINED_SPLITS_COCO_PANOPTIC = {
    "coco_2017_train_panoptic": (
        "coco/panoptic_train2017",
        "coco/annotations/panoptic_train2017.json",
        "coco/panoptic_stuff_train2017",
    ),
    "coco_2017_val_panoptic": (
        "coco/panoptic_val2017",
        "coco/annotations/panoptic_val2017.json",
        "coco/panoptic_stuff_val2017",
    ),
    "coco_2017_val_100_panoptic": (
        "coco/panoptic_val2017_100",
        "coco/annotations/panoptic_val2017_100.json",
        "coco/panoptic_stuff_val2017_100",
    ),
}


def datasets_root() -> str:
    """``$DETLIGHTNING_DATASETS`` (default ``datasets``, relative to the working directory)."""
    return os.path.expanduser(os.getenv("DETLIGHTNING_DATASETS", "datasets"))


def _require_paths(name: str, loader: Callable[[], Any], **paths: str) -> Callable[[], Any]:
    """Wrap a loader so that missing files give one error naming every expected path."""

    def load() -> Any:
        missing = {k: p for k, p in paths.items() if not os.path.exists(p)}
        if missing:
            listing = "\n".join(f"  {k}: {p}" for k, p in paths.items())
            raise FileNotFoundError(
                f"Dataset '{name}' is registered but its files are missing ({', '.join(missing)}). Expected:\n"
                f"{listing}\nDownload COCO into $DETLIGHTNING_DATASETS/coco (now: {datasets_root()!r}) "
                "with detectron2's layout, or set DETLIGHTNING_DATASETS."
            )
        return loader()

    return load


def register_all_coco(root: str) -> None:
    """Register COCO's standard splits with paths under ``root``."""
    for family, splits in _PREDEFINED_SPLITS_COCO.items():
        for key, (image_root, json_file) in splits.items():
            image_root = os.path.join(root, image_root)
            json_file = os.path.join(root, json_file)
            register_coco_instances(key, _get_builtin_metadata(family), json_file, image_root)
            DatasetCatalog[key] = _require_paths(
                key, DatasetCatalog[key], json_file=json_file, image_root=image_root
            )

    for prefix, (panoptic_root, panoptic_json, semantic_root) in _PREDEFINED_SPLITS_COCO_PANOPTIC.items():
        instances_key = prefix[: -len("_panoptic")]
        image_root, instances_json = _PREDEFINED_SPLITS_COCO["coco"][instances_key]
        image_root = os.path.join(root, image_root)
        instances_json = os.path.join(root, instances_json)
        panoptic_root = os.path.join(root, panoptic_root)
        panoptic_json = os.path.join(root, panoptic_json)
        semantic_root = os.path.join(root, semantic_root)
        register_coco_panoptic_separated(
            prefix,
            _get_builtin_metadata("coco_panoptic_separated"),
            image_root,
            panoptic_root,
            panoptic_json,
            semantic_root,
            instances_json,
        )
        register_coco_panoptic(
            prefix,
            _get_builtin_metadata("coco_panoptic_standard"),
            image_root,
            panoptic_root,
            panoptic_json,
            instances_json,
        )
        common = {"image_root": image_root}
        DatasetCatalog[prefix + "_separated"] = _require_paths(
            prefix + "_separated",
            DatasetCatalog[prefix + "_separated"],
            instances_json=instances_json,
            sem_seg_root=semantic_root,
            **common,
        )
        DatasetCatalog[prefix + "_stuffonly"] = _require_paths(
            prefix + "_stuffonly", DatasetCatalog[prefix + "_stuffonly"], sem_seg_root=semantic_root, **common
        )
        DatasetCatalog[prefix] = _require_paths(
            prefix, DatasetCatalog[prefix], panoptic_json=panoptic_json, panoptic_root=panoptic_root, **common
        )


# ==== Cityscapes, Pascal VOC (ADE20K: .ade20k.register_all_ade20k) ====
# name (with "{task}" = instance_seg | sem_seg) -> (image dir, gtFine dir), under $DETLIGHTNING_DATASETS
_RAW_CITYSCAPES_SPLITS = {
    f"cityscapes_fine_{{task}}_{split}": (f"cityscapes/leftImg8bit/{split}/", f"cityscapes/gtFine/{split}/")
    for split in ("train", "val", "test")
}


def register_all_cityscapes(root: str) -> None:
    """Register ``cityscapes_fine_{instance_seg,sem_seg}_{train,val,test}`` with paths under ``root``."""
    for key, (image_dir, gt_dir) in _RAW_CITYSCAPES_SPLITS.items():
        image_dir, gt_dir = os.path.join(root, image_dir), os.path.join(root, gt_dir)
        meta = {"thing_classes": list(CITYSCAPES_THING_CLASSES), "stuff_classes": list(CITYSCAPES_STUFF_CLASSES),
                "image_dir": image_dir, "gt_dir": gt_dir}
        inst_key = key.format(task="instance_seg")
        DatasetCatalog.register(
            inst_key, lambda x=image_dir, y=gt_dir: load_cityscapes_instances(x, y, from_json=True, to_polygons=True)
        )
        MetadataCatalog.get(inst_key).set(evaluator_type="cityscapes_instance", **meta)
        sem_key = key.format(task="sem_seg")
        DatasetCatalog.register(sem_key, lambda x=image_dir, y=gt_dir: load_cityscapes_semantic(x, y))
        MetadataCatalog.get(sem_key).set(evaluator_type="cityscapes_sem_seg", ignore_label=255, **meta)


def register_all_pascal_voc(root: str) -> None:
    """Register ``voc_2007_{trainval,train,val,test}`` and ``voc_2012_{trainval,train,val}`` (VOC2012's test
    annotations are not public) with ``VOC2007`` / ``VOC2012`` under ``root``."""
    for year, splits in ((2007, ("trainval", "train", "val", "test")), (2012, ("trainval", "train", "val"))):
        for split in splits:
            name = f"voc_{year}_{split}"
            register_pascal_voc(name, os.path.join(root, f"VOC{year}"), split, year)
            MetadataCatalog.get(name).evaluator_type = "pascal_voc"
# ==== end Cityscapes, Pascal VOC ====


def _register_builtins() -> None:
    # Importing twice (e.g. importlib.reload) must not fail on "already registered".
    if "coco_2017_train" not in DatasetCatalog:
        register_all_coco(datasets_root())
    if "lvis_v1_train" not in DatasetCatalog:
        register_all_lvis(datasets_root())
    if "shapes_train" not in DatasetCatalog:
        register_shapes()
    if "cityscapes_fine_instance_seg_train" not in DatasetCatalog:
        register_all_cityscapes(datasets_root())
        register_all_pascal_voc(datasets_root())
        register_all_ade20k(datasets_root())


_register_builtins()
