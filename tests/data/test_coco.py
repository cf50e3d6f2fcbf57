from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_util
import pytest
from PIL import Image

from detlightning.data import DatasetCatalog, MetadataCatalog
from detlightning.data.datasets import (
    convert_to_coco_dict,
    load_coco_json,
    load_coco_panoptic_json,
    load_sem_seg,
    register_coco_instances,
)
from detlightning.structures import BoxMode


def _uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE, computed by hand: run lengths of the column-major flattening, starting with 0s."""
    flat = mask.flatten(order="F")
    counts, current, run = [], 0, 0
    for v in flat:
        if v == current:
            run += 1
        else:
            counts.append(run)
            current, run = v, 1
    counts.append(run)
    return {"size": list(mask.shape), "counts": counts}


def _coco_json() -> dict:
    rle_mask = np.zeros((20, 30), dtype=np.uint8)
    rle_mask[2:6, 3:9] = 1
    return {
        "images": [
            {"id": 5, "file_name": "b.jpg", "height": 20, "width": 30},
            {"id": 3, "file_name": "a.jpg", "height": 40, "width": 50},
        ],
        # unsorted, non-contiguous ids: contiguous ids follow the sorted dataset ids
        "categories": [{"id": 7, "name": "seven"}, {"id": 3, "name": "three"}],
        "annotations": [
            {"id": 11, "image_id": 3, "category_id": 7, "bbox": [1, 2, 10, 20], "iscrowd": 0, "area": 1,
             "segmentation": [[1, 2, 11, 2, 11, 22, 1, 22]], "keypoints": [4, 5, 2, 0, 0, 0]},
            {"id": 12, "image_id": 5, "category_id": 3, "bbox": [3, 2, 6, 4], "iscrowd": 1, "area": 24,
             "segmentation": _uncompressed_rle(rle_mask)},
            {"id": 13, "image_id": 3, "category_id": 3, "bbox": [5, 5, 3, 3], "iscrowd": 0,
             "segmentation": [[1, 2, 3, 4]]},  # fewer than 3 points: dropped with a warning
            {"id": 14, "image_id": 3, "category_id": 3, "bbox": [0, 0, 2, 2], "iscrowd": 0},
        ],
    }  # fmt: skip


def _write(tmp_path: Path, data, name: str = "ann.json") -> Path:
    p = tmp_path / name
    p.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return p


@pytest.fixture()
def dataset_name(request: pytest.FixtureRequest):
    n = f"test_coco_{request.node.name}"
    yield n
    for cat in (DatasetCatalog, MetadataCatalog):
        if n in cat:
            cat.remove(n)


def test_load_coco_json_fields(tmp_path: Path, dataset_name: str, caplog: pytest.LogCaptureFixture):
    path = _write(tmp_path, _coco_json())
    with caplog.at_level(logging.WARNING):
        dicts = load_coco_json(path, "/images", dataset_name)
    assert "13" in caplog.text  # the dropped annotation is named
    assert [d["image_id"] for d in dicts] == [3, 5]  # sorted by image id
    a, b = dicts
    assert a["file_name"] == "/images/a.jpg" and (a["height"], a["width"]) == (40, 50)
    assert [o["category_id"] for o in a["annotations"]] == [1, 0]  # 7 -> 1, 3 -> 0
    first = a["annotations"][0]
    assert first["bbox"] == [1, 2, 10, 20] and first["bbox_mode"] == BoxMode.XYWH_ABS
    assert first["segmentation"] == [[1, 2, 11, 2, 11, 22, 1, 22]]
    assert first["keypoints"] == [4.5, 5.5, 2, 0.5, 0.5, 0]  # pixel indices -> continuous coordinates
    assert "segmentation" not in a["annotations"][1]
    crowd = b["annotations"][0]
    assert crowd["iscrowd"] == 1 and isinstance(crowd["segmentation"], dict)
    expected = np.zeros((20, 30), dtype=np.uint8)
    expected[2:6, 3:9] = 1
    np.testing.assert_array_equal(mask_util.decode(crowd["segmentation"]), expected)

    meta = MetadataCatalog.get(dataset_name)
    assert meta.thing_classes == ["three", "seven"]
    assert meta.thing_dataset_id_to_contiguous_id == {3: 0, 7: 1}


def test_register_and_convert_back(tmp_path: Path, dataset_name: str):
    path = _write(tmp_path, _coco_json())
    register_coco_instances(dataset_name, {}, path, tmp_path)
    assert MetadataCatalog.get(dataset_name).json_file == str(path)
    assert len(DatasetCatalog.get(dataset_name)) == 2
    coco = convert_to_coco_dict(dataset_name)
    assert sorted(c["id"] for c in coco["categories"]) == [3, 7]  # dataset ids restored
    by_cat = {a["category_id"] for a in coco["annotations"]}
    assert by_cat == {3, 7}
    kp = [a for a in coco["annotations"] if "keypoints" in a][0]
    assert kp["keypoints"][:2] == [4.0, 5.0] and kp["num_keypoints"] == 1
    crowd = [a for a in coco["annotations"] if a["iscrowd"]][0]
    assert crowd["area"] == 24.0 and isinstance(crowd["segmentation"]["counts"], str)
    json.dumps(coco)  # serialisable


def _mutated(mutate) -> dict:
    data = _coco_json()
    mutate(data)
    return data


@pytest.mark.parametrize(
    ("mutate", "exc", "fragments"),
    [
        (lambda d: d["annotations"][0].update(bbox=[1, 2, -3, 4]), ValueError, ["annotation id 11", "negative"]),
        (lambda d: d["annotations"][0].update(bbox=[1, 2, 3]), ValueError, ["annotation id 11", "4 numbers"]),
        (lambda d: d["annotations"][3].update(bbox=[1, 2, float("nan"), 4]), ValueError,
         ["annotation id 14", "finite"]),
        (lambda d: d["annotations"][3].update(category_id=99), KeyError, ["annotation id 14", "category_id=99"]),
        (lambda d: d["annotations"][3].pop("bbox"), KeyError, ["annotation id 14", "bbox"]),
        (lambda d: d["annotations"][3].update(id=11), ValueError, ["not unique"]),
        (lambda d: d["images"][0].pop("height"), KeyError, ["image id 5", "height"]),
        (lambda d: d.pop("images"), KeyError, ["images"]),
        (lambda d: d["annotations"][0].update(keypoints=[1, 2]), ValueError, ["annotation id 11", "multiple of 3"]),
    ],
)  # fmt: skip
def test_bad_annotations_name_file_and_id(tmp_path: Path, dataset_name: str, mutate, exc, fragments):
    path = _write(tmp_path, _mutated(mutate))
    with pytest.raises(exc) as e:
        load_coco_json(path, tmp_path, dataset_name)
    msg = str(e.value)
    assert str(path) in msg
    for f in fragments:
        assert f in msg


def test_bad_json_and_missing_file(tmp_path: Path):
    bad = _write(tmp_path, '{"images": [', "bad.json")
    with pytest.raises(ValueError, match="bad.json"):
        load_coco_json(bad, tmp_path)
    with pytest.raises(FileNotFoundError, match="nope.json"):
        load_coco_json(tmp_path / "nope.json", tmp_path)


def test_orphan_annotations_are_reported(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    data = _coco_json()
    data["annotations"].append({"id": 99, "image_id": 1234, "category_id": 3, "bbox": [0, 0, 1, 1]})
    with caplog.at_level(logging.WARNING):
        dicts = load_coco_json(_write(tmp_path, data), tmp_path)
    assert "99" in caplog.text and sum(len(d["annotations"]) for d in dicts) == 3


def test_load_sem_seg(tmp_path: Path):
    img_dir, gt_dir = tmp_path / "img", tmp_path / "gt"
    img_dir.mkdir()
    gt_dir.mkdir()
    for i, (h, w) in enumerate([(10, 12), (7, 9)]):
        Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(img_dir / f"{i + 1}.jpg")
        Image.fromarray(np.full((h, w), i, np.uint8)).save(gt_dir / f"{i + 1}.png")
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(img_dir / "3.jpg")  # no label: left out
    dicts = load_sem_seg(gt_dir, img_dir)
    assert [(d["image_id"], d["height"], d["width"]) for d in dicts] == [(1, 10, 12), (2, 7, 9)]
    assert dicts[1]["sem_seg_file_name"] == str(gt_dir / "2.png") and dicts[1]["file_name"] == str(img_dir / "2.jpg")
    with pytest.raises(FileNotFoundError):
        load_sem_seg(tmp_path / "missing", img_dir)


def test_panoptic_segments_match_png(shapes_root):
    """segments_info of the shapes panoptic dataset agree with the ids decoded from its PNGs."""
    name = "tshapes_val_panoptic"
    meta = MetadataCatalog.get(name)
    dicts = load_coco_panoptic_json(meta.panoptic_json, meta.image_root, meta.panoptic_root, meta.as_dict(), ".png")
    assert len(dicts) == 4
    for d in dicts:
        rgb = np.asarray(Image.open(d["pan_seg_file_name"]), dtype=np.int64)
        ids = rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]
        assert set(np.unique(ids)) == {s["id"] for s in d["segments_info"]}  # every pixel is labelled
        for s in d["segments_info"]:
            assert s["area"] == int((ids == s["id"]).sum())
            names = meta.stuff_classes if not s["isthing"] else meta.thing_classes
            assert names[s["category_id"]] in {"circle", "triangle", "square", "sky", "ground"}
    assert DatasetCatalog.get(name)[0]["file_name"].endswith(".png")
