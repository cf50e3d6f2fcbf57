from __future__ import annotations

from pathlib import Path

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from PIL import Image

from detlightning.data import MetadataCatalog
from detlightning.data import detection_utils as utils
from detlightning.data import transforms as T
from detlightning.structures import BitMasks, BoxMode, PolygonMasks


@pytest.fixture()
def rgb_file(tmp_path: Path) -> tuple[Path, np.ndarray]:
    arr = np.zeros((6, 10, 3), np.uint8)
    arr[..., 0] = 200  # red
    arr[..., 2] = 10
    p = tmp_path / "img.png"
    Image.fromarray(arr).save(p)
    return p, arr


def test_read_image_formats(rgb_file):
    path, arr = rgb_file
    np.testing.assert_array_equal(utils.read_image(str(path), "RGB"), arr)
    np.testing.assert_array_equal(utils.read_image(str(path), "BGR"), arr[..., ::-1])
    gray = utils.read_image(str(path), "L")
    assert gray.shape == (6, 10, 1) and gray.dtype == np.uint8
    # ITU-R 601-2 luma, PIL's L conversion: 200 * 299/1000 + 10 * 114/1000
    assert abs(int(gray[0, 0, 0]) - round(200 * 0.299 + 10 * 0.114)) <= 1
    rgb = utils.convert_image_to_rgb(utils.read_image(str(path), "BGR"), "BGR")
    np.testing.assert_array_equal(rgb, arr)


def test_read_image_applies_exif_orientation(tmp_path: Path):
    arr = np.zeros((4, 8, 3), np.uint8)
    arr[0, 0] = 255
    im = Image.fromarray(arr)
    exif = im.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    p = tmp_path / "rot.jpg"
    im.save(p, exif=exif, quality=100)
    out = utils.read_image(str(p), "RGB")
    assert out.shape == (8, 4, 3)
    # the top-left pixel ends up top-right after a clockwise quarter turn
    assert out[0, -1].mean() > 200 and out[0, 0].mean() < 50


def test_read_image_errors_name_the_file(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="missing.png"):
        utils.read_image(str(tmp_path / "missing.png"), "BGR")
    bad = tmp_path / "corrupt.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(ValueError, match="corrupt.jpg"):
        utils.read_image(str(bad), "BGR")


def test_check_image_size():
    d = {"file_name": "x.png", "width": 10, "height": 6}
    utils.check_image_size(d, np.zeros((6, 10, 3)))
    with pytest.raises(utils.SizeMismatchError, match="x.png"):
        utils.check_image_size(d, np.zeros((10, 6, 3)))
    d2: dict = {}
    utils.check_image_size(d2, np.zeros((6, 10, 3)))
    assert (d2["width"], d2["height"]) == (10, 6)


def test_transform_instance_annotations_clips_and_converts():
    anno = {"bbox": [2.0, 1.0, 10.0, 4.0], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 0,
            "segmentation": [[2.0, 1.0, 12.0, 1.0, 12.0, 5.0]]}  # fmt: skip
    tfms = T.TransformList([T.ResizeTransform(6, 10, 12, 20)])  # box [2, 1, 12, 5] x2 -> clipped to width 20
    out = utils.transform_instance_annotations(anno, tfms, (12, 20))
    np.testing.assert_allclose(out["bbox"], [4, 2, 20, 10])
    assert out["bbox_mode"] == BoxMode.XYXY_ABS
    np.testing.assert_allclose(out["segmentation"][0], [4, 2, 24, 2, 24, 10])
    rle_anno = {"bbox": [0, 0, 2, 2], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 0,
                "segmentation": mask_util.encode(np.asfortranarray(np.eye(6, 10, dtype=np.uint8)))}  # fmt: skip
    out = utils.transform_instance_annotations(rle_anno, [T.HFlipTransform(10)], (6, 10))
    np.testing.assert_array_equal(out["segmentation"], np.eye(6, 10, dtype=np.uint8)[:, ::-1])


def _annos():
    return [
        {"bbox": np.array([1.0, 1.0, 5.0, 4.0]), "bbox_mode": BoxMode.XYXY_ABS, "category_id": 2,
         "segmentation": [np.array([1.0, 1.0, 5.0, 1.0, 5.0, 4.0, 1.0, 4.0])],
         "keypoints": np.array([[2.0, 2.0, 2], [0, 0, 0]])},
        {"bbox": np.array([3.0, 3.0, 3.0, 8.0]), "bbox_mode": BoxMode.XYXY_ABS, "category_id": 0,  # zero width
         "segmentation": [np.array([3.0, 3.0, 3.0, 8.0, 3.0, 5.0])],
         "keypoints": np.array([[0, 0, 0], [0, 0, 0]])},
    ]  # fmt: skip


def test_annotations_to_instances_polygon_and_bitmask():
    inst = utils.annotations_to_instances(_annos(), (10, 12))
    assert inst.image_size == (10, 12)
    assert inst.gt_boxes.tensor.dtype == torch.float32 and inst.gt_boxes.tensor.shape == (2, 4)
    assert inst.gt_classes.dtype == torch.int64 and inst.gt_classes.tolist() == [2, 0]
    assert isinstance(inst.gt_masks, PolygonMasks)
    assert inst.gt_keypoints.tensor.shape == (2, 2, 3)
    bm = utils.annotations_to_instances(_annos(), (10, 12), mask_format="bitmask")
    assert isinstance(bm.gt_masks, BitMasks) and bm.gt_masks.tensor.shape == (2, 10, 12)
    expected = mask_util.decode(mask_util.frPyObjects([[1.0, 1.0, 5.0, 1.0, 5.0, 4.0, 1.0, 4.0]], 10, 12))[..., 0]
    np.testing.assert_array_equal(bm.gt_masks.tensor[0].numpy(), expected.astype(bool))
    empty = utils.annotations_to_instances([], (10, 12))
    assert len(empty) == 0 and empty.gt_boxes.tensor.shape == (0, 4)
    with pytest.raises(ValueError, match="polygon"):
        rle = dict(_annos()[0], segmentation=mask_util.encode(np.asfortranarray(np.ones((10, 12), np.uint8))))
        utils.annotations_to_instances([rle], (10, 12))


def test_filter_empty_instances():
    inst = utils.annotations_to_instances(_annos(), (10, 12))
    kept, mask = utils.filter_empty_instances(inst, return_mask=True)
    assert mask.tolist() == [True, False] and len(kept) == 1 and kept.gt_classes.tolist() == [2]


def test_validate_annotation_messages():
    good = {"id": 7, "bbox": [0, 0, 1, 1], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 0}
    utils.validate_annotation(good, "a.png")
    for bad, frag in [
        (dict(good, bbox=[0, 0, float("nan"), 1]), "non-finite"),
        (dict(good, bbox=[0, 0, 1]), "4 numbers"),
        (dict(good, bbox=[5, 5, 1, 1], bbox_mode=BoxMode.XYXY_ABS), "negative"),
        (dict(good, category_id=-1), "category_id"),
        (dict(good, category_id="cat"), "category_id"),
    ]:
        with pytest.raises(ValueError) as e:
            utils.validate_annotation(bad, "a.png")
        assert "a.png" in str(e.value) and "id 7" in str(e.value) and frag in str(e.value)
    with pytest.raises(KeyError, match="#3"):
        utils.validate_annotation({"bbox": [0, 0, 1, 1], "bbox_mode": 1}, "a.png", 3)


def test_keypoint_hflip_indices_and_consistency():
    for n, fm in (("kp_a", [["l", "r"]]), ("kp_b", [("l", "r")]), ("kp_c", [["l", "m"]])):
        MetadataCatalog.get(n).set(keypoint_names=["m", "l", "r"], keypoint_flip_map=fm)
    np.testing.assert_array_equal(utils.create_keypoint_hflip_indices(["kp_a", "kp_b"]), [0, 2, 1])
    with pytest.raises(ValueError, match="keypoint_flip_map"):
        utils.create_keypoint_hflip_indices(["kp_a", "kp_c"])
    for n in ("kp_a", "kp_b", "kp_c"):
        MetadataCatalog.remove(n)


def test_transform_proposals():
    d = {"proposal_boxes": np.array([[0.0, 0.0, 4.0, 4.0], [2.0, 2.0, 2.0, 2.0], [1.0, 1.0, 30.0, 3.0]]),
         "proposal_objectness_logits": np.array([3.0, 2.0, 1.0]), "proposal_bbox_mode": BoxMode.XYXY_ABS}  # fmt: skip
    utils.transform_proposals(d, (10, 20), T.TransformList([T.NoOpTransform()]), proposal_topk=5)
    p = d["proposals"]
    assert p.proposal_boxes.tensor.tolist() == [[0, 0, 4, 4], [1, 1, 20, 3]]  # empty dropped, clipped
    assert p.objectness_logits.tolist() == [3.0, 1.0] and "proposal_boxes" not in d


def test_build_augmentation_from_cfg(tiny_cfg):
    cfg = tiny_cfg("input.min_size_train=[50,60]", "input.random_flip=vertical")
    train = utils.build_augmentation(cfg, True)
    assert isinstance(train[0], T.ResizeShortestEdge) and train[0].short_edge_length == (50, 60)
    assert isinstance(train[1], T.RandomFlip) and train[1].vertical
    test = utils.build_augmentation(cfg, False)
    assert len(test) == 1 and test[0].short_edge_length == (64, 64) and test[0].max_size == 128
    custom = tiny_cfg(
        "input.augmentations_train=[{_target_: detlightning.data.transforms.RandomCrop, crop_type: absolute,"
        " crop_size: [16, 16]}, {_target_: detlightning.data.transforms.RandomBrightness, intensity_min: 0.9,"
        " intensity_max: 1.1}]"
    )
    augs = utils.build_augmentation(custom, True)
    assert [type(a).__name__ for a in augs] == ["RandomCrop", "RandomBrightness"]
    assert augs[0].crop_size == (16, 16)
    with pytest.raises(ValueError, match="_target_"):
        utils.build_augmentation_list([{"prob": 0.5}])
