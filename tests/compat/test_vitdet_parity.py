"""detectron2 parity of ViTDet's Mask R-CNN (ViT-B + SimpleFeaturePyramid) and Cascade Mask R-CNN (MViTv2-B + FPN):
state-dict keys/shapes against the manifests, and RPN proposals and eval outputs on the 1024 px RGB input against
detectron2's (tolerances of ../shared/compat/README.md).

The models come from our LazyConfig files of the names the manifests give (ViTDet/COCO/mask_rcnn_vitdet_b_100ep.py,
ViTDet/COCO/cascade_mask_rcnn_mvitv2_b_in21k_100ep.py) as a detectron2 user builds them
(``model_zoo.get_config(name).model`` -> ``instantiate``), with ``test_score_thresh`` = the manifest's
``roi_score_thresh_test``. One forward per model serves both output tests (~10 s each on an idle CPU).
"""
from __future__ import annotations

import functools

import pytest
import torch

from tests.conftest import COMPAT_DIR

from . import _parity as P

ARCHS = ["mask_rcnn_vitdet_b", "cascade_mask_rcnn_mvitv2_b"]


@pytest.fixture(autouse=True)
def _need_compat(compat_dir):
    return compat_dir


@functools.lru_cache(maxsize=None)
def _model(arch: str):
    from detlightning import model_zoo
    from detlightning.config import instantiate

    manifest = P.manifest(arch)
    cfg = model_zoo.get_config(manifest["detectron2_config"])
    heads = cfg.model.roi_heads
    for predictor in heads.box_predictors if "box_predictors" in heads else [heads.box_predictor]:
        predictor.test_score_thresh = float(manifest["roi_score_thresh_test"])
    torch.manual_seed(0)
    return instantiate(cfg.model).eval()


@functools.lru_cache(maxsize=None)
def _loaded_model(arch: str):
    return P.load_reference_weights(_model(arch), arch)


def _reference_input() -> dict:
    return torch.load(COMPAT_DIR / "inputs" / "astronaut_RGB_1024.pt", weights_only=True)


@functools.lru_cache(maxsize=None)
def _run(arch: str) -> dict:
    """One eval forward through the public API; the RPN's proposals and padded input size are caught on the way."""
    model = _loaded_model(arch)
    caught = {}

    def hook(_module, args, output):
        caught["padded_image_size"] = list(args[0].tensor.shape[-2:])
        caught["proposals"] = output[0][0]

    handle = model.proposal_generator.register_forward_hook(hook)
    try:
        with torch.no_grad():
            caught["instances"] = model([_reference_input()])[0]["instances"]
    finally:
        handle.remove()
    return caught


@pytest.mark.parametrize("arch", ARCHS)
def test_state_dict_matches_detectron2_manifest(arch):
    ours = {k: list(v.shape) for k, v in _model(arch).state_dict().items()}
    ref = P.manifest(arch)["shapes"]
    missing = sorted(set(ref) - set(ours))
    unexpected = sorted(set(ours) - set(ref))
    assert not missing and not unexpected, f"missing: {missing[:20]}\nunexpected: {unexpected[:20]}"
    wrong = {k: (ours[k], ref[k]) for k in ref if ours[k] != ref[k]}
    assert not wrong, f"shape mismatches (ours, detectron2): {wrong}"


@pytest.mark.parametrize("arch", ARCHS)
def test_rpn_proposals_match_detectron2(arch):
    ref = P.reference_output(arch)
    run = _run(arch)
    assert run["padded_image_size"] == list(ref["padded_image_size"]) == [1024, 1024]
    proposals = run["proposals"]
    m = P.greedy_match(ref["proposals"]["proposal_boxes"], proposals.proposal_boxes.tensor)
    assert m.fraction >= P.TOL["proposal_fraction"], f"matched {m.fraction:.3f} of detectron2's proposals"
    r, o = torch.tensor(m.ref_idx), torch.tensor(m.our_idx)
    logit_diff = (ref["proposals"]["objectness_logits"][r] - proposals.objectness_logits[o]).abs().max()
    assert logit_diff < 1e-2, f"objectness logits differ by {float(logit_diff)}"


@pytest.mark.parametrize("arch", ARCHS)
def test_eval_outputs_match_detectron2(arch):
    inp = _reference_input()
    out = _run(arch)["instances"]
    assert out.image_size == (inp["height"], inp["width"])
    assert out.has("pred_masks")
    P.assert_parity(P.compare_instances(P.reference_output(arch)["instances"], out))
