"""detectron2 parity of ViTDet's Mask R-CNN (ViT-B + SimpleFeaturePyramid) and Cascade Mask R-CNN (MViTv2-B + FPN):
state-dict keys/shapes against the manifests, and RPN proposals and eval outputs on the 1024 px RGB input against
detectron2's (tolerances of ../shared/compat/README.md).

The models are built by explicit constructor calls that mirror detectron2's LazyConfigs
(configs/common/models/mask_rcnn_vitdet.py, projects/ViTDet/configs/COCO/mask_rcnn_vitdet_b_100ep.py and
cascade_mask_rcnn_mvitv2_b_in21k_100ep.py), with ``test_score_thresh`` = the manifest's ``roi_score_thresh_test``.
One forward per model serves both output tests (~10 s each on CPU).
"""
from __future__ import annotations

import functools
from functools import partial

import pytest
import torch
from torch import nn

from tests.conftest import COMPAT_DIR

from . import _parity as P

ARCHS = ["mask_rcnn_vitdet_b", "cascade_mask_rcnn_mvitv2_b"]
IMAGENET_RGB_MEAN = [123.675, 116.28, 103.53]
IMAGENET_RGB_STD = [58.395, 57.12, 57.375]


@pytest.fixture(autouse=True)
def _need_compat(compat_dir):
    return compat_dir


def _rpn_and_pooler_parts():
    from detlightning.modeling import DefaultAnchorGenerator, Matcher, ROIPooler
    from detlightning.modeling.box_regression import Box2BoxTransform
    from detlightning.modeling.proposal_generator import RPN, StandardRPNHead

    levels = ["p2", "p3", "p4", "p5"]
    scales = (1.0 / 4, 1.0 / 8, 1.0 / 16, 1.0 / 32)
    rpn = RPN(
        in_features=levels + ["p6"],
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
    box_pooler = ROIPooler(output_size=7, scales=scales, sampling_ratio=0, pooler_type="ROIAlignV2")
    mask_pooler = ROIPooler(output_size=14, scales=scales, sampling_ratio=0, pooler_type="ROIAlignV2")
    return levels, rpn, box_pooler, mask_pooler


def _ln_box_head():
    from detlightning.layers import ShapeSpec
    from detlightning.modeling.roi_heads import FastRCNNConvFCHead

    return FastRCNNConvFCHead(
        ShapeSpec(channels=256, height=7, width=7), conv_dims=[256] * 4, fc_dims=[1024], conv_norm="LN"
    )


def _ln_mask_head():
    from detlightning.layers import ShapeSpec
    from detlightning.modeling.roi_heads import MaskRCNNConvUpsampleHead

    return MaskRCNNConvUpsampleHead(
        ShapeSpec(channels=256, width=14, height=14), num_classes=80, conv_dims=[256] * 5, conv_norm="LN"
    )


def build_mask_rcnn_vitdet_b(score_thresh: float):
    """configs/common/models/mask_rcnn_vitdet.py (ViT-B: 768 wide, 12 blocks, global attention in 2, 5, 8, 11)."""
    from detlightning.layers import ShapeSpec
    from detlightning.modeling import GeneralizedRCNN, Matcher, SimpleFeaturePyramid, StandardROIHeads, ViT
    from detlightning.modeling.backbone.fpn import LastLevelMaxPool
    from detlightning.modeling.box_regression import Box2BoxTransform
    from detlightning.modeling.roi_heads import FastRCNNOutputLayers

    levels, rpn, box_pooler, mask_pooler = _rpn_and_pooler_parts()
    backbone = SimpleFeaturePyramid(
        net=ViT(
            img_size=1024,
            patch_size=16,
            embed_dim=768,
            depth=12,
            num_heads=12,
            drop_path_rate=0.1,
            window_size=14,
            mlp_ratio=4,
            qkv_bias=True,
            norm_layer=partial(nn.LayerNorm, eps=1e-6),
            window_block_indexes=[0, 1, 3, 4, 6, 7, 9, 10],
            residual_block_indexes=[],
            use_rel_pos=True,
            out_feature="last_feat",
        ),
        in_feature="last_feat",
        out_channels=256,
        scale_factors=(4.0, 2.0, 1.0, 0.5),
        top_block=LastLevelMaxPool(),
        norm="LN",
        square_pad=1024,
    )
    roi_heads = StandardROIHeads(
        num_classes=80,
        batch_size_per_image=512,
        positive_fraction=0.25,
        proposal_matcher=Matcher(thresholds=[0.5], labels=[0, 1], allow_low_quality_matches=False),
        box_in_features=levels,
        box_pooler=box_pooler,
        box_head=_ln_box_head(),
        box_predictor=FastRCNNOutputLayers(
            ShapeSpec(channels=1024),
            test_score_thresh=score_thresh,
            box2box_transform=Box2BoxTransform(weights=(10, 10, 5, 5)),
            num_classes=80,
        ),
        mask_in_features=levels,
        mask_pooler=mask_pooler,
        mask_head=_ln_mask_head(),
    )
    return GeneralizedRCNN(
        backbone=backbone,
        proposal_generator=rpn,
        roi_heads=roi_heads,
        pixel_mean=IMAGENET_RGB_MEAN,
        pixel_std=IMAGENET_RGB_STD,
        input_format="RGB",
    )


def build_cascade_mask_rcnn_mvitv2_b(score_thresh: float):
    """projects/ViTDet/configs/COCO/cascade_mask_rcnn_mvitv2_b_in21k_100ep.py: MViTv2-B + FPN("LN", square 1024),
    three class-agnostic cascade stages (IoU 0.5/0.6/0.7, box weights (10,10,5,5)/(20,20,10,10)/(30,30,15,15))."""
    from detlightning.layers import ShapeSpec
    from detlightning.modeling import FPN, CascadeROIHeads, GeneralizedRCNN, Matcher, MViT
    from detlightning.modeling.backbone.fpn import LastLevelMaxPool
    from detlightning.modeling.box_regression import Box2BoxTransform
    from detlightning.modeling.roi_heads import FastRCNNOutputLayers

    levels, rpn, box_pooler, mask_pooler = _rpn_and_pooler_parts()
    out_features = ("scale2", "scale3", "scale4", "scale5")
    backbone = FPN(
        bottom_up=MViT(
            embed_dim=96,
            depth=24,
            num_heads=1,
            last_block_indexes=(1, 4, 20, 23),
            residual_pooling=True,
            drop_path_rate=0.4,
            norm_layer=partial(nn.LayerNorm, eps=1e-6),
            out_features=out_features,
        ),
        in_features=out_features,
        out_channels=256,
        norm="LN",
        top_block=LastLevelMaxPool(),
        square_pad=1024,
    )
    stages = [(0.5, 10, 5), (0.6, 20, 10), (0.7, 30, 15)]
    roi_heads = CascadeROIHeads(
        num_classes=80,
        batch_size_per_image=512,
        positive_fraction=0.25,
        box_in_features=levels,
        box_pooler=box_pooler,
        box_heads=[_ln_box_head() for _ in stages],
        box_predictors=[
            FastRCNNOutputLayers(
                ShapeSpec(channels=1024),
                test_score_thresh=score_thresh,
                box2box_transform=Box2BoxTransform(weights=(w1, w1, w2, w2)),
                cls_agnostic_bbox_reg=True,
                num_classes=80,
            )
            for _, w1, w2 in stages
        ],
        proposal_matchers=[
            Matcher(thresholds=[iou], labels=[0, 1], allow_low_quality_matches=False) for iou, _, _ in stages
        ],
        mask_in_features=levels,
        mask_pooler=mask_pooler,
        mask_head=_ln_mask_head(),
    )
    return GeneralizedRCNN(
        backbone=backbone,
        proposal_generator=rpn,
        roi_heads=roi_heads,
        pixel_mean=IMAGENET_RGB_MEAN,
        pixel_std=IMAGENET_RGB_STD,
        input_format="RGB",
    )


BUILDERS = {
    "mask_rcnn_vitdet_b": build_mask_rcnn_vitdet_b,
    "cascade_mask_rcnn_mvitv2_b": build_cascade_mask_rcnn_mvitv2_b,
}


@functools.lru_cache(maxsize=None)
def _model(arch: str):
    torch.manual_seed(0)
    return BUILDERS[arch](float(P.manifest(arch)["roi_score_thresh_test"])).eval()


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
