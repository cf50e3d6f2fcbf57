"""Test-time augmentation: DatasetMapperTTA's augmented inputs, GeneralizedRCNNWithTTA on a tiny random Mask R-CNN
(identity TTA = the plain model, flip TTA on a mirror-symmetric image), and the evaluation paths that use it
(DefaultTrainer.test_with_TTA, test.aug.enabled in DetectionModule)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from detlightning.config import compose, get_cfg
from detlightning.data import transforms as T
from detlightning.modeling import DatasetMapperTTA, GeneralizedRCNNWithTTA, build_model
from detlightning.structures import Instances

TINY = [
    "model=mask_rcnn",
    "model.resnets.depth=18",
    "model.resnets.res2_out_channels=64",
    "model.fpn.out_channels=32",
    "model.roi_heads.num_classes=3",
    "model.roi_box_head.fc_dim=64",
    "model.roi_mask_head.conv_dim=16",
    "model.rpn.pre_nms_topk_test=200",
    "model.rpn.post_nms_topk_test=20",
    # room for every detection of two augmentations: no top-k cut hides what the merge did
    "test.detections_per_image=200",
]


def _model(*extra: str):
    cfg = compose([*TINY, *extra])
    torch.manual_seed(0)
    return cfg, build_model(cfg).eval()


def _image(h: int, w: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g)


# ------------------------------------------------------------------------------------------------ mapper
def test_mapper_sizes_flips_and_transforms() -> None:
    image = _image(20, 30)
    record = {"image": image, "height": 40, "width": 60, "file_name": "a.png", "image_id": 7}
    outs = DatasetMapperTTA(min_sizes=[10, 20], max_size=100, flip=True)(record)

    assert [tuple(o["image"].shape) for o in outs] == [(3, 10, 15), (3, 10, 15), (3, 20, 30), (3, 20, 30)]
    flipped = [any(isinstance(t, T.HFlipTransform) for t in o["transforms"].transforms) for o in outs]
    assert flipped == [False, True, False, True]
    for o in outs:
        assert o["image"].dtype == torch.uint8 and o["file_name"] == "a.png" and o["image_id"] == 7
        assert (o["height"], o["width"]) == (40, 60)
        # the input is a half-size copy of the original: the first step maps the original (40x60) onto it
        first = o["transforms"].transforms[0]
        assert isinstance(first, T.ResizeTransform) and (first.h, first.w, first.new_h, first.new_w) == (40, 60, 20, 30)
    assert set(record) == {"image", "height", "width", "file_name", "image_id"} and record["image"] is image

    # a box of the original image lands where the resize (x 1/4 at size 10) and the flip (x -> 15 - x) put it
    box = np.array([[4.0, 8.0, 20.0, 16.0]])
    np.testing.assert_allclose(outs[0]["transforms"].apply_box(box), [[1.0, 2.0, 5.0, 4.0]])
    np.testing.assert_allclose(outs[1]["transforms"].apply_box(box), [[10.0, 2.0, 14.0, 4.0]])
    np.testing.assert_allclose(outs[3]["transforms"].inverse().apply_box([[10.0, 2.0, 14.0, 4.0]]),
                               [[32.0, 4.0, 40.0, 8.0]])
    # the flipped image is the unflipped one mirrored, pixel for pixel
    assert torch.equal(outs[1]["image"], outs[0]["image"].flip(2))
    assert torch.equal(outs[3]["image"], outs[2]["image"].flip(2))
    # at the input's own size the image is unchanged (a no-op first step when height/width are the input's)
    same = DatasetMapperTTA(min_sizes=[20], max_size=100, flip=False)({"image": image})
    assert len(same) == 1 and torch.equal(same[0]["image"], image)
    assert isinstance(same[0]["transforms"].transforms[0], T.NoOpTransform)
    # max_size caps the longer side: 20x30 at shorter side 40 would be 40x60; capped at 50 -> 33x50
    capped = DatasetMapperTTA(min_sizes=[40], max_size=50, flip=False)({"image": image})
    assert tuple(capped[0]["image"].shape) == (3, 33, 50)


def test_mapper_from_config_both_forms() -> None:
    defaults = {"min_sizes": [400, 500, 600, 700, 800, 900, 1000, 1100, 1200], "max_size": 4000, "flip": True}
    for cfg in (compose([]), get_cfg()):  # our DictConfig (test.aug.*) and detectron2's CfgNode (TEST.AUG.*)
        mapper = DatasetMapperTTA(cfg)
        assert {"min_sizes": mapper.min_sizes, "max_size": mapper.max_size, "flip": mapper.flip} == defaults
    node = get_cfg()
    node.TEST.AUG.MIN_SIZES = (32, 48)
    node.TEST.AUG.FLIP = False
    assert len(DatasetMapperTTA(node)({"image": _image(16, 16)})) == 2
    with pytest.raises(ValueError, match="min_sizes"):
        DatasetMapperTTA(min_sizes=[], max_size=10)


# ------------------------------------------------------------------------------------------------ the wrapper
@pytest.mark.parametrize("orig_hw", [(64, 80), (96, 120)], ids=["input_size", "upscaled_output"])
def test_identity_tta_equals_plain_model(orig_hw: tuple[int, int]) -> None:
    cfg, model = _model()
    inputs = [{"image": _image(64, 80), "height": orig_hw[0], "width": orig_hw[1]}]
    tta = GeneralizedRCNNWithTTA(cfg, model, tta_mapper=DatasetMapperTTA(min_sizes=[64], max_size=4000, flip=False))
    with torch.no_grad():
        plain = model(inputs)[0]["instances"]
        merged = tta(inputs)[0]["instances"]
    assert len(plain) > 5 and merged.image_size == plain.image_size == orig_hw
    assert len(merged) == len(plain)
    torch.testing.assert_close(merged.pred_boxes.tensor, plain.pred_boxes.tensor, atol=1e-4, rtol=0)
    torch.testing.assert_close(merged.scores, plain.scores)
    assert torch.equal(merged.pred_classes, plain.pred_classes)
    assert merged.pred_masks.shape == plain.pred_masks.shape == (len(plain), *orig_hw)
    assert (merged.pred_masks != plain.pred_masks).float().mean() < 1e-3
    assert model.roi_heads.mask_on  # switched off only while boxes were detected


def test_flip_tta_on_mirror_symmetric_image_gives_mirror_symmetric_boxes() -> None:
    # NMS at IoU 1.0 keeps every distinct box: an equal-score box and its mirror image cannot suppress each other,
    # so the merged set must be exactly the union of the detections and their mirror images
    cfg, model = _model("model.roi_heads.nms_thresh_test=1.0")
    half = _image(64, 32, seed=3)
    image = torch.cat([half, half.flip(2)], dim=2)  # 64 x 64, x -> 63 - x in pixels is x -> 64 - x in box units
    tta = GeneralizedRCNNWithTTA(cfg, model, tta_mapper=DatasetMapperTTA(min_sizes=[64], max_size=4000, flip=True))
    with torch.no_grad():
        plain = model([{"image": image}])[0]["instances"]
        merged = tta([{"image": image}])[0]["instances"]
    assert len(plain) > 5 and len(merged) == 2 * len(plain)
    boxes = merged.pred_boxes.tensor
    mirrored = torch.stack([64 - boxes[:, 2], boxes[:, 1], 64 - boxes[:, 0], boxes[:, 3]], dim=1)
    dist = (boxes[:, None, :] - mirrored[None, :, :]).abs().amax(dim=2)  # (N, N) max coordinate difference
    assert dist.amin(dim=1).max() < 1e-4 and dist.amin(dim=0).max() < 1e-4
    torch.testing.assert_close(merged.scores.sort().values, plain.scores.repeat(2).sort().values)
    # each mirror pair's averaged masks are mirror images of each other
    partner = dist.argmin(dim=1)
    assert (merged.pred_masks != merged.pred_masks[partner].flip(2)).float().mean() < 1e-3


def test_wrapper_refuses_what_detectron2_refuses() -> None:
    cfg, model = _model()
    small = ["model.resnets.depth=18", "model.resnets.res2_out_channels=64", "model.fpn.out_channels=32"]
    with pytest.raises(TypeError, match="GeneralizedRCNN"):
        GeneralizedRCNNWithTTA(cfg, build_model(compose(["model=retinanet", *small])))
    kp_cfg = compose(["model=keypoint_rcnn", *small, "model.roi_keypoint_head.conv_dims=[8]"])
    with pytest.raises(ValueError, match="keypoint"):
        GeneralizedRCNNWithTTA(kp_cfg, build_model(kp_cfg))
    with pytest.raises(ValueError, match="batch_size"):
        GeneralizedRCNNWithTTA(cfg, model, batch_size=0)


def test_batch_size_only_chunks_the_augmented_images() -> None:
    # four augmentations of one size (two copies of resize and resize+flip): batches of 1 and of 3 (+ the remaining
    # 1) pad to the same size, so the chunking alone must not change the result
    cfg, model = _model()
    inputs = [{"image": _image(48, 64, seed=5), "height": 60, "width": 80}]
    mapper = DatasetMapperTTA(min_sizes=[48, 48], max_size=200, flip=True)
    with torch.no_grad():
        one = GeneralizedRCNNWithTTA(cfg, model, mapper, batch_size=1)(inputs)[0]["instances"]
        three = GeneralizedRCNNWithTTA(cfg, model, mapper, batch_size=3)(inputs)[0]["instances"]
    assert isinstance(one, Instances) and len(one) > 0 and one.image_size == (60, 80)
    torch.testing.assert_close(one.pred_boxes.tensor, three.pred_boxes.tensor, atol=1e-3, rtol=0)
    # oneDNN's channels-last convolutions block a batch of 1 and of 3 differently: scores round apart by ~2e-5
    torch.testing.assert_close(one.scores, three.scores, atol=1e-4, rtol=0)
    assert (one.pred_masks != three.pred_masks).float().mean() < 1e-3


# ------------------------------------------------------------------------------------------------ evaluation
SMALL_D2 = [
    "MODEL.DEVICE", "cpu", "MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64",
    "MODEL.FPN.OUT_CHANNELS", "32", "MODEL.ROI_HEADS.NUM_CLASSES", "3", "MODEL.ROI_BOX_HEAD.FC_DIM", "64",
    "MODEL.ROI_MASK_HEAD.CONV_DIM", "16", "MODEL.RPN.PRE_NMS_TOPK_TEST", "200", "MODEL.RPN.POST_NMS_TOPK_TEST", "20",
    "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "100", "DATALOADER.NUM_WORKERS", "0",
]


def _predictions(folder: Path) -> list[dict]:
    """COCOEvaluator's saved detections, in a fixed order."""
    rows = json.loads((folder / "coco_instances_results.json").read_text())
    return sorted(rows, key=lambda r: (r["image_id"], -r["score"], r["category_id"], r["bbox"]))


def _same_predictions(a: list[dict], b: list[dict]) -> bool:
    return len(a) == len(b) and all(
        (x["image_id"], x["category_id"]) == (y["image_id"], y["category_id"])
        and x["score"] == pytest.approx(y["score"], abs=1e-5)
        and x["bbox"] == pytest.approx(y["bbox"], abs=1e-3)
        and x["segmentation"]["counts"] == y["segmentation"]["counts"]
        for x, y in zip(a, b)
    )


def test_default_trainer_test_with_tta(tmp_path: Path) -> None:
    from detlightning import model_zoo
    from detlightning.data import DatasetCatalog
    from detlightning.data.datasets import register_shapes
    from detlightning.engine import DefaultTrainer

    register_shapes("tta_shapes", root=str(tmp_path / "shapes"), num_train=1, num_val=2, image_size=64, replace=True)
    cfg = get_cfg()
    cfg.merge_from_file(model_zoo.get_config_file("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml"))
    cfg.merge_from_list(SMALL_D2)
    cfg.DATASETS.TEST = ("tta_shapes_val",)
    cfg.OUTPUT_DIR = str(tmp_path / "out")
    torch.manual_seed(0)
    model = DefaultTrainer.build_model(cfg)
    plain = DefaultTrainer.test(cfg, model)
    plain_rows = _predictions(tmp_path / "out" / "inference")
    assert list(plain) == ["bbox", "segm"] and len({r["image_id"] for r in plain_rows}) == 2

    # identity TTA (the test loader's own size, no flip): the same detections and masks as the plain model
    cfg.TEST.AUG.MIN_SIZES = (64,)
    cfg.TEST.AUG.FLIP = False
    identity = DefaultTrainer.test_with_TTA(cfg, model)
    assert list(identity) == ["bbox_TTA", "segm_TTA"]
    assert _same_predictions(_predictions(tmp_path / "out" / "inference_TTA"), plain_rows)
    assert str(identity["bbox_TTA"]) == str(plain["bbox"])  # nan-tolerant equality of the metric dicts

    # two sizes and flips: other detections, reported under the same _TTA keys
    cfg.TEST.AUG.MIN_SIZES = (48, 80)
    cfg.TEST.AUG.MAX_SIZE = 100
    cfg.TEST.AUG.FLIP = True
    res = DefaultTrainer.test_with_TTA(cfg, model)
    assert list(res) == ["bbox_TTA", "segm_TTA"] and set(res["bbox_TTA"]) == set(plain["bbox"])
    rows = _predictions(tmp_path / "out" / "inference_TTA")
    assert rows and not _same_predictions(rows, plain_rows)
    sizes = {d["image_id"]: (d["height"], d["width"]) for d in DatasetCatalog.get("tta_shapes_val")}
    for r in rows:  # merged boxes are clipped to the original image
        (x, y, w, h), (height, width) = r["bbox"], sizes[r["image_id"]]
        assert 0 <= x and 0 <= y and x + w <= width + 1e-3 and y + h <= height + 1e-3, (r["bbox"], height, width)


def test_detection_module_evaluates_through_tta_when_enabled(tmp_path: Path) -> None:
    from detlightning.engine import DetectionModule, evaluate

    base = [*TINY, "datasets.shapes.num_train=1", "datasets.shapes.num_val=2", "datasets.shapes.image_size=64",
            f"datasets.shapes.root={tmp_path / 'shapes'}", "input.min_size_test=64", "input.max_size_test=100",
            "dataloader.num_workers=0", "trainer=cpu", "trainer.enable_progress_bar=false",
            "trainer.enable_model_summary=false"]
    cfg, model = _model()
    weights = tmp_path / "model.pth"
    torch.save({"model": model.state_dict()}, weights)
    tta_keys = ["test.aug.enabled=true", "test.aug.min_sizes=[64]", "test.aug.flip=true"]

    module = DetectionModule(compose(base + tta_keys))
    assert isinstance(module.eval_model(), GeneralizedRCNNWithTTA) and module.eval_model().model is module.model
    plain_module = DetectionModule(compose(base))
    assert plain_module.eval_model() is plain_module.model
    assert set(module.state_dict()) == set(plain_module.state_dict())  # the wrapper adds no duplicate weights

    runs = {}
    for name, extra in (("plain", []), ("tta", tta_keys)):
        run_keys = [f"model.weights={weights}", f"paths.output_dir={tmp_path / name}"]
        runs[name] = evaluate(compose(base + extra + run_keys))
    # the same result keys, computed from the flip-augmented detections
    assert list(runs["tta"]) == list(runs["plain"]) == ["shapes_val"]
    keys = {name: {task: set(v) for task, v in res["shapes_val"].items()} for name, res in runs.items()}
    assert keys["tta"] == keys["plain"] and set(keys["tta"]) == {"bbox", "segm"}
    tta_rows = _predictions(tmp_path / "tta" / "inference")
    plain_rows = _predictions(tmp_path / "plain" / "inference")
    assert plain_rows and len(tta_rows) > len(plain_rows)
