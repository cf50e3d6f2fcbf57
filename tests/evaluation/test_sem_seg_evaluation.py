"""SemSegEvaluator on two 4x4 label maps whose confusion matrix is worked out by hand below."""
from __future__ import annotations

import json
import math
import uuid
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from PIL import Image

from detlightning.data.catalog import DatasetCatalog, MetadataCatalog
from detlightning.evaluation import SemSegEvaluator

CLASSES = ["sky", "road", "car", "tree"]  # "tree" never occurs in the ground truth
IGNORE = 255
GT = [
    np.array([[0, 0, 1, 1],
              [0, 0, 1, 1],
              [2, 2, 255, 255],
              [2, 2, 1, 1]]),
    np.array([[1, 1, 1, 1],
              [1, 1, 1, 1],
              [255, 255, 255, 255],
              [0, 0, 0, 0]]),
]
PRED = [
    np.array([[0, 0, 1, 1],
              [0, 1, 1, 1],
              [2, 0, 1, 0],
              [2, 2, 1, 1]]),
    np.array([[1, 1, 1, 1],
              [1, 1, 2, 3],
              [0, 0, 0, 0],
              [0, 0, 0, 0]]),
]
# Non-ignored pixels as (pred, gt) counts:
#   image 0: (0,0)=3 (1,0)=1 (1,1)=6 (2,2)=3 (0,2)=1          image 1: (1,1)=6 (2,1)=1 (3,1)=1 (0,0)=4
#   TP:       sky 7, road 12, car 3, tree 0
#   gt px:    sky 3+1+4=8, road 6+6+1+1=14, car 3+1=4, tree 0          (26 in all)
#   pred px:  sky 3+1+4=8, road 1+6+6=13, car 3+1=4, tree 1
#   IoU:      sky 7/(8+8-7)=7/9, road 12/(14+13-12)=12/15, car 3/(4+4-3)=3/5, tree: not in gt -> NaN, not averaged
#   ACC:      sky 7/8, road 12/14, car 3/4, tree NaN
IOU = [7 / 9, 12 / 15, 3 / 5]
ACC = [7 / 8, 12 / 14, 3 / 4]
EXPECTED = {
    "mIoU": 100 * sum(IOU) / 3,
    "fwIoU": 100 * (8 / 26 * IOU[0] + 14 / 26 * IOU[1] + 4 / 26 * IOU[2]),
    "mACC": 100 * sum(ACC) / 3,
    "pACC": 100 * 22 / 26,
    **{f"IoU-{n}": 100 * v for n, v in zip(CLASSES, IOU)},
    **{f"ACC-{n}": 100 * v for n, v in zip(CLASSES, ACC)},
}


@pytest.fixture
def sem_seg_dataset(tmp_path: Path):
    name = f"_test_semseg_{uuid.uuid4().hex[:8]}"
    records = []
    for i, gt in enumerate(GT):
        path = tmp_path / f"gt{i}.png"
        Image.fromarray(gt.astype(np.uint8)).save(path)
        records.append({"file_name": f"/images/{i}.jpg", "sem_seg_file_name": str(path), "height": 4, "width": 4})
    DatasetCatalog.register(name, lambda: records)
    MetadataCatalog.get(name).set(stuff_classes=CLASSES, ignore_label=IGNORE,
                                  stuff_dataset_id_to_contiguous_id={10: 0, 20: 1, 30: 2, 40: 3})
    yield name
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def _logits(pred: np.ndarray) -> torch.Tensor:
    """(C, H, W) scores whose argmax is ``pred``."""
    return torch.nn.functional.one_hot(torch.from_numpy(pred), len(CLASSES)).permute(2, 0, 1).float() * 3.0 - 1.0


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools on numpy 2
def test_metrics_match_hand_computation(sem_seg_dataset, tmp_path):
    ev = SemSegEvaluator(sem_seg_dataset, distributed=False, output_dir=str(tmp_path / "out"))
    ev.reset()
    inputs = [{"file_name": f"/images/{i}.jpg"} for i in range(2)]
    ev.process(inputs, [{"sem_seg": _logits(p)} for p in PRED])
    res = ev.evaluate()
    assert list(res) == ["sem_seg"]
    got = res["sem_seg"]
    assert set(got) == set(EXPECTED) | {"IoU-tree", "ACC-tree"}
    for k, v in EXPECTED.items():
        assert got[k] == pytest.approx(v, abs=1e-9), k
    assert math.isnan(got["IoU-tree"]) and math.isnan(got["ACC-tree"])

    # predictions file: one RLE per predicted class, with dataset ids
    preds = json.loads((tmp_path / "out" / "sem_seg_predictions.json").read_text())
    img0 = [p for p in preds if p["file_name"] == "/images/0.jpg"]
    assert [p["category_id"] for p in img0] == [10, 20, 30]
    for p in img0:
        label = {10: 0, 20: 1, 30: 2}[p["category_id"]]
        mask = mask_util.decode({"size": p["segmentation"]["size"], "counts": p["segmentation"]["counts"]})
        np.testing.assert_array_equal(mask, (PRED[0] == label).astype(np.uint8))
    assert (tmp_path / "out" / "sem_seg_evaluation.pth").is_file()


def test_batches_accumulate_and_reset(sem_seg_dataset):
    ev = SemSegEvaluator(sem_seg_dataset, distributed=False)
    ev.reset()
    for i in range(2):  # one image per batch gives the same matrix
        ev.process([{"file_name": f"/images/{i}.jpg"}], [{"sem_seg": _logits(PRED[i])}])
    assert ev.evaluate()["sem_seg"]["mIoU"] == pytest.approx(EXPECTED["mIoU"])
    ev.reset()
    # a perfect prediction of image 0 alone: every class present in it has IoU 100
    ev.process([{"file_name": "/images/0.jpg"}], [{"sem_seg": _logits(np.where(GT[0] == 255, 0, GT[0]))}])
    r = ev.evaluate()["sem_seg"]
    assert r["mIoU"] == pytest.approx(100.0) and r["pACC"] == pytest.approx(100.0)


def test_shape_mismatch_and_missing_metadata(sem_seg_dataset):
    ev = SemSegEvaluator(sem_seg_dataset, distributed=False)
    with pytest.raises(ValueError, match="shape"):
        ev.process([{"file_name": "/images/0.jpg"}], [{"sem_seg": torch.zeros(4, 5, 5)}])
    with pytest.raises(ValueError, match="num_classes"):
        SemSegEvaluator(sem_seg_dataset, distributed=False, num_classes=3)
