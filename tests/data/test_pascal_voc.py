"""Pascal VOC loader and registration on a tiny VOC folder written in VOC's XML format."""
from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from detlightning.data import DatasetCatalog, MetadataCatalog
from detlightning.data.datasets import load_voc_instances, register_pascal_voc
from detlightning.data.datasets.pascal_voc import CLASS_NAMES
from detlightning.structures import BoxMode

from .voc_fixture import write_voc

IMAGES = {
    "000005": (30, 40, [("dog", 1, 1, 40, 30, 0), ("person", 5, 6, 15, 20, 1)]),
    "000007": (20, 25, [("cat", 3, 4, 10, 12, 0)]),
    "000009": (10, 10, []),
}


@pytest.fixture
def voc_root(tmp_path: Path) -> Path:
    return write_voc(tmp_path / "VOC2007", IMAGES, {"trainval": ["000005", "000007", "000009"], "test": ["000007"]})


def test_load_voc_instances(voc_root: Path) -> None:
    dicts = load_voc_instances(str(voc_root), "trainval", CLASS_NAMES)
    assert [d["image_id"] for d in dicts] == ["000005", "000007", "000009"]
    d0 = dicts[0]
    assert d0["file_name"] == str(voc_root / "JPEGImages" / "000005.jpg")
    assert (d0["height"], d0["width"]) == (30, 40)
    # 1-based inclusive (1, 1, 40, 30) is the whole 40x30 image: (0, 0, 40, 30) in XYXY_ABS
    assert d0["annotations"][0] == {"category_id": 11, "bbox": [0.0, 0.0, 40.0, 30.0], "bbox_mode": BoxMode.XYXY_ABS}
    # difficult objects are kept
    assert d0["annotations"][1]["category_id"] == 14 and d0["annotations"][1]["bbox"] == [4.0, 5.0, 15.0, 20.0]
    assert dicts[1]["annotations"][0]["category_id"] == 7
    assert dicts[2]["annotations"] == []
    # a one-line image set (numpy.loadtxt would give a 0-d array here)
    assert [d["image_id"] for d in load_voc_instances(str(voc_root), "test", CLASS_NAMES)] == ["000007"]


def test_custom_class_names_and_errors(voc_root: Path) -> None:
    dicts = load_voc_instances(str(voc_root), "test", ["cat"])
    assert dicts[0]["annotations"][0]["category_id"] == 0
    with pytest.raises(KeyError, match=r"000005\.xml.*'dog'"):
        load_voc_instances(str(voc_root), "trainval", ["cat"])
    with pytest.raises(FileNotFoundError, match="val.txt"):
        load_voc_instances(str(voc_root), "val", CLASS_NAMES)


def test_register_pascal_voc(voc_root: Path) -> None:
    name = f"_voc_{uuid.uuid4().hex[:8]}"
    register_pascal_voc(name, str(voc_root), "trainval", 2007, class_names=("cat", "dog", "person"))
    try:
        meta = MetadataCatalog.get(name)
        assert (meta.thing_classes, meta.dirname, meta.year, meta.split) == (
            ["cat", "dog", "person"], str(voc_root), 2007, "trainval")
        assert [a["category_id"] for a in DatasetCatalog.get(name)[0]["annotations"]] == [1, 2]
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def test_builtin_voc_names() -> None:
    expected = [f"voc_2007_{s}" for s in ("trainval", "train", "val", "test")]
    expected += [f"voc_2012_{s}" for s in ("trainval", "train", "val")]
    for name in expected:
        meta = MetadataCatalog.get(name)
        year = int(name[4:8])
        assert meta.evaluator_type == "pascal_voc" and meta.year == year and meta.split == name[9:]
        assert Path(meta.dirname).name == f"VOC{year}"
        assert meta.thing_classes == list(CLASS_NAMES) and len(CLASS_NAMES) == 20
