"""COCO-style evaluation: AP for boxes, masks and keypoints, AR for proposals (detectron2's ``COCOEvaluator``).

Predictions are turned into COCO result dicts as they arrive (masks RLE-encoded, so the evaluator holds the whole
dataset's outputs cheaply), gathered on rank 0, and scored with pycocotools' ``COCOeval`` or, when the optional
``faster-coco-eval`` is installed and ``use_fast_impl=True``, with its C++ re-implementation (same numbers).
"""
from __future__ import annotations

import copy
import itertools
import json
import logging
import os
import pickle
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pycocotools.mask as mask_util
import torch
from pycocotools.cocoeval import COCOeval
from tabulate import tabulate

from ..data.catalog import DatasetCatalog, MetadataCatalog
from ..data.datasets.coco import convert_to_coco_dict, convert_to_coco_json
from ..structures import Boxes, BoxMode, Instances, pairwise_iou
from ..utils import comm
from ..utils.file_io import PathManager
from ..utils.logger import create_small_table
from .coco_eval_core import TASKS as _TASKS
from .coco_eval_core import COCOevalMaxDets, _evaluate_predictions_on_coco
from .evaluator import DatasetEvaluator
from .fast_eval_api import FAST_COCOEVAL_AVAILABLE, COCOeval_opt, make_coco_api

__all__ = ["COCOEvaluator", "COCOevalMaxDets", "instances_to_coco_json"]

_METRICS = {
    "bbox": ["AP", "AP50", "AP75", "APs", "APm", "APl"],
    "segm": ["AP", "AP50", "AP75", "APs", "APm", "APl"],
    "keypoints": ["AP", "AP50", "AP75", "APm", "APl"],
}


class COCOEvaluator(DatasetEvaluator):
    """AR for object proposals and AP for boxes / instance masks / keypoints, with COCO's metrics
    (https://cocodataset.org/#detection-eval), for any dataset in COCO or detectron2's standard format.

    Args:
        dataset_name: a dataset whose metadata has ``json_file`` (COCO annotations), or any registered dataset in
            the standard dict format (converted to COCO on the fly; cached as
            ``output_dir/<dataset_name>_coco_format.json`` when ``output_dir`` is given).
        tasks: subset of ``("bbox", "segm", "keypoints")``; ``None`` infers them from the predictions.
        distributed: gather the predictions of all ranks and evaluate on rank 0 (other ranks return ``{}``);
            ``False`` evaluates this process's predictions only.
        output_dir: where to write ``instances_predictions.pth`` and ``coco_instances_results.json``.
        max_dets_per_image: detections per image considered for AP (COCO's default 100); AR keeps [1, 10, N].
        use_fast_impl: use faster-coco-eval when installed (falls back to pycocotools otherwise).
        kpt_oks_sigmas: per-keypoint OKS sigmas; empty = COCO's person sigmas.
        allow_cached_coco: reuse a cached converted json in ``output_dir``.
    """

    def __init__(
        self,
        dataset_name: str,
        tasks: Iterable[str] | Any | None = None,
        distributed: bool = True,
        output_dir: str | os.PathLike | None = None,
        *,
        max_dets_per_image: int | None = None,
        use_fast_impl: bool = True,
        kpt_oks_sigmas: Sequence[float] = (),
        allow_cached_coco: bool = True,
    ) -> None:
        self._logger = logging.getLogger(__name__)
        self._distributed = distributed
        self._output_dir = os.fspath(output_dir) if output_dir is not None else None

        if use_fast_impl and not FAST_COCOEVAL_AVAILABLE:
            self._logger.info("faster-coco-eval is not installed. Falling back to the official COCO API.")
            use_fast_impl = False
        self._use_fast_impl = use_fast_impl

        # COCOeval wants maxDets as [1, 10, N]: AP uses the third entry, AR is reported at all three
        if max_dets_per_image is None:
            self._max_dets_per_image = [1, 10, 100]
        else:
            if int(max_dets_per_image) < 1:
                raise ValueError(f"max_dets_per_image must be a positive int, got {max_dets_per_image!r}")
            self._max_dets_per_image = [1, 10, int(max_dets_per_image)]

        if is_config_argument(tasks) and not kpt_oks_sigmas:
            kpt_oks_sigmas = _sigmas_from_cfg(tasks)
        self._tasks = parse_tasks(tasks, "COCOEvaluator", _TASKS, self._logger, "tasks / kpt_oks_sigmas")

        self._cpu_device = torch.device("cpu")
        self._metadata = MetadataCatalog.get(dataset_name)
        if self._metadata.get("json_file") is None:
            self._logger.info("Trying to convert '%s' to COCO format ...", dataset_name)
            if self._output_dir is not None:
                cache_path = os.path.join(self._output_dir, f"{dataset_name}_coco_format.json")
                if not hasattr(self._metadata, "json_file"):  # metadata values are set once
                    # d2-parity: later users of the metadata (and other evaluators) find the converted file
                    self._metadata.json_file = cache_path
                convert_to_coco_json(dataset_name, cache_path, allow_cached=allow_cached_coco)
                gt_dataset = _read_json(cache_path)
            else:
                # detectron2 requires output_dir here; without one the conversion simply stays in memory
                gt_dataset = convert_to_coco_dict(dataset_name)
        else:
            json_file = self._metadata.json_file
            if not PathManager.exists(json_file) and dataset_name in DatasetCatalog:
                # a dataset that writes its annotation file on first load (the built-in shapes): load it once
                DatasetCatalog.get(dataset_name)
            gt_dataset = _read_json(json_file)

        if self._use_fast_impl and not all(type(img["id"]) is int for img in gt_dataset.get("images", [])):
            # faster-coco-eval indexes images by int id; pycocotools accepts any hashable id
            self._logger.info("'%s' has non-integer image ids: using the official COCO API.", dataset_name)
            self._use_fast_impl = False
        self._coco_api = make_coco_api(gt_dataset, fast=self._use_fast_impl)

        # test-set jsons carry no annotations (they are scored by the COCO server)
        self._do_evaluation = "annotations" in self._coco_api.dataset
        self._kpt_oks_sigmas = tuple(float(s) for s in kpt_oks_sigmas)
        self.reset()

    def reset(self) -> None:
        self._predictions: list[dict[str, Any]] = []

    def process(self, inputs: list[dict[str, Any]], outputs: list[dict[str, Any]]) -> None:
        """``inputs``: dicts with ``"image_id"``; ``outputs``: dicts with ``"instances"`` (``pred_boxes``,
        ``scores``, ``pred_classes``, optional ``pred_masks`` (N, H, W) and ``pred_keypoints`` (N, K, 3)) and/or
        ``"proposals"`` (``proposal_boxes``, ``objectness_logits``)."""
        for input, output in zip(inputs, outputs):
            prediction: dict[str, Any] = {"image_id": input["image_id"]}
            if "instances" in output:
                instances = output["instances"].to(self._cpu_device)
                prediction["instances"] = instances_to_coco_json(instances, input["image_id"])
            if "proposals" in output:
                prediction["proposals"] = output["proposals"].to(self._cpu_device)
            if len(prediction) > 1:
                self._predictions.append(prediction)

    def evaluate(self, img_ids: Sequence[int] | None = None) -> dict[str, dict[str, float]]:
        """``{task: {metric: score}}`` in percent (NaN where COCO cannot compute a metric).

        ``img_ids``: evaluate on these images only (default: every image of the dataset).
        """
        predictions = self._all_predictions()
        if predictions is None:  # a non-main process: rank 0 evaluates
            return {}
        if not predictions:
            self._logger.warning("[COCOEvaluator] Did not receive valid predictions.")
            return {}
        self._save_output("instances_predictions.pth", lambda f: torch.save(predictions, f))

        self._results: OrderedDict[str, dict[str, float]] = OrderedDict()
        # Every prediction dict holds the same keys, so the first one tells which evaluations apply.
        present = predictions[0].keys()
        if "proposals" in present:
            self._eval_box_proposals(predictions)
        if "instances" in present:
            self._eval_predictions(predictions, img_ids=img_ids)
        return copy.deepcopy(self._results)

    def _all_predictions(self) -> list[dict[str, Any]] | None:
        """Predictions of every process, on the main process (None on the others); this process's own
        predictions when not distributed."""
        if not self._distributed:
            return self._predictions
        comm.synchronize()
        per_rank = comm.gather(self._predictions, dst=0)
        if not comm.is_main_process():
            return None
        return [pred for rank_preds in per_rank for pred in rank_preds]

    def _save_output(self, file_name: str, write: Callable[[Any], Any], binary: bool = True) -> None:
        save_output(self._output_dir, file_name, write, self._logger, binary)

    def _tasks_from_predictions(self, predictions: list[dict[str, Any]]) -> list[str]:
        """The COCO iou types the COCO-format ``predictions`` support (always "bbox")."""
        tasks = {"bbox"}
        for pred in predictions:
            if "segmentation" in pred:
                tasks.add("segm")
            if "keypoints" in pred:
                tasks.add("keypoints")
        return sorted(tasks)

    def _eval_predictions(self, predictions: list[dict[str, Any]], img_ids: Sequence[int] | None = None) -> None:
        self._logger.info("Preparing results for COCO format ...")
        coco_results = [ann for pred in predictions for ann in pred["instances"]]
        tasks = self._tasks or self._tasks_from_predictions(coco_results)
        id_map = self._metadata.get("thing_dataset_id_to_contiguous_id")
        if id_map is not None:
            coco_results = _unmap_category_ids(coco_results, id_map)
        self._save_output("coco_instances_results.json", lambda f: f.write(json.dumps(coco_results)), binary=False)
        if not self._do_evaluation:
            self._logger.info("Annotations are not available for evaluation.")
            return

        api_kind = "unofficial" if self._use_fast_impl else "official"
        self._logger.info("Evaluating predictions with %s COCO API...", api_kind)
        eval_options: dict[str, Any] = {
            "cocoeval_fn": COCOeval_opt if self._use_fast_impl else COCOeval,
            "kpt_oks_sigmas": self._kpt_oks_sigmas,
            "max_dets_per_image": self._max_dets_per_image,
            "img_ids": img_ids,
        }
        class_names = self._metadata.get("thing_classes")
        for task in sorted(tasks):
            # pycocotools cannot load an empty result list; the metrics of such a task come out NaN.
            coco_eval = (
                _evaluate_predictions_on_coco(self._coco_api, coco_results, task, **eval_options)
                if coco_results
                else None
            )
            self._results[task] = self._derive_coco_results(coco_eval, task, class_names=class_names)

    def _eval_box_proposals(self, predictions: list[dict[str, Any]]) -> None:
        """Average recall of ``proposals`` at 100 and 1000 proposals per image, per area range."""
        res = box_proposal_results(predictions, self._coco_api if self._do_evaluation else None, self._save_output,
                                   self._logger)
        if res is not None:
            self._results["box_proposals"] = res

    def _derive_coco_results(
        self, coco_eval: Any | None, iou_type: str, class_names: Sequence[str] | None = None
    ) -> dict[str, float]:
        """The standard metrics of a summarised ``coco_eval`` (``None``: no predictions) in percent, plus
        ``AP-<class>`` per category when there is more than one class."""
        metrics = _METRICS[iou_type]
        if coco_eval is None:
            self._logger.warning("No predictions from the model!")
            return {metric: float("nan") for metric in metrics}

        # COCOeval reports -1 for metrics without ground truth
        results = {
            metric: float(coco_eval.stats[idx] * 100) if coco_eval.stats[idx] >= 0 else float("nan")
            for idx, metric in enumerate(metrics)
        }
        self._logger.info("Evaluation results for %s: \n%s", iou_type, create_small_table(results))
        if not np.isfinite(sum(results.values())):
            self._logger.info("Some metrics cannot be computed and is shown as NaN.")

        if class_names is None or len(class_names) <= 1:
            return results
        precisions = coco_eval.eval["precision"]  # (iou, recall, class, area range, max dets)
        if len(class_names) != precisions.shape[2]:
            raise ValueError(
                f"metadata.thing_classes has {len(class_names)} classes but the COCO annotations have "
                f"{precisions.shape[2]} categories"
            )
        # area range 0 = all, max dets -1 = the AP limit (100 by default)
        per_class = precisions[:, :, :, 0, -1]
        results_per_category = []
        for idx, name in enumerate(class_names):
            precision = per_class[:, :, idx]
            precision = precision[precision > -1]
            ap = float(np.mean(precision)) if precision.size else float("nan")
            results_per_category.append((f"{name}", ap * 100))

        n_cols = min(6, len(results_per_category) * 2)
        flat = list(itertools.chain(*results_per_category))
        rows = itertools.zip_longest(*[flat[i::n_cols] for i in range(n_cols)])
        table = tabulate(rows, tablefmt="pipe", floatfmt=".3f", headers=["category", "AP"] * (n_cols // 2),
                         numalign="left")
        self._logger.info("Per-category %s AP: \n%s", iou_type, table)
        results.update({"AP-" + name: ap for name, ap in results_per_category})
        return results


def _read_json(path: str | os.PathLike) -> dict[str, Any]:
    with PathManager.open(PathManager.get_local_path(path), "r") as f:
        data = json.load(f)
    if not isinstance(data, dict) or "images" not in data:
        raise ValueError(f"{path} is not a COCO annotation file (a json object with 'images')")
    return data


def _sigmas_from_cfg(cfg: Any) -> tuple[float, ...]:
    """``TEST.KEYPOINT_OKS_SIGMAS`` (detectron2 config) or ``test.keypoint_oks_sigmas`` (ours), else ()."""
    for outer, inner in (("TEST", "KEYPOINT_OKS_SIGMAS"), ("test", "keypoint_oks_sigmas")):
        node = getattr(cfg, outer, None)
        value = getattr(node, inner, None) if node is not None else None
        if value is not None:
            return tuple(float(s) for s in value)
    return ()


def _unmap_category_ids(coco_results: list[dict[str, Any]], dataset_id_to_contiguous_id: dict[int, int]
                        ) -> list[dict[str, Any]]:
    """Copies of ``coco_results`` with the model's contiguous class ids (0..C-1) mapped back to the dataset's
    category ids (the stored predictions stay untouched, so ``evaluate()`` can run twice)."""
    contiguous = list(dataset_id_to_contiguous_id.values())
    num_classes = len(contiguous)
    if sorted(contiguous) != list(range(num_classes)):
        raise ValueError("thing_dataset_id_to_contiguous_id must map onto 0..num_classes-1, got values "
                         f"{sorted(contiguous)}")
    reverse = {v: k for k, v in dataset_id_to_contiguous_id.items()}
    out = []
    for result in coco_results:
        category_id = result["category_id"]
        if category_id not in reverse:
            raise ValueError(f"A prediction has class={category_id}, but the dataset only has {num_classes} "
                             f"classes and predicted class id should be in [0, {num_classes - 1}].")
        out.append({**result, "category_id": reverse[category_id]})
    return out


def instances_to_coco_json(instances: Instances, img_id: int) -> list[dict[str, Any]]:
    """COCO result dicts of one image's predictions.

    ``instances`` (on CPU): ``pred_boxes`` (N, 4) XYXY_ABS, ``scores`` (N,), ``pred_classes`` (N,) contiguous
    ids, optionally ``pred_masks`` (N, H, W) bool/uint8 (or ``BitMasks``) and ``pred_keypoints`` (N, K, 3) with
    (x, y, score). Boxes become XYWH, masks RLE with str ``counts``, keypoints COCO's pixel-index convention
    (x, y shifted by -0.5). ``instances`` is not modified.
    """
    num_instance = len(instances)
    if num_instance == 0:
        return []

    boxes = BoxMode.convert(instances.pred_boxes.tensor.numpy(), BoxMode.XYXY_ABS, BoxMode.XYWH_ABS).tolist()
    scores = instances.scores.tolist()
    classes = instances.pred_classes.tolist()

    rles = None
    if instances.has("pred_masks"):
        masks = instances.pred_masks
        masks = masks.tensor if hasattr(masks, "tensor") else masks
        masks = torch.as_tensor(masks).to(torch.uint8).numpy()  # d2-parity: uint8 cast truncates soft masks
        # one pycocotools call for all masks: it wants (H, W, N) in Fortran order
        rles = mask_util.encode(np.asfortranarray(masks.transpose(1, 2, 0)))
        for rle in rles:
            # bytes are not json-serialisable; the RLE alphabet is ASCII
            rle["counts"] = rle["counts"].decode("utf-8")

    keypoints = None
    if instances.has("pred_keypoints"):
        kpts = torch.as_tensor(instances.pred_keypoints).clone()
        # predictions use continuous coordinates, COCO annotations pixel indices: undo the +0.5 of data loading
        kpts[:, :, :2] -= 0.5
        keypoints = kpts.reshape(num_instance, -1).tolist()

    results = []
    for k in range(num_instance):
        result: dict[str, Any] = {
            "image_id": img_id,
            "category_id": classes[k],
            "bbox": boxes[k],
            "score": scores[k],
        }
        if rles is not None:
            result["segmentation"] = rles[k]
        if keypoints is not None:
            result["keypoints"] = keypoints[k]
        results.append(result)
    return results


def is_config_argument(tasks: Any) -> bool:
    """Whether a ``tasks`` argument is in fact a config (detectron2's deprecated ``Evaluator(name, cfg, ...)``)."""
    return tasks is not None and (isinstance(tasks, Mapping) or not isinstance(tasks, Iterable))


def parse_tasks(
    tasks: Any, owner: str, known: Sequence[str], log: logging.Logger, hint: str = "tasks"
) -> tuple[str, ...] | None:
    """An evaluator's ``tasks`` argument as a tuple (``None``: infer them from the predictions); a config in its
    place (the deprecated call) is warned about and means ``None``; unknown tasks are an error."""
    if is_config_argument(tasks):
        log.warning("%s instantiated with a config; this is deprecated. Pass %s explicitly instead.", owner, hint)
        return None
    if tasks is None:
        return None
    tasks = (tasks,) if isinstance(tasks, str) else tuple(tasks)
    unknown = [t for t in tasks if t not in known]
    if unknown:
        raise ValueError(f"{owner}: unknown tasks {unknown}; expected a subset of {tuple(known)}")
    return tasks


def save_output(
    output_dir: str | None, file_name: str, write: Callable[[Any], Any], log: logging.Logger, binary: bool = True
) -> None:
    """``write(f)`` into ``output_dir/file_name`` (created as needed); nothing without an output_dir."""
    if not output_dir:
        return
    PathManager.mkdirs(output_dir)
    path = os.path.join(output_dir, file_name)
    log.info("Saving results to %s", path)
    with PathManager.open(path, "wb" if binary else "w") as f:
        write(f)


def box_proposal_results(
    predictions: list[dict[str, Any]],
    annotations: Any | None,
    save_output: Callable[[str, Callable[[Any], Any]], None],
    log: logging.Logger,
) -> dict[str, float] | None:
    """Save the ``proposals`` of ``predictions`` (``box_proposals.pkl``, XYXY_ABS) and, when ``annotations`` (a
    COCO-API-like ground truth) are given, return their average recall at 100 and 1000 proposals per image for each
    area range (``AR@100``, ``ARs@1000``, ...). Shared by the COCO and LVIS evaluators."""
    proposal_data = {
        "boxes": [p["proposals"].proposal_boxes.tensor.numpy() for p in predictions],
        "objectness_logits": [p["proposals"].objectness_logits.numpy() for p in predictions],
        "ids": [p["image_id"] for p in predictions],
        "bbox_mode": BoxMode.XYXY_ABS.value,
    }
    save_output("box_proposals.pkl", lambda f: pickle.dump(proposal_data, f))
    if annotations is None:
        log.info("Annotations are not available for evaluation.")
        return None
    log.info("Evaluating bbox proposals ...")
    res: dict[str, float] = {}
    for limit in (100, 1000):
        for area, suffix in (("all", ""), ("small", "s"), ("medium", "m"), ("large", "l")):
            stats = _evaluate_box_proposals(predictions, annotations, area=area, limit=limit)
            res[f"AR{suffix}@{limit:d}"] = float(stats["ar"].item() * 100)
    log.info("Proposal metrics: \n%s", create_small_table(res))
    return res


def _evaluate_box_proposals(
    dataset_predictions: list[dict[str, Any]],
    coco_api: Any,
    thresholds: torch.Tensor | None = None,
    area: str = "all",
    limit: int | None = None,
) -> dict[str, Any]:
    """Proposal recall as in Detectron: each non-crowd gt box is greedily assigned its best remaining proposal
    (highest IoU pair first); recall is averaged over IoU thresholds 0.5:0.05:0.95. Faster than, and slightly
    different from, COCO's official AR."""
    area_ranges = {
        "all": (0**2, 1e5**2),
        "small": (0**2, 32**2),
        "medium": (32**2, 96**2),
        "large": (96**2, 1e5**2),
        "96-128": (96**2, 128**2),
        "128-256": (128**2, 256**2),
        "256-512": (256**2, 512**2),
        "512-inf": (512**2, 1e5**2),
    }
    if area not in area_ranges:
        raise ValueError(f"Unknown area range: {area!r}; expected one of {list(area_ranges)}")
    area_range = area_ranges[area]
    gt_overlaps = []
    num_pos = 0

    for prediction_dict in dataset_predictions:
        predictions = prediction_dict["proposals"]
        inds = predictions.objectness_logits.sort(descending=True)[1]
        predictions = predictions[inds]

        anno = coco_api.loadAnns(coco_api.getAnnIds(imgIds=prediction_dict["image_id"]))
        non_crowd = [obj for obj in anno if obj["iscrowd"] == 0]
        gt_boxes = torch.as_tensor([obj["bbox"] for obj in non_crowd], dtype=torch.float32).reshape(-1, 4)
        gt_boxes = Boxes(BoxMode.convert(gt_boxes, BoxMode.XYWH_ABS, BoxMode.XYXY_ABS))
        gt_areas = torch.as_tensor([obj["area"] for obj in non_crowd], dtype=torch.float32)

        if len(gt_boxes) == 0 or len(predictions) == 0:
            continue

        valid_gt = (gt_areas >= area_range[0]) & (gt_areas <= area_range[1])
        gt_boxes = gt_boxes[valid_gt]
        num_pos += len(gt_boxes)
        if len(gt_boxes) == 0:
            continue

        if limit is not None and len(predictions) > limit:
            predictions = predictions[:limit]

        overlaps = pairwise_iou(predictions.proposal_boxes, gt_boxes)  # (P, G)
        covered = torch.zeros(len(gt_boxes))
        for j in range(min(len(predictions), len(gt_boxes))):
            # the best-covered remaining gt box and the proposal covering it are both taken out
            max_overlaps, argmax_overlaps = overlaps.max(dim=0)
            gt_ovr, gt_ind = max_overlaps.max(dim=0)
            box_ind = argmax_overlaps[gt_ind]
            covered[j] = overlaps[box_ind, gt_ind]
            overlaps[box_ind, :] = -1
            overlaps[:, gt_ind] = -1
        gt_overlaps.append(covered)

    all_overlaps = torch.cat(gt_overlaps, dim=0) if gt_overlaps else torch.zeros(0, dtype=torch.float32)
    all_overlaps, _ = torch.sort(all_overlaps)

    if thresholds is None:
        thresholds = torch.arange(0.5, 0.95 + 1e-5, 0.05, dtype=torch.float32)
    recalls = (all_overlaps[None, :] >= thresholds[:, None]).float().sum(dim=1) / float(num_pos)
    return {
        "ar": recalls.mean(),
        "recalls": recalls,
        "thresholds": thresholds,
        "gt_overlaps": all_overlaps,
        "num_pos": num_pos,
    }
