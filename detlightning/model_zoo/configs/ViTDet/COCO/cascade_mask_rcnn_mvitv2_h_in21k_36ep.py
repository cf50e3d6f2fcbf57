# Cascade Mask R-CNN with an MViTv2-H backbone (ImageNet-21k pre-training), 36 epochs.
from detlightning.config import LazyCall as L
from detlightning.solver import MultiStepParamScheduler, WarmupParamScheduler

from .cascade_mask_rcnn_mvitv2_b_in21k_100ep import dataloader, model, optimizer, train

# MViTv2-H: 80 blocks in stages of 4 / 8 / 60 / 8, width 192, 3 heads in the first stage; activation checkpointing
model.backbone.bottom_up.update(
    embed_dim=192,
    depth=80,
    num_heads=3,
    last_block_indexes=(3, 11, 71, 79),
    drop_path_rate=0.6,
    use_act_checkpoint=True,
)

train.init_checkpoint = "detectron2://ImageNetPretrained/mvitv2/MViTv2_H_in21k.pyth"

# 36 epochs; the last milestone ends the schedule (fvcore's form, no num_updates)
train.max_iter = 67500
lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(MultiStepParamScheduler)(values=[1.0, 0.1, 0.01], milestones=[52500, 62500, 67500]),
    warmup_length=250 / train.max_iter,
    warmup_factor=0.001,
)
optimizer.lr = 1.6e-4
