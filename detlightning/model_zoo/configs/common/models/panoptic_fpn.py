# Panoptic FPN: the FPN Mask R-CNN plus a semantic segmentation branch for COCO's 53 stuff classes + "thing".
from detlightning.config import LazyCall as L
from detlightning.layers import ShapeSpec
from detlightning.modeling import PanopticFPN
from detlightning.modeling.meta_arch.semantic_seg import SemSegFPNHead

from .mask_rcnn_fpn import model

model._target_ = PanopticFPN
model.sem_seg_head = L(SemSegFPNHead)(
    input_shape={
        level: L(ShapeSpec)(stride=stride, channels="${....backbone.out_channels}")
        for level, stride in (("p2", 4), ("p3", 8), ("p4", 16), ("p5", 32))
    },
    num_classes=54,
    conv_dims=128,
    common_stride=4,
    norm="GN",
    loss_weight=0.5,
    ignore_value=255,
)
