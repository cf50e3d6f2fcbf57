"""detectron2 parity of the RegNetY-4GF / RegNetX-4GF Mask R-CNNs (new_baselines/mask_rcnn_regnet{y,x}_4gf_dds_FPN_
100ep_LSJ.py): state-dict keys/shapes against the manifests, RPN proposals and eval outputs on the stored input against
detectron2's (tolerances of ../shared/compat/README.md)."""
from __future__ import annotations

import functools

import pytest
import torch

from . import _parity as P

ARCHS = ["mask_rcnn_regnety_4gf_dds_FPN", "mask_rcnn_regnetx_4gf_dds_FPN"]

# RegNet arguments of the two LazyConfigs (everything else is the shared LSJ Mask R-CNN)
REGNET_ARGS = {
    "mask_rcnn_regnety_4gf_dds_FPN": dict(depth=22, w_a=31.41, w_0=96, w_m=2.24, group_width=64, se_ratio=0.25),
    "mask_rcnn_regnetx_4gf_dds_FPN": dict(depth=23, w_a=38.65, w_0=96, w_m=2.43, group_width=40),
}


@pytest.fixture(autouse=True)
def _need_compat(compat_dir):
    return compat_dir


def build_regnet_mask_rcnn(arch: str, test_score_thresh: float):
    """Explicit constructor calls equal to detectron2's LazyConfig for ``arch``: common/models/mask_rcnn_fpn.py with
    the LSJ changes (SyncBN everywhere, 2-conv RPN head, 4conv1fc box head, normed mask head) and a RegNet
    bottom-up."""
    from detlightning.layers import NaiveSyncBatchNorm, ShapeSpec
    from detlightning.modeling import FPN, GeneralizedRCNN, RegNet
    from detlightning.modeling.anchor_generator import DefaultAnchorGenerator
    from detlightning.modeling.backbone.fpn import LastLevelMaxPool
    from detlightning.modeling.backbone.regnet import ResBottleneckBlock, SimpleStem
    from detlightning.modeling.box_regression import Box2BoxTransform
    from detlightning.modeling.matcher import Matcher
    from detlightning.modeling.poolers import ROIPooler
    from detlightning.modeling.proposal_generator import RPN, StandardRPNHead
    from detlightning.modeling.roi_heads import (
        FastRCNNConvFCHead,
        FastRCNNOutputLayers,
        MaskRCNNConvUpsampleHead,
        StandardROIHeads,
    )

    def head_norm(c: int):
        return NaiveSyncBatchNorm(c)

    bottom_up = RegNet(
        stem_class=SimpleStem,
        stem_width=32,
        block_class=ResBottleneckBlock,
        norm="SyncBN",
        freeze_at=0,
        out_features=["s1", "s2", "s3", "s4"],
        **REGNET_ARGS[arch],
    )
    backbone = FPN(
        bottom_up=bottom_up,
        in_features=["s1", "s2", "s3", "s4"],
        out_channels=256,
        norm="SyncBN",
        top_block=LastLevelMaxPool(),
    )
    scales = (1.0 / 4, 1.0 / 8, 1.0 / 16, 1.0 / 32)
    in_features = ["p2", "p3", "p4", "p5"]
    rpn = RPN(
        in_features=["p2", "p3", "p4", "p5", "p6"],
        head=StandardRPNHead(in_channels=256, num_anchors=3, conv_dims=[-1, -1]),
        anchor_generator=DefaultAnchorGenerator(
            sizes=[[32], [64], [128], [256], [512]],
            aspect_ratios=[0.5, 1.0, 2.0],
            strides=[4, 8, 16, 32, 64],
            offset=0.0,
        ),
        anchor_matcher=Matcher(thresholds=[0.3, 0.7], labels=[0, -1, 1], allow_low_quality_matches=True),
        box2box_transform=Box2BoxTransform(weights=[1.0, 1.0, 1.0, 1.0]),
        batch_size_per_image=256,
        positive_fraction=0.5,
        pre_nms_topk=(2000, 1000),
        post_nms_topk=(1000, 1000),
        nms_thresh=0.7,
    )
    roi_heads = StandardROIHeads(
        num_classes=80,
        batch_size_per_image=512,
        positive_fraction=0.25,
        proposal_matcher=Matcher(thresholds=[0.5], labels=[0, 1], allow_low_quality_matches=False),
        box_in_features=in_features,
        box_pooler=ROIPooler(output_size=7, scales=scales, sampling_ratio=0, pooler_type="ROIAlignV2"),
        box_head=FastRCNNConvFCHead(
            ShapeSpec(channels=256, height=7, width=7), conv_dims=[256] * 4, fc_dims=[1024], conv_norm=head_norm
        ),
        box_predictor=FastRCNNOutputLayers(
            ShapeSpec(channels=1024),
            test_score_thresh=test_score_thresh,
            box2box_transform=Box2BoxTransform(weights=(10, 10, 5, 5)),
            num_classes=80,
        ),
        mask_in_features=in_features,
        mask_pooler=ROIPooler(output_size=14, scales=scales, sampling_ratio=0, pooler_type="ROIAlignV2"),
        mask_head=MaskRCNNConvUpsampleHead(
            ShapeSpec(channels=256, width=14, height=14), num_classes=80, conv_dims=[256] * 5, conv_norm=head_norm
        ),
    )
    return GeneralizedRCNN(
        backbone=backbone,
        proposal_generator=rpn,
        roi_heads=roi_heads,
        pixel_mean=[103.530, 116.280, 123.675],
        pixel_std=[57.375, 57.120, 58.395],
        input_format="BGR",
    )


@functools.lru_cache(maxsize=None)
def _model(arch: str):
    m = P.manifest(arch)
    assert m["input_format"] == "BGR" and m["test_size"] == [800, 1333]
    return build_regnet_mask_rcnn(arch, m["roi_score_thresh_test"]).eval()


@functools.lru_cache(maxsize=None)
def _loaded_model(arch: str):
    return P.load_reference_weights(_model(arch), arch)


@pytest.mark.parametrize("arch", ARCHS)
def test_state_dict_matches_detectron2_manifest(arch: str) -> None:
    ours = {k: list(v.shape) for k, v in _model(arch).state_dict().items()}
    ref = P.manifest(arch)["shapes"]
    missing = sorted(set(ref) - set(ours))
    unexpected = sorted(set(ours) - set(ref))
    assert not missing and not unexpected, f"missing: {missing[:20]}\nunexpected: {unexpected[:20]}"
    wrong = {k: (ours[k], ref[k]) for k in ref if ours[k] != ref[k]}
    assert not wrong, f"shape mismatches (ours, detectron2): {wrong}"


@functools.lru_cache(maxsize=None)
def _outputs(arch: str) -> dict:
    """One eval forward on the stored input: the instances, plus the RPN's proposals and the padded input size
    captured on the way (the backbone is the slow part on a CPU, so it runs once)."""
    model = _loaded_model(arch)
    seen = {}

    def keep_proposals(module, args, output):
        seen["padded_image_size"] = list(args[0].tensor.shape[-2:])
        seen["proposals"] = output[0][0]

    handle = model.proposal_generator.register_forward_hook(keep_proposals)
    try:
        with torch.no_grad():
            seen["instances"] = model([P.reference_input()])[0]["instances"]
    finally:
        handle.remove()
    return seen


@pytest.mark.parametrize("arch", ARCHS)
def test_proposals_match_detectron2(arch: str) -> None:
    ours = _outputs(arch)
    ref = P.reference_output(arch)
    assert ours["padded_image_size"] == list(ref["padded_image_size"])
    match = P.greedy_match(ref["proposals"]["proposal_boxes"], ours["proposals"].proposal_boxes.tensor)
    assert match.fraction >= P.TOL["proposal_fraction"], f"{match.fraction:.3f} of the proposals matched"


@pytest.mark.parametrize("arch", ARCHS)
def test_eval_outputs_match_detectron2(arch: str) -> None:
    inp = P.reference_input()
    out = _outputs(arch)["instances"]
    assert out.image_size == (inp["height"], inp["width"])
    ref = P.reference_output(arch)["instances"]
    assert len(ref["pred_boxes"]) > 0
    P.assert_parity(P.compare_instances(ref, out))


def test_regnet_backbones_are_what_the_configs_say() -> None:
    y = _model("mask_rcnn_regnety_4gf_dds_FPN").backbone.bottom_up
    x = _model("mask_rcnn_regnetx_4gf_dds_FPN").backbone.bottom_up
    assert [len(list(s.children())) for s, _ in y.stages_and_names] == [2, 6, 12, 2]
    assert [len(list(s.children())) for s, _ in x.stages_and_names] == [2, 5, 14, 2]
    assert {k: v.channels for k, v in y.output_shape().items()} == {"s1": 128, "s2": 192, "s3": 512, "s4": 1088}
    assert {k: v.channels for k, v in x.output_shape().items()} == {"s1": 80, "s2": 240, "s3": 560, "s4": 1360}
    assert all(s.stride == 4 * 2**i for i, s in enumerate(y.output_shape().values()))
    assert y.s1.b1.f.se is not None and x.s1.b1.f.se is None
