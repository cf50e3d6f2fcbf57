"""COCO panoptic evaluation (detectron2's ``COCOPanopticEvaluator``): PQ / SQ / RQ over all, thing and stuff
categories, computed by ``panoptic_quality`` (the COCO panoptic API's algorithm, no ``panopticapi`` needed)."""
from __future__ import annotations

import io
import itertools
import json
import logging
import os
from collections import OrderedDict
from typing import Any

import numpy as np
from PIL import Image
from tabulate import tabulate

from ..data.catalog import MetadataCatalog
from ..utils import comm
from ..utils.file_io import PathManager
from .evaluator import DatasetEvaluator
from .panoptic_quality import _match_annotations, _read_png_ids, id2rgb, pq_compute_multi_image, rgb2id

__all__ = ["COCOPanopticEvaluator"]

logger = logging.getLogger(__name__)


class COCOPanopticEvaluator(DatasetEvaluator):
    """Panoptic Quality on a COCO-panoptic-format dataset.

    The metadata provides ``panoptic_json`` and ``panoptic_root`` (ground truth), and
    ``thing_dataset_id_to_contiguous_id`` / ``stuff_dataset_id_to_contiguous_id`` (to map predicted contiguous
    ids back to dataset ids). Predictions are kept as PNG bytes; ``evaluate`` gathers them on rank 0 (it contains a
    synchronisation: call it on every rank). With ``output_dir``, ``predictions.json`` is written there.
    """

    def __init__(self, dataset_name: str, output_dir: str | os.PathLike | None = None) -> None:
        self._metadata = MetadataCatalog.get(dataset_name)
        self._dataset_name = dataset_name
        thing_map = self._metadata.get("thing_dataset_id_to_contiguous_id") or {}
        stuff_map = self._metadata.get("stuff_dataset_id_to_contiguous_id") or {}
        self._thing_contiguous_id_to_dataset_id = {v: k for k, v in thing_map.items()}
        self._stuff_contiguous_id_to_dataset_id = {v: k for k, v in stuff_map.items()}
        self._output_dir = os.fspath(output_dir) if output_dir is not None else None
        if self._output_dir is not None:
            PathManager.mkdirs(self._output_dir)
        self.reset()

    def reset(self) -> None:
        self._predictions: list[dict[str, Any]] = []

    def _convert_category_id(self, segment_info: dict[str, Any]) -> dict[str, Any]:
        segment_info = dict(segment_info)  # the model's own dicts stay untouched
        isthing = segment_info.pop("isthing", None)
        if isthing is None:
            return segment_info  # the model already predicts dataset category ids
        mapping = self._thing_contiguous_id_to_dataset_id if isthing else self._stuff_contiguous_id_to_dataset_id
        try:
            segment_info["category_id"] = mapping[segment_info["category_id"]]
        except KeyError as e:
            kind = "thing" if isthing else "stuff"
            raise KeyError(f"COCOPanopticEvaluator: predicted {kind} class {segment_info['category_id']} is not in "
                           f"{kind}_dataset_id_to_contiguous_id of '{self._dataset_name}'") from e
        return segment_info

    def process(self, inputs: list[dict[str, Any]], outputs: list[dict[str, Any]]) -> None:
        """``outputs``: dicts with ``"panoptic_seg": (ids (H, W) int tensor, segments_info)``.

        ``segments_info`` is a list of ``{"id", "category_id" (contiguous), "isthing"}`` for the ids of the map
        (0 = VOID), or ``None`` when the map holds ``category_id * label_divisor + instance_id`` with -1 = VOID
        (``label_divisor`` from the metadata).
        """
        for input, output in zip(inputs, outputs):
            panoptic_img, segments_info = output["panoptic_seg"]
            panoptic_img = np.asarray(panoptic_img.cpu().numpy() if hasattr(panoptic_img, "cpu") else panoptic_img)
            panoptic_img = panoptic_img.astype(np.int64)
            if segments_info is None:
                # the official evaluation uses 0 for VOID: shift every label by one so that -1 becomes 0
                label_divisor = self._metadata.label_divisor
                segments_info = []
                for panoptic_label in np.unique(panoptic_img).tolist():
                    if panoptic_label == -1:
                        continue
                    pred_class = panoptic_label // label_divisor
                    isthing = pred_class in self._thing_contiguous_id_to_dataset_id
                    segments_info.append({"id": panoptic_label + 1, "category_id": pred_class, "isthing": isthing})
                panoptic_img = panoptic_img + 1

            file_name = os.path.basename(input["file_name"])
            file_name_png = os.path.splitext(file_name)[0] + ".png"
            with io.BytesIO() as out:
                Image.fromarray(id2rgb(panoptic_img)).save(out, format="PNG")
                png_string = out.getvalue()
            self._predictions.append({
                "image_id": input["image_id"],
                "file_name": file_name_png,
                "png_string": png_string,
                "segments_info": [self._convert_category_id(x) for x in segments_info],
            })

    def evaluate(self) -> OrderedDict[str, dict[str, float]] | None:
        """``{"panoptic_seg": {"PQ", "SQ", "RQ", "PQ_th", "SQ_th", "RQ_th", "PQ_st", "SQ_st", "RQ_st"}}`` in
        percent on rank 0, ``None`` elsewhere."""
        comm.synchronize()
        predictions = list(itertools.chain(*comm.gather(self._predictions)))
        if not comm.is_main_process():
            return None

        gt_json_file = PathManager.get_local_path(self._metadata.panoptic_json)
        gt_folder = PathManager.get_local_path(self._metadata.panoptic_root)
        with open(gt_json_file) as f:
            gt_json = json.load(f)

        annotations = [{k: v for k, v in p.items() if k != "png_string"} for p in predictions]
        if self._output_dir:
            pred_json = dict(gt_json)
            pred_json["annotations"] = annotations
            with PathManager.open(os.path.join(self._output_dir, "predictions.json"), "w") as f:
                f.write(json.dumps(pred_json))

        pngs = {p["image_id"]: p["png_string"] for p in predictions}
        categories = {el["id"]: el for el in gt_json["categories"]}
        pq_res = pq_compute_multi_image(
            _match_annotations(gt_json, annotations),
            lambda a: _read_png_ids(os.path.join(gt_folder, a["file_name"])),
            lambda a: _decode_png_ids(pngs[a["image_id"]]),
            categories,
        )

        res = {}
        for key, group in (("", "All"), ("_th", "Things"), ("_st", "Stuff")):
            for metric in ("pq", "sq", "rq"):
                res[metric.upper() + key] = 100 * pq_res[group][metric]
        _print_panoptic_results(pq_res)
        return OrderedDict({"panoptic_seg": res})


def _decode_png_ids(png: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(png)) as img:
        return rgb2id(np.asarray(img.convert("RGB"), dtype=np.uint32))


def _print_panoptic_results(pq_res: dict[str, Any]) -> None:
    headers = ["", "PQ", "SQ", "RQ", "#categories"]
    data = [
        [name] + [pq_res[name][k] * 100 for k in ("pq", "sq", "rq")] + [pq_res[name]["n"]]
        for name in ("All", "Things", "Stuff")
    ]
    table = tabulate(data, headers=headers, tablefmt="pipe", floatfmt=".3f", stralign="center", numalign="center")
    logger.info("Panoptic Evaluation Results:\n%s", table)
