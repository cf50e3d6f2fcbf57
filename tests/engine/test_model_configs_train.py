"""Every model config trains a few real steps through the engine on the built-in shapes dataset and is evaluated
with the evaluator its dataset calls for (COCO AP, PQ, mIoU, proposal recall)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from detlightning.config import compose
from detlightning.engine import train

from .conftest import tiny_overrides

# model config -> (extra overrides, loss keys the model must report, metric groups of the final evaluation)
CASES = {
    "retinanet": ([], {"loss_cls", "loss_box_reg"}, {"bbox"}),
    "keypoint_rcnn": (
        ["model.roi_keypoint_head.conv_dims=[16,16]"],
        {"loss_cls", "loss_box_reg", "loss_keypoint", "loss_rpn_cls", "loss_rpn_loc"},
        {"bbox", "keypoints"},
    ),
    "cascade_mask_rcnn": (
        [],
        {"loss_cls_stage0", "loss_box_reg_stage2", "loss_mask", "loss_rpn_cls"},
        {"bbox", "segm"},
    ),
    "panoptic_fpn": (
        ["data=shapes_panoptic", "model.sem_seg_head.convs_dim=32"],
        {"loss_sem_seg", "loss_cls", "loss_mask", "loss_rpn_cls"},
        {"panoptic_seg", "bbox", "segm"},
    ),
    "semantic_fpn": (["data=shapes_sem_seg", "model.sem_seg_head.convs_dim=32"], {"loss_sem_seg"}, {"sem_seg"}),
    "rpn": ([], {"loss_rpn_cls", "loss_rpn_loc"}, {"box_proposals"}),
}


@pytest.mark.parametrize("model", sorted(CASES))
def test_model_config_trains_and_evaluates(model: str, shapes_root: Path, tmp_path: Path) -> None:
    extra, loss_keys, metric_groups = CASES[model]
    cfg = compose(
        tiny_overrides(shapes_root, model)
        + extra
        + [f"paths.output_dir={tmp_path}", "solver.max_iter=2", "callbacks.metrics_writer.period=1", "logger=csv"]
    )
    results = train(cfg)
    (name,) = results
    assert metric_groups <= set(results[name]), results[name].keys()
    with open(tmp_path / "metrics.json") as f:
        lines = [json.loads(line) for line in f]
    train_lines = [line for line in lines if "total_loss" in line]
    assert [line["iteration"] for line in train_lines] == [0, 1]
    for line in train_lines:
        assert loss_keys <= set(line), sorted(line)
        assert all(math.isfinite(line[k]) for k in loss_keys)
    assert (tmp_path / "checkpoints" / "model_final.pth").is_file()
