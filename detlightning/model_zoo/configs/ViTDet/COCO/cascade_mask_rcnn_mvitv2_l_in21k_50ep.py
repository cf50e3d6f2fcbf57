# Cascade Mask R-CNN with an MViTv2-L backbone (ImageNet-21k pre-training), 50 epochs.
from .cascade_mask_rcnn_mvitv2_b_in21k_100ep import dataloader, lr_multiplier, model, optimizer, train

# MViTv2-L: 48 blocks in stages of 2 / 6 / 36 / 4, width 144, 2 heads in the first stage
model.backbone.bottom_up.update(
    embed_dim=144, depth=48, num_heads=2, last_block_indexes=(1, 7, 43, 47), drop_path_rate=0.5
)

train.init_checkpoint = "detectron2://ImageNetPretrained/mvitv2/MViTv2_L_in21k.pyth"

# 100 -> 50 epochs: the schedule halves
train.max_iter = train.max_iter // 2
lr_multiplier.scheduler.milestones = [m // 2 for m in lr_multiplier.scheduler.milestones]
lr_multiplier.scheduler.num_updates = train.max_iter
