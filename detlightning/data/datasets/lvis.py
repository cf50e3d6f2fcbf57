"""LVIS (v0.5 / v1) json loading and registration into detectron2's ``list[dict]`` format.

Category metadata (``thing_classes``, ``class_image_count``, ``thing_frequencies``) is read from the annotation
json itself rather than from hard-coded tables: a registered LVIS dataset carries a metadata object that reads the
json's ``categories`` the first time one of those keys is asked for (or when the dataset is loaded), so
registration stays free and works before the files are downloaded. Parsed category metadata is cached per file.
"""
from __future__ import annotations

import copy
import json
import logging
import math
import os
from collections.abc import Sequence
from typing import Any

from detlightning.structures import BoxMode

from ..catalog import DatasetCatalog, Metadata, MetadataCatalog
from .builtin_meta import _get_builtin_metadata

__all__ = ["load_lvis_json", "register_lvis_instances", "get_lvis_instances_meta", "register_all_lvis"]

logger = logging.getLogger(__name__)

_MAX_IDS_IN_MESSAGE = 10

# Built-in splits: version family -> {dataset name: json file under $DETLIGHTNING_DATASETS/lvis}. Every split reads
# its images from $DETLIGHTNING_DATASETS/coco/<split folder>, the folder being taken from each image's coco_url.
_LVIS_SPLIT_JSONS: dict[str, dict[str, str]] = {
    "lvis_v1": {
        "lvis_v1_train": "lvis_v1_train.json",
        "lvis_v1_val": "lvis_v1_val.json",
        "lvis_v1_test_dev": "lvis_v1_image_info_test_dev.json",
        "lvis_v1_test_challenge": "lvis_v1_image_info_test_challenge.json",
    },
    "lvis_v0.5": {
        "lvis_v0.5_train": "lvis_v0.5_train.json",
        "lvis_v0.5_val": "lvis_v0.5_val.json",
        "lvis_v0.5_val_rand_100": "lvis_v0.5_val_rand_100.json",
        "lvis_v0.5_test": "lvis_v0.5_image_info_test.json",
    },
    # LVIS v0.5 annotations restricted to COCO's 80 categories (COCO's category ids and names)
    "lvis_v0.5_cocofied": {
        "lvis_v0.5_train_cocofied": "lvis_v0.5_train_cocofied.json",
        "lvis_v0.5_val_cocofied": "lvis_v0.5_val_cocofied.json",
    },
}

# metadata keys a registered LVIS dataset derives from its json's "categories"
_JSON_DERIVED_KEYS = frozenset(
    {"thing_classes", "class_image_count", "thing_frequencies", "thing_dataset_id_to_contiguous_id"}
)

# (absolute path, mtime_ns, size) -> category metadata of that file
_CATEGORY_META_CACHE: dict[tuple[str, int, int], dict[str, Any]] = {}


def _read_json(json_file: str) -> Any:
    if not os.path.isfile(json_file):
        raise FileNotFoundError(f"LVIS json file not found: {json_file}")
    try:
        with open(json_file, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"Cannot parse LVIS json file {json_file}: {e}") from e


def _file_key(json_file: str) -> tuple[str, int, int]:
    st = os.stat(json_file)
    return (os.path.abspath(json_file), st.st_mtime_ns, st.st_size)


def _category_meta(categories: Any, json_file: str) -> dict[str, Any]:
    """Metadata from an LVIS ``categories`` list, in the order of the sorted category ids:

    ``thing_classes`` (each category's first synonym, else its ``name``), ``thing_frequencies`` ("r" / "c" /
    "f", when every category has ``frequency``), ``class_image_count`` (``[{"id", "image_count"}]``, when every
    category has ``image_count``) and, only when the ids are not exactly 1..N,
    ``thing_dataset_id_to_contiguous_id``.
    """
    if not isinstance(categories, list):
        raise ValueError(f"{json_file}: 'categories' must be a list, got {type(categories).__name__}")
    for i, c in enumerate(categories):
        if not isinstance(c, dict) or "id" not in c or ("name" not in c and not c.get("synonyms")):
            raise ValueError(f"{json_file}: category #{i} needs an 'id' and a 'name' (or 'synonyms'), got {c!r}")
    cats = sorted(categories, key=lambda c: c["id"])
    ids = [c["id"] for c in cats]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{json_file}: category ids are not unique")
    meta: dict[str, Any] = {"thing_classes": [c["synonyms"][0] if c.get("synonyms") else c["name"] for c in cats]}
    if cats and all("frequency" in c for c in cats):
        meta["thing_frequencies"] = [c["frequency"] for c in cats]
    if cats and all("image_count" in c for c in cats):
        meta["class_image_count"] = [{"id": c["id"], "image_count": c["image_count"]} for c in cats]
    if ids != list(range(1, len(ids) + 1)):
        # LVIS's own ids are 1..N and map to id - 1; any other id set is mapped through the sorted order
        logger.warning("Category ids in %s are not 1..%d; they are mapped to [0, %d) in sorted order.",
                       json_file, len(ids), len(ids))
        meta["thing_dataset_id_to_contiguous_id"] = {cid: i for i, cid in enumerate(ids)}
    return meta


def _cache_category_meta(json_file: str, categories: Any) -> dict[str, Any]:
    meta = _category_meta(categories, json_file)
    _CATEGORY_META_CACHE[_file_key(json_file)] = meta
    return copy.deepcopy(meta)


def _json_category_meta(json_file: str) -> dict[str, Any]:
    """Category metadata of ``json_file`` (parsed once per file version)."""
    cached = _CATEGORY_META_CACHE.get(_file_key(json_file))
    if cached is not None:
        return copy.deepcopy(cached)
    data = _read_json(json_file)
    if not isinstance(data, dict):
        raise ValueError(f"{json_file}: an LVIS json must be an object, got {type(data).__name__}")
    return _cache_category_meta(json_file, data.get("categories") or [])


def _fill_missing(metadata: Metadata, values: dict[str, Any]) -> None:
    """Set the keys of ``values`` that ``metadata`` does not have yet (values given at registration win)."""
    for key, value in values.items():
        if key not in metadata.__dict__:
            setattr(metadata, key, value)


class _LVISMetadata(Metadata):
    """Metadata of a registered LVIS dataset: the category keys come from its ``json_file`` on first access."""

    def __getattr__(self, key: str) -> Any:
        json_file = self.__dict__.get("json_file")
        if key in _JSON_DERIVED_KEYS and json_file:
            if not os.path.isfile(json_file):
                raise AttributeError(
                    f"Metadata '{key}' of LVIS dataset '{self.name}' is read from its json file {json_file}, "
                    "which does not exist. Download LVIS there (builtin splits: $DETLIGHTNING_DATASETS/lvis)."
                )
            _fill_missing(self, _json_category_meta(json_file))
            if key in self.__dict__:
                return self.__dict__[key]
        return super().__getattr__(key)


def get_lvis_instances_meta(dataset_name: str) -> dict[str, Any]:
    """Category metadata of an LVIS dataset.

    - a name containing "cocofied": COCO's metadata (80 classes, COCO's category ids);
    - a registered dataset whose ``json_file`` exists: the metadata read from that json's ``categories``
      (``thing_classes``, ``class_image_count``, ``thing_frequencies``);
    - otherwise, a name containing "v0.5" or "v1" (e.g. the family names "lvis_v1", "lvis_v0.5", or a builtin
      split before LVIS is downloaded): ``{}``, as the categories are only known from the json (a registered
      dataset fills them in lazily once the file exists).

    Raises ValueError for any other name.
    """
    if "cocofied" in dataset_name:
        return _get_builtin_metadata("coco")
    json_file = MetadataCatalog[dataset_name].__dict__.get("json_file") if dataset_name in MetadataCatalog else None
    if json_file and os.path.isfile(json_file):
        return _json_category_meta(json_file)
    if "v0.5" in dataset_name or "v1" in dataset_name:
        return {}
    raise ValueError(
        f"No LVIS metadata for dataset '{dataset_name}': it is neither a registered dataset with an existing "
        "json_file nor an LVIS version name (containing 'v0.5' or 'v1')."
    )


def _image_file_name(img: dict[str, Any], image_root: str, json_file: str) -> str:
    """``image_root/<split folder>/<file>`` from ``coco_url`` (".../val2017/000000000139.jpg"), else
    ``image_root/<file_name>``."""
    url = img.get("coco_url")
    if url:
        parts = str(url).rstrip("/").split("/")
        if len(parts) >= 2:
            return os.path.join(image_root, parts[-2], parts[-1])
    if img.get("file_name"):
        return os.path.join(image_root, img["file_name"])
    raise KeyError(f"{json_file}: image id {img.get('id')} has neither 'coco_url' nor 'file_name'")


def _check_bbox(bbox: Any, where: str) -> None:
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
        raise ValueError(f"{where}: 'bbox' must be 4 numbers [x, y, w, h], got {bbox!r}")
    for v in bbox:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"{where}: 'bbox' must contain finite numbers, got {bbox!r}")
    if bbox[2] < 0 or bbox[3] < 0:
        raise ValueError(f"{where}: 'bbox' has a negative width or height: {bbox!r}")


def load_lvis_json(
    json_file: str | os.PathLike,
    image_root: str | os.PathLike,
    dataset_name: str | None = None,
    extra_annotation_keys: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """Load an LVIS-format json (v0.5 or v1) into detectron2's dataset dicts, sorted by image id.

    Each record has ``file_name`` (``image_root/<split folder from coco_url>/<file>``, or ``image_root/file_name``
    for images without ``coco_url``), ``height``, ``width``, ``image_id``, ``not_exhaustive_category_ids`` and
    ``neg_category_ids`` (the json's category ids, as given) and ``annotations``: dicts with ``bbox`` (XYWH_ABS),
    ``bbox_mode``, ``category_id`` (0-based: LVIS id - 1, or through ``thing_dataset_id_to_contiguous_id`` when
    the metadata has one, e.g. the cocofied splits), ``segmentation`` (polygons) and ``extra_annotation_keys``.

    With ``dataset_name``, the category metadata read from the json (see :func:`get_lvis_instances_meta`) fills the
    keys the dataset's metadata does not have yet. Errors name the file and annotation / image id: a missing key, a
    bbox that is not 4 finite numbers with w, h >= 0, a polygon with fewer than 3 points, an unknown category id,
    duplicate annotation ids.
    """
    json_file = os.fspath(json_file)
    image_root = os.fspath(image_root)
    data = _read_json(json_file)
    if not isinstance(data, dict) or "images" not in data:
        raise ValueError(f"{json_file}: an LVIS json must be an object with an 'images' list")
    images = data["images"]
    annotations = data.get("annotations") or []
    json_meta = _cache_category_meta(json_file, data.get("categories") or [])
    num_categories = len(json_meta["thing_classes"])

    if dataset_name is not None:
        metadata = MetadataCatalog.get(dataset_name)
        _fill_missing(metadata, get_lvis_instances_meta(dataset_name) if "cocofied" in dataset_name else json_meta)
        id_map = metadata.__dict__.get("thing_dataset_id_to_contiguous_id")
    else:
        id_map = json_meta.get("thing_dataset_id_to_contiguous_id")

    imgs_by_id: dict[Any, dict[str, Any]] = {}
    for i, img in enumerate(images):
        if not isinstance(img, dict) or "id" not in img:
            raise ValueError(f"{json_file}: image #{i} must be an object with an 'id'")
        for key in ("height", "width"):
            if key not in img:
                raise KeyError(f"{json_file}: image id {img['id']} has no '{key}' (keys: {sorted(img)})")
        if img["id"] in imgs_by_id:
            raise ValueError(f"{json_file}: image id {img['id']} appears more than once in 'images'")
        imgs_by_id[img["id"]] = img

    anns_by_image: dict[Any, list[dict[str, Any]]] = {k: [] for k in imgs_by_id}
    seen_ids: set[Any] = set()
    repeated, orphans = [], []
    for i, ann in enumerate(annotations):
        for key in ("id", "image_id"):
            if not isinstance(ann, dict) or key not in ann:
                raise KeyError(f"{json_file}: annotation #{i} has no '{key}'")
        if ann["id"] in seen_ids:
            repeated.append(ann["id"])
        seen_ids.add(ann["id"])
        if ann["image_id"] not in anns_by_image:
            orphans.append(ann["id"])
            continue
        anns_by_image[ann["image_id"]].append(ann)
    if repeated:
        raise ValueError(f"Annotation ids in '{json_file}' are not unique; repeated: {repeated[:_MAX_IDS_IN_MESSAGE]}")
    if orphans:
        logger.warning("%s: %d annotations refer to images not in 'images' (ignored), e.g. ids %s",
                       json_file, len(orphans), orphans[:_MAX_IDS_IN_MESSAGE])

    extra_keys = list(extra_annotation_keys or [])
    if extra_keys:
        logger.info("Loading extra annotation keys %s from %s", extra_keys, json_file)
    dataset_dicts = []
    for image_id in sorted(imgs_by_id):
        img = imgs_by_id[image_id]
        objs = []
        for anno in anns_by_image[image_id]:
            where = f"{json_file}: annotation id {anno['id']} (image id {image_id})"
            for key in ("bbox", "category_id", *extra_keys):
                if key not in anno:
                    raise KeyError(f"{where}: missing '{key}' (keys: {sorted(anno)})")
            _check_bbox(anno["bbox"], where)
            cat = anno["category_id"]
            if id_map is not None:
                if cat not in id_map:
                    raise KeyError(f"{where}: category_id={cat} is not among the dataset's category ids")
                contiguous = id_map[cat]
            else:
                contiguous = cat - 1  # LVIS ids are 1..N
                if num_categories and not 0 <= contiguous < num_categories:
                    raise ValueError(f"{where}: category_id={cat} is outside 1..{num_categories}")
            obj: dict[str, Any] = {"bbox": anno["bbox"], "bbox_mode": BoxMode.XYWH_ABS, "category_id": contiguous}
            if "segmentation" in anno:
                segm = anno["segmentation"]
                if not isinstance(segm, list) or not segm or not all(isinstance(p, (list, tuple)) for p in segm):
                    raise ValueError(f"{where}: 'segmentation' must be a non-empty list of polygons")
                # d2-parity: LVIS polygons are expected to be valid; one with < 3 points is an error, not skipped
                bad = [len(p) for p in segm if len(p) % 2 != 0 or len(p) < 6]
                if bad:
                    raise ValueError(f"{where}: polygon with {bad[0]} coordinates (needs an even number >= 6)")
                obj["segmentation"] = segm
            for key in extra_keys:
                obj[key] = anno[key]
            objs.append(obj)
        dataset_dicts.append(
            {
                "file_name": _image_file_name(img, image_root, json_file),
                "height": img["height"],
                "width": img["width"],
                "not_exhaustive_category_ids": img.get("not_exhaustive_category_ids", []),
                "neg_category_ids": img.get("neg_category_ids", []),
                "image_id": image_id,
                "annotations": objs,
            }
        )
    logger.info("Loaded %d images in the LVIS format from %s", len(dataset_dicts), json_file)
    return dataset_dicts


def register_lvis_instances(
    name: str, metadata: dict[str, Any], json_file: str | os.PathLike, image_root: str | os.PathLike
) -> None:
    """Register ``name`` as an LVIS-format instance detection / segmentation dataset (loaded lazily by
    :func:`load_lvis_json`).

    ``metadata`` goes into MetadataCatalog with ``json_file``, ``image_root`` and ``evaluator_type="lvis"``;
    category keys it does not give (``thing_classes``, ``class_image_count``, ``thing_frequencies``) are read
    from ``json_file`` when first asked for.
    """
    if not isinstance(name, str):
        raise TypeError(f"Dataset name must be a str, got {type(name).__name__}")
    for arg, value in (("json_file", json_file), ("image_root", image_root)):
        if not isinstance(value, (str, os.PathLike)):
            raise TypeError(f"register_lvis_instances: {arg} must be a path, got {type(value).__name__}")
    json_file, image_root = os.fspath(json_file), os.fspath(image_root)
    DatasetCatalog.register(name, lambda: load_lvis_json(json_file, image_root, name))
    previous = MetadataCatalog.get(name)
    lazy = _LVISMetadata()
    lazy.__dict__.update(previous.__dict__)  # keep what was set before registration
    MetadataCatalog[name] = lazy
    lazy.set(json_file=json_file, image_root=image_root, evaluator_type="lvis", **metadata)


def register_all_lvis(root: str) -> None:
    """Register the LVIS v0.5 / v1 splits under detectron2's names: annotations in ``root/lvis``, images in
    ``root/coco``."""
    for family, splits in _LVIS_SPLIT_JSONS.items():
        for name, json_name in splits.items():
            json_file = os.path.join(root, "lvis", json_name)
            image_root = os.path.join(root, "coco")
            register_lvis_instances(name, get_lvis_instances_meta(family), json_file, image_root)
            DatasetCatalog[name] = _require_json(name, json_file, DatasetCatalog[name])


def _require_json(name: str, json_file: str, load: Any) -> Any:
    def checked() -> list[dict[str, Any]]:
        if not os.path.isfile(json_file):
            raise FileNotFoundError(
                f"Dataset '{name}' is registered but its annotation file {json_file} is missing. Put the LVIS "
                "jsons in $DETLIGHTNING_DATASETS/lvis and COCO's images in $DETLIGHTNING_DATASETS/coco."
            )
        return load()

    return checked
