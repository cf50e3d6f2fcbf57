"""Check datasets before training: every annotation and image header once, every problem reported with counts.

``validate_datasets(["my_train"])`` returns a :class:`ValidationReport`; ``scripts/validate_data.py`` prints it
and ``dataloader.validate=true`` runs it before training. The same per-annotation checks back
``detection_utils.validate_annotation`` (which raises the first error) and ``load_coco_json`` (which raises on
errors and drops, with one warning per dataset, boxes that cannot be trained on).
"""
from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .catalog import DatasetCatalog, MetadataCatalog

__all__ = [
    "DatasetProblem",
    "ProblemCollector",
    "ValidationReport",
    "annotation_problems",
    "check_dataset_dicts",
    "validate_dataset",
    "validate_datasets",
]

ERROR = "error"
WARNING = "warning"
# Coordinates beyond this cannot be pixel positions (and overflow 32-bit integer conversions downstream).
MAX_COORDINATE = float(2**31 - 1)
# PIL modes of 16-bit grayscale files; "I" (32-bit int) is what some Pillow versions give for the same files.
SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
_EXIF_ORIENTATION = 0x0112


@dataclass(frozen=True)
class DatasetProblem:
    """One problem: ``severity`` "error" (training would fail or learn garbage) or "warning" (the item is dropped
    or converted); ``kind`` a short category name; ``message`` names the file, the image/annotation and the field."""

    severity: str
    kind: str
    message: str


class ProblemCollector:
    """Receives the problems a loader finds. ``strict`` (normal loading): an error raises at once; otherwise
    (validation) errors are recorded and the loader skips the offending item and goes on."""

    def __init__(self, strict: bool = True):
        self.strict = strict
        self.problems: list[DatasetProblem] = []

    def error(self, kind: str, message: str, exc_type: type[Exception] = ValueError) -> None:
        if self.strict:
            raise exc_type(message)
        self.problems.append(DatasetProblem(ERROR, kind, message))

    def warning(self, kind: str, message: str) -> None:
        self.problems.append(DatasetProblem(WARNING, kind, message))


@dataclass
class ValidationReport:
    """All problems found in ``datasets`` (``num_images`` images, ``num_annotations`` annotations)."""

    datasets: list[str] = field(default_factory=list)
    num_images: int = 0
    num_annotations: int = 0
    problems: list[DatasetProblem] = field(default_factory=list)

    @property
    def errors(self) -> list[DatasetProblem]:
        return [p for p in self.problems if p.severity == ERROR]

    @property
    def warnings(self) -> list[DatasetProblem]:
        return [p for p in self.problems if p.severity == WARNING]

    @property
    def ok(self) -> bool:
        return not self.errors

    def counts(self) -> Counter[tuple[str, str]]:
        """How many problems of each ``(severity, kind)``."""
        return Counter((p.severity, p.kind) for p in self.problems)

    def merge(self, other: ValidationReport) -> None:
        self.datasets += other.datasets
        self.num_images += other.num_images
        self.num_annotations += other.num_annotations
        self.problems += other.problems

    def format(self, max_per_kind: int | None = None) -> str:
        """Every problem (or the first ``max_per_kind`` of each kind) grouped by severity and kind with counts,
        then a one-line summary."""
        lines = []
        counts = self.counts()
        for severity in (ERROR, WARNING):
            for (sev, kind), n in sorted(counts.items()):
                if sev != severity:
                    continue
                lines.append(f"{severity.upper()} {kind}: {n}")
                shown = [p for p in self.problems if (p.severity, p.kind) == (sev, kind)]
                limit = len(shown) if max_per_kind is None else max_per_kind
                lines += [f"  {p.message}" for p in shown[:limit]]
                if len(shown) > limit:
                    lines.append(f"  ... and {len(shown) - limit} more")
        lines.append(
            f"Checked {len(self.datasets)} dataset(s) ({', '.join(self.datasets)}): {self.num_images} images, "
            f"{self.num_annotations} annotations; {len(self.errors)} errors, {len(self.warnings)} warnings."
        )
        return "\n".join(lines)


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def describe(v: Any) -> str:
    """``str '0'``: the type and value of a bad field, for messages."""
    text = repr(v)
    return f"{type(v).__name__} {text if len(text) <= 60 else text[:57] + '...'}"


def annotation_problems(
    annotation: dict[str, Any],
    where: str,
    image_size: tuple[int, int] | None = None,
    num_classes: int | None = None,
) -> list[DatasetProblem]:
    """Problems of one annotation dict in detectron2's dataset format (``bbox`` + ``bbox_mode``,
    ``category_id``, optional ``iscrowd`` / ``segmentation`` / ``keypoints``). ``where`` prefixes every message.

    Errors: missing keys (kind "missing_key"), wrong types, non-finite or out-of-range boxes, negative sizes,
    a ``category_id`` outside ``[0, num_classes)``, malformed masks or keypoints. Warnings (with ``image_size``
    = (h, w)): a zero-width/height box or one entirely outside the image (dropped in training), an empty
    ``segmentation`` (dropped when training with masks)."""
    from detlightning.structures import BoxMode

    out: list[DatasetProblem] = []

    def err(kind: str, msg: str) -> None:
        out.append(DatasetProblem(ERROR, kind, f"{where}: {msg}"))

    def warn(kind: str, msg: str) -> None:
        out.append(DatasetProblem(WARNING, kind, f"{where}: {msg}"))

    missing = [k for k in ("bbox", "bbox_mode", "category_id") if k not in annotation]
    if missing:
        err("missing_key", f"missing {missing} (keys: {sorted(map(str, annotation.keys()))})")
        return out
    cat = annotation["category_id"]
    if not _is_int(cat) or cat < 0:
        err("bad_type", f"'category_id' must be a non-negative integer, got {describe(cat)}")
    elif num_classes is not None and cat >= num_classes:
        err("category_out_of_range", f"'category_id' {cat} is not in [0, {num_classes}) (the dataset's classes)")
    crowd = annotation.get("iscrowd", 0)
    if not (_is_int(crowd) or isinstance(crowd, bool)) or crowd not in (0, 1):
        err("bad_type", f"'iscrowd' must be 0 or 1 (an integer), got {describe(crowd)}")

    box = _box_problem(annotation["bbox"], annotation["bbox_mode"], BoxMode)
    if isinstance(box, str):
        kind, _, msg = box.partition(":")
        err(kind, msg.strip())
    elif box is not None and image_size is not None:
        x0, y0, x1, y1 = box
        h, w = image_size
        if x1 - x0 <= 0 or y1 - y0 <= 0:
            warn("empty_box", f"'bbox' {annotation['bbox']!r} has zero width or height (dropped in training)")
        elif x0 >= w or y0 >= h or x1 <= 0 or y1 <= 0:
            warn(
                "box_outside_image",
                f"'bbox' {annotation['bbox']!r} lies entirely outside the {w}x{h} image (dropped in training)",
            )

    if "segmentation" in annotation:
        out += [
            DatasetProblem(sev, kind, f"{where}: {msg}")
            for sev, kind, msg in _segmentation_problems(annotation["segmentation"], image_size)
        ]
    if "keypoints" in annotation:
        kpts = annotation["keypoints"]
        arr = _as_float_array(kpts)
        if arr is None:
            err("bad_type", f"'keypoints' must be numbers [x, y, v] * K, got {describe(kpts)}")
        elif arr.size % 3 != 0:
            err("bad_keypoints", f"'keypoints' length {arr.size} is not a multiple of 3")
        elif not np.isfinite(arr).all():
            err("bad_keypoints", "'keypoints' has a non-finite value")
    return out


def _as_float_array(v: Any) -> np.ndarray | None:
    """``v`` as a flat float64 array, or None when it is not (nested) numbers."""
    if isinstance(v, (str, bytes, dict)):
        return None
    try:
        arr = np.asarray(v, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        return None
    return arr


def _box_problem(bbox: Any, bbox_mode: Any, box_mode_cls: Any) -> tuple[float, float, float, float] | str | None:
    """The absolute box as XYXY floats, ``"kind: message"`` saying what is wrong with it, or None for a valid
    relative or rotated box (no pixel coordinates to check)."""
    try:
        mode = box_mode_cls(bbox_mode)
    except (ValueError, TypeError):
        return f"bad_type: 'bbox_mode' must be a BoxMode (0-4), got {describe(bbox_mode)}"
    values = list(bbox) if isinstance(bbox, (list, tuple, np.ndarray)) else None
    if values is None or not all(_is_number(v) for v in np.asarray(values, dtype=object).reshape(-1)):
        return f"bad_type: 'bbox' must be 4 numbers [x, y, w, h] or [x0, y0, x1, y1], got {describe(bbox)}"
    flat = [float(v) for v in np.asarray(values, dtype=object).reshape(-1)]
    expected_len = 5 if mode == box_mode_cls.XYWHA_ABS else 4
    if len(flat) != expected_len:
        return f"bad_bbox: 'bbox' must have {expected_len} numbers ({mode.name}), got {len(flat)}: {bbox!r}"
    if not all(math.isfinite(v) for v in flat):
        return f"bad_bbox: 'bbox' has a non-finite value (expected finite numbers): {bbox!r}"
    if any(abs(v) > MAX_COORDINATE for v in flat):
        return f"bad_bbox: 'bbox' value out of range (|v| must be < 2^31 pixels): {bbox!r}"
    x0, y0, a, b = flat[:4]
    if mode in (box_mode_cls.XYWH_ABS, box_mode_cls.XYWH_REL):
        x1, y1 = x0 + a, y0 + b
    elif mode in (box_mode_cls.XYXY_ABS, box_mode_cls.XYXY_REL):
        x1, y1 = a, b
    else:
        return None  # rotated boxes: no axis-aligned checks
    if x1 < x0 or y1 < y0:
        return f"bad_bbox: 'bbox' has a negative width or height ({mode.name}): {bbox!r}"
    if mode in (box_mode_cls.XYWH_REL, box_mode_cls.XYXY_REL):
        return None
    return (x0, y0, x1, y1)


def _segmentation_problems(segm: Any, image_size: tuple[int, int] | None) -> list[tuple[str, str, str]]:
    if isinstance(segm, (list, tuple)):
        if len(segm) == 0:
            return [(WARNING, "empty_segmentation", "'segmentation' is empty: no mask (dropped when training "
                     "with instance masks; the image's other annotations keep theirs)")]
        for i, poly in enumerate(segm):
            arr = _as_float_array(poly)
            if arr is None or not isinstance(poly, (list, tuple, np.ndarray)):
                return [(ERROR, "bad_segmentation", f"polygon #{i} must be a flat list of numbers, got "
                         f"{describe(poly)}")]
            if arr.size < 6 or arr.size % 2 != 0:
                return [(ERROR, "bad_segmentation", f"polygon #{i} has {arr.size} coordinates (needs an even "
                         "number >= 6: at least 3 points)")]
            if not np.isfinite(arr).all():
                return [(ERROR, "bad_segmentation", f"polygon #{i} has a non-finite coordinate")]
        return []
    if isinstance(segm, dict):
        if not segm:
            return [(WARNING, "empty_segmentation", "'segmentation' is empty: no mask (dropped when training "
                     "with instance masks)")]
        if "counts" not in segm or "size" not in segm:
            return [(ERROR, "bad_segmentation", f"RLE 'segmentation' needs 'counts' and 'size', got {sorted(segm)}")]
        size = segm["size"]
        if image_size is not None and (not isinstance(size, (list, tuple)) or list(size) != list(image_size)):
            return [(ERROR, "bad_segmentation", f"RLE 'size' {size!r} is not the image's [height, width] "
                     f"{list(image_size)}")]
        return []
    if isinstance(segm, np.ndarray):
        if segm.ndim != 2 or (image_size is not None and tuple(segm.shape) != tuple(image_size)):
            return [(ERROR, "bad_segmentation", f"mask array has shape {segm.shape}, expected {image_size}")]
        return []
    return [(ERROR, "bad_type", f"'segmentation' must be polygons (list of lists), an RLE dict or a 2D array, "
             f"got {describe(segm)}")]


def read_image_header(path: str) -> tuple[int, int, str] | DatasetProblem:
    """``(width, height, PIL mode)`` of the image at ``path`` from its header alone (no pixel decoding), the
    size as ``read_image`` returns it (after EXIF rotation); or the error problem when it cannot be read."""
    from PIL import Image, UnidentifiedImageError

    if not os.path.isfile(path):
        return DatasetProblem(ERROR, "missing_image", f"image file not found: {path}")
    try:
        with Image.open(path) as im:
            w, h = im.size
            mode = im.mode
            orientation = im.getexif().get(_EXIF_ORIENTATION, 1)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        return DatasetProblem(ERROR, "unreadable_image", f"cannot read the image header of {path}: {e}")
    if orientation in (5, 6, 7, 8):  # rotated by 90 degrees: read_image returns the upright image
        w, h = h, w
    return w, h, mode


def image_header_problems(
    header: tuple[int, int, str] | DatasetProblem, path: str, where: str, expected_hw: tuple[int, int] | None
) -> list[DatasetProblem]:
    """Problems of an image given its :func:`read_image_header`: unreadable, a size other than ``expected_hw``
    = (h, w), a pixel format that cannot be read as an 8-bit image."""
    if isinstance(header, DatasetProblem):
        return [DatasetProblem(header.severity, header.kind, f"{where}: {header.message}")]
    w, h, mode = header
    out = []
    if expected_hw is not None and (h, w) != tuple(expected_hw):
        out.append(DatasetProblem(
            ERROR, "size_mismatch",
            f"{where}: {path} is {w}x{h} (w x h) but the annotation says {expected_hw[1]}x{expected_hw[0]}",
        ))
    if mode in SIXTEEN_BIT_MODES or mode == "I":
        out.append(DatasetProblem(
            WARNING, "16bit_image", f"{where}: {path} is a {mode} (16/32-bit) image; read_image scales 16-bit "
            "values to 8 bits (>> 8) and refuses values beyond 16 bits",
        ))
    elif mode == "F":
        out.append(DatasetProblem(
            ERROR, "unsupported_image_mode", f"{where}: {path} is a 32-bit float (mode F) image; convert it to "
            "8-bit RGB or grayscale"
        ))
    return out


def _expected_hw(record: dict[str, Any], where: str, out: list[DatasetProblem]) -> tuple[int, int] | None:
    if "height" not in record and "width" not in record:
        return None
    hw = []
    for key in ("height", "width"):
        v = record.get(key)
        if not _is_int(v) or v <= 0:
            out.append(DatasetProblem(ERROR, "bad_type", f"{where}: '{key}' must be a positive integer, got "
                                      f"{describe(v)}"))
            return None
        hw.append(int(v))
    return hw[0], hw[1]


def check_dataset_dicts(
    dicts: Sequence[dict[str, Any]],
    dataset_name: str,
    check_images: bool = True,
    num_classes: int | None = None,
    num_keypoints: int | None = None,
) -> list[DatasetProblem]:
    """Problems of loaded dataset dicts: file names, sizes, image headers (``check_images``; each file opened
    once), semantic label maps, and every annotation (:func:`annotation_problems`)."""
    out: list[DatasetProblem] = []
    headers: dict[str, tuple[int, int, str] | DatasetProblem] = {}  # each file opened once
    for index, record in enumerate(dicts):
        image_id = record.get("image_id", f"#{index}")
        file_name = record.get("file_name")
        where = f"dataset '{dataset_name}', image id {image_id}"
        if not isinstance(file_name, str) or not file_name:
            out.append(DatasetProblem(ERROR, "bad_type", f"{where}: 'file_name' must be a non-empty string path, "
                                      f"got {describe(file_name)}"))
            file_name = None
        else:
            where = f"{where} ({file_name})"
        hw = _expected_hw(record, where, out)
        if check_images and file_name is not None:
            if file_name not in headers:
                headers[file_name] = read_image_header(file_name)
            out += image_header_problems(headers[file_name], file_name, where, hw)
            seg = record.get("sem_seg_file_name")
            if seg is not None:
                seg_header = read_image_header(str(seg))
                seg_problems = image_header_problems(seg_header, str(seg), f"{where}, semantic labels", hw)
                # 16-bit label maps hold ids, not intensities: read_label_map keeps ids <= 255
                out += [p for p in seg_problems if p.kind != "16bit_image"]
        for j, ann in enumerate(record.get("annotations") or []):
            if not isinstance(ann, dict):
                out.append(DatasetProblem(ERROR, "bad_type", f"{where}: annotation #{j} must be a dict, got "
                                          f"{describe(ann)}"))
                continue
            ann_where = f"{where}, annotation {'id ' + str(ann['id']) if 'id' in ann else '#' + str(j)}"
            out += annotation_problems(ann, ann_where, hw, num_classes)
            kpts = ann.get("keypoints")
            if num_keypoints is not None and kpts is not None:
                arr = _as_float_array(kpts)
                if arr is not None and arr.size % 3 == 0 and arr.size // 3 != num_keypoints:
                    out.append(DatasetProblem(ERROR, "bad_keypoints", f"{ann_where}: {arr.size // 3} keypoints, "
                                              f"the metadata's keypoint_names has {num_keypoints}"))
    return out


def validate_dataset(dataset_name: str, check_images: bool = True) -> ValidationReport:
    """Load ``dataset_name`` once, collecting every problem instead of stopping at the first one.

    COCO-json datasets (``register_coco_instances``) are read from their json with all checks of
    ``load_coco_json`` (types, ids, ranges); every dataset's dicts then go through :func:`check_dataset_dicts`.
    """
    report = ValidationReport(datasets=[dataset_name])
    meta = MetadataCatalog.get(dataset_name)
    collector = ProblemCollector(strict=False)
    json_file, image_root = meta.get("json_file"), meta.get("image_root")
    try:
        if meta.get("evaluator_type") == "coco" and json_file and image_root is not None:
            from .datasets.coco import _load_coco_json

            dicts = _load_coco_json(json_file, image_root, dataset_name, None, collector)
        else:
            dicts = DatasetCatalog.get(dataset_name)
    except (OSError, ValueError, KeyError, TypeError) as e:
        collector.error("load_failed", f"dataset '{dataset_name}': cannot be loaded: {type(e).__name__}: {e}")
        dicts = []
    thing_classes = meta.get("thing_classes")
    keypoint_names = meta.get("keypoint_names")
    report.problems = collector.problems + check_dataset_dicts(
        dicts,
        dataset_name,
        check_images=check_images,
        num_classes=len(thing_classes) if thing_classes else None,
        num_keypoints=len(keypoint_names) if keypoint_names else None,
    )
    report.num_images = len(dicts)
    report.num_annotations = sum(len(d.get("annotations") or []) for d in dicts)
    return report


def validate_datasets(dataset_names: str | Sequence[str], check_images: bool = True) -> ValidationReport:
    """:func:`validate_dataset` of each name, in one report."""
    if isinstance(dataset_names, str):
        dataset_names = [dataset_names]
    report = ValidationReport()
    for name in dataset_names:
        report.merge(validate_dataset(name, check_images=check_images))
    return report


def validate_datasets_from_cfg(cfg: Any) -> ValidationReport:
    """``dataloader.validate=true``: validate ``datasets.train`` and ``datasets.test`` before training.

    The report is logged; errors raise a ValueError listing them, unless ``dataloader.skip_bad_samples`` is on
    (then training goes on, skipping the bad samples it meets)."""
    import logging

    from detlightning.config.reader import cfg_get

    names = list(cfg_get(cfg, "datasets.train", None) or []) + list(cfg_get(cfg, "datasets.test", None) or [])
    names = list(dict.fromkeys(names))
    report = validate_datasets(names)
    logger = logging.getLogger(__name__)
    text = report.format(max_per_kind=50)
    if report.ok:
        (logger.warning if report.warnings else logger.info)("dataloader.validate:\n%s", text)
        return report
    if cfg_get(cfg, "dataloader.skip_bad_samples", False):
        logger.warning("dataloader.validate (skip_bad_samples=true, training goes on):\n%s", text)
        return report
    raise ValueError(
        f"dataloader.validate found {len(report.errors)} errors in {names}; fix them, or set "
        f"dataloader.skip_bad_samples=true to skip the bad samples (dataloader.validate=false skips this check):\n"
        f"{text}"
    )
