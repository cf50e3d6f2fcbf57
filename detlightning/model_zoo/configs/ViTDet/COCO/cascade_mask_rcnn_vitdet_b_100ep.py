# ViTDet Cascade Mask R-CNN, ViT-B backbone: the Mask R-CNN of mask_rcnn_vitdet_b_100ep.py with three class-agnostic
# box stages (IoU 0.5 / 0.6 / 0.7), each with a 4conv1fc LayerNorm head.
from detlightning.config import LazyCall as L
from detlightning.layers import ShapeSpec
from detlightning.modeling.box_regression import Box2BoxTransform
from detlightning.modeling.matcher import Matcher
from detlightning.modeling.roi_heads import CascadeROIHeads, FastRCNNConvFCHead, FastRCNNOutputLayers

from .mask_rcnn_vitdet_b_100ep import dataloader, get_vit_lr_decay_rate, lr_multiplier, model, optimizer, train

# the single-stage arguments give way to one entry per stage
for _single in ("box_head", "box_predictor", "proposal_matcher"):
    del model.roi_heads[_single]

# (IoU threshold, (dx/dy weight, dw/dh weight)) of each stage
_stages = [(0.5, (10, 5)), (0.6, (20, 10)), (0.7, (30, 15))]

model.roi_heads.update(
    _target_=CascadeROIHeads,
    box_heads=[
        L(FastRCNNConvFCHead)(
            input_shape=ShapeSpec(channels=256, height=7, width=7), conv_dims=[256] * 4, fc_dims=[1024], conv_norm="LN"
        )
        for _ in _stages
    ],
    box_predictors=[
        L(FastRCNNOutputLayers)(
            input_shape=ShapeSpec(channels=1024),
            box2box_transform=L(Box2BoxTransform)(weights=(xy, xy, wh, wh)),
            num_classes="${...num_classes}",
            cls_agnostic_bbox_reg=True,
            test_score_thresh=0.05,
        )
        for _, (xy, wh) in _stages
    ],
    proposal_matchers=[
        L(Matcher)(thresholds=[iou], labels=[0, 1], allow_low_quality_matches=False) for iou, _ in _stages
    ],
)
