"""LVIS evaluation (box / mask AP with LVIS's federated protocol, proposal AR) on the ``lvis`` package's LVISEval.

The ``lvis`` package is optional: it is imported when an ``LVISEvaluator`` is built (``pip install lvis``).
"""
from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import torch

from ..data.catalog import MetadataCatalog
from ..utils import comm
from ..utils.file_io import PathManager
from ..utils.logger import create_small_table
from .coco_evaluation import box_proposal_results, instances_to_coco_json, parse_tasks, save_output
from .evaluator import DatasetEvaluator

__all__ = ["LVISEvaluator"]

logger = logging.getLogger(__name__)

_TASKS = ("bbox", "segm")
_METRICS = ["AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf"]
# LVIS's official limit of detections per image
_LVIS_MAX_DETS = 300


def _import_lvis() -> Any:
    try:
        import lvis
    except ImportError as e:
        raise ImportError(
            "LVISEvaluator needs the 'lvis' package (LVIS's evaluation API): pip install lvis"
        ) from e
    return lvis


@contextlib.contextmanager
def _lvis_numpy_compat() -> Iterator[None]:
    """lvis 0.5.3, the latest release, uses ``np.float``, which numpy 1.24 removed; alias it while LVISEval runs
    (and only then)."""
    added = "float" not in np.__dict__
    if added:
        np.float = float  # type: ignore[attr-defined]
    try:
        yield
    finally:
        if added:
            del np.float  # type: ignore[attr-defined]


def _lvis_api_from_json(json_file: str) -> Any:
    """An ``lvis.LVIS`` over ``json_file``; a json without ``annotations`` (the test splits' image info) gets an
    empty list, which LVIS's index needs."""
    lvis = _import_lvis()
    if not PathManager.exists(json_file):
        raise FileNotFoundError(f"LVIS annotation file not found: {json_file}")
    with PathManager.open(json_file, "r") as f:
        dataset = json.load(f)
    if not isinstance(dataset, dict) or "images" not in dataset:
        raise ValueError(f"{json_file}: an LVIS json must be an object with 'images'")
    dataset.setdefault("annotations", [])
    dataset.setdefault("categories", [])
    # lvis.LVIS() only takes a path and requires "annotations"; index the patched dict with its own method
    api = lvis.LVIS.__new__(lvis.LVIS)
    api.logger = logging.getLogger("lvis.lvis")
    api.dataset = dataset
    api._create_index()
    return api


class _CocoStyleAnnotations:
    """The two COCO-API lookups the proposal recall uses, answered from an LVIS api (LVIS has no crowd boxes)."""

    def __init__(self, lvis_api: Any) -> None:
        self._api = lvis_api

    def getAnnIds(self, imgIds: Any) -> list[int]:  # noqa: N802, N803 (COCO API names)
        return self._api.get_ann_ids(img_ids=[imgIds])

    def loadAnns(self, ids: list[int]) -> list[dict[str, Any]]:  # noqa: N802 (COCO API name)
        return [{"iscrowd": 0, **ann} for ann in self._api.load_anns(ids)]


class LVISEvaluator(DatasetEvaluator):
    """Box / mask AP (AP, AP50, AP75, APs/m/l and APr/c/f over rare / common / frequent categories) with LVIS's
    evaluation API, and proposal AR, for a dataset whose metadata has an LVIS-format ``json_file``.

    Args:
        dataset_name: a registered dataset with metadata ``json_file`` (e.g. ``lvis_v1_val``).
        tasks: subset of ``("bbox", "segm")``; ``None`` infers them from the predictions.
        distributed: gather the predictions of all ranks and evaluate on rank 0 (other ranks return ``{}``).
        output_dir: where to write ``instances_predictions.pth`` and ``lvis_instances_results.json``.
        max_dets_per_image: detections per image kept for AP (highest scores first); ``None``: LVIS's 300.
    """

    def __init__(
        self,
        dataset_name: str,
        tasks: Iterable[str] | Any | None = None,
        distributed: bool = True,
        output_dir: str | os.PathLike | None = None,
        *,
        max_dets_per_image: int | None = None,
    ) -> None:
        self._logger = logging.getLogger(__name__)
        self._tasks = parse_tasks(tasks, "LVISEvaluator", _TASKS, self._logger)
        if max_dets_per_image is not None and int(max_dets_per_image) < 1:
            raise ValueError(f"max_dets_per_image must be a positive int, got {max_dets_per_image!r}")
        self._max_dets_per_image = _LVIS_MAX_DETS if max_dets_per_image is None else int(max_dets_per_image)
        self._distributed = distributed
        self._output_dir = os.fspath(output_dir) if output_dir is not None else None
        self._cpu_device = torch.device("cpu")

        self._metadata = MetadataCatalog.get(dataset_name)
        json_file = self._metadata.get("json_file")
        if json_file is None:
            raise ValueError(
                f"LVISEvaluator: dataset '{dataset_name}' has no 'json_file' in its metadata; register it with "
                "register_lvis_instances(name, metadata, json_file, image_root)."
            )
        self._lvis_api = _lvis_api_from_json(json_file)
        # test-split jsons carry no annotations (they are scored by the LVIS server)
        self._do_evaluation = len(self._lvis_api.get_ann_ids()) > 0
        self.reset()

    def reset(self) -> None:
        self._predictions: list[dict[str, Any]] = []

    def process(self, inputs: list[dict[str, Any]], outputs: list[dict[str, Any]]) -> None:
        """``inputs``: dicts with ``"image_id"``; ``outputs``: dicts with ``"instances"`` (``pred_boxes``,
        ``scores``, ``pred_classes``, optional ``pred_masks`` (N, H, W)) and/or ``"proposals"``."""
        for input, output in zip(inputs, outputs):
            prediction: dict[str, Any] = {"image_id": input["image_id"]}
            if "instances" in output:
                instances = output["instances"].to(self._cpu_device)
                prediction["instances"] = instances_to_coco_json(instances, input["image_id"])
            if "proposals" in output:
                prediction["proposals"] = output["proposals"].to(self._cpu_device)
            self._predictions.append(prediction)

    def evaluate(self) -> dict[str, dict[str, float]]:
        """``{task: {metric: score}}`` in percent; NaN where LVIS cannot compute a metric (no predictions, or no
        ground truth in that group, e.g. APr without rare categories)."""
        if self._distributed:
            comm.synchronize()
            per_rank = comm.gather(self._predictions, dst=0)
            if not comm.is_main_process():
                return {}
            predictions = [pred for rank_preds in per_rank for pred in rank_preds]
        else:
            predictions = self._predictions
        if not predictions:
            self._logger.warning("[LVISEvaluator] Did not receive valid predictions.")
            return {}
        self._save_output("instances_predictions.pth", lambda f: torch.save(predictions, f))

        self._results: OrderedDict[str, dict[str, float]] = OrderedDict()
        if "proposals" in predictions[0]:
            self._eval_box_proposals(predictions)
        if "instances" in predictions[0]:
            self._eval_predictions(predictions)
        return copy.deepcopy(self._results)

    def _save_output(self, file_name: str, write: Callable[[Any], Any], binary: bool = True) -> None:
        save_output(self._output_dir, file_name, write, self._logger, binary)

    def _eval_predictions(self, predictions: list[dict[str, Any]]) -> None:
        self._logger.info("Preparing results in the LVIS format ...")
        lvis_results = [ann for pred in predictions for ann in pred["instances"]]
        tasks = self._tasks or (("bbox", "segm") if any("segmentation" in r for r in lvis_results) else ("bbox",))
        id_map = self._metadata.get("thing_dataset_id_to_contiguous_id")
        if id_map is not None:  # e.g. the cocofied splits, or a json whose ids are not 1..N
            reverse = {v: k for k, v in id_map.items()}
            lvis_results = [{**r, "category_id": reverse[r["category_id"]]} for r in lvis_results]
        else:  # LVIS category ids are 1..N
            lvis_results = [{**r, "category_id": r["category_id"] + 1} for r in lvis_results]
        self._save_output("lvis_instances_results.json", lambda f: f.write(json.dumps(lvis_results)), binary=False)
        if not self._do_evaluation:
            self._logger.info("Annotations are not available for evaluation.")
            return
        self._logger.info("Evaluating predictions ...")
        for task in sorted(tasks):
            self._results[task] = _evaluate_predictions_on_lvis(
                self._lvis_api, lvis_results, task, max_dets_per_image=self._max_dets_per_image
            )

    def _eval_box_proposals(self, predictions: list[dict[str, Any]]) -> None:
        """Average recall of ``proposals`` at 100 and 1000 proposals per image, per area range."""
        annotations = _CocoStyleAnnotations(self._lvis_api) if self._do_evaluation else None
        res = box_proposal_results(predictions, annotations, self._save_output, self._logger)
        if res is not None:
            self._results["box_proposals"] = res


def _evaluate_predictions_on_lvis(
    lvis_gt: Any, lvis_results: list[dict[str, Any]], iou_type: str, max_dets_per_image: int = _LVIS_MAX_DETS
) -> dict[str, float]:
    """LVISEval's AP metrics (in percent) of ``lvis_results`` (LVIS category ids) for ``iou_type``."""
    if not lvis_results:
        logger.warning("No predictions from the model!")
        return {metric: float("nan") for metric in _METRICS}
    # LVISResults writes into the result dicts: give it its own copies
    lvis_results = copy.deepcopy(lvis_results)
    if iou_type == "segm":
        # with a "bbox" present, LVIS sizes instances by their box; mask AP should use the mask area
        for result in lvis_results:
            result.pop("bbox", None)

    lvis = _import_lvis()
    logger.info("Evaluating %s with at most %d detections per image", iou_type, max_dets_per_image)
    with _lvis_numpy_compat():
        results = lvis.LVISResults(lvis_gt, lvis_results, max_dets=max_dets_per_image)
        lvis_eval = lvis.LVISEval(lvis_gt, results, iou_type)
        lvis_eval.run()
    raw = lvis_eval.get_results()
    # LVIS reports -1 for a metric without ground truth (e.g. no rare category in the split)
    metrics = {m: float(raw[m] * 100) if raw[m] >= 0 else float("nan") for m in _METRICS}
    logger.info("Evaluation results for %s: \n%s", iou_type, create_small_table(metrics))
    return metrics
