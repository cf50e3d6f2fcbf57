# RetinaNet with a ResNet-50 FPN (P3-P7) backbone (detectron2's configs/common/models).
from detlightning.config import LazyCall as L
from detlightning.layers import ShapeSpec
from detlightning.modeling.anchor_generator import DefaultAnchorGenerator
from detlightning.modeling.backbone import FPN, BasicStem, ResNet
from detlightning.modeling.backbone.fpn import LastLevelP6P7
from detlightning.modeling.box_regression import Box2BoxTransform
from detlightning.modeling.matcher import Matcher
from detlightning.modeling.meta_arch import RetinaNet
from detlightning.modeling.meta_arch.retinanet import RetinaNetHead

from ..data.constants import constants

# three scales per octave at each level
_anchor_sizes = [[base * 2 ** (octave / 3.0) for octave in range(3)] for base in (32, 64, 128, 256, 512)]

model = L(RetinaNet)(
    backbone=L(FPN)(
        bottom_up=L(ResNet)(
            stem=L(BasicStem)(in_channels=3, out_channels=64, norm="FrozenBN"),
            stages=L(ResNet.make_default_stages)(depth=50, stride_in_1x1=True, norm="FrozenBN"),
            out_features=["res3", "res4", "res5"],
        ),
        in_features=["res3", "res4", "res5"],
        out_channels=256,
        top_block=L(LastLevelP6P7)(in_channels=2048, out_channels="${..out_channels}"),
    ),
    head=L(RetinaNetHead)(
        input_shape=[ShapeSpec(channels=256)] * 5,  # one per level P3-P7
        num_classes="${..num_classes}",
        conv_dims=[256] * 4,
        prior_prob=0.01,
        num_anchors=9,
    ),
    head_in_features=["p3", "p4", "p5", "p6", "p7"],
    anchor_generator=L(DefaultAnchorGenerator)(
        sizes=_anchor_sizes, aspect_ratios=[0.5, 1.0, 2.0], strides=[8, 16, 32, 64, 128], offset=0.0
    ),
    box2box_transform=L(Box2BoxTransform)(weights=[1.0, 1.0, 1.0, 1.0]),
    anchor_matcher=L(Matcher)(thresholds=[0.4, 0.5], labels=[0, -1, 1], allow_low_quality_matches=True),
    num_classes=80,
    focal_loss_alpha=0.25,
    focal_loss_gamma=2.0,
    pixel_mean=constants["imagenet_bgr256_mean"],
    pixel_std=constants["imagenet_bgr256_std"],
    input_format="BGR",
)
