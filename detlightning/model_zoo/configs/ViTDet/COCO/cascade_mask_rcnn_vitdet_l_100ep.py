# ViTDet Cascade Mask R-CNN with a ViT-L backbone (MAE pre-training), 100 epochs.
from functools import partial

from .cascade_mask_rcnn_vitdet_b_100ep import (
    dataloader,
    get_vit_lr_decay_rate,
    lr_multiplier,
    model,
    optimizer,
    train,
)

train.init_checkpoint = "detectron2://ImageNetPretrained/MAE/mae_pretrain_vit_large.pth"

# ViT-L: width 1024, 24 blocks of 16 heads; global attention in blocks 5, 11, 17, 23
model.backbone.net.update(embed_dim=1024, depth=24, num_heads=16, drop_path_rate=0.4)
model.backbone.net.window_block_indexes = [i for i in range(24) if i % 6 != 5]

optimizer.params.lr_factor_func = partial(get_vit_lr_decay_rate, lr_decay_rate=0.8, num_layers=24)
