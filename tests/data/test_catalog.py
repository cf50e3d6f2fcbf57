from __future__ import annotations

import pytest

from detlightning.data import DatasetCatalog, Metadata, MetadataCatalog


@pytest.fixture()
def name(request: pytest.FixtureRequest):
    n = f"test_catalog_{request.node.name}"
    yield n
    for cat in (DatasetCatalog, MetadataCatalog):
        if n in cat:
            cat.remove(n)


def test_register_get_list_remove(name: str):
    calls = []

    def load():
        calls.append(1)
        return [{"file_name": "a.png", "image_id": 1}]

    DatasetCatalog.register(name, load)
    assert name in DatasetCatalog.list()
    assert DatasetCatalog.get(name) == [{"file_name": "a.png", "image_id": 1}]
    assert DatasetCatalog.get(name) == [{"file_name": "a.png", "image_id": 1}]
    assert len(calls) == 2  # the function is called on every get (no caching behind the user's back)
    DatasetCatalog.remove(name)
    assert name not in DatasetCatalog.list()
    with pytest.raises(KeyError):
        DatasetCatalog.remove(name)


def test_register_twice_and_non_callable(name: str):
    DatasetCatalog.register(name, lambda: [])
    with pytest.raises(ValueError, match="already registered"):
        DatasetCatalog.register(name, lambda: [])
    with pytest.raises(TypeError, match="callable"):
        DatasetCatalog.register(name + "_x", [{"file_name": "x"}])  # type: ignore[arg-type]


def test_unknown_name_lists_registered_names(name: str):
    DatasetCatalog.register(name, lambda: [])
    with pytest.raises(KeyError) as e:
        DatasetCatalog.get("no_such_dataset_xyz")
    msg = str(e.value)
    assert "no_such_dataset_xyz" in msg and name in msg and "shapes_train" in msg


def test_builtin_names_registered():
    names = DatasetCatalog.list()
    for n in ("coco_2017_train", "coco_2017_val", "keypoints_coco_2017_train", "coco_2017_train_panoptic",
              "coco_2017_train_panoptic_separated", "coco_2017_val_panoptic_stuffonly", "shapes_train", "shapes_val",
              "shapes_train_panoptic", "shapes_val_panoptic_separated"):  # fmt: skip
        assert n in names, n
    meta = MetadataCatalog.get("coco_2017_val")
    assert len(meta.thing_classes) == 80 and meta.thing_classes[0] == "person"
    assert meta.thing_dataset_id_to_contiguous_id[90] == 79 and meta.evaluator_type == "coco"
    kp = MetadataCatalog.get("keypoints_coco_2017_val")
    assert len(kp.keypoint_names) == 17 and ["left_eye", "right_eye"] in [list(p) for p in kp.keypoint_flip_map]
    sep = MetadataCatalog.get("coco_2017_val_panoptic_separated")
    assert len(sep.stuff_classes) == 54 and sep.stuff_classes[0] == "things"


def test_missing_coco_files_name_expected_paths(tmp_path, monkeypatch):
    from detlightning.data.datasets.builtin import register_all_coco

    # Re-register COCO under a temporary catalog state rooted at an empty folder.
    saved = dict(DatasetCatalog), dict(MetadataCatalog)
    try:
        for n in [k for k in DatasetCatalog if "coco" in k]:
            DatasetCatalog.remove(n)
            MetadataCatalog.remove(n)
        register_all_coco(str(tmp_path))
        with pytest.raises(FileNotFoundError) as e:
            DatasetCatalog.get("coco_2017_val")
        msg = str(e.value)
        assert str(tmp_path / "coco/annotations/instances_val2017.json") in msg
        assert str(tmp_path / "coco/val2017") in msg
        with pytest.raises(FileNotFoundError, match="panoptic_val2017.json"):
            DatasetCatalog.get("coco_2017_val_panoptic")
    finally:
        DatasetCatalog.clear()
        DatasetCatalog.update(saved[0])
        MetadataCatalog.clear()
        MetadataCatalog.update(saved[1])


def test_metadata_set_get_and_conflicts(name: str):
    meta = MetadataCatalog.get(name)
    assert MetadataCatalog.get(name) is meta
    assert meta.name == name
    meta.thing_classes = ["a", "b"]
    meta.thing_classes = ["a", "b"]  # same value: fine
    meta.thing_classes = ("a", "b")  # tuple vs list (yaml/json round trips): same value
    with pytest.raises(ValueError, match="thing_classes"):
        meta.thing_classes = ["a", "c"]
    meta.set(evaluator_type="coco", json_file="x.json")
    assert meta.get("evaluator_type") == "coco" and meta.get("missing", 7) == 7
    with pytest.raises(AttributeError) as e:
        _ = meta.stuff_classes
    assert "stuff_classes" in str(e.value) and "thing_classes" in str(e.value)  # lists the available keys
    assert meta.as_dict()["json_file"] == "x.json"
    assert meta.class_names == ["a", "b"]  # d2-parity: renamed key still readable


def test_metadata_object_standalone():
    m = Metadata(name="standalone", thing_classes=["x"])
    assert m.thing_classes == ["x"]
    with pytest.raises(ValueError):
        m.thing_classes = ["y"]
    with pytest.raises(ValueError):
        MetadataCatalog.get("")
