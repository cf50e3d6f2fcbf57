"""COCOPanopticEvaluator / PQ on two 8x8 images whose matches are worked out by hand below."""
from __future__ import annotations

import json
import math
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from detlightning.data.catalog import MetadataCatalog
from detlightning.evaluation import COCOPanopticEvaluator
from detlightning.evaluation.panoptic_quality import id2rgb, pq_compute, rgb2id

CATEGORIES = [
    {"id": 1, "name": "person", "isthing": 1},
    {"id": 3, "name": "car", "isthing": 1},
    {"id": 10, "name": "sky", "isthing": 0},
    {"id": 12, "name": "road", "isthing": 0},
    {"id": 14, "name": "tree", "isthing": 0},  # never occurs: not averaged
]
# detectron2's convention: one contiguous space, things first; the stuff map covers every category
THING_MAP = {1: 0, 3: 1}
STUFF_MAP = {1: 0, 3: 1, 10: 2, 12: 3, 14: 4}

# ground truth of image 1 (segment ids; 0 = VOID)
GT1 = np.zeros((8, 8), dtype=np.int64)
GT1[0:2, :] = 1        # sky, 16 px
GT1[6:8, :] = 2        # road, 16 px
GT1[2:6, 0:3] = 3      # person, 12 px
GT1[2:6, 5:8] = 4      # car, 12 px
GT1[2:4, 3:5] = 5      # person crowd, 4 px
# GT1[4:6, 3:5] stays VOID (4 px)
GT1_SEGMENTS = [
    {"id": 1, "category_id": 10, "iscrowd": 0, "area": 16},
    {"id": 2, "category_id": 12, "iscrowd": 0, "area": 16},
    {"id": 3, "category_id": 1, "iscrowd": 0, "area": 12},
    {"id": 4, "category_id": 3, "iscrowd": 0, "area": 12},
    {"id": 5, "category_id": 1, "iscrowd": 1, "area": 4},
]
GT2 = np.ones((8, 8), dtype=np.int64)  # image 2: all sky
GT2_SEGMENTS = [{"id": 1, "category_id": 10, "iscrowd": 0, "area": 64}]

# prediction of image 1, given with segments_info (contiguous ids + isthing)
PRED1 = np.zeros((8, 8), dtype=np.int32)
PRED1[0:2, :] = 1        # sky: 16 px on gt sky + 2 px on the crowd (row 2 below) -> IoU 16 / 18
PRED1[2, 3:5] = 1
PRED1[6:8, 0:4] = 2      # road: 8 px of gt road's 16 -> IoU 8 / 16 = 0.5, not > 0.5: FP and gt road FN
PRED1[2:6, 0:3] = 3      # person: the gt person + 4 px on VOID -> IoU 12 / (16 + 12 - 12 - 4) = 1
PRED1[4:6, 3:5] = 3
PRED1[2:5, 5:8] = 4      # car: 9 px of gt car's 12 -> IoU 9 / 12 = 0.75
PRED1[6:8, 4:8] = 5      # person on gt road: FP (no VOID / crowd under it)
PRED1[3, 3:5] = 6        # person entirely on the person crowd region: ignored
# PRED1[5, 5:8] stays VOID
PRED1_SEGMENTS = [
    {"id": 1, "category_id": 2, "isthing": False},
    {"id": 2, "category_id": 3, "isthing": False},
    {"id": 3, "category_id": 0, "isthing": True},
    {"id": 4, "category_id": 1, "isthing": True},
    {"id": 5, "category_id": 0, "isthing": True},
    {"id": 6, "category_id": 0, "isthing": True},
]
# prediction of image 2 in "label divisor" form (segments_info None): sky (contiguous 2) on rows 0-6, row 7 VOID (-1)
# -> sky IoU 56 / (56 + 64 - 56) = 7 / 8
PRED2 = np.full((8, 8), 2 * 1000, dtype=np.int32)
PRED2[7, :] = -1

# per category (tp, sum IoU, fp, fn):
#   person (1, 1.0, 1, 0): PQ = 1 / 1.5, SQ = 1, RQ = 1 / 1.5
#   car    (1, 0.75, 0, 0): PQ = SQ = 0.75, RQ = 1
#   sky    (2, 8/9 + 7/8, 0, 0): PQ = SQ = (8/9 + 7/8) / 2, RQ = 1
#   road   (0, 0, 1, 1): PQ = SQ = RQ = 0
PQ = {"person": 1 / 1.5, "car": 0.75, "sky": (8 / 9 + 7 / 8) / 2, "road": 0.0}
SQ = {"person": 1.0, "car": 0.75, "sky": (8 / 9 + 7 / 8) / 2, "road": 0.0}
RQ = {"person": 1 / 1.5, "car": 1.0, "sky": 1.0, "road": 0.0}
THINGS, STUFF = ("person", "car"), ("sky", "road")


def _mean(d, keys):
    return sum(d[k] for k in keys) / len(keys)


EXPECTED = {
    "PQ": 100 * _mean(PQ, THINGS + STUFF), "SQ": 100 * _mean(SQ, THINGS + STUFF), "RQ": 100 * _mean(RQ, THINGS + STUFF),
    "PQ_th": 100 * _mean(PQ, THINGS), "SQ_th": 100 * _mean(SQ, THINGS), "RQ_th": 100 * _mean(RQ, THINGS),
    "PQ_st": 100 * _mean(PQ, STUFF), "SQ_st": 100 * _mean(SQ, STUFF), "RQ_st": 100 * _mean(RQ, STUFF),
}


def _save_ids(path: Path, ids: np.ndarray) -> None:
    """COCO panoptic PNG for ids < 256: the id in the red channel."""
    rgb = np.zeros(ids.shape + (3,), dtype=np.uint8)
    rgb[..., 0] = ids
    Image.fromarray(rgb).save(path)


@pytest.fixture
def panoptic_dataset(tmp_path: Path):
    name = f"_test_panoptic_{uuid.uuid4().hex[:8]}"
    root = tmp_path / "panoptic_gt"
    root.mkdir()
    _save_ids(root / "img_1.png", GT1)
    _save_ids(root / "img_2.png", GT2)
    gt_json = {
        "images": [{"id": 1, "file_name": "img_1.jpg", "height": 8, "width": 8},
                   {"id": 2, "file_name": "img_2.jpg", "height": 8, "width": 8}],
        "annotations": [{"image_id": 1, "file_name": "img_1.png", "segments_info": GT1_SEGMENTS},
                        {"image_id": 2, "file_name": "img_2.png", "segments_info": GT2_SEGMENTS}],
        "categories": CATEGORIES,
    }
    json_file = tmp_path / "panoptic.json"
    json_file.write_text(json.dumps(gt_json))
    MetadataCatalog.get(name).set(panoptic_json=str(json_file), panoptic_root=str(root), label_divisor=1000,
                                  thing_dataset_id_to_contiguous_id=THING_MAP,
                                  stuff_dataset_id_to_contiguous_id=STUFF_MAP)
    yield name
    MetadataCatalog.remove(name)


def test_pq_matches_hand_computation(panoptic_dataset, tmp_path):
    out = tmp_path / "out"
    ev = COCOPanopticEvaluator(panoptic_dataset, output_dir=str(out))
    ev.reset()
    segments = [dict(s) for s in PRED1_SEGMENTS]
    ev.process([{"file_name": "/imgs/img_1.jpg", "image_id": 1}],
               [{"panoptic_seg": (torch.from_numpy(PRED1), segments)}])
    ev.process([{"file_name": "/imgs/img_2.jpg", "image_id": 2}],
               [{"panoptic_seg": (torch.from_numpy(PRED2), None)}])
    assert segments == PRED1_SEGMENTS  # the model's segments_info is not modified
    res = ev.evaluate()
    assert list(res) == ["panoptic_seg"]
    assert set(res["panoptic_seg"]) == set(EXPECTED)
    for k, v in EXPECTED.items():
        assert res["panoptic_seg"][k] == pytest.approx(v, abs=1e-9), k

    pred_json = json.loads((out / "predictions.json").read_text())
    anns = {a["image_id"]: a for a in pred_json["annotations"]}
    assert anns[1]["file_name"] == "img_1.png"
    assert [s["category_id"] for s in anns[1]["segments_info"]] == [10, 12, 1, 3, 1, 1]  # dataset ids
    assert anns[2]["segments_info"] == [{"id": 2001, "category_id": 10}]


def test_missing_prediction_is_an_error(panoptic_dataset):
    ev = COCOPanopticEvaluator(panoptic_dataset)
    ev.process([{"file_name": "img_1.jpg", "image_id": 1}],
               [{"panoptic_seg": (torch.from_numpy(PRED1), [dict(s) for s in PRED1_SEGMENTS])}])
    with pytest.raises(KeyError, match="no prediction for the image with id: 2"):
        ev.evaluate()


def test_inconsistent_prediction_is_an_error(panoptic_dataset):
    ev = COCOPanopticEvaluator(panoptic_dataset)
    for image_id in (1, 2):
        ev.process([{"file_name": f"img_{image_id}.jpg", "image_id": image_id}],
                   [{"panoptic_seg": (torch.from_numpy(PRED1), [dict(s) for s in PRED1_SEGMENTS[:-1]])}])
    with pytest.raises(KeyError, match="presented in PNG and not presented in JSON"):
        ev.evaluate()


def test_file_based_pq_compute_and_id_encoding(tmp_path):
    # id <-> RGB: R + 256 G + 256^2 B
    ids = np.array([[0, 1, 256], [65536 + 2, 255, 2001]])
    rgb = id2rgb(ids)
    np.testing.assert_array_equal(rgb[0, 2], [0, 1, 0])
    np.testing.assert_array_equal(rgb[1, 0], [2, 0, 1])
    np.testing.assert_array_equal(rgb[1, 2], [2001 % 256, 2001 // 256, 0])
    np.testing.assert_array_equal(rgb2id(rgb), ids)

    # image 1 alone through panopticapi's file interface: sky (8/9), person, car as above; road tp 0 fp 1 fn 1
    (tmp_path / "gt").mkdir()
    (tmp_path / "pred").mkdir()
    _save_ids(tmp_path / "gt" / "a.png", GT1)
    _save_ids(tmp_path / "pred" / "a.png", PRED1)
    cats = {"person": 1, "car": 3, "sky": 10, "road": 12}
    pred_segments = [{"id": s["id"], "category_id": [cats["sky"], cats["road"], 1, 3, 1, 1][i]}
                     for i, s in enumerate(PRED1_SEGMENTS)]
    (tmp_path / "gt.json").write_text(json.dumps({
        "annotations": [{"image_id": 7, "file_name": "a.png", "segments_info": GT1_SEGMENTS}],
        "categories": CATEGORIES}))
    (tmp_path / "pred.json").write_text(json.dumps({
        "annotations": [{"image_id": 7, "file_name": "a.png", "segments_info": pred_segments}]}))
    res = pq_compute(str(tmp_path / "gt.json"), str(tmp_path / "pred.json"), str(tmp_path / "gt"),
                     str(tmp_path / "pred"))
    assert res["Stuff"]["pq"] == pytest.approx((8 / 9 + 0) / 2)
    assert res["Things"]["pq"] == pytest.approx((1 / 1.5 + 0.75) / 2)
    assert res["All"]["n"] == 4 and res["Things"]["n"] == 2 and res["Stuff"]["n"] == 2
    assert res["per_class"][14] == {"pq": 0.0, "sq": 0.0, "rq": 0.0}


def test_no_stuff_category_gives_nan(tmp_path):
    (tmp_path / "gt").mkdir()
    (tmp_path / "pred").mkdir()
    ids = np.zeros((4, 4), dtype=np.int64)
    ids[:2] = 1
    _save_ids(tmp_path / "gt" / "a.png", ids)
    _save_ids(tmp_path / "pred" / "a.png", ids)
    cats = [{"id": 1, "name": "person", "isthing": 1}]
    (tmp_path / "gt.json").write_text(json.dumps({"annotations": [{"image_id": 1, "file_name": "a.png",
        "segments_info": [{"id": 1, "category_id": 1, "iscrowd": 0, "area": 8}]}], "categories": cats}))
    (tmp_path / "pred.json").write_text(json.dumps({"annotations": [{"image_id": 1, "file_name": "a.png",
        "segments_info": [{"id": 1, "category_id": 1}]}]}))
    res = pq_compute(str(tmp_path / "gt.json"), str(tmp_path / "pred.json"), str(tmp_path / "gt"),
                     str(tmp_path / "pred"))
    assert res["Things"]["pq"] == 1.0 and res["All"]["pq"] == 1.0
    assert math.isnan(res["Stuff"]["pq"]) and res["Stuff"]["n"] == 0
