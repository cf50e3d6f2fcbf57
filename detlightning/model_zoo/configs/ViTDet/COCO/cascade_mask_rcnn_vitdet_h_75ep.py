# ViTDet Cascade Mask R-CNN with a ViT-H backbone (MAE pre-training, patch 14 resampled to 16), 75 epochs.
from functools import partial

from .cascade_mask_rcnn_vitdet_b_100ep import (
    dataloader,
    get_vit_lr_decay_rate,
    lr_multiplier,
    model,
    optimizer,
    train,
)

train.init_checkpoint = (
    "detectron2://ImageNetPretrained/MAE/mae_pretrain_vit_huge_p14to16.pth?matching_heuristics=True"
)

# ViT-H: width 1280, 32 blocks of 16 heads; global attention in blocks 7, 15, 23, 31
model.backbone.net.update(embed_dim=1280, depth=32, num_heads=16, drop_path_rate=0.5)
model.backbone.net.window_block_indexes = [i for i in range(32) if i % 8 != 7]

optimizer.params.lr_factor_func = partial(get_vit_lr_decay_rate, lr_decay_rate=0.9, num_layers=32)
optimizer.params.overrides = {}
optimizer.params.weight_decay_norm = None

# 100 -> 75 epochs: the schedule shrinks by 3/4
train.max_iter = train.max_iter * 3 // 4
lr_multiplier.scheduler.milestones = [m * 3 // 4 for m in lr_multiplier.scheduler.milestones]
lr_multiplier.scheduler.num_updates = train.max_iter
