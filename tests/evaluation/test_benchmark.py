"""The COCO evaluation benchmark runs and compares equal numbers (speed itself is not asserted here)."""
from __future__ import annotations

import math

from detlightning.data.catalog import MetadataCatalog
from detlightning.evaluation.benchmark import benchmark_coco_eval
from detlightning.evaluation.fast_eval_api import FAST_COCOEVAL_AVAILABLE


def test_benchmark_small(capsys):
    before = set(MetadataCatalog.list())
    report = benchmark_coco_eval(num_images=30, dets_per_image=8)
    assert report["num_images"] == 30 and report["num_detections"] > 100
    assert report["backend"] == ("faster-coco-eval" if FAST_COCOEVAL_AVAILABLE else "pycocotools")
    assert report["detlightning_s"] > 0 and report["pycocotools_s"] > 0
    for task in ("bbox", "segm"):
        assert 0 < report["results"][task]["AP"] < 100
        assert not math.isnan(report["results"][task]["AP50"])
    assert "pycocotools" in capsys.readouterr().out
    assert set(MetadataCatalog.list()) == before  # its temporary dataset is unregistered
