# Mask R-CNN on ResNet-50 C4: RPN on res4, res5 run as the ROI head (detectron2's configs/common/models).
from detlightning.config import LazyCall as L
from detlightning.layers import ShapeSpec
from detlightning.modeling.anchor_generator import DefaultAnchorGenerator
from detlightning.modeling.backbone import BasicStem, BottleneckBlock, ResNet
from detlightning.modeling.box_regression import Box2BoxTransform
from detlightning.modeling.matcher import Matcher
from detlightning.modeling.meta_arch import GeneralizedRCNN
from detlightning.modeling.poolers import ROIPooler
from detlightning.modeling.proposal_generator import RPN, StandardRPNHead
from detlightning.modeling.roi_heads import FastRCNNOutputLayers, MaskRCNNConvUpsampleHead, Res5ROIHeads

from ..data.constants import constants

model = L(GeneralizedRCNN)(
    backbone=L(ResNet)(
        stem=L(BasicStem)(in_channels=3, out_channels=64, norm="FrozenBN"),
        stages=L(ResNet.make_default_stages)(depth=50, stride_in_1x1=True, norm="FrozenBN"),
        out_features=["res4"],
    ),
    proposal_generator=L(RPN)(
        in_features=["res4"],
        # one level, 5 sizes x 3 aspect ratios = 15 anchors per position
        head=L(StandardRPNHead)(in_channels=1024, num_anchors=15),
        anchor_generator=L(DefaultAnchorGenerator)(
            sizes=[[32, 64, 128, 256, 512]], aspect_ratios=[0.5, 1.0, 2.0], strides=[16], offset=0.0
        ),
        anchor_matcher=L(Matcher)(thresholds=[0.3, 0.7], labels=[0, -1, 1], allow_low_quality_matches=True),
        box2box_transform=L(Box2BoxTransform)(weights=[1.0, 1.0, 1.0, 1.0]),
        batch_size_per_image=256,
        positive_fraction=0.5,
        pre_nms_topk=(12000, 6000),
        post_nms_topk=(2000, 1000),
        nms_thresh=0.7,
    ),
    roi_heads=L(Res5ROIHeads)(
        num_classes=80,
        batch_size_per_image=512,
        positive_fraction=0.25,
        proposal_matcher=L(Matcher)(thresholds=[0.5], labels=[0, 1], allow_low_quality_matches=False),
        in_features=["res4"],
        pooler=L(ROIPooler)(output_size=14, scales=(1.0 / 16,), sampling_ratio=0, pooler_type="ROIAlignV2"),
        res5=L(ResNet.make_stage)(
            block_class=BottleneckBlock,
            num_blocks=3,
            stride_per_block=[2, 1, 1],
            in_channels=1024,
            bottleneck_channels=512,
            out_channels=2048,
            norm="FrozenBN",
            stride_in_1x1=True,
        ),
        box_predictor=L(FastRCNNOutputLayers)(
            input_shape=L(ShapeSpec)(channels="${...res5.out_channels}", height=1, width=1),
            box2box_transform=L(Box2BoxTransform)(weights=(10, 10, 5, 5)),
            num_classes="${..num_classes}",
            test_score_thresh=0.05,
        ),
        mask_head=L(MaskRCNNConvUpsampleHead)(
            input_shape=L(ShapeSpec)(
                channels="${...res5.out_channels}",
                height="${...pooler.output_size}",
                width="${...pooler.output_size}",
            ),
            num_classes="${..num_classes}",
            conv_dims=[256],
        ),
    ),
    pixel_mean=constants["imagenet_bgr256_mean"],
    pixel_std=constants["imagenet_bgr256_std"],
    input_format="BGR",
)
