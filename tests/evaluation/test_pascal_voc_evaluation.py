"""PascalVOCDetectionEvaluator on a case whose AP values are worked out by hand below (VOC2007 11-point and
area-under-curve metrics), plus voc_ap's own edge cases."""
from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest
import torch

from detlightning.data import DatasetCatalog, MetadataCatalog
from detlightning.data.datasets import register_pascal_voc
from detlightning.evaluation import PascalVOCDetectionEvaluator, build_evaluator
from detlightning.evaluation.pascal_voc_evaluation import voc_ap, voc_eval
from detlightning.structures import Boxes, Instances

from ..data.voc_fixture import write_voc

# Ground truth in VOC's 1-based inclusive coordinates: cat has 3 objects; dog has one difficult and one normal.
IMAGES = {
    "a": (40, 40, [("cat", 1, 1, 10, 10, 0), ("cat", 21, 21, 30, 30, 0), ("dog", 1, 1, 10, 10, 1)]),
    "b": (40, 40, [("cat", 1, 1, 10, 10, 0), ("dog", 11, 11, 20, 20, 0)]),
}
# Detections (image, score, class, XYXY_ABS box; the evaluator adds 1 to x0, y0):
#   cat  a .9 [0,0,10,10]   IoU 1 with a's first cat                      TP at every threshold
#   cat  a .8 [0,0,10,10]   the same object again                         FP
#   cat  b .7 [0,0,10,6]    10x6 inside b's 10x10 cat: IoU 60/100 = 0.6   TP for IoU > .50, .55; FP for >= .60
#   cat  a .6 [30,0,39,5]   overlaps nothing                              FP
#   dog  a .95 [0,0,10,10]  the difficult dog                             neither TP nor FP
#   dog  b .5 [10,10,20,20] b's dog                                        TP
#   dog  a .3 [20,20,30,30] on a cat, no dog there                        FP
DETECTIONS = {
    "a": [(0.9, 0, [0, 0, 10, 10]), (0.8, 0, [0, 0, 10, 10]), (0.6, 0, [30, 0, 39, 5]),
          (0.95, 1, [0, 0, 10, 10]), (0.3, 1, [20, 20, 30, 30])],
    "b": [(0.7, 0, [0, 0, 10, 6]), (0.5, 1, [10, 10, 20, 20])],
}
# cat, thresholds .50/.55: tp 1,1,2,2  fp 0,1,1,2  -> recall 1/3,1/3,2/3,2/3  precision 1,1/2,2/3,1/2
#   area: 1/3 * 1 + 1/3 * 2/3 = 5/9          11-point: t=0..0.3 -> 1, t=0.4..0.6 -> 2/3, t>=0.7 -> 0: 6/11
# cat, thresholds .60 ... .95: tp 1,1,1,1 fp 0,1,2,3 -> recall 1/3 throughout, best precision 1
#   area: 1/3                                11-point: 4/11
# dog, every threshold: tp 0,1,1 fp 0,0,1 -> recall 0,1,1  precision 0,1,1/2: area 1, 11-point 1
EXPECTED = {
    2012: {"AP50": 100 * (5 / 9 + 1) / 2, "AP75": 100 * (1 / 3 + 1) / 2,
           "AP": 100 * (2 * (5 / 9 + 1) / 2 + 8 * (1 / 3 + 1) / 2) / 10},
    2007: {"AP50": 100 * (6 / 11 + 1) / 2, "AP75": 100 * (4 / 11 + 1) / 2,
           "AP": 100 * (2 * (6 / 11 + 1) / 2 + 8 * (4 / 11 + 1) / 2) / 10},
}


@pytest.fixture
def voc_root(tmp_path: Path) -> Path:
    return write_voc(tmp_path / "VOC", IMAGES, {"test": ["a", "b"]})


def _outputs(image_id: str) -> dict:
    dets = DETECTIONS[image_id]
    inst = Instances((40, 40))
    inst.pred_boxes = Boxes(torch.tensor([d[2] for d in dets], dtype=torch.float32))
    inst.scores = torch.tensor([d[0] for d in dets])
    inst.pred_classes = torch.tensor([d[1] for d in dets])
    return {"instances": inst}


@pytest.mark.parametrize("year", [2007, 2012])
def test_hand_computed_ap(voc_root: Path, year: int) -> None:
    name = f"_voc_eval_{uuid.uuid4().hex[:8]}"
    register_pascal_voc(name, str(voc_root), "test", year, class_names=("cat", "dog"))
    MetadataCatalog.get(name).evaluator_type = "pascal_voc"
    try:
        ev = build_evaluator({"paths": {"output_dir": None}, "test": {"keypoint_oks_sigmas": []}}, name)
        assert isinstance(ev, PascalVOCDetectionEvaluator)
        ev.reset()
        ev.process([{"image_id": "a"}], [_outputs("a")])
        ev.process([{"image_id": "b"}], [_outputs("b")])
        res = ev.evaluate()
        assert list(res) == ["bbox"] and set(res["bbox"]) == {"AP", "AP50", "AP75"}
        for k, v in EXPECTED[year].items():
            assert res["bbox"][k] == pytest.approx(v, abs=1e-9), k
        ev.reset()  # nothing predicted: every AP is 0
        ev.process([{"image_id": "a"}], [{"instances": Instances((40, 40), pred_boxes=Boxes(torch.zeros(0, 4)),
                                                                 scores=torch.zeros(0),
                                                                 pred_classes=torch.zeros(0, dtype=torch.long))}])
        assert ev.evaluate()["bbox"] == {"AP": 0.0, "AP50": 0.0, "AP75": 0.0}
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def test_voc_eval_from_files(voc_root: Path, tmp_path: Path) -> None:
    # the file-based entry point, on the cat detections in the devkit's text format (1-based x0, y0)
    lines = ["a 0.900 1.0 1.0 10.0 10.0", "a 0.800 1.0 1.0 10.0 10.0", "b 0.700 1.0 1.0 10.0 6.0",
             "a 0.600 31.0 1.0 39.0 5.0"]
    (tmp_path / "cat.txt").write_text("\n".join(lines))
    rec, prec, ap = voc_eval(str(tmp_path / "{}.txt"), str(voc_root / "Annotations" / "{}.xml"),
                             str(voc_root / "ImageSets" / "Main" / "test.txt"), "cat", 0.5)
    np.testing.assert_allclose(rec, [1 / 3, 1 / 3, 2 / 3, 2 / 3])
    np.testing.assert_allclose(prec, [1, 1 / 2, 2 / 3, 1 / 2])
    assert ap == pytest.approx(5 / 9)
    assert voc_eval(str(tmp_path / "{}.txt"), str(voc_root / "Annotations" / "{}.xml"),
                    str(voc_root / "ImageSets" / "Main" / "test.txt"), "cat", 0.6, use_07_metric=True)[2] == \
        pytest.approx(4 / 11)


def test_voc_ap_edges() -> None:
    # the 11 sample points come from np.arange(0, 1.1, 0.1), whose third is 0.30000000000000004: recall exactly
    # 0.3 does not reach it, so only t = 0, 0.1, 0.2 see precision 1
    assert voc_ap(np.array([0.3]), np.array([1.0]), use_07_metric=True) == pytest.approx(3 / 11)
    # area: precision is made non-increasing from the right before integrating
    assert voc_ap(np.array([0.5, 0.5, 1.0]), np.array([0.5, 1 / 3, 0.75])) == pytest.approx(0.5 * 0.75 + 0.5 * 0.75)
    assert voc_ap(np.array([]), np.array([])) == 0.0


def test_year_must_be_2007_or_2012(voc_root: Path) -> None:
    name = f"_voc_eval_{uuid.uuid4().hex[:8]}"
    register_pascal_voc(name, str(voc_root), "test", 2010)
    try:
        with pytest.raises(ValueError, match="2007 or 2012"):
            PascalVOCDetectionEvaluator(name)
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
