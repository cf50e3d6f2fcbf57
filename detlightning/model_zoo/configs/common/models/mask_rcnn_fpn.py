# Mask R-CNN with a ResNet-50 FPN backbone, as a lazy object graph (detectron2's configs/common/models).
from detlightning.config import LazyCall as L
from detlightning.layers import ShapeSpec
from detlightning.modeling.anchor_generator import DefaultAnchorGenerator
from detlightning.modeling.backbone import FPN, BasicStem, ResNet
from detlightning.modeling.backbone.fpn import LastLevelMaxPool
from detlightning.modeling.box_regression import Box2BoxTransform
from detlightning.modeling.matcher import Matcher
from detlightning.modeling.meta_arch import GeneralizedRCNN
from detlightning.modeling.poolers import ROIPooler
from detlightning.modeling.proposal_generator import RPN, StandardRPNHead
from detlightning.modeling.roi_heads import (
    FastRCNNConvFCHead,
    FastRCNNOutputLayers,
    MaskRCNNConvUpsampleHead,
    StandardROIHeads,
)

from ..data.constants import constants

_levels = ["p2", "p3", "p4", "p5"]
_level_scales = (1.0 / 4, 1.0 / 8, 1.0 / 16, 1.0 / 32)

_resnet50 = L(ResNet)(
    stem=L(BasicStem)(in_channels=3, out_channels=64, norm="FrozenBN"),
    stages=L(ResNet.make_default_stages)(depth=50, stride_in_1x1=True, norm="FrozenBN"),
    out_features=["res2", "res3", "res4", "res5"],
)

_rpn = L(RPN)(
    in_features=_levels + ["p6"],
    head=L(StandardRPNHead)(in_channels=256, num_anchors=3),
    anchor_generator=L(DefaultAnchorGenerator)(
        sizes=[[size] for size in (32, 64, 128, 256, 512)],
        aspect_ratios=[0.5, 1.0, 2.0],
        strides=[4, 8, 16, 32, 64],
        offset=0.0,
    ),
    anchor_matcher=L(Matcher)(thresholds=[0.3, 0.7], labels=[0, -1, 1], allow_low_quality_matches=True),
    box2box_transform=L(Box2BoxTransform)(weights=[1.0, 1.0, 1.0, 1.0]),
    batch_size_per_image=256,
    positive_fraction=0.5,
    pre_nms_topk=(2000, 1000),
    post_nms_topk=(1000, 1000),
    nms_thresh=0.7,
)

_heads = L(StandardROIHeads)(
    num_classes=80,
    batch_size_per_image=512,
    positive_fraction=0.25,
    proposal_matcher=L(Matcher)(thresholds=[0.5], labels=[0, 1], allow_low_quality_matches=False),
    # boxes: 7x7 ROIAlign, two 1024-d fully connected layers
    box_in_features=_levels,
    box_pooler=L(ROIPooler)(output_size=7, scales=_level_scales, sampling_ratio=0, pooler_type="ROIAlignV2"),
    box_head=L(FastRCNNConvFCHead)(
        input_shape=ShapeSpec(channels=256, height=7, width=7), conv_dims=[], fc_dims=[1024, 1024]
    ),
    box_predictor=L(FastRCNNOutputLayers)(
        input_shape=ShapeSpec(channels=1024),
        box2box_transform=L(Box2BoxTransform)(weights=(10, 10, 5, 5)),
        num_classes="${..num_classes}",
        test_score_thresh=0.05,
    ),
    # masks: 14x14 ROIAlign, four 3x3 convs + one deconv (conv_dims lists the five widths)
    mask_in_features=_levels,
    mask_pooler=L(ROIPooler)(output_size=14, scales=_level_scales, sampling_ratio=0, pooler_type="ROIAlignV2"),
    mask_head=L(MaskRCNNConvUpsampleHead)(
        input_shape=ShapeSpec(channels=256, height=14, width=14),
        num_classes="${..num_classes}",
        conv_dims=[256] * 5,
    ),
)

model = L(GeneralizedRCNN)(
    backbone=L(FPN)(
        bottom_up=_resnet50,
        in_features="${.bottom_up.out_features}",
        out_channels=256,
        top_block=L(LastLevelMaxPool)(),
    ),
    proposal_generator=_rpn,
    roi_heads=_heads,
    pixel_mean=constants["imagenet_bgr256_mean"],
    pixel_std=constants["imagenet_bgr256_std"],
    input_format="BGR",
)
