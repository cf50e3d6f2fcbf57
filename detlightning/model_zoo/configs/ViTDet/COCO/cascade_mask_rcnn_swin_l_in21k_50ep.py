# Cascade Mask R-CNN with a Swin-L backbone (ImageNet-21k pre-training): Swin-B's recipe, width 192.
from .cascade_mask_rcnn_swin_b_in21k_50ep import dataloader, lr_multiplier, model, optimizer, train

model.backbone.bottom_up.update(embed_dim=192, num_heads=[6, 12, 24, 48], depths=[2, 2, 18, 2], drop_path_rate=0.4)
train.init_checkpoint = "detectron2://ImageNetPretrained/swin/swin_large_patch4_window7_224_22k.pth"
