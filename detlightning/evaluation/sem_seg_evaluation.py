"""Semantic segmentation metrics (detectron2's ``SemSegEvaluator``): mIoU, fwIoU, mACC, pACC and per-class IoU /
accuracy, in percent, from a confusion matrix accumulated over the dataset."""
from __future__ import annotations

import itertools
import json
import logging
import os
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np
import pycocotools.mask as mask_util
import torch
from PIL import Image

from ..data.catalog import DatasetCatalog, MetadataCatalog
from ..utils.comm import all_gather, is_main_process, synchronize
from ..utils.file_io import PathManager
from .evaluator import DatasetEvaluator

__all__ = ["SemSegEvaluator", "load_image_into_numpy_array"]


def load_image_into_numpy_array(filename: str, copy: bool = False, dtype: np.dtype | str | None = None
                                ) -> np.ndarray:
    """The image file ``filename`` as an array (``(H, W)`` for label maps), cast to ``dtype`` if given."""
    with PathManager.open(filename, "rb") as f, Image.open(f) as img:
        arr = np.asarray(img, dtype=dtype)
    return arr.copy() if copy else arr


class SemSegEvaluator(DatasetEvaluator):
    """Semantic segmentation metrics.

    The dataset's metadata provides ``stuff_classes`` (the class names; their number is C), ``ignore_label``
    and optionally ``stuff_dataset_id_to_contiguous_id`` (used to write predictions with dataset ids). Ground
    truth comes from each dataset dict's ``sem_seg_file_name`` (looked up by ``file_name``).

    Args:
        dataset_name: registered dataset.
        distributed: sum the confusion matrices of all ranks; only rank 0 returns results.
        output_dir: where to write ``sem_seg_predictions.json`` (RLE per predicted class) and
            ``sem_seg_evaluation.pth``.
        sem_seg_loading_fn: ``fn(filename, dtype=int) -> (H, W) array`` reading a ground-truth label map.
        num_classes, ignore_label: deprecated overrides of the metadata (``num_classes`` must agree with it).
    """

    def __init__(
        self,
        dataset_name: str,
        distributed: bool = True,
        output_dir: str | os.PathLike | None = None,
        *,
        sem_seg_loading_fn: Callable[..., np.ndarray] = load_image_into_numpy_array,
        num_classes: int | None = None,
        ignore_label: int | None = None,
    ) -> None:
        self._logger = logging.getLogger(__name__)
        if num_classes is not None:
            self._logger.warning("SemSegEvaluator(num_classes) is deprecated! It should be obtained from metadata.")
        if ignore_label is not None:
            self._logger.warning("SemSegEvaluator(ignore_label) is deprecated! It should be obtained from metadata.")
        self._dataset_name = dataset_name
        self._distributed = distributed
        self._output_dir = os.fspath(output_dir) if output_dir is not None else None
        self._cpu_device = torch.device("cpu")

        self.input_file_to_gt_file = {
            record["file_name"]: record["sem_seg_file_name"]
            for record in DatasetCatalog.get(dataset_name)
            if "sem_seg_file_name" in record
        }

        meta = MetadataCatalog.get(dataset_name)
        c2d = meta.get("stuff_dataset_id_to_contiguous_id")
        self._contiguous_id_to_dataset_id = {v: k for k, v in c2d.items()} if c2d is not None else None
        class_names = meta.get("stuff_classes")
        if class_names is None:
            raise KeyError(f"SemSegEvaluator: metadata of '{dataset_name}' has no 'stuff_classes'")
        self._class_names: list[str] = list(class_names)
        self.sem_seg_loading_fn = sem_seg_loading_fn
        self._num_classes = len(self._class_names)
        if num_classes is not None and num_classes != self._num_classes:
            raise ValueError(f"SemSegEvaluator: num_classes={num_classes} but metadata of '{dataset_name}' has "
                             f"{self._num_classes} stuff_classes")
        self._ignore_label = ignore_label if ignore_label is not None else meta.get("ignore_label")
        if self._ignore_label is None:
            raise KeyError(f"SemSegEvaluator: metadata of '{dataset_name}' has no 'ignore_label' and none was given")
        self.reset()

    def reset(self) -> None:
        # rows: prediction, columns: ground truth; the extra last column collects ignored gt pixels
        self._conf_matrix = np.zeros((self._num_classes + 1, self._num_classes + 1), dtype=np.int64)
        self._predictions: list[dict[str, Any]] = []

    def _gt_file(self, input: dict[str, Any]) -> str:
        gt = self.input_file_to_gt_file.get(input["file_name"], input.get("sem_seg_file_name"))
        if gt is None:
            raise KeyError(f"SemSegEvaluator: no ground truth (sem_seg_file_name) for {input['file_name']!r} in "
                           f"dataset '{self._dataset_name}'")
        return gt

    def process(self, inputs: list[dict[str, Any]], outputs: list[Any]) -> None:
        """``outputs``: dicts with ``"sem_seg"``: (C, H, W) scores (argmax over C is the prediction)."""
        for input, output in zip(inputs, outputs):
            scores = output["sem_seg"] if isinstance(output, dict) else output
            pred = scores.argmax(dim=0).to(self._cpu_device).numpy().astype(np.int64)
            gt = np.asarray(self.sem_seg_loading_fn(self._gt_file(input), dtype=int)).astype(np.int64)
            if gt.shape != pred.shape:
                raise ValueError(f"SemSegEvaluator: prediction of {input['file_name']!r} has shape {pred.shape}, "
                                 f"its ground truth {gt.shape}")
            gt = gt.copy()
            gt[gt == self._ignore_label] = self._num_classes
            if gt.min() < 0 or gt.max() > self._num_classes:
                raise ValueError(f"SemSegEvaluator: ground truth of {input['file_name']!r} has labels outside "
                                 f"[0, {self._num_classes}) other than ignore_label={self._ignore_label}")

            self._conf_matrix += np.bincount(
                (self._num_classes + 1) * pred.reshape(-1) + gt.reshape(-1),
                minlength=self._conf_matrix.size,
            ).reshape(self._conf_matrix.shape)

            self._predictions.extend(self.encode_json_sem_seg(pred, input["file_name"]))

    def evaluate(self) -> OrderedDict[str, dict[str, float]] | None:
        """``{"sem_seg": {"mIoU", "fwIoU", "IoU-<class>"..., "mACC", "pACC", "ACC-<class>"...}}`` in percent;
        per-class values are NaN for classes absent from the ground truth. ``None`` on non-main ranks."""
        if self._distributed:
            synchronize()
            conf_matrix_list = all_gather(self._conf_matrix)
            predictions = list(itertools.chain(*all_gather(self._predictions)))
            if not is_main_process():
                return None
            conf_matrix = np.sum(np.stack(conf_matrix_list), axis=0)
        else:
            conf_matrix, predictions = self._conf_matrix, self._predictions

        if self._output_dir:
            PathManager.mkdirs(self._output_dir)
            with PathManager.open(os.path.join(self._output_dir, "sem_seg_predictions.json"), "w") as f:
                f.write(json.dumps(predictions))

        res = _sem_seg_metrics(conf_matrix, self._class_names)

        if self._output_dir:
            with PathManager.open(os.path.join(self._output_dir, "sem_seg_evaluation.pth"), "wb") as f:
                torch.save(res, f)
        results = OrderedDict({"sem_seg": res})
        self._logger.info(results)
        return results

    def encode_json_sem_seg(self, sem_seg: np.ndarray, input_file_name: str) -> list[dict[str, Any]]:
        """One COCO-style result per predicted class of ``sem_seg`` (H, W): ``file_name``, ``category_id``
        (dataset id) and the class's RLE ``segmentation``."""
        json_list = []
        for label in np.unique(sem_seg):
            if self._contiguous_id_to_dataset_id is not None:
                if label not in self._contiguous_id_to_dataset_id:
                    raise ValueError(f"Label {label} is not part of stuff_dataset_id_to_contiguous_id of "
                                     f"'{self._dataset_name}'")
                dataset_id = self._contiguous_id_to_dataset_id[label]
            else:
                dataset_id = int(label)
            mask = np.asfortranarray((sem_seg == label).astype(np.uint8)[:, :, None])
            rle = mask_util.encode(mask)[0]
            rle["counts"] = rle["counts"].decode("utf-8")
            json_list.append({"file_name": input_file_name, "category_id": dataset_id, "segmentation": rle})
        return json_list


def _sem_seg_metrics(conf_matrix: np.ndarray, class_names: list[str]) -> dict[str, float]:
    """Metrics of a (C+1, C+1) confusion matrix (rows: prediction, columns: gt, last column: ignored gt)."""
    num_classes = len(class_names)
    acc = np.full(num_classes, np.nan, dtype=float)
    iou = np.full(num_classes, np.nan, dtype=float)
    tp = conf_matrix.diagonal()[:-1].astype(float)
    pos_gt = np.sum(conf_matrix[:-1, :-1], axis=0).astype(float)
    pos_pred = np.sum(conf_matrix[:-1, :-1], axis=1).astype(float)
    total_gt = np.sum(pos_gt)
    class_weights = pos_gt / total_gt if total_gt > 0 else np.zeros_like(pos_gt)
    # d2-parity: classes absent from the ground truth have no accuracy and no IoU (NaN) and do not count in the
    # means, even when they are predicted
    acc_valid = pos_gt > 0
    acc[acc_valid] = tp[acc_valid] / pos_gt[acc_valid]
    union = pos_gt + pos_pred - tp
    iou_valid = np.logical_and(acc_valid, union > 0)
    iou[iou_valid] = tp[iou_valid] / union[iou_valid]
    with np.errstate(invalid="ignore", divide="ignore"):
        macc = np.sum(acc[acc_valid]) / np.sum(acc_valid)
        miou = np.sum(iou[iou_valid]) / np.sum(iou_valid)
        pacc = np.sum(tp) / total_gt
    fiou = np.sum(iou[iou_valid] * class_weights[iou_valid])

    res: dict[str, float] = {"mIoU": float(100 * miou), "fwIoU": float(100 * fiou)}
    for i, name in enumerate(class_names):
        res[f"IoU-{name}"] = float(100 * iou[i])
    res["mACC"] = float(100 * macc)
    res["pACC"] = float(100 * pacc)
    for i, name in enumerate(class_names):
        res[f"ACC-{name}"] = float(100 * acc[i])
    return res
