"""LVISEvaluator against the lvis package's own LVISEval on a tiny synthetic LVIS json, plus hand-checked cases of
LVIS's federated protocol (negative / unverified / not-exhaustive categories)."""
from __future__ import annotations

import copy
import json
import math
import sys
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch

from detlightning.data import DatasetCatalog, MetadataCatalog
from detlightning.data.datasets import register_lvis_instances
from detlightning.evaluation import LVISEvaluator, build_evaluator
from detlightning.structures import Boxes, Instances

lvis = pytest.importorskip("lvis")

METRICS = ["AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf"]

# image id -> (height, width, neg_category_ids, not_exhaustive_category_ids, [(category id, [x, y, w, h])])
IMAGES = {
    1: (64, 64, [2], [], [(1, [4, 4, 20, 20]), (3, [30, 30, 30, 30])]),
    2: (128, 128, [1], [3], [(2, [10, 10, 50, 40]), (3, [0, 20, 110, 100])]),
    3: (64, 64, [1, 2], [], [(3, [8, 8, 24, 24])]),
    4: (64, 64, [], [], [(3, [2, 2, 40, 30])]),
}


def _rect(x: float, y: float, w: float, h: float) -> list[float]:
    return [x, y, x + w, y, x + w, y + h, x, y + h]


def _lvis_dict() -> dict:
    categories = [
        {"id": 1, "name": "aerosol_can", "synonyms": ["aerosol_can"], "frequency": "r", "image_count": 1},
        {"id": 2, "name": "apple", "synonyms": ["apple"], "frequency": "c", "image_count": 1},
        {"id": 3, "name": "banana", "synonyms": ["banana"], "frequency": "f", "image_count": 4},
    ]
    images, annotations = [], []
    for img_id, (h, w, neg, not_exhaustive, objs) in IMAGES.items():
        images.append({"id": img_id, "height": h, "width": w, "neg_category_ids": neg,
                       "not_exhaustive_category_ids": not_exhaustive,
                       "coco_url": f"http://images.cocodataset.org/val2017/{img_id:012d}.jpg"})
        for cat, box in objs:
            annotations.append({"id": len(annotations) + 1, "image_id": img_id, "category_id": cat,
                                "bbox": box, "area": float(box[2] * box[3]), "segmentation": [_rect(*box)]})
    return {"info": {}, "licenses": [], "categories": categories, "images": images, "annotations": annotations}


@pytest.fixture
def lvis_dataset(tmp_path: Path, request: pytest.FixtureRequest):
    path = tmp_path / "lvis_eval_tiny.json"
    path.write_text(json.dumps(_lvis_dict()))
    name = f"lvis_v1_evaltest_{request.node.name}"
    register_lvis_instances(name, {}, str(path), str(tmp_path))
    yield name, str(path)
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


@pytest.fixture
def lvis_numpy_alias(monkeypatch: pytest.MonkeyPatch) -> None:
    """lvis 0.5.3 uses np.float (removed in numpy 1.24) when it runs directly in the test."""
    monkeypatch.setattr(np, "float", float, raising=False)


def _gt_mask(h: int, w: int, box: list[float]) -> np.ndarray:
    return mask_util.decode(mask_util.merge(mask_util.frPyObjects([_rect(*box)], h, w))).astype(bool)


def _box_mask(h: int, w: int, xyxy: list[float]) -> np.ndarray:
    """An L-shaped predicted mask: the box without its top-left quarter (so mask AP differs from box AP)."""
    m = np.zeros((h, w), dtype=bool)
    x0, y0, x1, y1 = (int(round(v)) for v in xyxy)
    m[y0:y1, x0:x1] = True
    m[y0 : (y0 + y1) // 2, x0 : (x0 + x1) // 2] = False
    return m


def _predictions(exact: bool = False) -> dict[int, list[tuple[int, list[float], float]]]:
    """image id -> [(0-based class, XYXY box, score)]: the ground truth, shifted unless ``exact``, plus false
    positives of negative, unverified and not-exhaustive categories."""
    preds: dict[int, list[tuple[int, list[float], float]]] = {}
    scores = iter([0.9, 0.6, 0.8, 0.95, 0.85, 0.7])
    for img_id, (_, _, _, _, objs) in IMAGES.items():
        preds[img_id] = []
        for cat, (x, y, w, h) in objs:
            shift = 0.0 if exact else 3.0
            preds[img_id].append((cat - 1, [x + shift, y + shift, x + w + shift, y + h], next(scores)))
    if not exact:
        preds[1].append((1, [40, 2, 60, 20], 0.75))  # category 2 is negative in image 1: a false positive
        preds[2].append((2, [60, 60, 90, 90], 0.5))  # category 3 is not exhaustive in image 2: ignored
        preds[3].append((0, [30, 30, 50, 50], 0.4))  # negative: false positive
        preds[4].append((1, [5, 40, 30, 60], 0.99))  # category 2 unverified in image 4: ignored
    return preds


def _run_evaluator(name: str, preds, masks: str = "box", **kwargs) -> dict:
    evaluator = LVISEvaluator(name, distributed=False, **kwargs)
    evaluator.reset()
    for img_id, dets in preds.items():
        h, w = IMAGES[img_id][:2]
        inst = Instances((h, w))
        inst.pred_boxes = Boxes(torch.tensor([d[1] for d in dets], dtype=torch.float32).reshape(-1, 4))
        inst.scores = torch.tensor([d[2] for d in dets])
        inst.pred_classes = torch.tensor([d[0] for d in dets], dtype=torch.int64)
        if masks == "box":
            inst.pred_masks = torch.from_numpy(np.stack([_box_mask(h, w, d[1]) for d in dets]))
        elif masks == "gt":
            inst.pred_masks = torch.from_numpy(np.stack([_gt_mask(h, w, b) for _, b in IMAGES[img_id][4]]))
        evaluator.process([{"image_id": img_id}], [{"instances": inst}])
    return evaluator.evaluate()


def _lvis_results_direct(preds) -> list[dict]:
    """The same predictions in LVIS's result format (1-based ids, XYWH boxes, RLE masks)."""
    results = []
    for img_id, dets in preds.items():
        h, w = IMAGES[img_id][:2]
        for cls, (x0, y0, x1, y1), score in dets:
            rle = mask_util.encode(np.asfortranarray(_box_mask(h, w, [x0, y0, x1, y1]).astype(np.uint8)))
            rle["counts"] = rle["counts"].decode("ascii")
            results.append({"image_id": img_id, "category_id": cls + 1, "bbox": [x0, y0, x1 - x0, y1 - y0],
                            "score": score, "segmentation": rle})
    return results


def _lvis_eval_direct(json_file: str, results: list[dict], iou_type: str, max_dets: int = 300) -> dict:
    results = copy.deepcopy(results)
    if iou_type == "segm":
        for r in results:
            r.pop("bbox")
    gt = lvis.LVIS(json_file)
    lvis_eval = lvis.LVISEval(gt, lvis.LVISResults(gt, results, max_dets=max_dets), iou_type)
    lvis_eval.run()
    return {m: float(v * 100) if v >= 0 else float("nan") for m, v in lvis_eval.get_results().items() if m in METRICS}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(a[k] == b[k] or (math.isnan(a[k]) and math.isnan(b[k])) for k in a)


def test_numbers_equal_lvis_eval(lvis_dataset, lvis_numpy_alias) -> None:
    name, json_file = lvis_dataset
    preds = _predictions()
    res = _run_evaluator(name, preds)
    assert list(res) == ["bbox", "segm"] and list(res["bbox"]) == METRICS
    direct = _lvis_results_direct(preds)
    for task in ("bbox", "segm"):
        assert _same(res[task], _lvis_eval_direct(json_file, direct, task)), task
    # a non-trivial case: every frequency group and size range scored, not all perfect
    assert all(0 < v <= 100 for v in res["bbox"].values()) and res["bbox"]["AP"] < 100, res["bbox"]
    assert res["segm"]["AP"] < res["bbox"]["AP"]

    limited = _run_evaluator(name, preds, max_dets_per_image=1)
    assert _same(limited["bbox"], _lvis_eval_direct(json_file, direct, "bbox", max_dets=1))
    assert limited["bbox"]["AP"] != res["bbox"]["AP"]


def test_federated_protocol_hand_checked(lvis_dataset) -> None:
    name, _ = lvis_dataset
    exact = _predictions(exact=True)
    res = _run_evaluator(name, exact, masks="gt")
    # every ground truth found exactly, one detection each: AP 100 everywhere
    for task in ("bbox", "segm"):
        assert all(v == pytest.approx(100.0) for v in res[task].values()), res[task]
    assert "float" not in np.__dict__  # the numpy alias lvis needs lives only while LVISEval runs

    # unverified category (image 4 says nothing about category 2) and a non-exhaustive one (category 3 in
    # image 2): unmatched detections there are not false positives
    ignored = copy.deepcopy(exact)
    ignored[4].append((1, [5, 40, 30, 60], 0.99))
    ignored[2].append((2, [60, 5, 90, 15], 0.99))
    assert all(v == pytest.approx(100.0) for v in _run_evaluator(name, ignored, masks=None)["bbox"].values())

    # category 2 is negative in image 1: a higher-scored detection there is a false positive ranked before the
    # only true positive of category 2 (image 2): its precision at recall 1 is 1/2, so APc = 50
    negative = copy.deepcopy(exact)
    negative[1].append((1, [40, 2, 60, 20], 0.99))
    res = _run_evaluator(name, negative, masks=None)["bbox"]
    assert res["APc"] == pytest.approx(50.0) and res["APr"] == pytest.approx(100.0)
    assert res["APf"] == pytest.approx(100.0)
    assert res["AP"] == pytest.approx((100.0 + 50.0 + 100.0) / 3)


def test_proposals_and_test_split(lvis_dataset, tmp_path: Path) -> None:
    name, json_file = lvis_dataset
    evaluator = LVISEvaluator(name, distributed=False)
    for img_id, (h, w, _, _, objs) in IMAGES.items():
        props = Instances((h, w))
        props.proposal_boxes = Boxes(torch.tensor([[x, y, x + bw, y + bh] for _, (x, y, bw, bh) in objs]))
        props.objectness_logits = torch.ones(len(objs))
        evaluator.process([{"image_id": img_id}], [{"proposals": props}])
    ar = evaluator.evaluate()["box_proposals"]
    # proposals equal to the ground-truth boxes: full recall at every IoU threshold, in every size range
    assert ar["AR@100"] == pytest.approx(100.0) and ar["ARs@1000"] == pytest.approx(100.0)
    assert ar["ARl@100"] == pytest.approx(100.0)

    # a test split: images and categories only; predictions are written with LVIS ids, nothing is scored
    data = json.loads(Path(json_file).read_text())
    del data["annotations"]
    test_json = tmp_path / "test_split.json"
    test_json.write_text(json.dumps(data))
    register_lvis_instances("lvis_v1_evaltest_split", {}, str(test_json), str(tmp_path))
    try:
        out = tmp_path / "out"
        evaluator = LVISEvaluator("lvis_v1_evaltest_split", distributed=False, output_dir=str(out))
        inst = Instances((64, 64))
        inst.pred_boxes = Boxes(torch.tensor([[1.0, 2.0, 11.0, 22.0]]))
        inst.scores = torch.tensor([0.5])
        inst.pred_classes = torch.tensor([2])
        evaluator.process([{"image_id": 1}], [{"instances": inst}])
        assert evaluator.evaluate() == {}
        written = json.loads((out / "lvis_instances_results.json").read_text())
        assert written == [{"image_id": 1, "category_id": 3, "bbox": [1.0, 2.0, 10.0, 20.0], "score": 0.5}]
    finally:
        DatasetCatalog.remove("lvis_v1_evaltest_split")
        MetadataCatalog.remove("lvis_v1_evaltest_split")


def test_build_evaluator_and_errors(lvis_dataset, monkeypatch: pytest.MonkeyPatch) -> None:
    name, _ = lvis_dataset
    cfg = {"paths": {"output_dir": None}, "test": {"keypoint_oks_sigmas": []}}
    assert isinstance(build_evaluator(cfg, name), LVISEvaluator)
    with pytest.raises(ValueError, match="unknown tasks"):
        LVISEvaluator(name, tasks=("keypoints",))
    MetadataCatalog.get("lvis_no_json").set(evaluator_type="lvis")
    with pytest.raises(ValueError, match="'lvis_no_json' has no 'json_file'"):
        LVISEvaluator("lvis_no_json")
    MetadataCatalog.remove("lvis_no_json")
    monkeypatch.setitem(sys.modules, "lvis", None)
    with pytest.raises(ImportError, match="pip install lvis"):
        LVISEvaluator(name)
