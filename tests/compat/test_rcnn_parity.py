"""detectron2 parity of the R-CNN family: state-dict keys, checkpoint forms, and eval outputs on the stored input."""
from __future__ import annotations

import functools
import logging
import pickle

import pytest
import torch

from detlightning.checkpoint import DetectionCheckpointer

from . import _parity as P

WITH_OUTPUTS = ["faster_rcnn_R_50_FPN", "mask_rcnn_R_50_FPN", "keypoint_rcnn_R_50_FPN", "faster_rcnn_R_50_C4"]
MANIFEST_ONLY = ["mask_rcnn_R_50_FPN_gn", "mask_rcnn_X_101_32x8d_FPN"]


@pytest.fixture(autouse=True)
def _need_compat(compat_dir):
    return compat_dir


@functools.lru_cache(maxsize=None)
def _loaded_model(arch: str):
    """Our model for ``arch`` with detectron2's reference weights loaded from a .pth file (cached per process)."""
    return P.load_reference_weights(P.build(arch), arch)


@pytest.mark.parametrize("arch", WITH_OUTPUTS + MANIFEST_ONLY)
def test_state_dict_matches_detectron2_manifest(arch):
    model = P.build(arch)
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    ref = P.manifest(arch)["shapes"]
    missing = sorted(set(ref) - set(ours))
    unexpected = sorted(set(ours) - set(ref))
    assert not missing and not unexpected, f"missing: {missing[:20]}\nunexpected: {unexpected[:20]}"
    wrong = {k: (ours[k], ref[k]) for k in ref if ours[k] != ref[k]}
    assert not wrong, f"shape mismatches (ours, detectron2): {wrong}"


def _assert_loaded_exactly(model, weights, caplog):
    sd = model.state_dict()
    for k, v in weights.items():
        assert torch.equal(sd[k], torch.as_tensor(v)), k
    text = caplog.text
    assert "not found in checkpoint" not in text.lower() and "missing" not in text.lower(), text
    assert "unexpected" not in text.lower() and "not used" not in text.lower(), text


@pytest.mark.parametrize("form", ["pth", "pkl"])
def test_checkpoint_forms_load_with_no_missing_or_unexpected_keys(form, tmp_path, caplog):
    arch = "mask_rcnn_R_50_FPN"
    weights = P.reference_weights(arch)
    model = P.build(arch)
    if form == "pth":
        path = tmp_path / "model_final.pth"
        torch.save({"model": weights, "iteration": 0}, path)
    else:
        path = tmp_path / "model_final.pkl"
        with open(path, "wb") as f:
            pickle.dump({"model": {k: v.numpy() for k, v in weights.items()}, "__author__": "Detectron2 Model Zoo"}, f)
    with caplog.at_level(logging.INFO):
        DetectionCheckpointer(model).load(str(path))
    _assert_loaded_exactly(model, weights, caplog)


def test_caffe2_backbone_pkl_loads_into_full_model(tmp_path, caplog):
    arch = "mask_rcnn_R_50_FPN"
    blobs, expected = P.c2_backbone(arch)
    path = tmp_path / "R-50.pkl"
    with open(path, "wb") as f:
        pickle.dump(blobs, f)
    model = P.build(arch)
    head_before = model.roi_heads.box_predictor.cls_score.weight.detach().clone()
    with caplog.at_level(logging.INFO):
        DetectionCheckpointer(model).load(str(path))
    sd = model.state_dict()
    for key, value in expected.items():
        torch.testing.assert_close(sd[key], torch.as_tensor(value), rtol=0, atol=0, msg=key)
    # frozen BN: the folded affine equals the stored scale/bias
    norm = model.backbone.bottom_up.res2[0].conv1.norm
    scale, _ = norm.scale_and_shift()
    torch.testing.assert_close(scale, torch.as_tensor(expected["backbone.bottom_up.res2.0.conv1.norm.weight"]),
                               rtol=1e-5, atol=1e-6)
    assert torch.equal(model.roi_heads.box_predictor.cls_score.weight, head_before)
    assert "fc1000" in caplog.text  # reported as unused
    assert "momentum" not in caplog.text


@pytest.mark.parametrize("arch", WITH_OUTPUTS)
def test_eval_outputs_match_detectron2(arch):
    model = _loaded_model(arch)
    inp = P.reference_input()
    ref = P.reference_output(arch)
    with torch.no_grad():
        out = model([inp])[0]["instances"]
    assert out.image_size == (inp["height"], inp["width"])
    P.assert_parity(P.compare_instances(ref["instances"], out))


@pytest.mark.parametrize("arch", WITH_OUTPUTS)
def test_rpn_proposals_match_detectron2(arch):
    model = _loaded_model(arch)
    ref = P.reference_output(arch)
    with torch.no_grad():
        images = model.preprocess_image([P.reference_input()])
        features = model.backbone(images.tensor)
        proposals = model.proposal_generator(images, features, None)[0][0]
    assert list(images.tensor.shape[-2:]) == list(ref["padded_image_size"])
    m = P.greedy_match(ref["proposals"]["proposal_boxes"], proposals.proposal_boxes.tensor)
    assert m.fraction >= P.TOL["proposal_fraction"], f"matched {m.fraction:.3f} of detectron2's proposals"
    r, o = torch.tensor(m.ref_idx), torch.tensor(m.our_idx)
    logit_diff = (ref["proposals"]["objectness_logits"][r] - proposals.objectness_logits[o]).abs().max()
    assert logit_diff < 1e-2, f"objectness logits differ by {float(logit_diff)}"


@pytest.mark.parametrize("arch", WITH_OUTPUTS)
def test_model_built_from_a_detectron2_cfgnode_matches_detectron2(arch):
    """detectron2's own flow: get_cfg() + merge_from_file(model-zoo yaml) + build_model(cfg). The CfgNode is read in
    place (detlightning.config.reader), never converted to our Hydra config."""
    model = P.build_from_zoo_yaml(arch)
    assert sorted(model.state_dict()) == sorted(P.manifest(arch)["shapes"])
    model.load_state_dict(P.reference_weights(arch))
    inp = P.reference_input()
    with torch.no_grad():
        out = model([inp])[0]["instances"]
    P.assert_parity(P.compare_instances(P.reference_output(arch)["instances"], out))
