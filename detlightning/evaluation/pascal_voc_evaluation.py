"""Pascal VOC detection AP (detectron2's ``PascalVOCDetectionEvaluator``): a Python version of the VOC devkit's
evaluation, not the official Matlab code, so numbers can differ slightly from it.

Per class and IoU threshold (0.50, 0.55, ..., 0.95) detections are matched greedily by descending score to the
ground truth of the image set's annotation files; ``difficult`` objects count neither as hits nor as misses. AP is
the VOC2007 11-point interpolated precision for ``year == 2007`` and the area under the interpolated
precision/recall curve otherwise. Reported: AP (mean over thresholds), AP50, AP75, in percent.
"""
from __future__ import annotations

import logging
import os
import xml.etree.ElementTree as ET
from collections import OrderedDict, defaultdict
from functools import lru_cache
from typing import Any

import numpy as np
import torch

from ..data.catalog import MetadataCatalog
from ..utils import comm
from ..utils.file_io import PathManager
from .evaluator import DatasetEvaluator

__all__ = ["PascalVOCDetectionEvaluator", "parse_rec", "voc_ap", "voc_eval"]


class PascalVOCDetectionEvaluator(DatasetEvaluator):
    """VOC AP of a dataset registered with :func:`register_pascal_voc` (its metadata gives ``dirname``, ``split``,
    ``year`` and ``thing_classes``). Call ``evaluate`` on every rank: predictions are gathered to rank 0."""

    def __init__(self, dataset_name: str) -> None:
        self._dataset_name = dataset_name
        meta = MetadataCatalog.get(dataset_name)
        for key in ("dirname", "split", "year", "thing_classes"):
            if meta.get(key) is None:
                raise KeyError(f"PascalVOCDetectionEvaluator: metadata of '{dataset_name}' has no '{key}' "
                               "(register it with register_pascal_voc)")
        annotation_dir = PathManager.get_local_path(os.path.join(meta.dirname, "Annotations"))
        self._anno_file_template = os.path.join(annotation_dir, "{}.xml")
        self._image_set_path = os.path.join(meta.dirname, "ImageSets", "Main", meta.split + ".txt")
        self._class_names: list[str] = list(meta.thing_classes)
        if meta.year not in (2007, 2012):
            raise ValueError(f"PascalVOCDetectionEvaluator: year of '{dataset_name}' is {meta.year!r}, expected "
                             "2007 or 2012")
        self._is_2007 = meta.year == 2007
        self._cpu_device = torch.device("cpu")
        self._logger = logging.getLogger(__name__)
        self.reset()

    def reset(self) -> None:
        self._predictions: dict[int, list[str]] = defaultdict(list)  # class id -> detection lines

    def process(self, inputs: list[dict[str, Any]], outputs: list[dict[str, Any]]) -> None:
        for input, output in zip(inputs, outputs):
            image_id = input["image_id"]
            instances = output["instances"].to(self._cpu_device)
            boxes = instances.pred_boxes.tensor.numpy().copy()
            boxes[:, :2] += 1  # back to VOC's 1-based xmin, ymin (the inverse of load_voc_instances)
            for (x0, y0, x1, y1), score, cls in zip(boxes, instances.scores.tolist(),
                                                    instances.pred_classes.tolist()):
                # the devkit's text format, rounding included
                self._predictions[cls].append(f"{image_id} {score:.3f} {x0:.1f} {y0:.1f} {x1:.1f} {y1:.1f}")

    def evaluate(self) -> OrderedDict[str, dict[str, float]] | None:
        """``{"bbox": {"AP", "AP50", "AP75"}}`` on rank 0, None elsewhere."""
        gathered = comm.gather(self._predictions, dst=0)
        if not comm.is_main_process():
            return None
        predictions: dict[int, list[str]] = defaultdict(list)
        for per_rank in gathered:
            for cls, lines in per_rank.items():
                predictions[cls].extend(lines)
        self._logger.info("Evaluating %s using %d metric. Note that results do not use the official Matlab API.",
                          self._dataset_name, 2007 if self._is_2007 else 2012)

        image_ids = _read_image_set(self._image_set_path)
        records = {i: parse_rec(self._anno_file_template.format(i)) for i in image_ids}
        thresholds = range(50, 100, 5)
        aps: dict[int, list[float]] = defaultdict(list)  # IoU threshold (percent) -> AP of each class
        for cls_id, cls_name in enumerate(self._class_names):
            detections = _parse_detections(predictions.get(cls_id, []))
            for t in thresholds:
                _, _, ap = _eval_class(records, detections, cls_name, t / 100.0, self._is_2007)
                aps[t].append(ap * 100)
        mean_ap = {t: float(np.mean(v)) for t, v in aps.items()}
        return OrderedDict(bbox={"AP": float(np.mean(list(mean_ap.values()))), "AP50": mean_ap[50],
                                 "AP75": mean_ap[75]})


@lru_cache(maxsize=None)
def parse_rec(filename: str) -> list[dict[str, Any]]:
    """The objects of a VOC annotation file: ``name``, ``pose``, ``truncated``, ``difficult`` and the integer
    ``bbox`` [xmin, ymin, xmax, ymax] (1-based, inclusive)."""
    with PathManager.open(filename) as f:
        tree = ET.parse(f)
    objects = []
    for obj in tree.findall("object"):
        box = obj.find("bndbox")
        if box is None:
            raise KeyError(f"{filename}: an object has no <bndbox>")
        objects.append({
            "name": obj.findtext("name"),
            "pose": obj.findtext("pose"),
            "truncated": int(obj.findtext("truncated") or 0),
            "difficult": int(obj.findtext("difficult") or 0),
            "bbox": [int(float(box.findtext(k))) for k in ("xmin", "ymin", "xmax", "ymax")],
        })
    return objects


def voc_ap(rec: np.ndarray, prec: np.ndarray, use_07_metric: bool = False) -> float:
    """AP from a recall / precision curve: VOC2007's mean of the best precision at recall >= 0, 0.1, ..., 1
    (``use_07_metric``), or the area under the curve with precision made non-increasing."""
    if use_07_metric:
        # np.arange's (inexact) sample points are the devkit port's; they decide ties such as recall 0.3
        ap = 0.0
        for t in np.arange(0.0, 1.1, 0.1):
            ap += (prec[rec >= t].max() if np.any(rec >= t) else 0.0) / 11.0
        return float(ap)
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # the precision envelope
    steps = np.flatnonzero(mrec[1:] != mrec[:-1])  # where recall changes
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))


def _read_image_set(path: str) -> list[str]:
    with PathManager.open(path, "r") as f:
        return [line.strip() for line in f if line.strip()]


def _parse_detections(lines: list[str]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(image ids, confidences, (N, 4) boxes) of ``"<image id> <score> <xmin> <ymin> <xmax> <ymax>"`` lines."""
    fields = [line.strip().split(" ") for line in lines if line.strip()]
    image_ids = [f[0] for f in fields]
    confidence = np.array([float(f[1]) for f in fields])
    boxes = np.array([[float(v) for v in f[2:]] for f in fields]).reshape(-1, 4)
    return image_ids, confidence, boxes


def _eval_class(
    records: dict[str, list[dict[str, Any]]],
    detections: tuple[list[str], np.ndarray, np.ndarray],
    classname: str,
    ovthresh: float,
    use_07_metric: bool,
) -> tuple[np.ndarray, np.ndarray, float]:
    """Recall, precision and AP of one class; boxes use the devkit's inclusive pixel convention (+1 on sizes)."""
    gt: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    npos = 0
    for image_id, objects in records.items():
        objs = [o for o in objects if o["name"] == classname]
        difficult = np.array([o["difficult"] for o in objs], dtype=bool)
        gt[image_id] = (np.array([o["bbox"] for o in objs], dtype=float).reshape(-1, 4), difficult,
                        np.zeros(len(objs), dtype=bool))
        npos += int((~difficult).sum())

    image_ids, confidence, boxes = detections
    order = np.argsort(-confidence)
    tp = np.zeros(len(order))
    fp = np.zeros(len(order))
    for d, k in enumerate(order):
        if image_ids[k] not in gt:
            raise KeyError(f"VOC evaluation: detection on image {image_ids[k]!r}, which is not in the image set")
        gt_boxes, difficult, detected = gt[image_ids[k]]
        bb = boxes[k]
        ovmax, jmax = -np.inf, -1
        if len(gt_boxes):
            iw = np.maximum(np.minimum(gt_boxes[:, 2], bb[2]) - np.maximum(gt_boxes[:, 0], bb[0]) + 1.0, 0.0)
            ih = np.maximum(np.minimum(gt_boxes[:, 3], bb[3]) - np.maximum(gt_boxes[:, 1], bb[1]) + 1.0, 0.0)
            inter = iw * ih
            union = ((bb[2] - bb[0] + 1.0) * (bb[3] - bb[1] + 1.0)
                     + (gt_boxes[:, 2] - gt_boxes[:, 0] + 1.0) * (gt_boxes[:, 3] - gt_boxes[:, 1] + 1.0) - inter)
            overlaps = inter / union
            jmax = int(np.argmax(overlaps))
            ovmax = overlaps[jmax]
        if ovmax > ovthresh:
            if difficult[jmax]:
                continue  # neither a hit nor a miss
            if detected[jmax]:
                fp[d] = 1.0  # a duplicate
            else:
                tp[d] = 1.0
                detected[jmax] = True
        else:
            fp[d] = 1.0

    fp, tp = np.cumsum(fp), np.cumsum(tp)
    with np.errstate(divide="ignore", invalid="ignore"):
        rec = tp / float(npos)
    # the max() guards a first detection that hit a difficult object (0 / 0)
    prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    return rec, prec, voc_ap(rec, prec, use_07_metric)


def voc_eval(
    detpath: str,
    annopath: str,
    imagesetfile: str,
    classname: str,
    ovthresh: float = 0.5,
    use_07_metric: bool = False,
) -> tuple[np.ndarray, np.ndarray, float]:
    """``rec, prec, ap`` of ``classname`` from files: detections in ``detpath.format(classname)`` (one
    ``"<image id> <score> <xmin> <ymin> <xmax> <ymax>"`` line each), annotations at ``annopath.format(image_id)``
    for the ids listed in ``imagesetfile``."""
    records = {i: parse_rec(annopath.format(i)) for i in _read_image_set(imagesetfile)}
    with open(detpath.format(classname)) as f:
        detections = _parse_detections(f.readlines())
    return _eval_class(records, detections, classname, ovthresh, use_07_metric)
