# Keypoint R-CNN (person keypoints) on the FPN Mask R-CNN, with the mask branch replaced by a keypoint branch.
from detlightning.config import LazyCall as L
from detlightning.layers import ShapeSpec
from detlightning.modeling.poolers import ROIPooler
from detlightning.modeling.roi_heads import KRCNNConvDeconvUpsampleHead

from .mask_rcnn_fpn import model

for _mask_arg in ("mask_in_features", "mask_pooler", "mask_head"):
    del model.roi_heads[_mask_arg]

model.roi_heads.update(
    num_classes=1,  # person
    keypoint_in_features=["p2", "p3", "p4", "p5"],
    keypoint_pooler=L(ROIPooler)(
        output_size=14, scales=(1.0 / 4, 1.0 / 8, 1.0 / 16, 1.0 / 32), sampling_ratio=0, pooler_type="ROIAlignV2"
    ),
    keypoint_head=L(KRCNNConvDeconvUpsampleHead)(
        input_shape=ShapeSpec(channels=256, height=14, width=14),
        num_keypoints=17,
        conv_dims=[512] * 8,
        loss_normalizer="visible",
    ),
)

# 1500 training proposals per image (Detectron1 used 2000 per batch; 1000 per image costs box AP)
model.proposal_generator.post_nms_topk = (1500, 1000)
# smooth L1 with beta 0.5 on boxes: plain L1 lowers keypoint AP
model.roi_heads.box_predictor.smooth_l1_beta = 0.5
