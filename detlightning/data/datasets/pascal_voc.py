"""Pascal VOC detection (``VOCdevkit/VOC20XX``: ``Annotations/*.xml``, ``ImageSets/Main/<split>.txt``,
``JPEGImages/*.jpg``), as ``detectron2.data.datasets.pascal_voc``."""
from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from typing import Any

from detlightning.structures import BoxMode

from ...utils.file_io import PathManager
from ..catalog import DatasetCatalog, MetadataCatalog

__all__ = ["CLASS_NAMES", "load_voc_instances", "register_pascal_voc"]

CLASS_NAMES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable", "dog",
    "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)


def _read_image_set(dirname: str, split: str) -> list[str]:
    path = os.path.join(dirname, "ImageSets", "Main", split + ".txt")
    if not PathManager.isfile(path):
        raise FileNotFoundError(f"Pascal VOC image set not found: {path}")
    with PathManager.open(path) as f:
        return [line.strip() for line in f if line.strip()]


def _xml_text(node: ET.Element, tag: str, xml_file: str) -> str:
    child = node.find(tag)
    if child is None or child.text is None:
        raise KeyError(f"{xml_file}: <{node.tag}> has no <{tag}>")
    return child.text.strip()


def load_voc_instances(dirname: str, split: str, class_names: Sequence[str]) -> list[dict[str, Any]]:
    """Dataset dicts of the images listed in ``<dirname>/ImageSets/Main/<split>.txt``.

    Boxes are XYXY_ABS: VOC's 1-based inclusive pixel indices ``(xmin, ymin, xmax, ymax)`` become
    ``(xmin - 1, ymin - 1, xmax, ymax)``, so a box over the whole image is ``(0, 0, W, H)``. Objects marked
    ``difficult`` are kept (detectron2 trains on them).
    """
    class_names = list(class_names)
    annotation_dir = PathManager.get_local_path(os.path.join(dirname, "Annotations"))
    dicts = []
    for fileid in _read_image_set(dirname, split):
        xml_file = os.path.join(annotation_dir, fileid + ".xml")
        with PathManager.open(xml_file) as f:
            tree = ET.parse(f)
        size = tree.find("size")
        if size is None:
            raise KeyError(f"{xml_file}: no <size>")
        instances = []
        for obj in tree.findall("object"):
            cls = _xml_text(obj, "name", xml_file)
            if cls not in class_names:
                raise KeyError(f"{xml_file}: object class {cls!r} is not one of the {len(class_names)} class_names")
            bndbox = obj.find("bndbox")
            if bndbox is None:
                raise KeyError(f"{xml_file}: object {cls!r} has no <bndbox>")
            x0, y0, x1, y1 = (float(_xml_text(bndbox, k, xml_file)) for k in ("xmin", "ymin", "xmax", "ymax"))
            instances.append({
                "category_id": class_names.index(cls),
                "bbox": [x0 - 1.0, y0 - 1.0, x1, y1],
                "bbox_mode": BoxMode.XYXY_ABS,
            })
        dicts.append({
            "file_name": os.path.join(dirname, "JPEGImages", fileid + ".jpg"),
            "image_id": fileid,
            "height": int(_xml_text(size, "height", xml_file)),
            "width": int(_xml_text(size, "width", xml_file)),
            "annotations": instances,
        })
    return dicts


def register_pascal_voc(
    name: str, dirname: str, split: str, year: int, class_names: Sequence[str] = CLASS_NAMES
) -> None:
    """Register ``name`` as the ``split`` of the VOC ``year`` folder ``dirname``; the metadata carries
    ``thing_classes``, ``dirname``, ``year`` and ``split`` (what :class:`PascalVOCDetectionEvaluator` reads)."""
    DatasetCatalog.register(name, lambda: load_voc_instances(dirname, split, class_names))
    MetadataCatalog.get(name).set(thing_classes=list(class_names), dirname=dirname, year=year, split=split)
