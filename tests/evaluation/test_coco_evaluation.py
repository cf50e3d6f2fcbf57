"""COCOEvaluator against pycocotools' own COCOeval on tiny hand-made datasets.

Predictions enter as ``Instances`` through ``process`` / ``evaluate``; the expected numbers come from pycocotools run
directly on the same ground-truth json and on COCO results built here by hand from the same raw arrays. Every
coordinate and score is a dyadic fraction, so float32 tensors carry them exactly.
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detlightning.data.catalog import DatasetCatalog, MetadataCatalog
from detlightning.data.datasets.coco import register_coco_instances
from detlightning.evaluation import COCOEvaluator
from detlightning.evaluation.fast_eval_api import FAST_COCOEVAL_AVAILABLE
from detlightning.structures import Boxes, BoxMode, Instances

H, W = 40, 60
CAT_IDS = [1, 5, 9]  # dataset ids of contiguous classes 0, 1, 2 (deliberately not contiguous)
CLASS_NAMES = ["cat", "dog", "bird"]
BOX_METRICS = ["AP", "AP50", "AP75", "APs", "APm", "APl"]
KPT_METRICS = ["AP", "AP50", "AP75", "APm", "APl"]
IMPLS = [False, pytest.param(True, marks=pytest.mark.skipif(not FAST_COCOEVAL_AVAILABLE,
                                                             reason="faster-coco-eval not installed"))]


# ----------------------------------------------------------------------------------------------- datasets
def _rect_poly(x: float, y: float, w: float, h: float) -> list[float]:
    return [x, y, x + w, y, x + w, y + h, x, y + h]


def _uncompressed_rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO's crowd format: column-major run lengths starting with a run of zeros."""
    flat = mask.flatten(order="F").astype(np.uint8)
    counts, current, run = [], 0, 0
    for v in flat:
        if v != current:
            counts.append(run)
            current, run = v, 0
        run += 1
    counts.append(run)
    return {"counts": counts, "size": list(mask.shape)}


def _instances_gt() -> dict[str, Any]:
    crowd = np.zeros((H, W), dtype=bool)
    crowd[20:36, 2:22] = True
    images = [{"id": i, "height": H, "width": W, "file_name": f"{i}.jpg"} for i in (10, 11, 12)]
    anns = [
        {"id": 1, "image_id": 10, "category_id": 1, "bbox": [4, 4, 20, 12], "area": 240.0,
         "segmentation": [_rect_poly(4, 4, 20, 12)], "iscrowd": 0},
        {"id": 2, "image_id": 10, "category_id": 5, "bbox": [30, 8, 20, 24], "area": 480.0,
         "segmentation": [_rect_poly(30, 8, 20, 24)], "iscrowd": 0},
        # a crowd region: detections on it are neither matches nor false positives
        {"id": 3, "image_id": 10, "category_id": 5, "bbox": [2, 20, 20, 16], "area": float(crowd.sum()),
         "segmentation": _uncompressed_rle(crowd), "iscrowd": 1},
        # image 11 has no annotation at all
        {"id": 4, "image_id": 12, "category_id": 1, "bbox": [10, 10, 12, 12], "area": 144.0,
         "segmentation": [_rect_poly(10, 10, 12, 12)], "iscrowd": 0},
        {"id": 5, "image_id": 12, "category_id": 9, "bbox": [24, 4, 34, 34], "area": 1156.0,  # medium
         "segmentation": [_rect_poly(24, 4, 34, 34)], "iscrowd": 0},
    ]
    cats = [{"id": c, "name": n} for c, n in zip(CAT_IDS, CLASS_NAMES)]
    return {"images": images, "annotations": anns, "categories": cats}


# per image: (XYXY box, contiguous class, score); masks are the boxes rounded to whole pixels
PREDICTIONS: dict[int, list[tuple[list[float], int, float]]] = {
    10: [
        ([4.5, 4.0, 24.0, 16.5], 0, 0.875),
        ([31.0, 9.0, 50.0, 30.0], 1, 0.75),
        ([3.0, 21.0, 20.0, 35.0], 1, 0.9375),  # on the crowd region, ranked first
        ([40.0, 30.0, 56.0, 38.0], 2, 0.5),  # false positive
    ],
    11: [([10.0, 10.0, 20.0, 20.0], 0, 0.25)],  # false positive on the empty image
    12: [
        ([10.0, 11.0, 22.5, 22.0], 0, 0.8125),
        ([11.0, 10.0, 21.0, 20.0], 0, 0.375),  # duplicate
        ([25.0, 5.0, 57.5, 36.0], 2, 0.6875),
    ],
}


def _box_mask(box: list[float]) -> np.ndarray:
    m = np.zeros((H, W), dtype=bool)
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    m[y0:y1, x0:x1] = True
    return m


def _instances(image_id: int, with_masks: bool = True) -> Instances:
    preds = PREDICTIONS[image_id]
    inst = Instances((H, W))
    inst.pred_boxes = Boxes(torch.tensor([p[0] for p in preds], dtype=torch.float32).reshape(-1, 4))
    inst.scores = torch.tensor([p[2] for p in preds], dtype=torch.float32)
    inst.pred_classes = torch.tensor([p[1] for p in preds], dtype=torch.int64)
    if with_masks:
        inst.pred_masks = torch.from_numpy(np.stack([_box_mask(p[0]) for p in preds]))
    return inst


def _reference_results(with_masks: bool = True) -> list[dict[str, Any]]:
    """The COCO results a pycocotools user would write for PREDICTIONS (dataset ids, XYWH, RLE str counts)."""
    out = []
    for image_id, preds in PREDICTIONS.items():
        for (x0, y0, x1, y1), cls, score in preds:
            r = {"image_id": image_id, "category_id": CAT_IDS[cls], "bbox": [x0, y0, x1 - x0, y1 - y0],
                 "score": score}
            if with_masks:
                rle = mask_util.encode(np.asfortranarray(_box_mask([x0, y0, x1, y1])[:, :, None].astype(np.uint8)))[0]
                rle["counts"] = rle["counts"].decode("ascii")
                r["segmentation"] = rle
            out.append(r)
    return out


def _pycocotools(gt_file: str, results: list[dict[str, Any]], task: str, sigmas: list[float] | None = None,
                 max_dets: list[int] | None = None) -> COCOeval:
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(gt_file)
        e = COCOeval(gt, gt.loadRes(copy.deepcopy(results)), task)
        if sigmas is not None:
            e.params.kpt_oks_sigmas = np.array(sigmas)
        if max_dets is not None:
            e.params.maxDets = max_dets
        e.evaluate()
        e.accumulate()
        if max_dets is None:
            e.summarize()
    return e


def _expected(e: COCOeval, metrics: list[str], class_names: list[str] | None = None) -> dict[str, float]:
    out = {m: (s * 100 if s >= 0 else math.nan) for m, s in zip(metrics, e.stats)}
    if class_names:
        prec = e.eval["precision"]
        for k, name in enumerate(class_names):
            p = prec[:, :, k, 0, -1]
            p = p[p > -1]
            out[f"AP-{name}"] = float(np.mean(p)) * 100 if p.size else math.nan
    return out


def _assert_close(actual: dict[str, float], expected: dict[str, float]) -> None:
    assert set(actual) == set(expected), (sorted(actual), sorted(expected))
    for k, v in expected.items():
        a = actual[k]
        if math.isnan(v):
            assert math.isnan(a), f"{k}: expected NaN, got {a}"
        else:
            assert abs(a - v) <= 1e-6, f"{k}: {a} != {v}"


@pytest.fixture
def instances_dataset(tmp_path: Path):
    name = f"_test_coco_eval_{uuid.uuid4().hex[:8]}"
    gt_file = tmp_path / "instances.json"
    gt_file.write_text(json.dumps(_instances_gt()))
    register_coco_instances(name, {}, str(gt_file), str(tmp_path))
    DatasetCatalog.get(name)  # as the test loader would: fills thing_classes and the id map of the metadata
    yield name, str(gt_file)
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def _run(evaluator: COCOEvaluator, with_masks: bool = True, image_ids=(10, 11, 12)) -> dict[str, Any]:
    evaluator.reset()
    for image_id in image_ids:  # one image per batch, as inference_on_dataset would feed them
        evaluator.process([{"image_id": image_id}], [{"instances": _instances(image_id, with_masks)}])
    return evaluator.evaluate()


# ----------------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("use_fast_impl", IMPLS)
def test_bbox_and_segm_match_pycocotools(instances_dataset, tmp_path, use_fast_impl):
    name, gt_file = instances_dataset
    out_dir = tmp_path / "out"
    ev = COCOEvaluator(name, tasks=("bbox", "segm"), distributed=False, output_dir=str(out_dir),
                       use_fast_impl=use_fast_impl)
    assert ev._use_fast_impl == use_fast_impl
    res = _run(ev)

    ref = _reference_results()
    # the results file holds exactly what a pycocotools user would have written
    written = json.loads((out_dir / "coco_instances_results.json").read_text())
    assert written == ref
    assert (out_dir / "instances_predictions.pth").is_file()

    exp_bbox = _expected(_pycocotools(gt_file, [{k: v for k, v in r.items() if k != "segmentation"} for r in ref],
                                      "bbox"), BOX_METRICS, CLASS_NAMES)
    # d2 convention: mask AP results carry no box, so COCO uses the mask area for small/medium/large
    exp_segm = _expected(_pycocotools(gt_file, [{k: v for k, v in r.items() if k != "bbox"} for r in ref], "segm"),
                         BOX_METRICS, CLASS_NAMES)
    assert list(res) == ["bbox", "segm"]
    _assert_close(res["bbox"], exp_bbox)
    _assert_close(res["segm"], exp_segm)
    # the data is not degenerate: some but not all detections are right, and the crowd case matters
    assert 0 < res["bbox"]["AP"] < 100 and 0 < res["bbox"]["APm"] <= 100
    assert math.isnan(res["bbox"]["APl"])  # no large object in the ground truth


def test_fast_and_reference_paths_agree(instances_dataset):
    if not FAST_COCOEVAL_AVAILABLE:
        pytest.skip("faster-coco-eval not installed")
    name, _ = instances_dataset
    fast = _run(COCOEvaluator(name, distributed=False, use_fast_impl=True))
    ref = _run(COCOEvaluator(name, distributed=False, use_fast_impl=False))
    assert set(fast) == set(ref) == {"bbox", "segm"}  # tasks inferred from the predictions
    for task in ref:
        _assert_close(fast[task], ref[task])


def test_tasks_inferred_and_evaluate_twice(instances_dataset):
    name, gt_file = instances_dataset
    ev = COCOEvaluator(name, distributed=False)
    res = _run(ev, with_masks=False)
    assert list(res) == ["bbox"]
    # evaluating again gives the same numbers (stored predictions keep their contiguous ids)
    again = ev.evaluate()
    _assert_close(again["bbox"], res["bbox"])
    exp = _expected(_pycocotools(gt_file, _reference_results(with_masks=False), "bbox"), BOX_METRICS, CLASS_NAMES)
    _assert_close(res["bbox"], exp)


def test_crowd_detection_is_ignored(instances_dataset):
    """Removing the detection that lies on the crowd region must not change any number."""
    name, _ = instances_dataset
    ev = COCOEvaluator(name, tasks=("bbox",), distributed=False)
    full = _run(ev, with_masks=False)
    ev.reset()
    for image_id in (10, 11, 12):
        inst = _instances(image_id, with_masks=False)
        if image_id == 10:
            inst = inst[torch.tensor([0, 1, 3])]
        ev.process([{"image_id": image_id}], [{"instances": inst}])
    _assert_close(ev.evaluate()["bbox"], full["bbox"])


@pytest.mark.parametrize("use_fast_impl", IMPLS)
def test_max_dets_per_image(instances_dataset, use_fast_impl):
    name, gt_file = instances_dataset
    ev = COCOEvaluator(name, tasks=("bbox",), distributed=False, max_dets_per_image=2, use_fast_impl=use_fast_impl)
    res = _run(ev, with_masks=False)
    # detectron2 asks COCOeval for maxDets [1, 10, 2]; COCOeval sorts them, AP is read at the last entry
    e = _pycocotools(gt_file, _reference_results(with_masks=False), "bbox", max_dets=[1, 10, 2])
    prec = e.eval["precision"][:, :, :, 0, 2]
    prec50 = e.eval["precision"][0, :, :, 0, 2]
    assert abs(res["bbox"]["AP"] - prec[prec > -1].mean() * 100) <= 1e-6
    assert abs(res["bbox"]["AP50"] - prec50[prec50 > -1].mean() * 100) <= 1e-6


def test_no_instances_gives_nan(instances_dataset):
    name, _ = instances_dataset
    ev = COCOEvaluator(name, tasks=("bbox", "segm"), distributed=False)
    for image_id in (10, 11):
        empty = Instances((H, W), pred_boxes=Boxes(torch.zeros(0, 4)), scores=torch.zeros(0),
                          pred_classes=torch.zeros(0, dtype=torch.int64),
                          pred_masks=torch.zeros(0, H, W, dtype=torch.bool))
        ev.process([{"image_id": image_id}], [{"instances": empty}])
    res = ev.evaluate()
    assert set(res) == {"bbox", "segm"}
    assert all(math.isnan(v) for v in res["bbox"].values())
    # nothing processed at all: nothing to report
    ev.reset()
    assert ev.evaluate() == {}


def test_unknown_class_is_rejected(instances_dataset):
    name, _ = instances_dataset
    ev = COCOEvaluator(name, tasks=("bbox",), distributed=False)
    inst = _instances(10, with_masks=False)
    inst.pred_classes = torch.tensor([0, 1, 7, 2])
    ev.process([{"image_id": 10}], [{"instances": inst}])
    with pytest.raises(ValueError, match="class=7"):
        ev.evaluate()


def test_bad_tasks_rejected(instances_dataset):
    with pytest.raises(ValueError, match="unknown tasks"):
        COCOEvaluator(instances_dataset[0], tasks=("boxes",), distributed=False)


# ----------------------------------------------------------------------------------------------- keypoints
KPT_SIGMAS = [0.05, 0.05, 0.1, 0.1]
KPT_H, KPT_W = 200, 200


def _kpt_gt() -> dict[str, Any]:
    images = [{"id": i, "height": KPT_H, "width": KPT_W, "file_name": f"{i}.jpg"} for i in (1, 2, 3)]
    anns = [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [20, 20, 40, 60], "area": 1800.0, "iscrowd": 0,
         "keypoints": [30, 30, 2, 50, 30, 2, 35, 60, 2, 45, 70, 1], "num_keypoints": 4},
        {"id": 2, "image_id": 1, "category_id": 1, "bbox": [90, 50, 100, 120], "area": 9600.0, "iscrowd": 0,
         "keypoints": [110, 70, 2, 170, 70, 2, 120, 140, 2, 0, 0, 0], "num_keypoints": 3},
        # a person without visible keypoints is ignored by COCO
        {"id": 3, "image_id": 2, "category_id": 1, "bbox": [10, 10, 50, 50], "area": 2000.0, "iscrowd": 0,
         "keypoints": [0, 0, 0] * 4, "num_keypoints": 0},
        {"id": 4, "image_id": 2, "category_id": 1, "bbox": [100, 100, 60, 80], "area": 4000.0, "iscrowd": 0,
         "keypoints": [120, 110, 2, 140, 110, 2, 125, 150, 2, 135, 170, 2], "num_keypoints": 4},
        # image 3: no person
    ]
    return {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "person"}]}


# per image: (XYXY box, score, keypoints (x, y, score) in continuous coordinates = COCO index + 0.5 + error)
KPT_PREDICTIONS: dict[int, list[tuple[list[float], float, list[list[float]]]]] = {
    1: [
        ([20.0, 20.0, 60.0, 80.0], 0.875, [[31.0, 30.5, 1.0], [50.5, 31.5, 1.0], [35.5, 62.0, 1.0], [46.0, 70.5, 1.0]]),
        ([90.0, 50.0, 190.0, 170.0], 0.75, [[112.5, 70.5, 1.0], [170.5, 73.0, 1.0], [124.5, 140.5, 1.0],
                                             [150.0, 150.0, 1.0]]),
    ],
    2: [
        ([100.0, 100.0, 160.0, 180.0], 0.625, [[126.5, 110.5, 1.0], [140.5, 118.0, 1.0], [125.5, 150.5, 1.0],
                                                [135.5, 171.0, 1.0]]),
        ([12.0, 12.0, 58.0, 58.0], 0.5, [[20.5, 20.5, 1.0], [40.5, 20.5, 1.0], [25.5, 50.5, 1.0],
                                         [45.5, 50.5, 1.0]]),
    ],
    3: [([5.0, 5.0, 25.0, 45.0], 0.25, [[10.5, 10.5, 1.0], [20.5, 10.5, 1.0], [12.5, 40.5, 1.0],
                                        [22.5, 40.5, 1.0]])],
}


@pytest.fixture
def keypoint_dataset(tmp_path: Path):
    name = f"_test_coco_kpt_{uuid.uuid4().hex[:8]}"
    gt_file = tmp_path / "person_keypoints.json"
    gt_file.write_text(json.dumps(_kpt_gt()))
    register_coco_instances(name, {}, str(gt_file), str(tmp_path))
    DatasetCatalog.get(name)
    yield name, str(gt_file)
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


@pytest.mark.parametrize("use_fast_impl", IMPLS)
def test_keypoints_match_pycocotools(keypoint_dataset, tmp_path, use_fast_impl):
    name, gt_file = keypoint_dataset
    out_dir = tmp_path / "kout"
    ev = COCOEvaluator(name, tasks=("bbox", "keypoints"), distributed=False, output_dir=str(out_dir),
                       kpt_oks_sigmas=KPT_SIGMAS, use_fast_impl=use_fast_impl)
    for image_id, preds in KPT_PREDICTIONS.items():
        inst = Instances((KPT_H, KPT_W))
        inst.pred_boxes = Boxes(torch.tensor([p[0] for p in preds]))
        inst.scores = torch.tensor([p[1] for p in preds])
        inst.pred_classes = torch.zeros(len(preds), dtype=torch.int64)
        kpts = torch.tensor([p[2] for p in preds])
        inst.pred_keypoints = kpts
        ev.process([{"image_id": image_id}], [{"instances": inst}])
        assert torch.equal(inst.pred_keypoints, kpts)  # the model's outputs are not modified
    res = ev.evaluate()

    ref = []
    for image_id, preds in KPT_PREDICTIONS.items():
        for (x0, y0, x1, y1), score, kps in preds:
            flat = [v for x, y, s in kps for v in (x - 0.5, y - 0.5, s)]  # back to COCO's pixel indices
            ref.append({"image_id": image_id, "category_id": 1, "bbox": [x0, y0, x1 - x0, y1 - y0], "score": score,
                        "keypoints": flat})
    assert json.loads((out_dir / "coco_instances_results.json").read_text()) == ref
    _assert_close(res["keypoints"], _expected(_pycocotools(gt_file, ref, "keypoints", sigmas=KPT_SIGMAS), KPT_METRICS))
    _assert_close(res["bbox"], _expected(_pycocotools(gt_file, ref, "bbox"), BOX_METRICS))
    assert 0 < res["keypoints"]["AP"] < 100


def test_keypoints_sigma_count_mismatch(keypoint_dataset):
    ev = COCOEvaluator(keypoint_dataset[0], tasks=("keypoints",), distributed=False, kpt_oks_sigmas=[0.1] * 3)
    inst = Instances((KPT_H, KPT_W), pred_boxes=Boxes(torch.tensor([[0.0, 0.0, 10.0, 10.0]])),
                     scores=torch.tensor([0.5]), pred_classes=torch.tensor([0]),
                     pred_keypoints=torch.ones(1, 4, 3))
    ev.process([{"image_id": 1}], [{"instances": inst}])
    with pytest.raises(ValueError, match="keypoints"):
        ev.evaluate()


# ----------------------------------------------------------------------------------------------- no COCO json
def _standard_dicts() -> list[dict[str, Any]]:
    """Two images in detectron2's standard format, XYXY boxes, contiguous class ids, no segmentation."""
    return [
        {"file_name": "a.jpg", "image_id": "a", "height": H, "width": W, "annotations": [
            {"bbox": [4.0, 4.0, 24.0, 16.0], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 0, "iscrowd": 0},
            {"bbox": [30.0, 8.0, 50.0, 32.0], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 1, "iscrowd": 0},
        ]},
        {"file_name": "b.jpg", "image_id": "b", "height": H, "width": W, "annotations": [
            {"bbox": [10.0, 10.0, 22.0, 22.0], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 0, "iscrowd": 0},
        ]},
    ]


@pytest.mark.parametrize("cache", [True, False])
def test_dataset_without_coco_json(tmp_path, cache):
    name = f"_test_coco_std_{uuid.uuid4().hex[:8]}"
    DatasetCatalog.register(name, _standard_dicts)
    MetadataCatalog.get(name).set(thing_classes=["cat", "dog"])
    try:
        out_dir = tmp_path / "out" if cache else None
        ev = COCOEvaluator(name, distributed=False, output_dir=out_dir)
        if cache:
            assert (out_dir / f"{name}_coco_format.json").is_file()
            assert MetadataCatalog.get(name).json_file == os.path.join(str(out_dir), f"{name}_coco_format.json")
        preds = {"a": [([4.0, 4.0, 24.0, 16.0], 0, 0.75), ([30.0, 10.0, 50.0, 32.0], 0, 0.5)],
                 "b": [([10.0, 10.0, 22.0, 22.0], 0, 0.875), ([0.0, 0.0, 8.0, 8.0], 1, 0.25)]}
        for image_id, ps in preds.items():
            inst = Instances((H, W), pred_boxes=Boxes(torch.tensor([p[0] for p in ps])),
                             scores=torch.tensor([p[2] for p in ps]),
                             pred_classes=torch.tensor([p[1] for p in ps]))
            ev.process([{"image_id": image_id}], [{"instances": inst}])
        res = ev.evaluate()

        # the same ground truth written as a COCO json by hand (image ids 1, 2; XYWH; box areas)
        gt = {"images": [{"id": 1, "height": H, "width": W, "file_name": "a.jpg"},
                         {"id": 2, "height": H, "width": W, "file_name": "b.jpg"}],
              "annotations": [
                  {"id": 1, "image_id": 1, "category_id": 0, "bbox": [4, 4, 20, 12], "area": 240.0, "iscrowd": 0},
                  {"id": 2, "image_id": 1, "category_id": 1, "bbox": [30, 8, 20, 24], "area": 480.0, "iscrowd": 0},
                  {"id": 3, "image_id": 2, "category_id": 0, "bbox": [10, 10, 12, 12], "area": 144.0, "iscrowd": 0}],
              "categories": [{"id": 0, "name": "cat"}, {"id": 1, "name": "dog"}]}
        gt_file = tmp_path / "hand.json"
        gt_file.write_text(json.dumps(gt))
        num = {"a": 1, "b": 2}
        ref = [{"image_id": num[i], "category_id": c, "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]], "score": s}
               for i, ps in preds.items() for b, c, s in ps]
        # string image ids are not COCO's ints: the converted json keeps them, so compare the numbers only
        _assert_close(res["bbox"], _expected(_pycocotools(str(gt_file), ref, "bbox"), BOX_METRICS, ["cat", "dog"]))
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


# ----------------------------------------------------------------------------------------------- fallback
def test_falls_back_to_pycocotools_without_faster_coco_eval(instances_dataset):
    """With faster_coco_eval unimportable, COCOeval_opt is pycocotools' COCOeval and use_fast_impl is dropped."""
    name, gt_file = instances_dataset
    code = (
        "import sys, json; sys.modules['faster_coco_eval'] = None\n"
        "from pycocotools.cocoeval import COCOeval\n"
        "from detlightning.evaluation import fast_eval_api as f\n"
        "assert f.FAST_COCOEVAL_AVAILABLE is False and f.COCOeval_opt is COCOeval\n"
        "from detlightning.data.catalog import MetadataCatalog\n"
        "from detlightning.evaluation import COCOEvaluator\n"
        f"MetadataCatalog.get('x').set(json_file={gt_file!r})\n"
        "ev = COCOEvaluator('x', distributed=False, use_fast_impl=True)\n"
        "assert ev._use_fast_impl is False\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("ok")


def test_legacy_config_argument_and_listconfig_tasks(instances_dataset):
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    name, _ = instances_dataset
    cfg = SimpleNamespace(TEST=SimpleNamespace(KEYPOINT_OKS_SIGMAS=[0.1, 0.2]))
    ev = COCOEvaluator(name, cfg, False)  # detectron2's deprecated (dataset_name, cfg, distributed) call
    assert ev._tasks is None and ev._kpt_oks_sigmas == (0.1, 0.2)
    ev = COCOEvaluator(name, OmegaConf.create({"test": {"keypoint_oks_sigmas": [0.5]}}), False)
    assert ev._tasks is None and ev._kpt_oks_sigmas == (0.5,)
    ev = COCOEvaluator(name, OmegaConf.create(["bbox"]), distributed=False)  # tasks from a Hydra list
    assert ev._tasks == ("bbox",)


def test_box_proposals_recall(instances_dataset, tmp_path):
    """AR of proposals, by hand. Non-crowd gt boxes: image 10 cat A [4,4,24,16] and dog B [30,8,50,32]; image 12
    cat [10,10,22,22] and (medium) bird [24,4,58,38]. Proposals cover A with IoU 1, B with IoU 396/480 = 0.825, the
    image-12 cat with IoU 1 and the bird not at all, so per IoU threshold 0.50..0.80 (7 of them) 3 of 4 gt are
    recalled, at 0.85..0.95 (3) 2 of 4: AR = (7 * 3/4 + 3 * 2/4) / 10 = 0.675. Small objects only (3):
    (7 * 3/3 + 3 * 2/3) / 10 = 0.9; medium (the bird): 0; large: none (NaN)."""
    name, _ = instances_dataset
    ev = COCOEvaluator(name, distributed=False, output_dir=str(tmp_path / "p"))
    proposals = {
        10: ([[4.0, 4.0, 24.0, 16.0], [30.0, 8.0, 46.5, 32.0]], [2.0, 1.0]),
        11: ([[0.0, 0.0, 5.0, 5.0]], [0.5]),
        12: ([[10.0, 10.0, 22.0, 22.0], [0.0, 30.0, 8.0, 38.0]], [-1.0, 3.0]),  # the useless one ranks first
    }
    for image_id, (boxes, logits) in proposals.items():
        p = Instances((H, W), proposal_boxes=Boxes(torch.tensor(boxes)), objectness_logits=torch.tensor(logits))
        ev.process([{"image_id": image_id}], [{"proposals": p}])
    res = ev.evaluate()
    assert list(res) == ["box_proposals"]
    expected = {"AR": 67.5, "ARs": 90.0, "ARm": 0.0, "ARl": math.nan}
    assert len(res["box_proposals"]) == 8
    for limit in (100, 1000):
        for k, v in expected.items():
            # d2-parity: recall is averaged in float32
            assert res["box_proposals"][f"{k}@{limit}"] == pytest.approx(v, abs=1e-4, nan_ok=True), k
    assert (tmp_path / "p" / "box_proposals.pkl").is_file()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_predictions(instances_dataset):
    name, _ = instances_dataset
    cpu = _run(COCOEvaluator(name, distributed=False))
    ev = COCOEvaluator(name, distributed=False)
    for image_id in (10, 11, 12):
        ev.process([{"image_id": image_id}], [{"instances": _instances(image_id).to("cuda")}])
    gpu = ev.evaluate()
    for task in cpu:
        _assert_close(gpu[task], cpu[task])
