"""COCO panoptic segmentation datasets: the "standard" form (panoptic PNGs + segments_info) and the "separated"
form used by Panoptic FPN (instance annotations + stuff-only semantic maps)."""
from __future__ import annotations

import copy
import os
from typing import Any

from ..catalog import DatasetCatalog, MetadataCatalog
from .coco import _read_json, _require, load_coco_json, load_sem_seg

__all__ = [
    "load_coco_panoptic_json",
    "register_coco_panoptic",
    "register_coco_panoptic_separated",
    "merge_to_panoptic",
]


def load_coco_panoptic_json(
    json_file: str | os.PathLike,
    image_dir: str | os.PathLike,
    gt_dir: str | os.PathLike,
    meta: dict[str, Any],
    image_ext: str = ".jpg",
) -> list[dict[str, Any]]:
    """Load a COCO panoptic json.

    Returns dicts with ``file_name`` (``image_dir`` / annotation file name with ``image_ext``), ``image_id``,
    ``pan_seg_file_name`` (in ``gt_dir``) and ``segments_info``: each segment's ``category_id`` is mapped to a
    contiguous id through ``meta["thing_dataset_id_to_contiguous_id"]`` (``isthing=True``) or
    ``meta["stuff_dataset_id_to_contiguous_id"]`` (``isthing=False``). ``height``/``width`` are copied from
    ``images`` when present. ``image_ext`` is a detlightning extension (detectron2 assumes ".jpg").
    """
    json_file, image_dir, gt_dir = os.fspath(json_file), os.fspath(image_dir), os.fspath(gt_dir)
    thing_map = meta["thing_dataset_id_to_contiguous_id"]
    stuff_map = meta["stuff_dataset_id_to_contiguous_id"]
    json_info = _read_json(json_file)
    annotations = _require(json_info, "annotations", "the panoptic json", json_file)
    sizes = {img.get("id"): img for img in json_info.get("images", []) if isinstance(img, dict)}

    ret = []
    for i, ann in enumerate(annotations):
        image_id = _require(ann, "image_id", f"panoptic annotation #{i}", json_file)
        file_name = _require(ann, "file_name", f"panoptic annotation of image {image_id}", json_file)
        segments = _require(ann, "segments_info", f"panoptic annotation of image {image_id}", json_file)
        segments_info = []
        for seg in segments:
            seg = dict(seg)
            cat = _require(seg, "category_id", f"segment {seg.get('id')} of image {image_id}", json_file)
            if cat in thing_map:
                seg["category_id"] = thing_map[cat]
                seg["isthing"] = True
            elif cat in stuff_map:
                seg["category_id"] = stuff_map[cat]
                seg["isthing"] = False
            else:
                raise KeyError(
                    f"{json_file}: segment id {seg.get('id')} of image {image_id} has unknown category_id={cat}"
                )
            segments_info.append(seg)
        record: dict[str, Any] = {
            "file_name": os.path.join(image_dir, os.path.splitext(file_name)[0] + image_ext),
            "image_id": image_id,
            "pan_seg_file_name": os.path.join(gt_dir, file_name),
            "segments_info": segments_info,
        }
        img = sizes.get(image_id)
        if img is not None and "height" in img and "width" in img:
            record["height"], record["width"] = img["height"], img["width"]
        ret.append(record)
    if not ret:
        raise ValueError(f"No panoptic annotations found in {json_file}")
    if not os.path.isfile(ret[0]["file_name"]):
        raise FileNotFoundError(f"Image of the first panoptic annotation not found: {ret[0]['file_name']}")
    if not os.path.isfile(ret[0]["pan_seg_file_name"]):
        raise FileNotFoundError(f"Panoptic PNG of the first annotation not found: {ret[0]['pan_seg_file_name']}")
    return ret


def register_coco_panoptic(
    name: str,
    metadata: dict[str, Any],
    image_root: str,
    panoptic_root: str,
    panoptic_json: str,
    instances_json: str | None = None,
) -> None:
    """Register the "standard" panoptic dataset ``name`` (dicts with ``pan_seg_file_name`` + ``segments_info``).

    ``metadata`` must hold ``thing_dataset_id_to_contiguous_id`` and ``stuff_dataset_id_to_contiguous_id``.
    """
    def load() -> list[dict[str, Any]]:
        ext = "." + _image_ext_of(image_root)
        return load_coco_panoptic_json(panoptic_json, image_root, panoptic_root, metadata, image_ext=ext)

    DatasetCatalog.register(name, load)
    shared = _panoptic_metadata(image_root, panoptic_root, panoptic_json, instances_json)
    MetadataCatalog.get(name).set(label_divisor=1000, **shared, **metadata)


def register_coco_panoptic_separated(
    name: str,
    metadata: dict[str, Any],
    image_root: str,
    panoptic_root: str,
    panoptic_json: str,
    sem_seg_root: str,
    instances_json: str,
) -> None:
    """Register ``name + "_separated"`` (instance annotations from ``instances_json`` merged with stuff-only
    semantic maps in ``sem_seg_root``, where every thing pixel is 0 and stuff classes are 1..#stuff) and
    ``name + "_stuffonly"`` (the semantic maps alone)."""
    separated, stuff_only = name + "_separated", name + "_stuffonly"

    def load_separated() -> list[dict[str, Any]]:
        things = load_coco_json(instances_json, image_root, separated)
        stuff = load_sem_seg(sem_seg_root, image_root, gt_ext="png", image_ext=_image_ext_of(image_root))
        return merge_to_panoptic(things, stuff)

    DatasetCatalog.register(separated, load_separated)
    shared = _panoptic_metadata(image_root, panoptic_root, panoptic_json, instances_json)
    MetadataCatalog.get(separated).set(sem_seg_root=sem_seg_root, **shared, **metadata)

    DatasetCatalog.register(
        stuff_only, lambda: load_sem_seg(sem_seg_root, image_root, image_ext=_image_ext_of(image_root))
    )
    MetadataCatalog.get(stuff_only).set(
        sem_seg_root=sem_seg_root,
        image_root=image_root,
        evaluator_type="sem_seg",
        ignore_label=255,
        **metadata,
    )


def _panoptic_metadata(
    image_root: str, panoptic_root: str, panoptic_json: str, instances_json: str | None
) -> dict[str, Any]:
    """Metadata both panoptic registrations share (``json_file`` is the instances json, if any)."""
    return {
        "image_root": image_root,
        "json_file": instances_json,
        "panoptic_root": panoptic_root,
        "panoptic_json": panoptic_json,
        "evaluator_type": "coco_panoptic_seg",
        "ignore_label": 255,
    }


def _image_ext_of(image_root: str) -> str:
    """"jpg" (COCO), or "png" for folders holding only PNG images (the built-in shapes dataset)."""
    if os.path.isdir(image_root):
        names = os.listdir(image_root)
        if names and not any(n.endswith("jpg") for n in names) and any(n.endswith("png") for n in names):
            return "png"
    return "jpg"


def merge_to_panoptic(detection_dicts: list[dict], sem_seg_dicts: list[dict]) -> list[dict]:
    """One dict per detection dict, updated with the semantic-segmentation dict of the same ``file_name``."""
    sem_seg_file_to_entry = {x["file_name"]: x for x in sem_seg_dicts}
    if not sem_seg_file_to_entry:
        raise ValueError("merge_to_panoptic: no semantic segmentation dicts to merge")
    results = []
    for det_dict in detection_dicts:
        dic = copy.copy(det_dict)
        try:
            dic.update(sem_seg_file_to_entry[dic["file_name"]])
        except KeyError as e:
            raise KeyError(f"No semantic segmentation annotation for image {dic['file_name']}") from e
        results.append(dic)
    return results
