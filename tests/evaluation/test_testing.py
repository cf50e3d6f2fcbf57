"""flatten_results_dict, print_csv_format and verify_results."""
from __future__ import annotations

import logging
import math
from collections import OrderedDict
from types import SimpleNamespace

import pytest

from detlightning.evaluation import flatten_results_dict, print_csv_format, verify_results

RESULTS = OrderedDict(
    bbox={"AP": 40.5, "AP50": 61.25, "AP-person": 50.0},
    segm={"AP": 35.0},
    count=7,
)


def test_flatten_results_dict():
    assert flatten_results_dict(RESULTS) == {
        "bbox/AP": 40.5, "bbox/AP50": 61.25, "bbox/AP-person": 50.0, "segm/AP": 35.0, "count": 7,
    }
    assert flatten_results_dict({"a": {"b": {"c": 1}}, "d": {}}) == {"a/b/c": 1}


def test_print_csv_format(caplog):
    with caplog.at_level(logging.INFO, logger="detlightning.evaluation.testing"):
        print_csv_format(RESULTS)
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "copypaste: Task: bbox", "copypaste: AP,AP50", "copypaste: 40.5000,61.2500",  # per-category left out
        "copypaste: Task: segm", "copypaste: AP", "copypaste: 35.0000",
        "copypaste: count=7",
    ]


def test_verify_results():
    d2_cfg = SimpleNamespace(TEST=SimpleNamespace(EXPECTED_RESULTS=[["bbox", "AP", 40.0, 1.0]]))
    our_cfg = SimpleNamespace(test=SimpleNamespace(expected_results=[["segm", "AP", 35.0, 0.01]]))
    assert verify_results(d2_cfg, RESULTS)
    assert verify_results(our_cfg, RESULTS)
    assert verify_results(SimpleNamespace(test=SimpleNamespace(expected_results=[])), RESULTS)
    assert verify_results([["bbox", "AP50", 61.0, 0.5]], RESULTS)
    for bad in ([["bbox", "AP", 42.0, 1.0]], [["bbox", "APx", 40.5, 1.0]],
                [["segm", "AP", 35.0, 0.0], ["keypoints", "AP", 1.0, 1.0]]):
        with pytest.raises(SystemExit):
            verify_results(bad, RESULTS)
    with pytest.raises(SystemExit):
        verify_results([["bbox", "AP", 40.0, 1.0]], {"bbox": {"AP": math.nan}})
