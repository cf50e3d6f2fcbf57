"""Start-up check that the training data's classes fit the model: 3 categories and ``num_classes=1`` fail before
the first step (train(), DefaultTrainer, the check itself) naming both numbers and the key to set."""
from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from detlightning.config import compose
from detlightning.data import DatasetCatalog, MetadataCatalog
from detlightning.data.class_check import check_classes_fit_model, model_class_counts, train_dataset_names
from detlightning.modeling import build_model

from .conftest import tiny_overrides

SMALL = ["model.resnets.depth=18", "model.resnets.res2_out_channels=64", "model.fpn.out_channels=32"]


def _dicts(category_ids: list[int]) -> list[dict]:
    return [{"file_name": f"img{i}.jpg", "image_id": i, "height": 32, "width": 32,
             "annotations": [{"bbox": [1, 1, 8, 8], "bbox_mode": 1, "category_id": c, "iscrowd": 0}]}
            for i, c in enumerate(category_ids)]  # fmt: skip


@pytest.fixture
def register() -> Iterator:
    names: list[str] = []

    def _register(name: str, category_ids: list[int], **metadata) -> str:
        DatasetCatalog.register(name, lambda: _dicts(category_ids))
        if metadata:
            MetadataCatalog.get(name).set(**metadata)
        names.append(name)
        return name

    yield _register
    for name in names:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def _model(*overrides: str) -> torch.nn.Module:
    return build_model(compose([*SMALL, *overrides]))


def test_metadata_count_larger_than_model(register):
    name = register("cc_three", [0, 1, 2], thing_classes=["a", "b", "c"])
    model = _model("model=faster_rcnn", "model.roi_heads.num_classes=1")
    assert model_class_counts(model)[0][2] == 1
    with pytest.raises(ValueError, match=r"'cc_three' has 3 thing_classes in its metadata \['a', 'b', 'c'\], but the "
                                         r"model predicts 1 classes \(model\.roi_heads\.num_classes=1\): set "
                                         r"model\.roi_heads\.num_classes .*MODEL\.ROI_HEADS\.NUM_CLASSES.* to 3"):
        check_classes_fit_model(model, [name])
    check_classes_fit_model(_model("model=faster_rcnn", "model.roi_heads.num_classes=3"), [name])  # fits


def test_annotations_checked_without_metadata(register):
    name = register("cc_nometa", [0, 4, 1])
    with pytest.raises(ValueError, match=r"annotations with category_id up to 4 \(in img1\.jpg\).* predicts 2 "
                                         r"classes .* to 5"):
        check_classes_fit_model(_model("model=faster_rcnn", "model.roi_heads.num_classes=2"), [name])
    check_classes_fit_model(_model("model=faster_rcnn", "model.roi_heads.num_classes=5"), [name])


def test_retinanet_and_semantic_keys(register):
    name = register("cc_sem", [0, 1, 2], thing_classes=["a", "b", "c"], stuff_classes=["things", "sky", "ground", "x"])
    with pytest.raises(ValueError, match=r"model\.retinanet\.num_classes=2\): set model\.retinanet\.num_classes"):
        check_classes_fit_model(_model("model=retinanet", "model.retinanet.num_classes=2"), [name])
    sem = _model("model=semantic_fpn", "model.sem_seg_head.num_classes=3")
    assert [(f, n) for f, _, n in model_class_counts(sem)] == [("stuff_classes", 3)]
    with pytest.raises(ValueError, match=r"4 stuff_classes .* predicts 3 classes \(model\.sem_seg_head\.num_classes=3"):
        check_classes_fit_model(sem, [name])


def test_more_model_classes_warn(register, caplog):
    name = register("cc_two", [0, 1], thing_classes=["a", "b"])
    with caplog.at_level(logging.WARNING, logger="detlightning.data.class_check"):
        check_classes_fit_model(_model("model=faster_rcnn", "model.roi_heads.num_classes=80"), [name])
    assert "'cc_two' has 2 thing_classes but model.roi_heads.num_classes is 80" in caplog.text


def test_train_dataset_names_of_both_config_kinds():
    from detlightning import model_zoo

    assert train_dataset_names(compose([])) == ["shapes_train"]
    lazy = model_zoo.get_config("common/data/coco.py").dataloader
    assert train_dataset_names({"dataloader": lazy}) == ["coco_2017_train"]


def test_train_fails_at_start_up(shapes_root: Path, tmp_path: Path):
    """The shapes dataset has 3 classes; a 1-class model stops before its first step (no IndexError in the loss)."""
    from detlightning.engine import train

    cfg = compose(tiny_overrides(shapes_root) + ["model.roi_heads.num_classes=1", f"paths.output_dir={tmp_path}"])
    with pytest.raises(ValueError, match=r"'shapes_train' has 3 thing_classes .* predicts 1 classes"):
        train(cfg)
    assert not list(tmp_path.rglob("*.ckpt"))


def test_default_trainer_fails_at_construction(shapes_root: Path, tmp_path: Path):
    from detlightning.engine import DefaultTrainer

    cfg = compose(tiny_overrides(shapes_root, model="retinanet") + ["model.retinanet.num_classes=2",
                                                                     f"paths.output_dir={tmp_path}"])
    with pytest.raises(ValueError, match=r"'shapes_train' has 3 thing_classes .* predicts 2 classes"):
        DefaultTrainer(cfg)
