# Cascade Mask R-CNN: the FPN Mask R-CNN with three box stages of rising IoU (detectron2's configs/common/models).
from detlightning.config import LazyCall as L
from detlightning.layers import ShapeSpec
from detlightning.modeling.box_regression import Box2BoxTransform
from detlightning.modeling.matcher import Matcher
from detlightning.modeling.roi_heads import CascadeROIHeads, FastRCNNConvFCHead, FastRCNNOutputLayers

from .mask_rcnn_fpn import model

# (IoU threshold, (dx/dy weight, dw/dh weight)) of each stage
CASCADE_STAGES = [(0.5, (10, 5)), (0.6, (20, 10)), (0.7, (30, 15))]


def to_cascade_roi_heads(roi_heads, conv_dims=(), fc_dims=(1024, 1024), conv_norm=""):
    """Turn a StandardROIHeads lazy node into CascadeROIHeads in place: the single-stage box head, predictor and
    matcher give way to one per stage (class-agnostic boxes), each head with these conv/fc widths and norm."""
    for single in ("box_head", "box_predictor", "proposal_matcher"):
        del roi_heads[single]
    roi_heads.update(
        _target_=CascadeROIHeads,
        box_heads=[
            L(FastRCNNConvFCHead)(
                input_shape=ShapeSpec(channels=256, height=7, width=7),
                conv_dims=list(conv_dims),
                fc_dims=list(fc_dims),
                conv_norm=conv_norm,
            )
            for _ in CASCADE_STAGES
        ],
        box_predictors=[
            L(FastRCNNOutputLayers)(
                input_shape=ShapeSpec(channels=fc_dims[-1]),
                box2box_transform=L(Box2BoxTransform)(weights=(xy, xy, wh, wh)),
                num_classes="${...num_classes}",
                cls_agnostic_bbox_reg=True,
                test_score_thresh=0.05,
            )
            for _, (xy, wh) in CASCADE_STAGES
        ],
        proposal_matchers=[
            L(Matcher)(thresholds=[iou], labels=[0, 1], allow_low_quality_matches=False) for iou, _ in CASCADE_STAGES
        ],
    )


to_cascade_roi_heads(model.roi_heads)
