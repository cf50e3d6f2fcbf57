# FCOS: RetinaNet's backbone and head layout, anchor-free, with a centerness branch (detectron2's
# configs/common/models). Points replace anchors, so the anchor arguments go.
from detlightning.modeling.meta_arch.fcos import FCOS, FCOSHead

from .retinanet import model

for _anchor_arg in ("anchor_generator", "box2box_transform", "anchor_matcher", "input_format"):
    del model[_anchor_arg]
model._target_ = FCOS

# P6/P7 from P5 (256 channels) rather than from C5, as the FCOS paper's improved version does
model.backbone.top_block.update(in_feature="p5", in_channels=256)

model.head._target_ = FCOSHead
del model.head.num_anchors
model.head.norm = "GN"

# the score is sqrt(class probability x centerness), hence a higher threshold than RetinaNet's
model.test_score_thresh = 0.2
model.test_nms_thresh = 0.6
