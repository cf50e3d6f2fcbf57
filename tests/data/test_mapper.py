from __future__ import annotations

import copy
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from detlightning.data import DatasetCatalog, DatasetMapper, MapDataset
from detlightning.data import transforms as T
from detlightning.structures import BitMasks, Boxes, Instances, Keypoints, PolygonMasks


def test_train_output_fields(tiny_cfg):
    cfg = tiny_cfg("model.keypoint_on=true")
    mapper = DatasetMapper(cfg, True)
    d = DatasetCatalog.get("tshapes_train")[0]
    original = copy.deepcopy(d)
    out = mapper(d)
    assert d == original  # the dataset dict is not modified
    img = out["image"]
    assert img.dtype == torch.uint8 and img.dim() == 3 and img.shape[0] == 3
    assert min(img.shape[1:]) == 64  # ResizeShortestEdge to 64
    inst = out["instances"]
    assert isinstance(inst, Instances) and inst.image_size == tuple(img.shape[1:])
    assert isinstance(inst.gt_boxes, Boxes) and inst.gt_boxes.tensor.dtype == torch.float32
    assert inst.gt_classes.dtype == torch.int64 and len(inst) == len(d["annotations"])
    assert isinstance(inst.gt_masks, PolygonMasks) and isinstance(inst.gt_keypoints, Keypoints)
    assert inst.gt_keypoints.tensor.shape == (len(inst), 4, 3)
    assert "annotations" not in out and (out["height"], out["width"]) == (d["height"], d["width"])


def test_train_image_is_bgr_of_file(tiny_cfg):
    """input.format BGR: channel 0 of the tensor is the file's blue channel (no resize when sizes match)."""
    cfg = tiny_cfg("input.random_flip=none")
    d = DatasetCatalog.get("tshapes_train")[0]
    out = DatasetMapper(cfg, True)(d)
    rgb = np.asarray(Image.open(d["file_name"]).convert("RGB"))
    assert rgb.shape[:2] == tuple(out["image"].shape[1:])  # short side already 64: resized to the same size
    np.testing.assert_array_equal(out["image"].permute(1, 2, 0).numpy(), rgb[..., ::-1])
    rgb_out = DatasetMapper(tiny_cfg("input.random_flip=none", "input.format=RGB"), True)(d)
    np.testing.assert_array_equal(rgb_out["image"].flip(0).numpy(), out["image"].numpy())


def test_bitmask_format_masks_match_boxes(tiny_cfg):
    cfg = tiny_cfg("input.mask_format=bitmask")
    out = DatasetMapper(cfg, True)(DatasetCatalog.get("tshapes_train")[1])
    masks = out["instances"].gt_masks
    assert isinstance(masks, BitMasks) and masks.tensor.dtype == torch.bool
    assert masks.tensor.shape[1:] == out["image"].shape[1:]
    # each mask lies within its box (rounded outwards by a pixel)
    for m, box in zip(masks.tensor, out["instances"].gt_boxes.tensor):
        ys, xs = torch.nonzero(m, as_tuple=True)
        assert xs.min() >= box[0] - 1 and xs.max() <= box[2] and ys.min() >= box[1] - 1 and ys.max() <= box[3]


def test_test_mode_drops_annotations(tiny_cfg):
    out = DatasetMapper(tiny_cfg(), False)(DatasetCatalog.get("tshapes_val")[0])
    assert set(out) == {"file_name", "height", "width", "image_id", "image"}
    assert out["image"].dtype == torch.uint8


def test_sem_seg_and_crop_recompute_boxes(tiny_cfg):
    cfg = tiny_cfg("input.crop.enabled=true", "input.crop.type=absolute", "input.crop.size=[40,40]")
    mapper = DatasetMapper(cfg, True)
    assert mapper.recompute_boxes and isinstance(mapper.augmentations.augs[0], T.RandomCrop)
    d = DatasetCatalog.get("tshapes_train_panoptic_separated")[0]
    np.random.seed(0)
    out = mapper(d)
    assert out["sem_seg"].dtype == torch.int64 and out["sem_seg"].shape == out["image"].shape[1:]
    assert set(out["sem_seg"].unique().tolist()) <= {0, 1, 2}
    inst = out["instances"]
    torch.testing.assert_close(inst.gt_boxes.tensor, inst.gt_masks.get_bounding_boxes().tensor)


def _bad_dicts(tmp_path: Path, good: dict) -> list[dict]:
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"garbage")
    nan_box = copy.deepcopy(good)
    nan_box["annotations"][0]["bbox"] = [1.0, 1.0, float("nan"), 2.0]
    nan_box["annotations"][0]["id"] = 4242
    return [dict(good, file_name=str(tmp_path / "missing.png")), dict(good, file_name=str(corrupt)), nan_box]


def test_bad_samples_raise_with_file_names(tiny_cfg, tmp_path: Path):
    good = DatasetCatalog.get("tshapes_train")[0]
    missing, corrupt, nan_box = _bad_dicts(tmp_path, good)
    mapper = DatasetMapper(tiny_cfg(), True)
    with pytest.raises(FileNotFoundError, match="missing.png"):
        mapper(missing)
    with pytest.raises(ValueError, match="corrupt.png"):
        mapper(corrupt)
    with pytest.raises(ValueError) as e:
        mapper(nan_box)
    assert good["file_name"] in str(e.value) and "4242" in str(e.value)
    wrong_size = dict(good, height=good["height"] + 1)
    with pytest.raises(ValueError, match="Mismatched image shape"):
        mapper(wrong_size)


def test_skip_bad_samples_counts_and_map_dataset_falls_back(tiny_cfg, tmp_path: Path, caplog):
    good = DatasetCatalog.get("tshapes_train")[0]
    bad = _bad_dicts(tmp_path, good)
    mapper = DatasetMapper(tiny_cfg("dataloader.skip_bad_samples=true"), True)
    with caplog.at_level(logging.WARNING):
        assert all(mapper(b) is None for b in bad)
    assert mapper.num_skipped == 3 and "missing.png" in caplog.text and "corrupt.png" in caplog.text
    ds = MapDataset([*bad, good], mapper)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        out = ds[0]
    assert out["file_name"] == good["file_name"] and "index 0" in caplog.text
    # inference never skips
    with pytest.raises(FileNotFoundError):
        DatasetMapper(tiny_cfg("dataloader.skip_bad_samples=true"), False)(bad[0])


def test_explicit_construction_without_config(shapes_root):
    mapper = DatasetMapper(True, augmentations=[T.Resize((32, 48))], image_format="RGB", use_instance_mask=True)
    out = mapper(DatasetCatalog.get("tshapes_train")[2])
    assert out["image"].shape == (3, 32, 48)
    assert len(out["instances"]) > 0 and out["instances"].has("gt_masks")
    assert not out["instances"].has("gt_keypoints")


def test_precomputed_proposals_become_instances(tiny_cfg):
    cfg = tiny_cfg("model.load_proposals=true", "datasets.precomputed_proposal_topk_test=2")
    mapper = DatasetMapper(cfg, False)
    assert mapper.proposal_topk == 2
    d = dict(DatasetCatalog.get("tshapes_val")[0])
    h, w = d["height"], d["width"]
    d["proposal_boxes"] = np.array([[0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 5.0, 9.0], [1.0, 2.0, 3.0, 4.0]])
    d["proposal_objectness_logits"] = np.array([2.0, 1.5, 1.0])
    d["proposal_bbox_mode"] = 0
    out = mapper(d)
    props = out["proposals"]
    assert props.image_size == tuple(out["image"].shape[1:]) == (h, w)  # short side already 64: no resize
    # the empty box is dropped, then the top 2 are kept
    assert props.proposal_boxes.tensor.tolist() == [[0, 0, 10, 10], [1, 2, 3, 4]]
    assert props.objectness_logits.tolist() == [2.0, 1.0]
