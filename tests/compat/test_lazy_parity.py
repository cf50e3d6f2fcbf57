"""detectron2 parity of models built from our LazyConfig (.py) model-zoo files, as a detectron2 user builds them:
``model_zoo.get_config(name).model`` -> ``instantiate``. Each reference's manifest names the detectron2 config;
our file of the same name must give a model with exactly detectron2's state-dict keys and shapes, and its RPN
proposals and eval outputs on the stored input must match detectron2's (tolerances of ../shared/compat/README.md).

Besides the LazyConfig-only references, the ``.py`` twins of yaml models (Mask R-CNN FPN, RetinaNet, Keypoint R-CNN)
are checked against the references of those yaml models: the lazy and yaml definitions must be the same model.
"""
from __future__ import annotations

import functools

import pytest
import torch

from tests.conftest import COMPAT_DIR

from . import _parity as P

# compat reference -> our LazyConfig file (None: the one the manifest names)
LAZY_MODELS: dict[str, str | None] = {
    "mask_rcnn_R_50_FPN_LSJ": None,
    "mask_rcnn_R_50_FPN": "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.py",
    "retinanet_R_50_FPN": "COCO-Detection/retinanet_R_50_FPN_1x.py",
    "keypoint_rcnn_R_50_FPN": "COCO-Keypoints/keypoint_rcnn_R_50_FPN_1x.py",
}


@pytest.fixture(autouse=True)
def _need_compat(compat_dir):
    return compat_dir


def _config_name(arch: str) -> str:
    return LAZY_MODELS[arch] or P.manifest(arch)["detectron2_config"]


def _box_predictors(model_cfg) -> list:
    heads = model_cfg.get("roi_heads")
    if heads is None:
        return []
    return list(heads.box_predictors) if "box_predictors" in heads else [heads.box_predictor]


@functools.lru_cache(maxsize=None)
def _model(arch: str):
    """Our model from the LazyConfig file, with the test score threshold the reference was computed with."""
    from detlightning import model_zoo
    from detlightning.config import instantiate

    cfg = model_zoo.get_config(_config_name(arch))
    manifest = P.manifest(arch)
    for predictor in _box_predictors(cfg.model):
        predictor.test_score_thresh = manifest.get("roi_score_thresh_test", 0.05)
    if "score_thresh_test" in manifest:
        cfg.model.test_score_thresh = manifest["score_thresh_test"]
    return instantiate(cfg.model).eval()


@functools.lru_cache(maxsize=None)
def _loaded_model(arch: str):
    return P.load_reference_weights(_model(arch), arch)


def _input(arch: str) -> dict:
    """The stored input the reference was computed on (RGB 1024 for the ViTDet family, else BGR 800)."""
    if P.manifest(arch)["input_format"] == "RGB":
        return torch.load(COMPAT_DIR / "inputs" / "astronaut_RGB_1024.pt", weights_only=True)
    return P.reference_input()


@pytest.mark.parametrize("arch", sorted(LAZY_MODELS))
def test_state_dict_matches_detectron2_manifest(arch: str) -> None:
    ours = {k: list(v.shape) for k, v in _model(arch).state_dict().items()}
    ref = P.manifest(arch)["shapes"]
    missing, unexpected = sorted(set(ref) - set(ours)), sorted(set(ours) - set(ref))
    assert not missing and not unexpected, f"missing: {missing[:20]}\nunexpected: {unexpected[:20]}"
    wrong = {k: (ours[k], ref[k]) for k in ref if ours[k] != ref[k]}
    assert not wrong, f"shape mismatches (ours, detectron2): {wrong}"


@pytest.mark.parametrize("arch", sorted(a for a in LAZY_MODELS if "retinanet" not in a))
def test_proposals_match_detectron2(arch: str) -> None:
    model = _loaded_model(arch)
    ref = P.reference_output(arch)
    with torch.no_grad():
        images = model.preprocess_image([_input(arch)])
        assert list(images.tensor.shape[-2:]) == list(ref["padded_image_size"])
        proposals = model.proposal_generator(images, model.backbone(images.tensor), None)[0][0]
    match = P.greedy_match(ref["proposals"]["proposal_boxes"], proposals.proposal_boxes.tensor)
    assert match.fraction >= P.TOL["proposal_fraction"], f"{match.fraction:.3f} of the proposals matched"


@pytest.mark.parametrize("arch", sorted(LAZY_MODELS))
def test_eval_outputs_match_detectron2(arch: str) -> None:
    inp = _input(arch)
    with torch.no_grad():
        out = _loaded_model(arch)([inp])[0]["instances"]
    assert out.image_size == (inp["height"], inp["width"])
    ref = P.reference_output(arch)["instances"]
    assert len(ref["pred_boxes"]) > 0
    P.assert_parity(P.compare_instances(ref, out))
