"""LVIS-format loading and registration, metadata read lazily from the json, builtin LVIS names, and the dataset
statistics LVIS training uses (federated-loss class weights, repeat-factor sampling)."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch

from detlightning.config import get_d2_cfg
from detlightning.data import DatasetCatalog, MetadataCatalog
from detlightning.data.datasets import get_lvis_instances_meta, load_lvis_json, register_lvis_instances
from detlightning.data.datasets.builtin import datasets_root
from detlightning.data.detection_utils import get_fed_loss_cls_weights
from detlightning.data.samplers import RepeatFactorTrainingSampler
from detlightning.layers import ShapeSpec
from detlightning.modeling.roi_heads.fast_rcnn import FastRCNNOutputLayers
from detlightning.structures import BoxMode

SQUARE = [[1.0, 2.0, 11.0, 2.0, 11.0, 10.0, 1.0, 10.0]]


def _lvis_json() -> dict:
    """Three images (two with COCO urls from different splits, one with a plain file_name), three categories
    (rare / common / frequent, image counts 1, 4, 9; the third one's first synonym differs from its name)."""
    return {
        "info": {"description": "tiny LVIS v1 fixture"},
        "licenses": [],
        "categories": [
            {"id": 3, "name": "banana", "synonyms": ["banana_fruit", "banana"], "frequency": "f", "image_count": 9,
             "instance_count": 12, "synset": "banana.n.02", "def": "elongated fruit"},
            {"id": 1, "name": "aerosol_can", "synonyms": ["aerosol_can", "spray_can"], "frequency": "r",
             "image_count": 1, "instance_count": 1, "synset": "aerosol.n.02", "def": "a dispenser"},
            {"id": 2, "name": "apple", "synonyms": ["apple"], "frequency": "c", "image_count": 4,
             "instance_count": 5, "synset": "apple.n.01", "def": "fruit"},
        ],
        "images": [
            {"id": 7, "height": 40, "width": 60, "coco_url": "http://images.cocodataset.org/val2017/000000000007.jpg",
             "neg_category_ids": [1], "not_exhaustive_category_ids": [3]},
            {"id": 3, "height": 30, "width": 50, "coco_url": "http://images.cocodataset.org/train2017/000000000003.jpg",
             "neg_category_ids": [], "not_exhaustive_category_ids": []},
            {"id": 5, "height": 20, "width": 20, "file_name": "extra/img5.jpg"},
        ],
        "annotations": [
            {"id": 10, "image_id": 7, "category_id": 2, "bbox": [1.0, 2.0, 10.0, 8.0], "area": 80.0,
             "segmentation": SQUARE, "note": "a"},
            {"id": 11, "image_id": 7, "category_id": 3, "bbox": [20.0, 5.0, 5.0, 5.0], "area": 25.0,
             "segmentation": [[20.0, 5.0, 25.0, 5.0, 25.0, 10.0]], "note": "b"},
            {"id": 12, "image_id": 3, "category_id": 1, "bbox": [0.0, 0.0, 4.0, 4.0], "area": 16.0,
             "segmentation": [[0.0, 0.0, 4.0, 0.0, 4.0, 4.0, 0.0, 4.0]], "note": "c"},
            {"id": 13, "image_id": 3, "category_id": 3, "bbox": [5.0, 5.0, 6.0, 6.0], "area": 36.0,
             "segmentation": [[5.0, 5.0, 11.0, 5.0, 11.0, 11.0], [5.0, 11.0, 6.0, 11.0, 6.0, 10.0]], "note": "d"},
        ],
    }


def _write(path: Path, data: dict) -> str:
    path.write_text(json.dumps(data))
    return str(path)


@pytest.fixture
def lvis_json(tmp_path: Path) -> str:
    return _write(tmp_path / "lvis_tiny.json", _lvis_json())


@pytest.fixture
def registered(lvis_json: str, request: pytest.FixtureRequest):
    """A registered LVIS dataset with a per-test name; removed afterwards."""
    name = f"lvis_v1_tiny_{request.node.name}"
    register_lvis_instances(name, {}, lvis_json, "/images/coco")
    yield name
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def test_load_lvis_json_records(lvis_json: str) -> None:
    dicts = load_lvis_json(lvis_json, "/images/coco", extra_annotation_keys=["note"])
    assert [d["image_id"] for d in dicts] == [3, 5, 7]
    assert [d["file_name"] for d in dicts] == [
        os.path.join("/images/coco", "train2017", "000000000003.jpg"),
        os.path.join("/images/coco", "extra/img5.jpg"),
        os.path.join("/images/coco", "val2017", "000000000007.jpg"),
    ]
    assert [(d["height"], d["width"]) for d in dicts] == [(30, 50), (20, 20), (40, 60)]
    # the per-image federated labels keep the json's category ids
    assert dicts[2]["neg_category_ids"] == [1] and dicts[2]["not_exhaustive_category_ids"] == [3]
    assert dicts[1]["neg_category_ids"] == [] and dicts[1]["annotations"] == []

    anns7 = dicts[2]["annotations"]
    assert [a["category_id"] for a in anns7] == [1, 2]  # LVIS ids 2, 3 -> 0-based
    assert anns7[0] == {"bbox": [1.0, 2.0, 10.0, 8.0], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 1,
                        "segmentation": SQUARE, "note": "a"}
    assert [a["category_id"] for a in dicts[0]["annotations"]] == [0, 2]
    assert len(dicts[0]["annotations"][1]["segmentation"]) == 2


def test_register_reads_category_metadata_from_json_lazily(registered: str, lvis_json: str) -> None:
    meta = MetadataCatalog.get(registered)
    assert meta.evaluator_type == "lvis" and meta.json_file == lvis_json and meta.image_root == "/images/coco"
    assert "thing_classes" not in meta.as_dict()  # nothing read at registration
    # sorted by id; a category's first synonym is its class name
    assert meta.thing_classes == ["aerosol_can", "apple", "banana_fruit"]
    assert meta.thing_frequencies == ["r", "c", "f"]
    assert meta.class_image_count == [{"id": 1, "image_count": 1}, {"id": 2, "image_count": 4},
                                      {"id": 3, "image_count": 9}]
    assert not hasattr(meta, "thing_dataset_id_to_contiguous_id")  # ids are 1..N: id - 1
    assert get_lvis_instances_meta(registered) == {
        "thing_classes": ["aerosol_can", "apple", "banana_fruit"],
        "thing_frequencies": ["r", "c", "f"],
        "class_image_count": meta.class_image_count,
    }
    dicts = DatasetCatalog.get(registered)
    assert len(dicts) == 3 and dicts[2]["annotations"][1]["category_id"] == 2


def test_loading_fills_metadata_and_keeps_given_values(lvis_json: str) -> None:
    name = "lvis_v1_tiny_given_names"
    register_lvis_instances(name, {"thing_classes": ["A", "B", "C"]}, lvis_json, "/images")
    try:
        DatasetCatalog.get(name)
        meta = MetadataCatalog.get(name)
        assert meta.thing_classes == ["A", "B", "C"]  # given at registration: kept
        assert meta.as_dict()["thing_frequencies"] == ["r", "c", "f"]  # set by loading
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def test_metadata_without_json(tmp_path: Path) -> None:
    # family names and splits whose json is not there yet: no category metadata
    assert get_lvis_instances_meta("lvis_v1") == {} and get_lvis_instances_meta("lvis_v0.5") == {}
    with pytest.raises(ValueError, match="No LVIS metadata for dataset 'my_data'"):
        get_lvis_instances_meta("my_data")
    assert len(get_lvis_instances_meta("lvis_v0.5_cocofied")["thing_classes"]) == 80

    missing = str(tmp_path / "absent.json")
    name = "lvis_v1_tiny_absent"
    register_lvis_instances(name, {}, missing, str(tmp_path))
    try:
        assert get_lvis_instances_meta(name) == {}
        meta = MetadataCatalog.get(name)
        assert meta.get("thing_classes") is None
        with pytest.raises(AttributeError, match="absent.json, which does not exist"):
            meta.class_image_count
        with pytest.raises(FileNotFoundError, match="absent.json"):
            DatasetCatalog.get(name)
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def test_builtin_lvis_names() -> None:
    root = datasets_root()
    expected = {
        "lvis_v1_train": "lvis_v1_train.json",
        "lvis_v1_val": "lvis_v1_val.json",
        "lvis_v1_test_dev": "lvis_v1_image_info_test_dev.json",
        "lvis_v1_test_challenge": "lvis_v1_image_info_test_challenge.json",
        "lvis_v0.5_train": "lvis_v0.5_train.json",
        "lvis_v0.5_val": "lvis_v0.5_val.json",
        "lvis_v0.5_val_rand_100": "lvis_v0.5_val_rand_100.json",
        "lvis_v0.5_test": "lvis_v0.5_image_info_test.json",
        "lvis_v0.5_train_cocofied": "lvis_v0.5_train_cocofied.json",
        "lvis_v0.5_val_cocofied": "lvis_v0.5_val_cocofied.json",
    }
    for name, json_name in expected.items():
        assert name in DatasetCatalog.list()
        meta = MetadataCatalog.get(name)
        assert meta.json_file == os.path.join(root, "lvis", json_name)
        assert meta.image_root == os.path.join(root, "coco") and meta.evaluator_type == "lvis"
    cocofied = MetadataCatalog.get("lvis_v0.5_val_cocofied")
    assert len(cocofied.thing_classes) == 80 and cocofied.thing_dataset_id_to_contiguous_id[90] == 79
    if not os.path.exists(os.path.join(root, "lvis", "lvis_v1_val.json")):
        with pytest.raises(FileNotFoundError, match=r"\$DETLIGHTNING_DATASETS/lvis"):
            DatasetCatalog.get("lvis_v1_val")


def test_non_contiguous_category_ids_are_mapped(tmp_path: Path) -> None:
    data = _lvis_json()
    for c in data["categories"]:
        c["id"] *= 10
    for a in data["annotations"]:
        a["category_id"] *= 10
    path = _write(tmp_path / "sparse.json", data)
    name = "lvis_v1_tiny_sparse"
    register_lvis_instances(name, {}, path, str(tmp_path))
    try:
        assert MetadataCatalog.get(name).thing_dataset_id_to_contiguous_id == {10: 0, 20: 1, 30: 2}
        dicts = DatasetCatalog.get(name)
        assert [a["category_id"] for a in dicts[2]["annotations"]] == [1, 2]
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


@pytest.mark.parametrize(
    "edit, error, match",
    [
        (lambda d: d["annotations"][1].update(segmentation=[[1.0, 2.0, 3.0, 4.0]]), ValueError,
         "annotation id 11 .*polygon with 4 coordinates"),
        (lambda d: d["annotations"][2].update(id=10), ValueError, r"not unique; repeated: \[10\]"),
        (lambda d: d["annotations"][0].update(category_id=4), ValueError, "annotation id 10 .*outside 1..3"),
        (lambda d: d["annotations"][0].update(bbox=[1.0, 2.0, -3.0, 4.0]), ValueError, "negative width"),
        (lambda d: d["images"][2].pop("file_name"), KeyError, "image id 5 has neither 'coco_url' nor 'file_name'"),
    ],
)
def test_load_lvis_json_errors_name_the_culprit(tmp_path: Path, edit, error, match) -> None:
    data = _lvis_json()
    edit(data)
    path = _write(tmp_path / "bad.json", data)
    with pytest.raises(error, match=match):
        load_lvis_json(path, str(tmp_path))


def test_fed_loss_weights_and_repeat_factors_from_lvis(registered: str) -> None:
    # image counts 1, 4, 9 -> image_count ** 0.5
    assert get_fed_loss_cls_weights(registered, 0.5).tolist() == [1.0, 2.0, 3.0]

    dicts = DatasetCatalog.get(registered)  # images 3, 5, 7
    # category image frequencies over 3 images: id1 -> 1/3, id2 -> 1/3, id3 -> 2/3; threshold 0.5 gives
    # sqrt(0.5 / (1/3)) = sqrt(1.5) for the two rarer ones and 1 (clamped) for id3; image 5 has no annotation
    factors = RepeatFactorTrainingSampler.repeat_factors_from_category_frequency(dicts, 0.5)
    assert factors.tolist() == pytest.approx([math.sqrt(1.5), 1.0, math.sqrt(1.5)])


def test_fed_loss_from_config(registered: str) -> None:
    cfg = get_d2_cfg()
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 3
    cfg.MODEL.ROI_BOX_HEAD.USE_SIGMOID_CE = True
    cfg.MODEL.ROI_BOX_HEAD.USE_FED_LOSS = True
    cfg.MODEL.ROI_BOX_HEAD.FED_LOSS_FREQ_WEIGHT_POWER = 0.5
    cfg.MODEL.ROI_BOX_HEAD.FED_LOSS_NUM_CLASSES = 2
    cfg.DATASETS.TRAIN = (registered,)
    predictor = FastRCNNOutputLayers(cfg, ShapeSpec(channels=8))
    assert predictor.use_fed_loss
    assert predictor.fed_loss_cls_weights.tolist() == [1.0, 2.0, 3.0]
    assert "fed_loss_cls_weights" in predictor.state_dict()
    # every foreground class has a ground truth: the federated loss covers all of them, i.e. plain sigmoid BCE
    logits = torch.tensor([[0.5, -1.0, 2.0, 0.0], [1.5, 0.3, -0.7, 0.0], [-0.2, 0.1, 0.9, 0.0]])
    gt = torch.tensor([0, 1, 2])
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits[:, :3], torch.eye(3), reduction="sum") / 3
    assert torch.allclose(predictor.sigmoid_cross_entropy_loss(logits, gt), expected)

    cfg.DATASETS.TRAIN = ()
    with pytest.raises(ValueError, match="USE_FED_LOSS needs DATASETS.TRAIN"):
        FastRCNNOutputLayers(cfg, ShapeSpec(channels=8))
