"""Panoptic Quality (Kirillov et al., 2019) as computed by the COCO panoptic API's ``pq_compute``, without
depending on ``panopticapi``.

Segments are matched per image when they have the same category and IoU > 0.5 (such a match is unique). The IoU
leaves out the predicted segment's pixels on VOID (id 0) ground truth. Unmatched crowd ground truth is not a false
negative; an unmatched prediction is not a false positive when more than half of it lies on VOID or on a crowd
region of its own category. Per category: PQ = sum(IoU of matches) / (TP + FP/2 + FN/2), SQ = sum(IoU) / TP,
RQ = TP / (TP + FP/2 + FN/2); the overall numbers average the categories that occur (TP + FP + FN > 0).
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

__all__ = ["PQStat", "PQStatCat", "id2rgb", "pq_compute", "pq_compute_multi_image", "pq_compute_single_image",
           "rgb2id"]

OFFSET = 256 * 256 * 256  # > any segment id encoded in an RGB PNG: gt_id * OFFSET + pred_id is unique
VOID = 0


def rgb2id(color: np.ndarray) -> np.ndarray:
    """Segment ids of a COCO panoptic PNG: (H, W, 3) RGB -> (H, W) ``R + 256 G + 256^2 B``."""
    color = np.asarray(color)
    if color.ndim != 3 or color.shape[-1] != 3:
        raise ValueError(f"rgb2id expects an (H, W, 3) array, got shape {color.shape}")
    c = color.astype(np.uint32)
    return c[..., 0] + 256 * c[..., 1] + 256 * 256 * c[..., 2]


def id2rgb(id_map: np.ndarray) -> np.ndarray:
    """Inverse of ``rgb2id``: (H, W) non-negative ids < 256^3 -> (H, W, 3) uint8 RGB."""
    ids = np.asarray(id_map).astype(np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= OFFSET):
        raise ValueError(f"id2rgb: segment ids must be in [0, {OFFSET}), got range [{ids.min()}, {ids.max()}]")
    return np.stack([ids % 256, ids // 256 % 256, ids // (256 * 256)], axis=-1).astype(np.uint8)


@dataclass
class PQStatCat:
    """Sums for one category: matched IoU, true positives, false positives, false negatives."""

    iou: float = 0.0
    tp: int = 0
    fp: int = 0
    fn: int = 0

    def __iadd__(self, other: PQStatCat) -> PQStatCat:
        self.iou += other.iou
        self.tp += other.tp
        self.fp += other.fp
        self.fn += other.fn
        return self


class PQStat:
    """Per-category ``PQStatCat`` (created on first access), mergeable with ``+=``."""

    def __init__(self) -> None:
        self.pq_per_cat: dict[int, PQStatCat] = {}

    def __getitem__(self, category_id: int) -> PQStatCat:
        return self.pq_per_cat.setdefault(category_id, PQStatCat())

    def __iadd__(self, other: PQStat) -> PQStat:
        for label, stat in other.pq_per_cat.items():
            mine = self[label]
            mine += stat
        return self

    def pq_average(self, categories: Mapping[int, Mapping[str, Any]], isthing: bool | None
                   ) -> tuple[dict[str, float], dict[int, dict[str, float]]]:
        """Mean PQ/SQ/RQ over ``categories`` (things only, stuff only, or all for ``isthing=None``) that occur;
        ``n`` is how many did. With none, the means are NaN (``panopticapi`` divides by zero)."""
        pq = sq = rq = 0.0
        n = 0
        per_class: dict[int, dict[str, float]] = {}
        for label, info in categories.items():
            if isthing is not None and (info.get("isthing", 0) == 1) != isthing:
                continue
            s = self[label]
            if s.tp + s.fp + s.fn == 0:
                per_class[label] = {"pq": 0.0, "sq": 0.0, "rq": 0.0}
                continue
            n += 1
            denom = s.tp + 0.5 * s.fp + 0.5 * s.fn
            pq_c, sq_c, rq_c = s.iou / denom, (s.iou / s.tp if s.tp else 0.0), s.tp / denom
            per_class[label] = {"pq": pq_c, "sq": sq_c, "rq": rq_c}
            pq, sq, rq = pq + pq_c, sq + sq_c, rq + rq_c
        if n == 0:
            return {"pq": float("nan"), "sq": float("nan"), "rq": float("nan"), "n": 0}, per_class
        return {"pq": pq / n, "sq": sq / n, "rq": rq / n, "n": n}, per_class


def pq_compute_single_image(
    pan_gt: np.ndarray,
    pan_pred: np.ndarray,
    gt_segments_info: Sequence[Mapping[str, Any]],
    pred_segments_info: Sequence[Mapping[str, Any]],
    categories: Mapping[int, Any],
    image_id: Any = None,
) -> PQStat:
    """PQ sums of one image.

    ``pan_gt``/``pan_pred``: (H, W) segment-id maps (0 = VOID). ``*_segments_info``: ``{"id", "category_id"}``
    (+ ``"iscrowd"`` and optionally ``"area"`` for ground truth; without it the pixel count is used).
    ``categories``: the dataset's category ids. Raises ``KeyError`` for inconsistent predictions (a segment in
    the map but not the list or vice versa, or an unknown category), like panopticapi.
    """
    pan_gt = np.asarray(pan_gt).astype(np.uint64)
    pan_pred = np.asarray(pan_pred).astype(np.uint64)
    if pan_gt.shape != pan_pred.shape:
        raise ValueError(f"image {image_id}: ground truth {pan_gt.shape} and prediction {pan_pred.shape} differ")
    stat = PQStat()
    gt_segms = {int(el["id"]): dict(el) for el in gt_segments_info}
    pred_segms = {int(el["id"]): dict(el) for el in pred_segments_info}

    # predicted areas from the map + sanity checks
    pred_labels_left = set(pred_segms)
    labels, counts = np.unique(pan_pred, return_counts=True)
    for label, cnt in zip(labels.tolist(), counts.tolist()):
        if label not in pred_segms:
            if label == VOID:
                continue
            raise KeyError(f"In the image with ID {image_id} segment with ID {label} is presented in PNG and not "
                           "presented in JSON.")
        pred_segms[label]["area"] = cnt
        pred_labels_left.remove(label)
        if pred_segms[label]["category_id"] not in categories:
            raise KeyError(f"In the image with ID {image_id} segment with ID {label} has unknown category_id "
                           f"{pred_segms[label]['category_id']}.")
    if pred_labels_left:
        raise KeyError(f"In the image with ID {image_id} the following segment IDs {sorted(pred_labels_left)} are "
                       "presented in JSON and not presented in PNG.")

    # intersections of every (gt, pred) pair present in the image
    pairs, inter = np.unique(pan_gt * OFFSET + pan_pred, return_counts=True)
    gt_pred_map = {(p // OFFSET, p % OFFSET): c for p, c in zip(pairs.tolist(), inter.tolist())}
    if any("area" not in s for s in gt_segms.values()):
        gt_ids, gt_counts = np.unique(pan_gt, return_counts=True)
        gt_area = dict(zip(gt_ids.tolist(), gt_counts.tolist()))
        for gid, s in gt_segms.items():
            s.setdefault("area", gt_area.get(gid, 0))

    gt_matched: set[int] = set()
    pred_matched: set[int] = set()
    for (gt_label, pred_label), intersection in gt_pred_map.items():
        if gt_label not in gt_segms or pred_label not in pred_segms:
            continue
        gt_s, pred_s = gt_segms[gt_label], pred_segms[pred_label]
        if gt_s.get("iscrowd", 0) == 1 or gt_s["category_id"] != pred_s["category_id"]:
            continue
        # pixels of the prediction on VOID are not held against it
        union = pred_s["area"] + gt_s["area"] - intersection - gt_pred_map.get((VOID, pred_label), 0)
        iou = intersection / union
        if iou > 0.5:
            cat = stat[gt_s["category_id"]]
            cat.tp += 1
            cat.iou += iou
            gt_matched.add(gt_label)
            pred_matched.add(pred_label)

    # false negatives: unmatched non-crowd ground truth
    crowd_labels: dict[int, int] = {}
    for gt_label, gt_s in gt_segms.items():
        if gt_label in gt_matched:
            continue
        if gt_s.get("iscrowd", 0) == 1:
            crowd_labels[gt_s["category_id"]] = gt_label
            continue
        stat[gt_s["category_id"]].fn += 1

    # false positives: unmatched predictions, unless mostly on VOID or on a crowd region of their category
    for pred_label, pred_s in pred_segms.items():
        if pred_label in pred_matched:
            continue
        intersection = gt_pred_map.get((VOID, pred_label), 0)
        if pred_s["category_id"] in crowd_labels:
            intersection += gt_pred_map.get((crowd_labels[pred_s["category_id"]], pred_label), 0)
        if intersection / pred_s["area"] > 0.5:
            continue
        stat[pred_s["category_id"]].fp += 1
    return stat


def _read_png_ids(path: str) -> np.ndarray:
    with Image.open(path) as img:
        return rgb2id(np.asarray(img.convert("RGB"), dtype=np.uint32))


def pq_compute_multi_image(
    matched: Iterable[tuple[Mapping[str, Any], Mapping[str, Any]]],
    load_gt: Callable[[Mapping[str, Any]], np.ndarray],
    load_pred: Callable[[Mapping[str, Any]], np.ndarray],
    categories: Mapping[int, Mapping[str, Any]],
    num_workers: int | None = None,
) -> dict[str, Any]:
    """PQ over ``(gt_annotation, pred_annotation)`` pairs; ``load_gt/load_pred(annotation) -> (H, W) ids``.

    Returns panopticapi's result dict: ``{"All"|"Things"|"Stuff": {"pq", "sq", "rq", "n"}, "per_class": ...}``.
    """

    def one(pair: tuple[Mapping[str, Any], Mapping[str, Any]]) -> PQStat:
        gt_ann, pred_ann = pair
        return pq_compute_single_image(load_gt(gt_ann), load_pred(pred_ann), gt_ann["segments_info"],
                                       pred_ann["segments_info"], categories, gt_ann.get("image_id"))

    total = PQStat()
    workers = num_workers if num_workers is not None else min(8, os.cpu_count() or 1)
    if workers > 1:
        # PNG decoding and np.unique release the GIL: threads are enough and need no pickling
        with ThreadPoolExecutor(max_workers=workers) as ex:
            for s in ex.map(one, matched):
                total += s
    else:
        for pair in matched:
            total += one(pair)

    results: dict[str, Any] = {}
    for name, isthing in (("All", None), ("Things", True), ("Stuff", False)):
        results[name], per_class = total.pq_average(categories, isthing=isthing)
        if name == "All":
            results["per_class"] = per_class
    return results


def _match_annotations(gt_json: Mapping[str, Any], pred_annotations: Iterable[Mapping[str, Any]]
                       ) -> list[tuple[Mapping[str, Any], Mapping[str, Any]]]:
    preds = {el["image_id"]: el for el in pred_annotations}
    matched = []
    for gt_ann in gt_json["annotations"]:
        if gt_ann["image_id"] not in preds:
            raise KeyError(f"no prediction for the image with id: {gt_ann['image_id']}")
        matched.append((gt_ann, preds[gt_ann["image_id"]]))
    return matched


def pq_compute(
    gt_json_file: str,
    pred_json_file: str,
    gt_folder: str | None = None,
    pred_folder: str | None = None,
) -> dict[str, Any]:
    """panopticapi's ``pq_compute``: COCO panoptic json + PNG folders of ground truth and predictions (folders
    default to the json paths without ``.json``). Every ground-truth image needs a prediction."""
    with open(gt_json_file) as f:
        gt_json = json.load(f)
    with open(pred_json_file) as f:
        pred_json = json.load(f)
    gt_folder = gt_folder if gt_folder is not None else gt_json_file.replace(".json", "")
    pred_folder = pred_folder if pred_folder is not None else pred_json_file.replace(".json", "")
    categories = {el["id"]: el for el in gt_json["categories"]}
    matched = _match_annotations(gt_json, pred_json["annotations"])
    return pq_compute_multi_image(
        matched,
        lambda a: _read_png_ids(os.path.join(gt_folder, a["file_name"])),
        lambda a: _read_png_ids(os.path.join(pred_folder, a["file_name"])),
        categories,
    )
