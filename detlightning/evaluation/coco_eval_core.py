"""The COCO evaluation core behind ``COCOEvaluator``: COCO result dicts -> a summarised
``COCOeval`` (pycocotools, or faster-coco-eval's ``COCOeval_opt``), plus detectron2's ``COCOevalMaxDets``."""
from __future__ import annotations

import contextlib
import copy
import gc
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import pycocotools.mask as mask_util
from pycocotools.cocoeval import COCOeval

from .fast_eval_api import COCOeval_opt, as_coco_api, is_fast_coco_api, is_fast_cocoeval, make_coco_api

__all__ = ["COCOevalMaxDets", "TASKS"]

TASKS = ("bbox", "segm", "keypoints")


def _evaluate_predictions_on_coco(
    coco_gt: Any,
    coco_results: list[dict[str, Any]],
    iou_type: str,
    kpt_oks_sigmas: Sequence[float] | None = None,
    cocoeval_fn: Callable[..., Any] = COCOeval_opt,
    img_ids: Sequence[int] | None = None,
    max_dets_per_image: Sequence[int] | None = None,
) -> Any:
    """Run COCO evaluation of ``coco_results`` (non-empty) for ``iou_type``; returns the summarised COCOeval.

    ``cocoeval_fn``: ``COCOeval`` (pycocotools) or ``COCOeval_opt``; ``coco_gt`` is converted to the matching
    ``COCO`` class when needed. ``coco_results`` is not modified.
    """
    if not coco_results:
        raise ValueError("_evaluate_predictions_on_coco needs at least one result")
    if iou_type not in TASKS:
        raise ValueError(f"Got unknown task: {iou_type!r}; expected one of {TASKS}")
    coco_gt = as_coco_api(coco_gt, fast=is_fast_cocoeval(cocoeval_fn))

    with _gc_paused():  # ~10^5 small dicts per task: the cyclic GC would rescan them over and over
        coco_dt = _results_to_coco_dt(coco_gt, coco_results, iou_type)
        coco_eval = _run_cocoeval(coco_gt, coco_dt, coco_results, iou_type, kpt_oks_sigmas, cocoeval_fn, img_ids,
                                  max_dets_per_image)
    return coco_eval


def _run_cocoeval(
    coco_gt: Any,
    coco_dt: Any,
    coco_results: list[dict[str, Any]],
    iou_type: str,
    kpt_oks_sigmas: Sequence[float] | None,
    cocoeval_fn: Callable[..., Any],
    img_ids: Sequence[int] | None,
    max_dets_per_image: Sequence[int] | None,
) -> Any:
    coco_eval = cocoeval_fn(coco_gt, coco_dt, iou_type)
    if max_dets_per_image is None:
        max_dets_per_image = [1, 10, 100]  # COCOeval's default
    else:
        max_dets_per_image = list(max_dets_per_image)
        if len(max_dets_per_image) < 3:
            raise ValueError(f"COCOeval needs max_dets_per_image of length >= 3, got {max_dets_per_image}")
        if max_dets_per_image[2] != 100 and cocoeval_fn is COCOeval:
            # pycocotools' summarize() hard-codes 100 detections for AP
            coco_eval = COCOevalMaxDets(coco_gt, coco_dt, iou_type)
    if iou_type != "keypoints":
        coco_eval.params.maxDets = max_dets_per_image

    if img_ids is not None:
        coco_eval.params.imgIds = list(img_ids)

    if iou_type == "keypoints":
        if kpt_oks_sigmas:
            coco_eval.params.kpt_oks_sigmas = np.array(kpt_oks_sigmas)
        # COCOeval needs every detection and every gt to have the same number of keypoints
        num_keypoints_dt = len(coco_results[0]["keypoints"]) // 3
        gt_with_kpts = next((a for a in coco_gt.anns.values() if "keypoints" in a), None)
        num_keypoints_gt = len(gt_with_kpts["keypoints"]) // 3 if gt_with_kpts is not None else num_keypoints_dt
        num_keypoints_oks = len(coco_eval.params.kpt_oks_sigmas)
        if not num_keypoints_oks == num_keypoints_dt == num_keypoints_gt:
            raise ValueError(
                f"[COCOEvaluator] Prediction contain {num_keypoints_dt} keypoints. Ground truth contains "
                f"{num_keypoints_gt} keypoints. The length of cfg.TEST.KEYPOINT_OKS_SIGMAS is {num_keypoints_oks}. "
                "They have to agree with each other. For meaning of OKS, please refer to "
                "http://cocodataset.org/#keypoints-eval."
            )

    coco_eval.evaluate()
    coco_eval.accumulate()
    coco_eval.summarize()
    return coco_eval


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _rle_areas(rles: list[dict[str, Any]]) -> list[int]:
    """Pixel areas of compressed RLEs, one pycocotools call per chunk."""
    # pycocotools' area() builds a scratch np.uint8 array holding the list length: > 255 overflows on numpy 2
    chunk = 255
    return [a for i in range(0, len(rles), chunk) for a in mask_util.area(rles[i:i + chunk]).tolist()]


def _results_to_coco_dt(coco_gt: Any, coco_results: list[dict[str, Any]], iou_type: str) -> Any:
    """The detections as a ``COCO`` object of ``coco_gt``'s backend: what ``coco_gt.loadRes(...)`` builds, with
    mask areas and boxes computed in one call for all results and ``coco_results`` left unmodified.

    As in pycocotools, box and keypoint results take their area from the box; mask results from the mask
    (d2-parity: the box of a mask result is ignored so small/medium/large follow the mask area).
    """
    gt_img_ids = set(coco_gt.getImgIds())
    unknown = {r["image_id"] for r in coco_results} - gt_img_ids
    if unknown:
        raise ValueError(f"Results do not correspond to the ground truth: image ids {sorted(unknown)[:10]} are not "
                         "in the dataset")
    if iou_type == "segm":
        if any("segmentation" not in r for r in coco_results):
            raise ValueError("task 'segm' needs results with 'segmentation' (the model predicts no masks)")
        rles = [r["segmentation"] for r in coco_results]
        areas = _rle_areas(rles)
        boxes = mask_util.toBbox(rles).tolist()
        anns = [
            {"image_id": r["image_id"], "category_id": r["category_id"], "score": r["score"],
             "segmentation": r["segmentation"], "area": a, "bbox": b, "id": i + 1, "iscrowd": 0}
            for i, (r, a, b) in enumerate(zip(coco_results, areas, boxes))
        ]
    else:
        with_kpts = iou_type == "keypoints"
        if with_kpts and any("keypoints" not in r for r in coco_results):
            raise ValueError("task 'keypoints' needs results with 'keypoints' (the model predicts none)")
        anns = []
        for i, r in enumerate(coco_results):
            bb = r["bbox"]
            ann = {"image_id": r["image_id"], "category_id": r["category_id"], "score": r["score"], "bbox": bb,
                   "area": bb[2] * bb[3], "id": i + 1, "iscrowd": 0}
            if with_kpts:
                ann["keypoints"] = r["keypoints"]
            anns.append(ann)
    dataset = {
        "info": copy.deepcopy(coco_gt.dataset.get("info", {})),
        "images": list(coco_gt.dataset["images"]),
        "categories": copy.deepcopy(coco_gt.dataset["categories"]),
        "annotations": anns,
    }
    return make_coco_api(dataset, fast=is_fast_coco_api(coco_gt))


class COCOevalMaxDets(COCOeval):
    """pycocotools' ``COCOeval`` whose summary uses ``params.maxDets[2]`` (not a fixed 100) as the detection
    limit for AP and the area-range ARs."""

    def summarize(self) -> None:
        def _summarize(ap: int = 1, iou_thr: float | None = None, area_rng: str = "all", max_dets: int = 100
                       ) -> float:
            p = self.params
            i_str = " {:<18} {} @[ IoU={:<9} | area={:>6s} | maxDets={:>3d} ] = {:0.3f}"
            title = "Average Precision" if ap == 1 else "Average Recall"
            type_str = "(AP)" if ap == 1 else "(AR)"
            iou_str = f"{p.iouThrs[0]:0.2f}:{p.iouThrs[-1]:0.2f}" if iou_thr is None else f"{iou_thr:0.2f}"
            aind = [i for i, a in enumerate(p.areaRngLbl) if a == area_rng]
            mind = [i for i, m in enumerate(p.maxDets) if m == max_dets]
            if ap == 1:
                s = self.eval["precision"]  # (T, R, K, A, M)
                if iou_thr is not None:
                    s = s[np.where(iou_thr == p.iouThrs)[0]]
                s = s[:, :, :, aind, mind]
            else:
                s = self.eval["recall"]  # (T, K, A, M)
                if iou_thr is not None:
                    s = s[np.where(iou_thr == p.iouThrs)[0]]
                s = s[:, :, aind, mind]
            mean_s = -1.0 if len(s[s > -1]) == 0 else float(np.mean(s[s > -1]))
            print(i_str.format(title, type_str, iou_str, area_rng, max_dets, mean_s))
            return mean_s

        def _summarize_dets() -> np.ndarray:
            md = self.params.maxDets
            stats = np.zeros((12,))
            stats[0] = _summarize(1, max_dets=md[2])
            stats[1] = _summarize(1, iou_thr=0.5, max_dets=md[2])
            stats[2] = _summarize(1, iou_thr=0.75, max_dets=md[2])
            stats[3] = _summarize(1, area_rng="small", max_dets=md[2])
            stats[4] = _summarize(1, area_rng="medium", max_dets=md[2])
            stats[5] = _summarize(1, area_rng="large", max_dets=md[2])
            stats[6] = _summarize(0, max_dets=md[0])
            stats[7] = _summarize(0, max_dets=md[1])
            stats[8] = _summarize(0, max_dets=md[2])
            stats[9] = _summarize(0, area_rng="small", max_dets=md[2])
            stats[10] = _summarize(0, area_rng="medium", max_dets=md[2])
            stats[11] = _summarize(0, area_rng="large", max_dets=md[2])
            return stats

        def _summarize_kps() -> np.ndarray:
            stats = np.zeros((10,))
            stats[0] = _summarize(1, max_dets=20)
            stats[1] = _summarize(1, max_dets=20, iou_thr=0.5)
            stats[2] = _summarize(1, max_dets=20, iou_thr=0.75)
            stats[3] = _summarize(1, max_dets=20, area_rng="medium")
            stats[4] = _summarize(1, max_dets=20, area_rng="large")
            stats[5] = _summarize(0, max_dets=20)
            stats[6] = _summarize(0, max_dets=20, iou_thr=0.5)
            stats[7] = _summarize(0, max_dets=20, iou_thr=0.75)
            stats[8] = _summarize(0, max_dets=20, area_rng="medium")
            stats[9] = _summarize(0, max_dets=20, area_rng="large")
            return stats

        if not self.eval:
            raise RuntimeError("Please run accumulate() first")
        iou_type = self.params.iouType
        if iou_type in ("segm", "bbox"):
            self.stats = _summarize_dets()
        elif iou_type == "keypoints":
            self.stats = _summarize_kps()
        else:
            raise ValueError(f"unsupported iouType {iou_type!r}")

    def __str__(self) -> str:
        self.summarize()
        return ""
