"""Bad dataset inputs (issue 16): each is refused with a message naming the file, the id and the field, or dropped
with a warning naming the annotations, never silently turned into wrong training targets."""
from __future__ import annotations

import json
import logging
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from detlightning.checkpoint.safe_pickle import ALLOW_UNSAFE_PICKLE_ENV
from detlightning.data import DatasetMapper, load_proposals_into_dataset
from detlightning.data import detection_utils as utils
from detlightning.data.datasets import load_coco_json
from detlightning.structures import BoxMode, PolygonMasks


def _coco(tmp_path: Path, annotations: list[dict], images: list[dict] | None = None) -> Path:
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(tmp_path / "a.png")
    data = {
        "images": images or [{"id": 1, "file_name": "a.png", "height": 20, "width": 30}],
        "categories": [{"id": 1, "name": "thing"}, {"id": 2, "name": "other"}],
        "annotations": annotations,
    }
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(data))
    return path


def _ann(ann_id: int, **kw) -> dict:
    return {"id": ann_id, "image_id": 1, "category_id": 1, "bbox": [2, 3, 10, 8], "iscrowd": 0, **kw}


# ----------------------------------------------------------------------------------- 2: proposal files
class _RunsCode:
    """Unpickling this creates ``marker``: what a malicious proposal file would do with os.system."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_crafted_proposal_pickle_is_refused_naming_file_and_opt_in(tmp_path: Path, monkeypatch):
    monkeypatch.delenv(ALLOW_UNSAFE_PICKLE_ENV, raising=False)
    marker = tmp_path / "pwned"
    path = tmp_path / "proposals.pkl"
    path.write_bytes(pickle.dumps({"ids": [1], "boxes": [_RunsCode(marker)], "objectness_logits": [np.zeros(1)]}))
    with pytest.raises(pickle.UnpicklingError) as e:
        load_proposals_into_dataset([{"image_id": 1}], str(path))
    msg = str(e.value)
    assert str(path) in msg and "allow_unsafe_pickle=True" in msg and ALLOW_UNSAFE_PICKLE_ENV in msg
    assert "Refusing to unpickle global 'io.open'" in msg  # the refused global
    assert not marker.exists()  # nothing ran

    # the explicit opt-in uses plain pickle: the file's code runs (here: creates the marker)
    with pytest.raises(Exception):
        load_proposals_into_dataset([{"image_id": 1}], str(path), allow_unsafe_pickle=True)
    assert marker.exists()


def test_plain_proposal_pickle_loads_without_opt_in(tmp_path: Path, monkeypatch):
    monkeypatch.delenv(ALLOW_UNSAFE_PICKLE_ENV, raising=False)
    path = tmp_path / "p.pkl"
    boxes = np.array([[0, 0, 4, 4], [1, 1, 3, 3]], dtype=np.float32)
    path.write_bytes(pickle.dumps({"ids": np.array([5]), "boxes": [boxes], "objectness_logits": [np.array([0.1, 0.7])],
                                   "bbox_mode": 0}, protocol=2))  # fmt: skip
    out = load_proposals_into_dataset([{"image_id": 5}], str(path))
    np.testing.assert_array_equal(out[0]["proposal_boxes"], boxes[::-1])
    with pytest.raises(ValueError, match="p2.pkl"):
        (tmp_path / "p2.pkl").write_bytes(pickle.dumps([1, 2]))
        load_proposals_into_dataset([{"image_id": 5}], str(tmp_path / "p2.pkl"))


# ----------------------------------------------------------------------------------- 3: segmentation: []
def test_empty_segmentation_is_dropped_with_its_id_and_others_keep_masks(tmp_path: Path, caplog):
    poly = [[2, 3, 12, 3, 12, 11, 2, 11]]
    path = _coco(tmp_path, [_ann(7, segmentation=poly), _ann(8, segmentation=[], category_id=2),
                            _ann(9, segmentation=poly, category_id=2)])  # fmt: skip
    with caplog.at_level(logging.WARNING):
        dicts = load_coco_json(path, tmp_path, "test_bad_inputs_empty_segm")
    assert str(path) in caplog.text and "[8]" in caplog.text and "empty 'segmentation'" in caplog.text
    assert [("segmentation" in a) for a in dicts[0]["annotations"]] == [True, False, True]

    mapper = DatasetMapper(True, augmentations=[], image_format="RGB", use_instance_mask=True)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        inst = mapper(dicts[0])["instances"]
    assert inst.gt_classes.tolist() == [0, 1]  # annotations 7 and 9; 8 dropped
    assert isinstance(inst.gt_masks, PolygonMasks) and len(inst.gt_masks) == 2
    assert inst.gt_masks.area().tolist() == [80.0, 80.0]
    assert "a.png" in caplog.text and "dropped annotation" in caplog.text
    # masks off: the annotation is a box target like any other
    boxes_only = DatasetMapper(True, augmentations=[], image_format="RGB")(dicts[0])["instances"]
    assert len(boxes_only) == 3 and not boxes_only.has("gt_masks")


def test_annotations_to_instances_refuses_to_lose_masks():
    with_mask = {"bbox": [0, 0, 4, 4], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 0,
                 "segmentation": [[0, 0, 4, 0, 4, 4]]}  # fmt: skip
    without = {"bbox": [0, 0, 4, 4], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 1}
    for annos, missing in (([with_mask, without], "[1]"), ([without, with_mask], "[0]")):
        with pytest.raises(ValueError, match=r"#\[" + missing[1] + r"\]"):
            utils.annotations_to_instances(annos, (8, 8))


# ----------------------------------------------------------------------------------- 4: 16-bit images
def test_16bit_grayscale_png_is_scaled_not_white(tmp_path: Path):
    path = tmp_path / "g16.png"
    Image.fromarray(np.array([[30000, 60000], [0, 65535]], dtype=np.uint16)).save(path)
    assert Image.open(path).mode in ("I;16", "I")
    rgb = utils.read_image(str(path), "RGB")
    assert rgb.dtype == np.uint8 and rgb.shape == (2, 2, 3)
    np.testing.assert_array_equal(rgb[..., 0], [[117, 234], [0, 255]])  # 30000 >> 8 = 117, 60000 >> 8 = 234
    np.testing.assert_array_equal(utils.read_image(str(path), "BGR")[..., 2], [[117, 234], [0, 255]])
    np.testing.assert_array_equal(utils.read_image(str(path), "L")[..., 0], [[117, 234], [0, 255]])
    assert utils.read_image(str(path)).dtype == np.uint16  # format=None: the raw values


def test_float_image_refused_and_label_maps_keep_ids(tmp_path: Path):
    tif = tmp_path / "f.tif"
    Image.fromarray(np.ones((3, 3), np.float32)).save(tif)
    with pytest.raises(ValueError, match="f.tif"):
        utils.read_image(str(tif), "BGR")
    labels = tmp_path / "labels16.png"
    Image.fromarray(np.array([[3, 7], [255, 0]], dtype=np.uint16)).save(labels)
    np.testing.assert_array_equal(utils.read_label_map(str(labels)), [[3, 7], [255, 0]])  # ids, not >> 8
    big = tmp_path / "labels300.png"
    Image.fromarray(np.array([[3, 300]], dtype=np.uint16)).save(big)
    with pytest.raises(ValueError, match="labels300.png.*300"):
        utils.read_label_map(str(big))


# ----------------------------------------------------------------------------------- 5 / 11: types and ranges
@pytest.mark.parametrize(
    ("ann", "image", "exc", "fragments"),
    [
        (_ann(3, iscrowd="0"), None, ValueError, ["annotation id 3", "'iscrowd'", "0 or 1", "str '0'"]),
        (_ann(3, category_id="1"), None, ValueError, ["annotation id 3", "'category_id'", "integer", "str '1'"]),
        (_ann(3, bbox=[1e40, 1, 5, 5]), None, ValueError, ["annotation id 3", "'bbox'", "out of range", "1e+40"]),
        (_ann(3, bbox=[1, 1, float("nan"), 5]), None, ValueError, ["annotation id 3", "'bbox'", "finite"]),
        (_ann(3, bbox=[1, 1, -5, 5]), None, ValueError, ["annotation id 3", "'bbox'", "negative"]),
        (_ann(3, bbox=[1, "2", 5, 5]), None, ValueError, ["annotation id 3", "'bbox'", "numbers", "str '2'"]),
        (_ann(3), {"id": 1, "file_name": 123, "height": 20, "width": 30}, ValueError,
         ["image id 1", "'file_name'", "string", "int 123"]),
        (_ann(3), {"id": 1, "file_name": "a.png", "height": 20, "width": "30"}, ValueError,
         ["image id 1", "'width'", "positive integer", "str '30'"]),
        (_ann(3), {"id": 1, "file_name": "a.png", "height": "20", "width": 30}, ValueError,
         ["image id 1", "'height'", "positive integer", "str '20'"]),
        (_ann(3, category_id=5), None, KeyError, ["annotation id 3", "category_id=5", "known ids: [1, 2]"]),
    ],
)  # fmt: skip
def test_wrong_types_and_ranges_name_file_id_field(tmp_path: Path, ann, image, exc, fragments):
    path = _coco(tmp_path, [_ann(1), ann], [image] if image else None)
    with pytest.raises(exc) as e:
        load_coco_json(path, tmp_path, "test_bad_inputs_types")
    msg = str(e.value)
    assert str(path) in msg, msg
    for f in fragments:
        assert f in msg, (f, msg)


def test_integral_float_sizes_are_accepted(tmp_path: Path):
    path = _coco(tmp_path, [_ann(1)], [{"id": 1, "file_name": "a.png", "height": 20.0, "width": 30.0}])
    d = load_coco_json(path, tmp_path)[0]
    assert (d["height"], d["width"]) == (20, 30) and isinstance(d["height"], int)


def test_mapper_validation_refuses_string_iscrowd():
    ann = {"id": 4, "bbox": [0, 0, 2, 2], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 0, "iscrowd": "0"}
    with pytest.raises(ValueError, match=r"x\.png, annotation id 4: 'iscrowd' must be 0 or 1"):
        utils.validate_annotation(ann, "x.png")


# ----------------------------------------------------------------------------------- 8: degenerate boxes
def test_empty_and_outside_boxes_dropped_with_one_warning_each(tmp_path: Path, caplog):
    anns = [_ann(1), _ann(2, bbox=[3, 3, 0, 5]), _ann(3, bbox=[3, 3, 4, 0]), _ann(4, bbox=[30, 2, 5, 5]),
            _ann(5, bbox=[-10, 2, 10, 5]), _ann(6, bbox=[25, 15, 20, 20])]  # fmt: skip
    with caplog.at_level(logging.WARNING):
        dicts = load_coco_json(_coco(tmp_path, anns), tmp_path)
    assert [a["bbox"] for a in dicts[0]["annotations"]] == [[2, 3, 10, 8], [25, 15, 20, 20]]  # partly inside: kept
    records = [r.getMessage() for r in caplog.records]
    zero = [m for m in records if "zero-width" in m]
    outside = [m for m in records if "entirely outside its image" in m]
    assert len(zero) == 1 and "2 annotations" in zero[0] and "[2, 3]" in zero[0] and "ann.json" in zero[0]
    assert len(outside) == 1 and "2 annotations" in outside[0] and "[4, 5]" in outside[0]
