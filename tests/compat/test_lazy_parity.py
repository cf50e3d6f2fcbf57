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
    "cascade_mask_rcnn_mvitv2_b": None,
    "cascade_mask_rcnn_swin_b": None,
    "fcos_R_50_FPN": None,
    "mask_rcnn_R_50_FPN_LSJ": None,
    "mask_rcnn_regnetx_4gf_dds_FPN": None,
    "mask_rcnn_regnety_4gf_dds_FPN": None,
    "mask_rcnn_vitdet_b": None,
    "mask_rcnn_R_50_FPN": "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.py",
    "retinanet_R_50_FPN": "COCO-Detection/retinanet_R_50_FPN_1x.py",
    "keypoint_rcnn_R_50_FPN": "COCO-Keypoints/keypoint_rcnn_R_50_FPN_1x.py",
}

DENSE_DETECTORS = {"retinanet_R_50_FPN", "fcos_R_50_FPN"}  # no RPN: no proposals to compare


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
def _outputs(arch: str) -> dict:
    """One eval forward of the loaded model on the stored input: the instances, plus (R-CNN models) the RPN's
    proposals and the padded input size, captured on the way (the backbone is the slow part on a CPU)."""
    model = P.load_reference_weights(_model(arch), arch)
    seen: dict = {}

    def keep_proposals(module, args, output):
        seen["padded_image_size"] = list(args[0].tensor.shape[-2:])
        seen["proposals"] = output[0][0]

    generator = getattr(model, "proposal_generator", None)
    handle = generator.register_forward_hook(keep_proposals) if generator is not None else None
    try:
        with torch.no_grad():
            seen["instances"] = model([_input(arch)])[0]["instances"]
    finally:
        if handle is not None:
            handle.remove()
    return seen


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


@pytest.mark.parametrize("arch", sorted(set(LAZY_MODELS) - DENSE_DETECTORS))
def test_proposals_match_detectron2(arch: str) -> None:
    ours, ref = _outputs(arch), P.reference_output(arch)
    assert ours["padded_image_size"] == list(ref["padded_image_size"])
    figures = P.compare_proposals(ref["proposals"], ours["proposals"])
    assert figures["proposal_fraction"] >= P.TOL["proposal_fraction"], figures
    assert figures["objectness"] <= P.TOL["objectness"], figures


@pytest.mark.parametrize("arch", sorted(LAZY_MODELS))
def test_eval_outputs_match_detectron2(arch: str) -> None:
    inp, out = _input(arch), _outputs(arch)["instances"]
    assert out.image_size == (inp["height"], inp["width"])
    ref = P.reference_output(arch)["instances"]
    assert len(ref["pred_boxes"]) > 0
    P.assert_parity(P.compare_instances(ref, out))


def test_model_zoo_get_trained_loads_the_released_pkl_from_the_cache(tmp_path, monkeypatch):
    """``model_zoo.get(name.py, trained=True)`` offline: the released model-zoo ``.pkl`` placed where the error
    message says (``$DETLIGHTNING_CACHE/detectron2/<name>/<id>/model_final_<hash>.pkl``) loads into the lazy model
    with every tensor as stored."""
    import pickle

    from detlightning import model_zoo

    arch, name = "mask_rcnn_R_50_FPN_LSJ", "new_baselines/mask_rcnn_R_50_FPN_100ep_LSJ.py"
    url = model_zoo.get_checkpoint_url(name)
    path = tmp_path / url.split("https://dl.fbaipublicfiles.com/", 1)[1]
    path.parent.mkdir(parents=True)
    weights = P.reference_weights(arch)
    with open(path, "wb") as f:
        pickle.dump({"model": {k: v.numpy() for k, v in weights.items()}, "__author__": "Detectron2 Model Zoo"}, f)
    monkeypatch.setenv("DETLIGHTNING_CACHE", str(tmp_path))
    model = model_zoo.get(name, trained=True, device="cpu")
    state = model.state_dict()
    assert set(state) == set(weights)
    assert all(torch.equal(state[k], weights[k]) for k in weights)


def test_common_cascade_model_has_detectron2s_cascade_keys():
    """``common/models/cascade_rcnn.py`` (also the base of the ViTDet cascades) gives the state dict of detectron2's
    Cascade Mask R-CNN R50-FPN (manifest only: no stored outputs for it)."""
    from detlightning import model_zoo
    from detlightning.config import instantiate

    model = instantiate(model_zoo.get_config("common/models/cascade_rcnn.py").model)
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert ours == P.manifest("cascade_mask_rcnn_R_50_FPN")["shapes"]
