"""build_evaluator picks the evaluator from the dataset's metadata evaluator_type."""
from __future__ import annotations

from detlightning.data import DatasetCatalog, MetadataCatalog
from detlightning.evaluation import (
    COCOEvaluator,
    COCOPanopticEvaluator,
    DatasetEvaluators,
    SemSegEvaluator,
    build_evaluator,
)


def test_build_evaluator_by_evaluator_type(tmp_path) -> None:
    cfg = {"paths": {"output_dir": str(tmp_path)}, "test": {"keypoint_oks_sigmas": []}}
    for name in ("be_sem", "be_pan", "be_odd"):
        DatasetCatalog.register(name, lambda: [])
    MetadataCatalog.get("be_sem").set(evaluator_type="sem_seg", stuff_classes=["a", "b"], ignore_label=255)
    MetadataCatalog.get("be_pan").set(evaluator_type="coco_panoptic_seg", thing_classes=["t"], stuff_classes=["t", "s"],
                                      thing_dataset_id_to_contiguous_id={1: 0}, panoptic_root=str(tmp_path),
                                      panoptic_json=str(tmp_path / "p.json"))
    MetadataCatalog.get("be_odd").set(evaluator_type="no_such_evaluator")

    sem = build_evaluator(cfg, "be_sem")
    assert isinstance(sem, SemSegEvaluator)
    pan = build_evaluator(cfg, "be_pan", str(tmp_path / "pan"))
    assert isinstance(pan, DatasetEvaluators)
    assert [type(e) for e in pan._evaluators] == [COCOPanopticEvaluator, COCOEvaluator]
    assert build_evaluator(cfg, "be_odd") is None
