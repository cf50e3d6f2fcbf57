"""COCO-format json loading (instances, keypoints) and semantic-segmentation folder datasets, into detectron2's
standard ``list[dict]`` format; plus the reverse conversion used by COCO evaluation."""
from __future__ import annotations

import datetime
import json
import logging
import math
import os
from collections.abc import Sequence
from copy import deepcopy
from typing import Any

import numpy as np
import pycocotools.mask as mask_util
from PIL import Image

from detlightning.structures import Boxes, BoxMode, PolygonMasks

from ..catalog import DatasetCatalog, MetadataCatalog
from ..validate import MAX_COORDINATE, ProblemCollector, describe

__all__ = [
    "load_coco_json",
    "load_sem_seg",
    "convert_to_coco_dict",
    "convert_to_coco_json",
    "register_coco_instances",
]

logger = logging.getLogger(__name__)

_MAX_IDS_IN_MESSAGE = 10


def _read_json(json_file: str | os.PathLike) -> Any:
    """Parse ``json_file``; errors name the file."""
    json_file = os.fspath(json_file)
    if not os.path.isfile(json_file):
        raise FileNotFoundError(f"COCO json file not found: {json_file}")
    try:
        with open(json_file, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"Cannot parse json file {json_file}: {e}") from e
    except UnicodeDecodeError as e:
        raise ValueError(f"json file {json_file} is not UTF-8 text: {e}") from e


def _require(d: Any, key: str, what: str, json_file: str) -> Any:
    if not isinstance(d, dict):
        raise ValueError(f"{json_file}: {what} must be a json object, got {type(d).__name__}")
    if key not in d:
        raise KeyError(f"{json_file}: {what} has no '{key}' key (keys: {sorted(d.keys())})")
    return d[key]


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check_bbox(bbox: Any, where: str, problems: ProblemCollector) -> bool:
    """Error unless ``bbox`` is 4 finite numbers in pixel range with w, h >= 0; returns whether it is usable."""
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
        got = f"{len(bbox)} values" if isinstance(bbox, (list, tuple)) else describe(bbox)
        problems.error("bad_bbox", f"{where}: 'bbox' must be 4 numbers [x, y, w, h], got {got}: {bbox!r}")
        return False
    if not all(_is_number(v) for v in bbox):
        bad = next(v for v in bbox if not _is_number(v))
        problems.error("bad_type", f"{where}: 'bbox' must contain numbers (int or float), got {describe(bad)} in "
                       f"{bbox!r}")
        return False
    if not all(math.isfinite(v) for v in bbox):
        problems.error("bad_bbox", f"{where}: 'bbox' must contain finite numbers, got {bbox!r}")
        return False
    if any(abs(v) > MAX_COORDINATE for v in bbox):
        problems.error("bad_bbox", f"{where}: 'bbox' value out of range (|v| must be < 2^31 pixels): {bbox!r}")
        return False
    if bbox[2] < 0 or bbox[3] < 0:
        problems.error("bad_bbox", f"{where}: 'bbox' has a negative width or height: {bbox!r}")
        return False
    return True


def _check_image(img: Any, index: int, json_file: str, problems: ProblemCollector) -> dict[str, Any] | None:
    """The image entry with int ``height``/``width``, or None (after an error) when it is unusable."""
    if not isinstance(img, dict):
        problems.error("bad_type", f"{json_file}: image #{index} must be a json object, got {describe(img)}")
        return None
    img_id = _require(img, "id", f"image #{index}", json_file)
    if not (_is_int(img_id) or isinstance(img_id, str)):
        problems.error("bad_type", f"{json_file}: image #{index}: 'id' must be an integer, got {describe(img_id)}")
        return None
    for key in ("file_name", "height", "width"):
        _require(img, key, f"image id {img_id}", json_file)
    where = f"{json_file}: image id {img_id}"
    file_name = img["file_name"]
    if not isinstance(file_name, str) or not file_name:
        problems.error("bad_type", f"{where}: 'file_name' must be a non-empty string (a path relative to the "
                       f"image root), got {describe(file_name)}")
        return None
    sizes = {}
    for key in ("height", "width"):
        v = img[key]
        # integral floats (480.0) are accepted: some exporters write every number as a float
        if _is_number(v) and math.isfinite(v) and v == int(v) and v > 0:
            sizes[key] = int(v)
        else:
            problems.error("bad_type", f"{where} ({file_name}): '{key}' must be a positive integer (pixels), got "
                           f"{describe(v)}")
            return None
    return {**img, **sizes}


def _check_annotation_types(anno: dict[str, Any], where: str, problems: ProblemCollector) -> bool:
    """Error for ``iscrowd`` / ``category_id`` of the wrong type; returns whether they are usable."""
    crowd = anno.get("iscrowd", 0)
    if not (_is_int(crowd) or isinstance(crowd, bool)) or crowd not in (0, 1):
        problems.error("bad_type", f"{where}: 'iscrowd' must be 0 or 1 (an integer), got {describe(crowd)}")
        return False
    cat = anno["category_id"]
    if not _is_int(cat):
        problems.error("bad_type", f"{where}: 'category_id' must be an integer (an id of 'categories'), got "
                       f"{describe(cat)}")
        return False
    return True


# annotations load_coco_json drops, with one warning per json: kind -> what the warning says
_DROPPED = {
    "empty_box": "annotations with a zero-width or zero-height box were dropped",
    "box_outside_image": "annotations with a box entirely outside its image were dropped",
    "invalid_polygon": "annotations without a valid polygon (all polygons with < 3 points) were dropped",
    "empty_segmentation": (
        "annotations have an empty 'segmentation' (no mask); they are kept for box training and dropped from "
        "training with instance masks (the image's other annotations keep their masks)"
    ),
}


def load_coco_json(
    json_file: str | os.PathLike,
    image_root: str | os.PathLike,
    dataset_name: str | None = None,
    extra_annotation_keys: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """Load a COCO instances/keypoints json into detectron2's dataset dicts.

    Each record has ``file_name`` (joined with ``image_root``), ``height``, ``width``, ``image_id`` and
    ``annotations``: dicts with ``bbox`` (XYWH_ABS list), ``bbox_mode``, ``category_id`` (contiguous in
    ``[0, #categories)`` when ``dataset_name`` is given), ``iscrowd``, ``segmentation`` (polygons as
    ``list[list[float]]`` or compressed RLE dict) and ``keypoints`` (flat ``[x, y, v] * K`` with +0.5 added to
    x, y: COCO stores pixel indices). With ``dataset_name``, ``thing_classes`` and
    ``thing_dataset_id_to_contiguous_id`` are set in its metadata.

    Errors (naming the file, the image/annotation id, the field and the expected type): unreadable json,
    missing keys, wrong types (``iscrowd: "0"``, ``category_id: "1"``, ``file_name: 123``, ``width: "640"``),
    a bbox that is not 4 finite numbers below 2^31 with w, h >= 0, an unknown category id, duplicate ids.
    Dropped with one warning per json listing the annotation ids: zero-width/height boxes, boxes entirely
    outside their image, and (as detectron2 does) annotations whose polygons all have fewer than 3 points.
    ``segmentation: []`` is loaded without a mask (warned once; the mapper drops it when training masks).
    """
    return _load_coco_json(json_file, image_root, dataset_name, extra_annotation_keys, ProblemCollector(strict=True))


def _load_coco_json(
    json_file: str | os.PathLike,
    image_root: str | os.PathLike,
    dataset_name: str | None,
    extra_annotation_keys: Sequence[str] | None,
    problems: ProblemCollector,
) -> list[dict[str, Any]]:
    """``load_coco_json`` reporting to ``problems``: strict raises the first error; otherwise (validation) every
    problem is recorded and the offending image/annotation skipped."""
    json_file = os.fspath(json_file)
    image_root = os.fspath(image_root)
    data = _read_json(json_file)
    if not isinstance(data, dict):
        raise ValueError(f"{json_file}: a COCO json must be an object with 'images', got {type(data).__name__}")
    images = _require(data, "images", "the COCO json", json_file)
    annotations = data.get("annotations") or []
    categories = data.get("categories") or []

    id_map: dict[int, int] | None = None
    if dataset_name is not None:
        for i, c in enumerate(categories):
            cid = _require(c, "id", f"category #{i}", json_file)
            _require(c, "name", f"category #{i}", json_file)
            if not _is_int(cid):
                raise ValueError(f"{json_file}: category #{i}: 'id' must be an integer, got {describe(cid)}")
        cats = sorted(categories, key=lambda c: c["id"])
        cat_ids = [c["id"] for c in cats]
        if len(set(cat_ids)) != len(cat_ids):
            raise ValueError(f"{json_file}: category ids are not unique: {cat_ids}")
        meta = MetadataCatalog.get(dataset_name)
        meta.thing_classes = [c["name"] for c in cats]
        # COCO's own ids skip some numbers (1..90 for 80 classes); any json's ids are mapped to [0, N).
        if cat_ids and not (min(cat_ids) == 1 and max(cat_ids) == len(cat_ids)) and "coco" not in dataset_name:
            logger.warning(
                "Category ids in %s are not in [1, #categories]; they are mapped to contiguous ids [0, %d).",
                json_file,
                len(cat_ids),
            )
        id_map = {v: i for i, v in enumerate(cat_ids)}
        meta.thing_dataset_id_to_contiguous_id = id_map

    imgs_by_id: dict[Any, dict] = {}
    skipped_image_ids: set = set()
    for i, raw in enumerate(images):
        img = _check_image(raw, i, json_file, problems)
        if img is None:
            if isinstance(raw, dict) and isinstance(raw.get("id"), (int, str)):
                skipped_image_ids.add(raw["id"])
            continue
        img_id = img["id"]
        if img_id in imgs_by_id:
            problems.error("duplicate_id", f"{json_file}: image id {img_id} appears more than once in 'images'")
            continue
        imgs_by_id[img_id] = img

    anns_by_image: dict[Any, list[dict]] = {k: [] for k in imgs_by_id}
    orphan_ids = []
    seen_ann_ids: set = set()
    duplicate_ids = []
    for i, ann in enumerate(annotations):
        if not isinstance(ann, dict):
            problems.error("bad_type", f"{json_file}: annotation #{i} must be a json object, got {describe(ann)}")
            continue
        ann_id = _require(ann, "id", f"annotation #{i}", json_file)
        image_id = _require(ann, "image_id", f"annotation id {ann_id}", json_file)
        ids = (("id", ann_id), ("image_id", image_id))
        bad_ids = [(k, v) for k, v in ids if not _is_int(v) and not isinstance(v, str)]
        if bad_ids:
            bad_key, bad = bad_ids[0]
            problems.error("bad_type", f"{json_file}: annotation #{i}: '{bad_key}' must be an integer, got "
                           f"{describe(bad)}")
            continue
        if ann_id in seen_ann_ids:
            duplicate_ids.append(ann_id)
        seen_ann_ids.add(ann_id)
        if image_id not in anns_by_image:
            if image_id not in skipped_image_ids:
                orphan_ids.append(ann_id)
            continue
        anns_by_image[image_id].append(ann)
    # d2-parity: the COCO-2014 minival files are known to repeat a few ids; detectron2 lets them through.
    if duplicate_ids and "minival" not in json_file:
        problems.error(
            "duplicate_id",
            f"Annotation ids in '{json_file}' are not unique! Repeated: {duplicate_ids[:_MAX_IDS_IN_MESSAGE]}",
        )
    if orphan_ids:
        msg = (
            f"{json_file} contains {len(orphan_ids)} annotations whose image_id is not in 'images' (ignored), e.g. "
            f"annotation ids {orphan_ids[:_MAX_IDS_IN_MESSAGE]}"
        )
        if problems.strict:
            logger.warning(msg)
        else:
            problems.warning("orphan_annotation", msg)

    ann_keys = ["iscrowd", "bbox", "keypoints", "category_id"] + list(extra_annotation_keys or [])
    dataset_dicts = []
    dropped: dict[str, list[Any]] = {kind: [] for kind in _DROPPED}

    def drop(kind: str, ann_id: Any, message: str) -> None:
        dropped[kind].append(ann_id)
        if not problems.strict:
            problems.warning(kind, message)

    for image_id in sorted(imgs_by_id, key=_sort_key):
        img = imgs_by_id[image_id]
        width, height = img["width"], img["height"]
        record = {
            "file_name": os.path.join(image_root, img["file_name"]),
            "height": height,
            "width": width,
            "image_id": image_id,
        }
        objs = []
        for anno in anns_by_image[image_id]:
            ann_id = anno["id"]
            where = f"{json_file}: annotation id {ann_id} (image id {image_id}, {img['file_name']})"
            if anno.get("ignore", 0) != 0:
                problems.error("unsupported", f"{where}: 'ignore' annotations are not supported")
                continue
            missing = [key for key in ("bbox", "category_id") if key not in anno]
            if missing:
                problems.error("missing_key", f"{where}: missing '{missing[0]}' (keys: {sorted(anno.keys())})",
                               KeyError)
                continue
            if not _check_annotation_types(anno, where, problems) or not _check_bbox(anno["bbox"], where, problems):
                continue
            x, y, w, h = anno["bbox"]
            if w <= 0 or h <= 0:
                drop("empty_box", ann_id, f"{where}: 'bbox' {anno['bbox']!r} has zero width or height (dropped)")
                continue
            if x >= width or y >= height or x + w <= 0 or y + h <= 0:
                drop("box_outside_image", ann_id, f"{where}: 'bbox' {anno['bbox']!r} lies entirely outside the "
                     f"{width}x{height} image (dropped)")
                continue
            obj = {key: anno[key] for key in ann_keys if key in anno}

            segm = anno.get("segmentation", None)
            if isinstance(segm, (list, dict)) and len(segm) == 0:
                drop("empty_segmentation", ann_id, f"{where}: 'segmentation' is empty (no mask; dropped when "
                     "training with instance masks)")
            elif segm is not None:  # list[list[float]] polygons or a dict RLE
                if isinstance(segm, dict):
                    if "counts" not in segm or "size" not in segm:
                        problems.error("bad_segmentation", f"{where}: RLE segmentation needs 'counts' and 'size', "
                                       f"got {sorted(segm)}")
                        continue
                    if isinstance(segm["counts"], list):
                        # uncompressed RLE -> compressed, which is what mask decoding expects
                        segm = mask_util.frPyObjects(segm, *segm["size"])
                elif isinstance(segm, list):
                    if not all(isinstance(p, (list, tuple)) for p in segm):
                        problems.error("bad_segmentation", f"{where}: polygon segmentation must be a list of lists "
                                       "of numbers")
                        continue
                    # d2-parity: drop polygons with < 3 points; an instance left with none is dropped (logged).
                    segm = [poly for poly in segm if len(poly) % 2 == 0 and len(poly) >= 6]
                    if len(segm) == 0:
                        drop("invalid_polygon", ann_id, f"{where}: no polygon with >= 3 points (dropped)")
                        continue
                else:
                    problems.error("bad_type", f"{where}: 'segmentation' must be polygons (list of lists) or an "
                                   f"RLE dict, got {describe(segm)}")
                    continue
                obj["segmentation"] = segm

            keypts = anno.get("keypoints", None)
            if keypts:
                if not isinstance(keypts, list) or not all(_is_number(v) for v in keypts):
                    problems.error("bad_type", f"{where}: 'keypoints' must be a list of numbers [x, y, v] * K, got "
                                   f"{describe(keypts)}")
                    continue
                if len(keypts) % 3 != 0:
                    problems.error("bad_keypoints", f"{where}: 'keypoints' length {len(keypts)} is not a multiple "
                                   "of 3")
                    continue
                # COCO keypoints are integer pixel indices; +0.5 puts them at the pixel centre in continuous
                # coordinates (the inverse happens when writing COCO results).
                keypts = [v + 0.5 if idx % 3 != 2 else v for idx, v in enumerate(keypts)]
                obj["keypoints"] = keypts

            obj["bbox_mode"] = BoxMode.XYWH_ABS
            if id_map is not None:
                cat = obj["category_id"]
                if cat not in id_map:
                    problems.error(
                        "unknown_category",
                        f"{where}: category_id={cat} does not exist in 'categories' of the json file "
                        f"(known ids: {sorted(id_map)[:50]})",
                        KeyError,
                    )
                    continue
                obj["category_id"] = id_map[cat]
            objs.append(obj)
        record["annotations"] = objs
        dataset_dicts.append(record)

    logger.info("Loaded %d images in COCO format from %s", len(dataset_dicts), json_file)
    if problems.strict:
        for kind, ids in dropped.items():
            if ids:
                logger.warning(
                    "%s: %d %s; annotation ids: %s%s",
                    json_file,
                    len(ids),
                    _DROPPED[kind],
                    ids[:_MAX_IDS_IN_MESSAGE],
                    f" (and {len(ids) - _MAX_IDS_IN_MESSAGE} more)" if len(ids) > _MAX_IDS_IN_MESSAGE else "",
                )
    return dataset_dicts


def _file2id(folder_path: str, file_path: str) -> Any:
    """The path relative to ``folder_path`` without extension; an int when it is one (COCO-style ids)."""
    image_id: Any = os.path.splitext(os.path.normpath(os.path.relpath(file_path, start=folder_path)))[0]
    try:
        image_id = int(image_id)
    except ValueError:
        pass
    return image_id


def _sort_key(image_id: Any) -> tuple[int, Any]:
    # numeric names sort numerically (like COCO ids), others alphabetically after them
    return (0, image_id, "") if isinstance(image_id, int) else (1, 0, str(image_id))


def load_sem_seg(
    gt_root: str | os.PathLike, image_root: str | os.PathLike, gt_ext: str = "png", image_ext: str = "jpg"
) -> list[dict[str, Any]]:
    """Pair images in ``image_root`` with label maps in ``gt_root`` by file name (without extension).

    Returns dicts with ``file_name``, ``sem_seg_file_name``, ``image_id``, ``height`` and ``width`` (read from
    the label map). Images without a label map (or the reverse) are left out with a warning.
    """
    gt_root, image_root = os.fspath(gt_root), os.fspath(image_root)
    for d, what in ((gt_root, "ground-truth"), (image_root, "image")):
        if not os.path.isdir(d):
            raise FileNotFoundError(f"Semantic segmentation {what} folder not found: {d}")

    input_files = sorted(
        (os.path.join(image_root, f) for f in os.listdir(image_root) if f.endswith(image_ext)),
        key=lambda p: _sort_key(_file2id(image_root, p)),
    )
    gt_files = sorted(
        (os.path.join(gt_root, f) for f in os.listdir(gt_root) if f.endswith(gt_ext)),
        key=lambda p: _sort_key(_file2id(gt_root, p)),
    )
    if not gt_files:
        raise FileNotFoundError(f"No annotations (*{gt_ext}) found in {gt_root}.")

    if len(input_files) != len(gt_files):
        logger.warning(
            "Directory %s and %s have %d and %d files, respectively; using their intersection.",
            image_root,
            gt_root,
            len(input_files),
            len(gt_files),
        )
        input_basenames = {os.path.basename(f)[: -len(image_ext)] for f in input_files}
        gt_basenames = {os.path.basename(f)[: -len(gt_ext)] for f in gt_files}
        intersect = sorted(input_basenames & gt_basenames)
        logger.warning("Will use their intersection of %d files.", len(intersect))
        input_files = [os.path.join(image_root, f + image_ext) for f in intersect]
        gt_files = [os.path.join(gt_root, f + gt_ext) for f in intersect]

    logger.info("Loaded %d images with semantic segmentation from %s", len(input_files), image_root)
    dataset_dicts = []
    for img_path, gt_path in zip(input_files, gt_files):
        image_id = _file2id(image_root, img_path)
        if image_id != _file2id(gt_root, gt_path):
            raise ValueError(f"There is no ground truth for {img_path} (paired with {gt_path})")
        try:
            with Image.open(gt_path) as im:
                w, h = im.size
        except OSError as e:
            raise ValueError(f"Cannot read semantic segmentation file {gt_path}: {e}") from e
        dataset_dicts.append(
            {"file_name": img_path, "sem_seg_file_name": gt_path, "image_id": image_id, "height": h, "width": w}
        )
    return dataset_dicts


def convert_to_coco_dict(dataset_name: str) -> dict[str, Any]:
    """The registered dataset ``dataset_name`` as a COCO-format dict (dataset ids restored via
    ``thing_dataset_id_to_contiguous_id`` when the metadata has it)."""
    dataset_dicts = DatasetCatalog.get(dataset_name)
    metadata = MetadataCatalog.get(dataset_name)
    if hasattr(metadata, "thing_dataset_id_to_contiguous_id"):
        reverse = {v: k for k, v in metadata.thing_dataset_id_to_contiguous_id.items()}

        def reverse_id_mapper(contiguous_id: int) -> int:
            return reverse[contiguous_id]

    else:

        def reverse_id_mapper(contiguous_id: int) -> int:
            return contiguous_id

    categories = [{"id": reverse_id_mapper(i), "name": name} for i, name in enumerate(metadata.thing_classes)]
    logger.info("Converting dataset dicts of '%s' into COCO format", dataset_name)
    coco_images = []
    coco_annotations: list[dict[str, Any]] = []
    for index, image_dict in enumerate(dataset_dicts):
        coco_image = {
            "id": image_dict.get("image_id", index),
            "width": int(image_dict["width"]),
            "height": int(image_dict["height"]),
            "file_name": str(image_dict["file_name"]),
        }
        coco_images.append(coco_image)
        for annotation in image_dict.get("annotations", []):
            bbox = annotation["bbox"]
            if isinstance(bbox, np.ndarray):
                if bbox.ndim != 1:
                    raise ValueError(f"bbox has to be 1-dimensional, got shape {bbox.shape}")
                bbox = bbox.tolist()
            if len(bbox) != 4:
                raise ValueError(f"bbox has to have length 4, got {bbox}")
            bbox = BoxMode.convert(bbox, annotation["bbox_mode"], BoxMode.XYWH_ABS)
            if "segmentation" in annotation:
                segmentation = annotation["segmentation"]
                if isinstance(segmentation, list):
                    area = float(PolygonMasks([segmentation]).area()[0].item())
                elif isinstance(segmentation, dict):
                    area = float(mask_util.area(segmentation).item())
                else:
                    raise TypeError(f"Unknown segmentation type {type(segmentation).__name__}!")
            else:
                xyxy = BoxMode.convert(bbox, BoxMode.XYWH_ABS, BoxMode.XYXY_ABS)
                area = float(Boxes([xyxy]).area()[0].item())
            coco_annotation: dict[str, Any] = {
                "id": len(coco_annotations) + 1,
                "image_id": coco_image["id"],
                "bbox": [round(float(x), 3) for x in bbox],
                "area": area,
                "iscrowd": int(annotation.get("iscrowd", 0)),
                "category_id": int(reverse_id_mapper(annotation["category_id"])),
            }
            if "keypoints" in annotation:
                # back to COCO's pixel-index convention
                keypoints = [v - 0.5 if idx % 3 != 2 else v for idx, v in enumerate(annotation["keypoints"])]
                coco_annotation["keypoints"] = keypoints
                coco_annotation["num_keypoints"] = annotation.get(
                    "num_keypoints", int(sum(kp > 0 for kp in keypoints[2::3]))
                )
            if "segmentation" in annotation:
                seg = deepcopy(annotation["segmentation"])
                if isinstance(seg, dict) and not isinstance(seg["counts"], str):
                    seg["counts"] = seg["counts"].decode("ascii")
                coco_annotation["segmentation"] = seg
            coco_annotations.append(coco_annotation)

    logger.info("Conversion finished, #images: %d, #annotations: %d", len(coco_images), len(coco_annotations))
    coco_dict: dict[str, Any] = {
        "info": {
            "date_created": str(datetime.datetime.now()),
            "description": "Automatically generated COCO json file for detlightning.",
        },
        "images": coco_images,
        "categories": categories,
        "licenses": None,
    }
    if coco_annotations:
        coco_dict["annotations"] = coco_annotations
    return coco_dict


def convert_to_coco_json(dataset_name: str, output_file: str | os.PathLike, allow_cached: bool = True) -> str:
    """Write ``convert_to_coco_dict(dataset_name)`` to ``output_file`` (atomically); reuse it if it exists and
    ``allow_cached``. Returns the path."""
    output_file = os.fspath(output_file)
    os.makedirs(os.path.dirname(output_file) or ".", exist_ok=True)
    if os.path.exists(output_file) and allow_cached:
        logger.warning("Using previously cached COCO format annotations at '%s'.", output_file)
        return output_file
    coco_dict = convert_to_coco_dict(dataset_name)
    tmp_file = f"{output_file}.tmp.{os.getpid()}"
    with open(tmp_file, "w", encoding="utf-8") as f:
        json.dump(coco_dict, f)
    os.replace(tmp_file, output_file)
    logger.info("Cached COCO format annotations of '%s' at '%s'", dataset_name, output_file)
    return output_file


def register_coco_instances(
    name: str, metadata: dict[str, Any], json_file: str | os.PathLike, image_root: str | os.PathLike
) -> None:
    """Register ``name`` as a COCO instances/keypoints dataset (loaded lazily by ``load_coco_json``).

    ``metadata`` goes into MetadataCatalog, with ``json_file``, ``image_root`` and ``evaluator_type="coco"``.
    """
    if not isinstance(name, str):
        raise TypeError(f"Dataset name must be a str, got {type(name).__name__}")
    if not isinstance(json_file, (str, os.PathLike)):
        raise TypeError(f"json_file must be a path, got {type(json_file).__name__}")
    if not isinstance(image_root, (str, os.PathLike)):
        raise TypeError(f"image_root must be a path, got {type(image_root).__name__}")
    json_file, image_root = os.fspath(json_file), os.fspath(image_root)
    DatasetCatalog.register(name, lambda: load_coco_json(json_file, image_root, name))
    MetadataCatalog.get(name).set(json_file=json_file, image_root=image_root, evaluator_type="coco", **metadata)
