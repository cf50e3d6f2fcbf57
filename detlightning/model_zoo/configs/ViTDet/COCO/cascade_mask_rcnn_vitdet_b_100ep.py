# ViTDet Cascade Mask R-CNN, ViT-B backbone: the Mask R-CNN of mask_rcnn_vitdet_b_100ep.py with three class-agnostic
# box stages (IoU 0.5 / 0.6 / 0.7), each with a 4conv1fc LayerNorm head.
from ...common.models.cascade_rcnn import to_cascade_roi_heads
from .mask_rcnn_vitdet_b_100ep import dataloader, get_vit_lr_decay_rate, lr_multiplier, model, optimizer, train

to_cascade_roi_heads(model.roi_heads, conv_dims=[256] * 4, fc_dims=[1024], conv_norm="LN")
