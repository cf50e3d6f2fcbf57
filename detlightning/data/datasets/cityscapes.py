"""Cityscapes (gtFine) loaders: instance segmentation from ``*_gtFine_polygons.json`` or ``*_gtFine_instanceIds.png``,
semantic segmentation from ``*_gtFine_labelTrainIds.png``, as ``detectron2.data.datasets.cityscapes``.

Expected layout: ``<image_dir>/<city>/<city>_<seq>_<frame>_leftImg8bit.png`` with the annotations of each image in
``<gt_dir>/<city>/<city>_<seq>_<frame>_gtFine_*``. The label table (ids, train ids, which classes have instances)
comes from the ``cityscapesscripts`` package (``pip install cityscapesscripts``), imported only when loading.
"""
from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
from functools import partial
from types import ModuleType
from typing import Any

import numpy as np
import pycocotools.mask as mask_util
from PIL import Image

from detlightning.structures import BoxMode

from ...utils.comm import get_world_size
from ...utils.file_io import PathManager

__all__ = [
    "CITYSCAPES_THING_CLASSES",
    "CITYSCAPES_STUFF_CLASSES",
    "load_cityscapes_instances",
    "load_cityscapes_semantic",
]

logger = logging.getLogger(__name__)

# The 8 evaluated instance classes and the 19 train-id classes, in cityscapesscripts' label-table order (kept here so
# that registering the builtin splits does not need cityscapesscripts installed).
CITYSCAPES_THING_CLASSES: list[str] = [
    "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
]
CITYSCAPES_STUFF_CLASSES: list[str] = [
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky",
] + CITYSCAPES_THING_CLASSES

_IMAGE_SUFFIX = "leftImg8bit.png"
# instanceIds.png: values below 24 are stuff label ids, values >= 1000 are label_id * 1000 + instance index, and
# crowd regions of thing classes keep their plain label id
_FIRST_THING_ID = 24
_INSTANCE_ID_OFFSET = 1000


def _cityscapes_labels() -> ModuleType:
    """``cityscapesscripts.helpers.labels``, or an ImportError saying what to install."""
    try:
        from cityscapesscripts.helpers import labels
    except ImportError as e:
        raise ImportError(
            "Cityscapes support needs the cityscapesscripts package: pip install cityscapesscripts"
        ) from e
    return labels


def _get_cityscapes_files(image_dir: str, gt_dir: str) -> list[tuple[str, str, str, str]]:
    """(image, instanceIds png, labelIds png, polygons json) of every image, matched city by city."""
    if not os.path.isdir(image_dir):
        raise FileNotFoundError(f"Cityscapes image folder not found: {image_dir} (expected <image_dir>/<city>/*.png)")
    cities = sorted(PathManager.ls(image_dir))
    logger.info("%d cities found in '%s'.", len(cities), image_dir)
    files = []
    for city in cities:
        city_images = os.path.join(image_dir, city)
        city_gt = os.path.join(gt_dir, city)
        for name in sorted(PathManager.ls(city_images)):
            if not name.endswith(_IMAGE_SUFFIX):
                raise ValueError(f"Cityscapes image {os.path.join(city_images, name)!r} does not end with "
                                 f"'{_IMAGE_SUFFIX}'")
            stem = os.path.join(city_gt, name[: -len(_IMAGE_SUFFIX)] + "gtFine_")
            files.append((
                os.path.join(city_images, name),
                stem + "instanceIds.png",
                stem + "labelIds.png",
                stem + "polygons.json",
            ))
    if not files:
        raise FileNotFoundError(f"No Cityscapes images found in {image_dir}")
    missing = [f for f in files[0] if not PathManager.isfile(f)]
    if missing:
        raise FileNotFoundError(f"Cityscapes files of {files[0][0]!r} are missing: {missing}")
    return files


def load_cityscapes_instances(
    image_dir: str, gt_dir: str, from_json: bool = True, to_polygons: bool = True
) -> list[dict[str, Any]]:
    """Instance annotations of a Cityscapes split in detectron2's dataset-dict format.

    Args:
        image_dir: e.g. ``cityscapes/leftImg8bit/train``.
        gt_dir: e.g. ``cityscapes/gtFine/train``.
        from_json: read the polygons json (needs ``shapely``; overlaps are resolved as cityscapesscripts' rasteriser
            does, later objects covering earlier ones) instead of ``*_instanceIds.png``.
        to_polygons: segmentation as polygons (COCO's format) rather than RLE; from png this needs OpenCV.

    ``category_id`` is contiguous in [0, 8) over :data:`CITYSCAPES_THING_CLASSES`; crowd regions
    (``<label>group``) have ``iscrowd`` True.
    """
    if from_json and not to_polygons:
        raise ValueError("load_cityscapes_instances: the json annotations are polygons; from_json=True needs "
                         "to_polygons=True")
    labels = _cityscapes_labels()
    files = _get_cityscapes_files(image_dir, gt_dir)
    logger.info("Preprocessing cityscapes annotations ...")
    convert = partial(_cityscapes_files_to_dict, from_json=from_json, to_polygons=to_polygons)
    if len(files) < 32:  # a process pool costs more than it saves on a handful of images
        ret = [convert(f) for f in files]
    else:
        with mp.Pool(processes=max(mp.cpu_count() // get_world_size() // 2, 4)) as pool:
            ret = pool.map(convert, files)
    logger.info("Loaded %d images from %s", len(ret), image_dir)

    thing_ids = [lb.id for lb in labels.labels if lb.hasInstances and not lb.ignoreInEval]
    to_contiguous = {label_id: i for i, label_id in enumerate(thing_ids)}
    for record in ret:
        for anno in record["annotations"]:
            anno["category_id"] = to_contiguous[anno["category_id"]]
    return ret


def load_cityscapes_semantic(image_dir: str, gt_dir: str) -> list[dict[str, Any]]:
    """``file_name``, ``sem_seg_file_name`` (the ``*_gtFine_labelTrainIds.png``), ``height`` and ``width`` (from the
    polygons json) of every image of a Cityscapes split."""
    gt_dir = PathManager.get_local_path(gt_dir)
    ret = []
    for image_file, _, label_file, json_file in _get_cityscapes_files(image_dir, gt_dir):
        with PathManager.open(json_file, "r") as f:
            info = json.load(f)
        ret.append({
            "file_name": image_file,
            "sem_seg_file_name": label_file.replace("labelIds", "labelTrainIds"),
            "height": info["imgHeight"],
            "width": info["imgWidth"],
        })
    if not PathManager.isfile(ret[0]["sem_seg_file_name"]):
        raise FileNotFoundError(
            f"{ret[0]['sem_seg_file_name']} not found: generate the labelTrainIds.png files with "
            "cityscapesscripts/preparation/createTrainIdLabelImgs.py"
        )
    return ret


def _label_of(name: str, name2label: dict[str, Any], json_file: str) -> Any:
    """The label-table entry of an object's label name; ``<name>group`` (a crowd region) maps to ``<name>``."""
    if name in name2label:
        return name2label[name]
    if name.endswith("group") and name[: -len("group")] in name2label:
        return name2label[name[: -len("group")]]
    raise KeyError(f"{json_file}: unknown Cityscapes label {name!r}")


def _annotations_from_json(json_file: str, name2label: dict[str, Any]) -> tuple[dict[str, Any], list[dict]]:
    try:
        import shapely
        from shapely.geometry import MultiPolygon, Polygon
    except ImportError as e:
        raise ImportError("load_cityscapes_instances(from_json=True) needs shapely: pip install shapely") from e
    shapely2 = int(shapely.__version__.split(".")[0]) >= 2  # quad_segs replaced resolution in 2.0

    with PathManager.open(json_file, "r") as f:
        info = json.load(f)
    size = {"height": info["imgHeight"], "width": info["imgWidth"]}

    # cityscapesscripts rasterises the objects in file order, each painting over the earlier ones: walking the list
    # backwards, an object keeps only what the objects after it (already seen) leave uncovered
    covered = Polygon()
    annos: list[dict[str, Any]] = []
    for obj in reversed(info["objects"]):
        if "deleted" in obj:
            continue
        name = obj["label"]
        label = _label_of(name, name2label, json_file)
        if label.id < 0:
            continue
        # vertices are integer pixel indices: +0.5 moves them to pixel centres, and PIL's polygon fill (which takes
        # every pixel whose centre is inside) is matched on average by growing the shape by half a pixel
        shape = Polygon(np.asarray(obj["polygon"], dtype=np.float32) + 0.5)
        shape = shape.buffer(0.5, quad_segs=4) if shapely2 else shape.buffer(0.5, resolution=4)
        if not label.hasInstances or label.ignoreInEval:
            covered = covered.union(shape)  # not an instance, but it still hides what lies below it
            continue
        visible = shape.difference(covered)
        if visible.is_empty:
            continue
        covered = covered.union(shape)
        if isinstance(visible, Polygon):
            parts = [visible]
        elif isinstance(visible, MultiPolygon):
            parts = list(visible.geoms)
        else:
            raise NotImplementedError(f"{json_file}: object {name!r} became a {type(visible).__name__}")
        xmin, ymin, xmax, ymax = visible.bounds
        annos.append({
            "iscrowd": name.endswith("group"),
            "category_id": label.id,
            # outer boundaries only: COCO-style polygons have no holes
            "segmentation": [np.asarray(p.exterior.coords).reshape(-1).tolist() for p in parts],
            "bbox": (xmin, ymin, xmax, ymax),
            "bbox_mode": BoxMode.XYXY_ABS,
        })
    return size, annos


def _annotations_from_png(instance_file: str, id2label: dict[int, Any], to_polygons: bool
                          ) -> tuple[dict[str, Any], list[dict]]:
    with PathManager.open(instance_file, "rb") as f:
        ids = np.asarray(Image.open(f), order="F")
    size = {"height": ids.shape[0], "width": ids.shape[1]}
    if to_polygons:
        try:
            import cv2
        except ImportError as e:
            raise ImportError("load_cityscapes_instances(from_json=False, to_polygons=True) needs OpenCV: "
                              "pip install opencv-python-headless") from e

    annos: list[dict[str, Any]] = []
    for instance_id in np.unique(ids[ids >= _FIRST_THING_ID]):
        crowd = instance_id < _INSTANCE_ID_OFFSET
        label = id2label[int(instance_id if crowd else instance_id // _INSTANCE_ID_OFFSET)]
        if not label.hasInstances or label.ignoreInEval:
            continue
        mask = np.asarray(ids == instance_id, dtype=np.uint8, order="F")
        rows, cols = np.nonzero(mask)
        xmin, xmax, ymin, ymax = cols.min(), cols.max(), rows.min(), rows.max()
        if xmax <= xmin or ymax <= ymin:  # a single row or column of pixels
            continue
        anno: dict[str, Any] = {
            "iscrowd": bool(crowd),
            "category_id": label.id,
            "bbox": (xmin, ymin, xmax, ymax),
            "bbox_mode": BoxMode.XYXY_ABS,
        }
        if to_polygons:
            contours = cv2.findContours(mask.copy(), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)[-2]
            polygons = [c.reshape(-1).tolist() for c in contours if len(c) >= 3]
            if not polygons:
                continue
            anno["segmentation"] = polygons
        else:
            anno["segmentation"] = mask_util.encode(mask[:, :, None])[0]
        annos.append(anno)
    return size, annos


def _cityscapes_files_to_dict(files: tuple[str, str, str, str], from_json: bool, to_polygons: bool
                              ) -> dict[str, Any]:
    """The dataset dict of one image from its (image, instanceIds, labelIds, polygons json) files; category ids
    are still Cityscapes label ids."""
    labels = _cityscapes_labels()
    image_file, instance_file, _, json_file = files
    if from_json:
        size, annos = _annotations_from_json(json_file, labels.name2label)
    else:
        size, annos = _annotations_from_png(instance_file, labels.id2label, to_polygons)
    return {"file_name": image_file, "image_id": os.path.basename(image_file), **size, "annotations": annos}
