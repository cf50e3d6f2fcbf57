"""detectron2 parity of FCOS (COCO-Detection/fcos_R_50_FPN_1x.py): state-dict keys/shapes against the manifest, and
eval outputs on the stored input against detectron2's (tolerances of ../shared/compat/README.md)."""
from __future__ import annotations

import functools

import pytest
import torch

from . import _parity as P

ARCH = "fcos_R_50_FPN"


@pytest.fixture(autouse=True)
def _need_compat(compat_dir):
    return compat_dir


def build_fcos_r50_fpn(test_score_thresh: float = 0.2):
    """The model of detectron2's fcos_R_50_FPN_1x.py, as explicit constructor calls (configs/common/models/fcos.py on
    top of retinanet.py: P6/P7 from P5, GN head with 4 convs, one point per location; freeze_at=2)."""
    from detlightning.layers import ShapeSpec
    from detlightning.modeling.backbone import FPN, BasicStem, LastLevelP6P7, ResNet
    from detlightning.modeling.meta_arch.fcos import FCOS, FCOSHead

    bottom_up = ResNet(
        stem=BasicStem(in_channels=3, out_channels=64, norm="FrozenBN"),
        stages=ResNet.make_default_stages(depth=50, stride_in_1x1=True, norm="FrozenBN"),
        out_features=["res3", "res4", "res5"],
        freeze_at=2,
    )
    backbone = FPN(
        bottom_up=bottom_up,
        in_features=["res3", "res4", "res5"],
        out_channels=256,
        top_block=LastLevelP6P7(in_channels=256, out_channels=256, in_feature="p5"),
    )
    head = FCOSHead(
        input_shape=[ShapeSpec(channels=256)] * 5,
        num_classes=80,
        conv_dims=[256, 256, 256, 256],
        prior_prob=0.01,
        norm="GN",
    )
    return FCOS(
        backbone=backbone,
        head=head,
        num_classes=80,
        head_in_features=["p3", "p4", "p5", "p6", "p7"],
        focal_loss_alpha=0.25,
        focal_loss_gamma=2.0,
        test_score_thresh=test_score_thresh,
        test_nms_thresh=0.6,
        pixel_mean=[103.530, 116.280, 123.675],
        pixel_std=[1.0, 1.0, 1.0],
    )


@functools.lru_cache(maxsize=None)
def _model():
    return build_fcos_r50_fpn(P.manifest(ARCH)["score_thresh_test"]).eval()


@functools.lru_cache(maxsize=None)
def _outputs() -> dict:
    model = P.load_reference_weights(_model(), ARCH)
    with torch.no_grad():
        return model([P.reference_input()])[0]


def test_manifest_settings():
    m = P.manifest(ARCH)
    assert m["detectron2_config"] == "COCO-Detection/fcos_R_50_FPN_1x.py"
    assert m["input_format"] == "BGR" and m["test_size"] == [800, 1333]
    assert _model().test_score_thresh == m["score_thresh_test"] == 0.2


def test_state_dict_matches_detectron2_manifest():
    ours = {k: list(v.shape) for k, v in _model().state_dict().items()}
    ref = P.manifest(ARCH)["shapes"]
    missing = sorted(set(ref) - set(ours))
    unexpected = sorted(set(ours) - set(ref))
    assert not missing and not unexpected, f"missing: {missing[:20]}\nunexpected: {unexpected[:20]}"
    wrong = {k: (ours[k], ref[k]) for k in ref if ours[k] != ref[k]}
    assert not wrong, f"shape mismatches (ours, detectron2): {wrong}"


def test_fcos_eval_outputs_match_detectron2():
    inp = P.reference_input()
    out = _outputs()["instances"]
    assert out.image_size == (inp["height"], inp["width"])
    ref = P.reference_output(ARCH)["instances"]
    assert len(out) == len(ref["scores"])
    P.assert_parity(P.compare_instances(ref, out))
