"""Caffe2 / Detectron1 name conversion, suffix matching, and loading an MSRA-style backbone .pkl."""
from __future__ import annotations

import importlib.util
import json
import logging
import pickle

import numpy as np
import pytest
import torch

from detlightning.checkpoint import (
    DetectionCheckpointer,
    align_and_update_state_dicts,
    convert_basic_c2_names,
    convert_c2_detectron_names,
)

from .toy_models import TreeOfTensors

LOGGER = "detlightning.checkpoint"

# Caffe2 blob name -> detectron2 name, written out by hand from the Detectron1 / detectron2 conventions
C2_TO_D2 = {
    "conv1_w": "stem.conv1.weight",
    "res_conv1_bn_s": "stem.conv1.norm.weight",
    "res_conv1_bn_b": "stem.conv1.norm.bias",
    "res2_0_branch1_w": "res2.0.shortcut.weight",
    "res2_0_branch1_bn_s": "res2.0.shortcut.norm.weight",
    "res2_0_branch2a_w": "res2.0.conv1.weight",
    "res2_0_branch2a_bn_b": "res2.0.conv1.norm.bias",
    "res3_1_branch2b_w": "res3.1.conv2.weight",
    "res5_2_branch2c_bn_s": "res5.2.conv3.norm.weight",
    "res4_0_branch2a_gn_s": "res4.0.conv1.norm.weight",
    "res4_0_branch2a_gn_b": "res4.0.conv1.norm.bias",
    "fc1000_w": "fc1000.weight",
    "fpn_inner_res5_2_sum_w": "fpn_lateral5.weight",
    "fpn_inner_res2_2_sum_lateral_b": "fpn_lateral2.bias",
    "fpn_res3_3_sum_w": "fpn_output3.weight",
    "fpn_res4_5_sum_b": "fpn_output4.bias",
    "conv_rpn_fpn2_w": "proposal_generator.rpn_head.conv.weight",
    "rpn_cls_logits_fpn2_b": "proposal_generator.rpn_head.objectness_logits.bias",
    "rpn_bbox_pred_fpn2_w": "proposal_generator.rpn_head.anchor_deltas.weight",
    "fc6_w": "box_head.fc1.weight",
    "fc7_b": "box_head.fc2.bias",
    "head_conv1_w": "box_head.conv1.weight",
    "head_conv1_gn_s": "box_head.conv1.norm.weight",
    "cls_score_w": "cls_score.weight",
    "bbox_pred_b": "bbox_pred.bias",
    "_[mask]_fcn1_w": "mask_head.mask_fcn1.weight",
    "_[mask]_fcn4_b": "mask_head.mask_fcn4.bias",
    "conv5_mask_w": "mask_head.deconv.weight",
    "mask_fcn_logits_w": "mask_head.predictor.weight",
    "conv_fcn1_w": "roi_heads.keypoint_head.conv_fcn1.weight",
    "kps_score_lowres_b": "roi_heads.keypoint_head.score_lowres.bias",
    "pred_w": "linear.weight",
}
C4_RPN = {
    "conv_rpn_w": "proposal_generator.rpn_head.conv.weight",
    "rpn_cls_logits_b": "proposal_generator.rpn_head.objectness_logits.bias",
    "rpn_bbox_pred_w": "proposal_generator.rpn_head.anchor_deltas.weight",
}


def test_convert_basic_c2_names():
    assert convert_basic_c2_names(["conv1_w", "res_conv1_bn_s", "res2_0_branch2a_bn_b", "res2_0_branch1_w"]) == [
        "stem.conv1.weight", "stem.conv1.norm.weight", "res2.0.conv1.norm.bias", "res2.0.shortcut.weight",
    ]


@pytest.mark.parametrize("table", [C2_TO_D2, C4_RPN], ids=["fpn", "c4_rpn"])
def test_convert_c2_detectron_names(table):
    weights = {k: torch.zeros(8, 2) for k in table}
    new, original = convert_c2_detectron_names(weights)
    got = {original[n]: n for n in new}
    assert got == table


def test_background_class_handling():
    num_classes, dim = 2, 3
    cls_w = torch.arange((num_classes + 1) * dim, dtype=torch.float32).view(num_classes + 1, dim)
    box_w = torch.arange(4 * (num_classes + 1) * dim, dtype=torch.float32).view(4 * (num_classes + 1), dim)
    mask_w = np.arange(num_classes + 1, dtype=np.float32).reshape(num_classes + 1, 1, 1, 1)
    new, _ = convert_c2_detectron_names({"cls_score_w": cls_w, "bbox_pred_w": box_w, "mask_fcn_logits_w": mask_w})
    # detectron2: background logit last; no background box deltas / mask
    assert torch.equal(new["cls_score.weight"], cls_w[[1, 2, 0]])
    assert torch.equal(new["bbox_pred.weight"], box_w[4:])
    assert new["mask_head.predictor.weight"].reshape(-1).tolist() == [1.0, 2.0]


def test_align_prefers_longest_suffix_and_whole_names():
    model = {
        "backbone.body.res2.conv1.weight": torch.zeros(2),
        "backbone.body.conv1.weight": torch.zeros(2),
        "roi_heads.mesh_head.whatever_conv1.weight": torch.zeros(2),
    }
    a, b = torch.ones(2), torch.full((2,), 2.0)
    out = align_and_update_state_dicts(model, {"res2.conv1.weight": a, "conv1.weight": b}, c2_conversion=False)
    assert out["backbone.body.res2.conv1.weight"] is a
    assert out["backbone.body.conv1.weight"] is b
    # "whatever_conv1" is not the whole name "conv1": no match
    assert "roi_heads.mesh_head.whatever_conv1.weight" not in out
    assert set(out) == {"backbone.body.res2.conv1.weight", "backbone.body.conv1.weight"}


def test_align_keeps_unmatched_and_mismatched_under_checkpoint_names(caplog):
    model = {"backbone.bottom_up.stem.conv1.weight": torch.zeros(4, 3, 1, 1)}
    ckpt = {"stem.conv1.weight": torch.zeros(5, 3, 1, 1), "fc1000.weight": torch.zeros(1)}
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        out = align_and_update_state_dicts(model, ckpt, c2_conversion=False)
    assert set(out) == {"stem.conv1.weight", "fc1000.weight"}
    assert "stem.conv1.weight" in caplog.text and "(5, 3, 1, 1)" in caplog.text and "(4, 3, 1, 1)" in caplog.text


def test_align_ambiguity_raises():
    model = {"a.conv1.weight": torch.zeros(1), "b.conv1.weight": torch.zeros(1)}
    with pytest.raises(ValueError, match="conv1.weight"):
        align_and_update_state_dicts(model, {"conv1.weight": torch.ones(1)}, c2_conversion=False)


def test_detectron1_detection_blobs_into_model(tmp_path):
    """{"blobs": ...} of a Detectron1 detector: heads renamed, background rows handled, roi_heads prefix matched."""
    model = TreeOfTensors(
        {
            "backbone.bottom_up.res2.0.conv1.weight": [2, 2, 1, 1],
            "backbone.fpn_lateral2.weight": [2, 2, 1, 1],
            "proposal_generator.rpn_head.conv.weight": [2, 2, 3, 3],
            "roi_heads.box_head.fc1.weight": [4, 8],
            "roi_heads.box_predictor.cls_score.weight": [3, 4],
            "roi_heads.box_predictor.bbox_pred.weight": [8, 4],  # 2 classes, no background
            "roi_heads.mask_head.predictor.weight": [2, 2, 1, 1],
        }
    )
    rng = np.random.default_rng(0)
    blobs = {
        "res2_0_branch2a_w": rng.standard_normal((2, 2, 1, 1)).astype(np.float32),
        "fpn_inner_res2_2_sum_lateral_w": rng.standard_normal((2, 2, 1, 1)).astype(np.float32),
        "conv_rpn_fpn2_w": rng.standard_normal((2, 2, 3, 3)).astype(np.float32),
        "fc6_w": rng.standard_normal((4, 8)).astype(np.float32),
        # Detectron1: background is class 0 of the classifier, box regressor and mask predictor
        "cls_score_w": rng.standard_normal((3, 4)).astype(np.float32),
        "bbox_pred_w": rng.standard_normal((12, 4)).astype(np.float32),
        "mask_fcn_logits_w": rng.standard_normal((3, 2, 1, 1)).astype(np.float32),
        "fc6_w_momentum": np.zeros((4, 8), np.float32),
    }
    path = tmp_path / "model_final.pkl"
    with open(path, "wb") as f:
        pickle.dump({"blobs": blobs, "cfg": "MODEL:\n  TYPE: generalized_rcnn\n"}, f)
    ckpt = DetectionCheckpointer(model)
    ckpt.load(str(path))
    sd = model.state_dict()
    np.testing.assert_array_equal(sd["backbone.bottom_up.res2.0.conv1.weight"].numpy(), blobs["res2_0_branch2a_w"])
    np.testing.assert_array_equal(sd["backbone.fpn_lateral2.weight"].numpy(), blobs["fpn_inner_res2_2_sum_lateral_w"])
    np.testing.assert_array_equal(sd["proposal_generator.rpn_head.conv.weight"].numpy(), blobs["conv_rpn_fpn2_w"])
    np.testing.assert_array_equal(sd["roi_heads.box_head.fc1.weight"].numpy(), blobs["fc6_w"])
    cls_score = sd["roi_heads.box_predictor.cls_score.weight"].numpy()
    np.testing.assert_array_equal(cls_score, blobs["cls_score_w"][[1, 2, 0]])
    np.testing.assert_array_equal(sd["roi_heads.box_predictor.bbox_pred.weight"].numpy(), blobs["bbox_pred_w"][4:])
    np.testing.assert_array_equal(sd["roi_heads.mask_head.predictor.weight"].numpy(), blobs["mask_fcn_logits_w"][1:])
    assert ckpt.incompatible_keys.missing_keys == [] and ckpt.incompatible_keys.unexpected_keys == []


# ----------------------------------------------------------------------- MSRA backbone from ../shared/compat
@pytest.fixture(scope="module")
def c2_backbone_module(compat_dir):
    spec = importlib.util.spec_from_file_location("compat_c2_backbone", compat_dir / "c2_backbone.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_msra_backbone_pkl_into_fpn_backbone(tmp_path, compat_dir, c2_backbone_module, caplog):
    meta = json.loads((compat_dir / "mask_rcnn_R_50_FPN" / "manifest.json").read_text())
    blobs, expected = c2_backbone_module.make_c2_backbone(meta["shapes"], meta["seed"])
    assert "res2_0_branch2a_w_momentum" in blobs and "fc1000_w" in blobs
    path = tmp_path / "R-50.pkl"
    with open(path, "wb") as f:
        pickle.dump(blobs, f)

    prefix = "backbone.bottom_up."
    shapes = {k: s for k, s in meta["shapes"].items() if k.startswith(prefix)}
    model = TreeOfTensors(shapes, fill=7.0)  # 7: any value that is visibly not loaded
    ckpt = DetectionCheckpointer(model)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        ckpt.load(str(path))
    sd = model.state_dict()

    for key, value in expected.items():
        if key.endswith(("norm.weight", "norm.bias")):
            continue
        np.testing.assert_array_equal(sd[key].numpy(), value, err_msg=key)
    norms = sorted({k.rsplit(".", 1)[0] for k in expected if ".norm." in k})
    assert len(norms) == 53  # stem + 16 blocks x 3 convs + 4 shortcuts
    for norm in norms:
        w, b = sd[norm + ".weight"].double(), sd[norm + ".bias"].double()
        rm, rv = sd[norm + ".running_mean"].double(), sd[norm + ".running_var"].double()
        # the frozen BN y = (x - rm) / sqrt(rv + eps) * w + b must equal x * scale + bias from the file
        eff_scale = w / torch.sqrt(rv + 1e-5)
        eff_bias = b - rm * eff_scale
        np.testing.assert_allclose(eff_scale.numpy(), expected[norm + ".weight"], rtol=0, atol=1e-6, err_msg=norm)
        np.testing.assert_allclose(eff_bias.numpy(), expected[norm + ".bias"], rtol=0, atol=1e-6, err_msg=norm)
        assert torch.all(rm == 0)

    inc = ckpt.incompatible_keys
    assert inc.missing_keys == []
    assert sorted(inc.unexpected_keys) == ["fc1000.bias", "fc1000.weight"]  # _momentum was dropped, not reported
    assert inc.incorrect_shapes == []
    assert "not used by the model" in caplog.text and "fc1000.{bias, weight}" in caplog.text
    assert "momentum" not in caplog.text
    assert "Following weights matched with submodule backbone.bottom_up" in caplog.text
