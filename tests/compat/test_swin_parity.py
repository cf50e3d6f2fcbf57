"""detectron2 parity of the Swin-B Cascade Mask R-CNN of ViTDet (projects/ViTDet/configs/COCO/
cascade_mask_rcnn_swin_b_in21k_50ep.py): state-dict keys/shapes against the manifest, RPN proposals and eval outputs
on the stored 1024x1024 RGB input against detectron2's (tolerances of ../shared/compat/README.md)."""
from __future__ import annotations

import functools

import pytest
import torch

from . import _parity as P

ARCH = "cascade_mask_rcnn_swin_b"


@pytest.fixture(autouse=True)
def _need_compat(compat_dir):
    return compat_dir


def build_cascade_mask_rcnn_swin_b(test_score_thresh: float = 0.05):
    """The model of detectron2's ``cascade_mask_rcnn_swin_b_in21k_50ep.py``, argument for argument: the
    ``common/models/mask_rcnn_fpn.py`` model with the MViTv2 cascade config's changes (RGB ImageNet mean/std, LN in
    the FPN and the conv heads, a 2-conv RPN head, 4conv1fc cascade box heads with IoUs 0.5/0.6/0.7) and Swin-B as
    the FPN's bottom-up network, its inputs padded to a 1024 square."""
    from detlightning.layers import ShapeSpec
    from detlightning.modeling import (
        FPN,
        Box2BoxTransform,
        DefaultAnchorGenerator,
        GeneralizedRCNN,
        Matcher,
        ROIPooler,
        SwinTransformer,
    )
    from detlightning.modeling.backbone.fpn import LastLevelMaxPool
    from detlightning.modeling.proposal_generator import RPN, StandardRPNHead
    from detlightning.modeling.roi_heads import (
        CascadeROIHeads,
        FastRCNNConvFCHead,
        FastRCNNOutputLayers,
        MaskRCNNConvUpsampleHead,
    )

    scales = (1.0 / 4, 1.0 / 8, 1.0 / 16, 1.0 / 32)
    in_features = ["p2", "p3", "p4", "p5"]
    return GeneralizedRCNN(
        backbone=FPN(
            bottom_up=SwinTransformer(
                depths=[2, 2, 18, 2], drop_path_rate=0.4, embed_dim=128, num_heads=[4, 8, 16, 32]
            ),
            in_features=("p0", "p1", "p2", "p3"),
            out_channels=256,
            norm="LN",
            top_block=LastLevelMaxPool(),
            square_pad=1024,
        ),
        proposal_generator=RPN(
            in_features=["p2", "p3", "p4", "p5", "p6"],
            head=StandardRPNHead(in_channels=256, num_anchors=3, conv_dims=[-1, -1]),
            anchor_generator=DefaultAnchorGenerator(
                sizes=[[32], [64], [128], [256], [512]], aspect_ratios=[0.5, 1.0, 2.0], strides=[4, 8, 16, 32, 64],
                offset=0.0,
            ),
            anchor_matcher=Matcher(thresholds=[0.3, 0.7], labels=[0, -1, 1], allow_low_quality_matches=True),
            box2box_transform=Box2BoxTransform(weights=[1.0, 1.0, 1.0, 1.0]),
            batch_size_per_image=256,
            positive_fraction=0.5,
            pre_nms_topk=(2000, 1000),
            post_nms_topk=(1000, 1000),
            nms_thresh=0.7,
        ),
        roi_heads=CascadeROIHeads(
            num_classes=80,
            batch_size_per_image=512,
            positive_fraction=0.25,
            box_in_features=in_features,
            box_pooler=ROIPooler(output_size=7, scales=scales, sampling_ratio=0, pooler_type="ROIAlignV2"),
            box_heads=[
                FastRCNNConvFCHead(
                    input_shape=ShapeSpec(channels=256, height=7, width=7),
                    conv_dims=[256] * 4,
                    fc_dims=[1024],
                    conv_norm="LN",
                )
                for _ in range(3)
            ],
            box_predictors=[
                FastRCNNOutputLayers(
                    input_shape=ShapeSpec(channels=1024),
                    test_score_thresh=test_score_thresh,
                    box2box_transform=Box2BoxTransform(weights=(w1, w1, w2, w2)),
                    cls_agnostic_bbox_reg=True,
                    num_classes=80,
                )
                for w1, w2 in [(10, 5), (20, 10), (30, 15)]
            ],
            proposal_matchers=[
                Matcher(thresholds=[th], labels=[0, 1], allow_low_quality_matches=False) for th in (0.5, 0.6, 0.7)
            ],
            mask_in_features=in_features,
            mask_pooler=ROIPooler(output_size=14, scales=scales, sampling_ratio=0, pooler_type="ROIAlignV2"),
            mask_head=MaskRCNNConvUpsampleHead(
                input_shape=ShapeSpec(channels=256, width=14, height=14),
                num_classes=80,
                conv_dims=[256] * 5,
                conv_norm="LN",
            ),
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
        input_format="RGB",
    )


@functools.lru_cache(maxsize=None)
def _model():
    return build_cascade_mask_rcnn_swin_b(P.manifest(ARCH)["roi_score_thresh_test"]).eval()


@functools.lru_cache(maxsize=None)
def _loaded_model():
    return P.load_reference_weights(_model(), ARCH)


def _input() -> dict:
    return torch.load(P.COMPAT_DIR / "inputs" / "astronaut_RGB_1024.pt", weights_only=True)


def test_manifest_is_the_swin_b_config():
    m = P.manifest(ARCH)
    assert m["input_format"] == "RGB" and m["test_size"] == [1024, 1024]
    assert m["detectron2_config"].endswith("cascade_mask_rcnn_swin_b_in21k_50ep.py")


def test_state_dict_matches_detectron2_manifest():
    ours = {k: list(v.shape) for k, v in _model().state_dict().items()}
    ref = P.manifest(ARCH)["shapes"]
    missing = sorted(set(ref) - set(ours))
    unexpected = sorted(set(ours) - set(ref))
    assert not missing and not unexpected, f"missing: {missing[:20]}\nunexpected: {unexpected[:20]}"
    wrong = {k: (ours[k], ref[k]) for k in ref if ours[k] != ref[k]}
    assert not wrong, f"shape mismatches (ours, detectron2): {wrong}"


@functools.lru_cache(maxsize=None)
def _run() -> tuple[list[int], object, object]:
    """One eval forward of ``model([input])`` (the slow part: Swin-B at 1024x1024 on the CPU), with the RPN's output
    captured by a hook: (padded input size, proposals, instances)."""
    model = _loaded_model()
    captured = {}

    def keep(module, args, output):
        captured["images"], captured["proposals"] = args[0], output[0][0]

    handle = model.proposal_generator.register_forward_hook(keep)
    try:
        with torch.no_grad():
            instances = model([_input()])[0]["instances"]
    finally:
        handle.remove()
    return list(captured["images"].tensor.shape[-2:]), captured["proposals"], instances


def test_rpn_proposals_match_detectron2():
    ref = P.reference_output(ARCH)
    padded_size, proposals, _ = _run()
    assert padded_size == list(ref["padded_image_size"]) == [1024, 1024]
    m = P.greedy_match(ref["proposals"]["proposal_boxes"], proposals.proposal_boxes.tensor)
    assert m.fraction >= P.TOL["proposal_fraction"], f"matched {m.fraction:.3f} of detectron2's proposals"
    r, o = torch.tensor(m.ref_idx), torch.tensor(m.our_idx)
    logit_diff = (ref["proposals"]["objectness_logits"][r] - proposals.objectness_logits[o]).abs().max()
    assert logit_diff < 1e-2, f"objectness logits differ by {float(logit_diff)}"


def test_eval_outputs_match_detectron2():
    inp = _input()
    out = _run()[2]
    assert out.image_size == (inp["height"], inp["width"])
    figures = P.compare_instances(P.reference_output(ARCH)["instances"], out)
    P.assert_parity(figures)
    assert figures["num_ours"] == figures["num_ref"] == 100
