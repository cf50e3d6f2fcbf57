"""DefaultPredictor: one BGR image in, the model's output at the original resolution out — the same as calling the
model on the input resized by hand; weights from a detectron2-style .pth or a Lightning .ckpt."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from detlightning.checkpoint import DetectionCheckpointer
from detlightning.config import compose
from detlightning.engine import DefaultPredictor
from detlightning.modeling import build_model

from .conftest import tiny_overrides

# a 40 x 60 image; test size 64 (max 200): the short side scales by 1.6 -> 64 x 96
IMG_H, IMG_W, NEW_H, NEW_W = 40, 60, 64, 96


def _cfg(shapes_root: Path, *extra: str):
    return compose(tiny_overrides(shapes_root) + [
        "input.min_size_test=64", "input.max_size_test=200",
        "model.roi_heads.score_thresh_test=0.0",  # a random model: keep its low-score detections
        *extra,
    ])  # fmt: skip


@pytest.fixture(scope="module")
def weights(shapes_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A randomly initialised tiny Mask R-CNN saved as .pth and as a Lightning-style .ckpt."""
    torch.manual_seed(0)
    model = build_model(_cfg(shapes_root))
    out = tmp_path_factory.mktemp("predictor_weights")
    DetectionCheckpointer(model, save_dir=str(out)).save("model")
    ckpt = {
        "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
        "pytorch-lightning_version": "2.4.0",
        "epoch": 0,
        "global_step": 0,
    }
    torch.save(ckpt, out / "model.ckpt")
    return {"pth": out / "model.pth", "ckpt": out / "model.ckpt"}


@pytest.fixture(scope="module")
def image_bgr() -> np.ndarray:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (IMG_H, IMG_W, 3), dtype=np.uint8)
    img[10:30, 15:40] = (40, 200, 90)  # a flat patch, so the model sees some structure
    return img


def _reference(cfg, image_chw: np.ndarray) -> dict:
    """The model of ``cfg`` (weights loaded) called directly on an already resized (C, H, W) image."""
    model = build_model(cfg)
    DetectionCheckpointer(model).load(cfg.model.weights)
    model.eval()
    with torch.no_grad():
        tensor = torch.as_tensor(np.ascontiguousarray(image_chw).astype("float32"))
        return model([{"image": tensor, "height": IMG_H, "width": IMG_W}])[0]


def _resize(img: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(img).resize((NEW_W, NEW_H), Image.BILINEAR))


def _assert_same_instances(a, b) -> None:
    assert a.image_size == b.image_size == (IMG_H, IMG_W)
    assert len(a) == len(b) > 0
    torch.testing.assert_close(a.pred_boxes.tensor, b.pred_boxes.tensor, rtol=0, atol=1e-4)
    torch.testing.assert_close(a.scores, b.scores, rtol=0, atol=1e-5)
    assert torch.equal(a.pred_classes, b.pred_classes)
    assert a.pred_masks.shape == (len(a), IMG_H, IMG_W)
    assert torch.equal(a.pred_masks, b.pred_masks)


def test_predictor_equals_model_on_manually_resized_input(shapes_root, weights, image_bgr):
    cfg = _cfg(shapes_root, f"model.weights={weights['pth']}")
    pred = DefaultPredictor(cfg)(image_bgr)["instances"]
    ref = _reference(cfg, _resize(image_bgr).transpose(2, 0, 1))["instances"]
    _assert_same_instances(pred, ref)
    # the boxes are in the original image's coordinates
    boxes = pred.pred_boxes.tensor
    assert (boxes[:, 2] <= IMG_W).all() and (boxes[:, 3] <= IMG_H).all() and (boxes >= 0).all()


def test_predictor_loads_lightning_ckpt(shapes_root, weights, image_bgr):
    from_pth = DefaultPredictor(_cfg(shapes_root, f"model.weights={weights['pth']}"))
    from_ckpt = DefaultPredictor(_cfg(shapes_root, f"model.weights={weights['ckpt']}"))
    for (k, a), (k2, b) in zip(from_pth.model.state_dict().items(), from_ckpt.model.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k
    _assert_same_instances(from_ckpt(image_bgr)["instances"], from_pth(image_bgr)["instances"])


def test_predictor_rgb_model_gets_rgb(shapes_root, weights, image_bgr):
    """input.format=RGB: callers still pass BGR (as OpenCV reads), the model receives RGB."""
    cfg = _cfg(shapes_root, f"model.weights={weights['pth']}", "input.format=RGB")
    predictor = DefaultPredictor(cfg)
    assert predictor.metadata is not None and predictor.metadata.get("thing_classes")
    pred = predictor(image_bgr)["instances"]
    ref = _reference(cfg, _resize(image_bgr[:, :, ::-1].copy()).transpose(2, 0, 1))["instances"]
    _assert_same_instances(pred, ref)


def test_predictor_rejects_bad_images(shapes_root, weights):
    predictor = DefaultPredictor(_cfg(shapes_root, f"model.weights={weights['pth']}"))
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        predictor(np.zeros((IMG_H, IMG_W), dtype=np.uint8))


def test_default_predictor_accepts_a_detectron2_cfgnode() -> None:
    """detectron2 code ports with the import changed: ``DefaultPredictor(cfg)`` with a yacs CfgNode."""
    from detlightning.config import get_d2_cfg
    from detlightning.engine import DefaultPredictor

    cfg = get_d2_cfg()
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64",
                         "MODEL.ROI_HEADS.NUM_CLASSES", "3", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0",
                         "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "100"])
    predictor = DefaultPredictor(cfg)
    assert type(predictor.model.roi_heads).__name__ == "Res5ROIHeads"  # detectron2's default: R-C4
    image = np.random.default_rng(0).integers(0, 256, (48, 80, 3), dtype=np.uint8)
    out = predictor(image)["instances"]
    assert out.image_size == (48, 80) and out.pred_classes.max() < 3
