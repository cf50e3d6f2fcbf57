# Mask R-CNN R-50-FPN trained from scratch with large-scale jitter (LSJ) for 100 epochs: SyncBN everywhere, a
# 4conv1fc box head, a 2-conv RPN head, 1024x1024 crops, batch 64.
from functools import partial

import detlightning.data.transforms as T
from detlightning.config import LazyCall as L
from detlightning.layers.batch_norm import NaiveSyncBatchNorm
from detlightning.solver import MultiStepParamScheduler, WarmupParamScheduler

from ..common.data.coco import dataloader
from ..common.models.mask_rcnn_fpn import model
from ..common.optim import SGD as optimizer
from ..common.train import train

train["init_checkpoint"] = ""  # from scratch
train["amp"]["enabled"] = True
train["ddp"]["fp16_compression"] = True

_bottom_up = model.backbone.bottom_up
_bottom_up.freeze_at = 0
_bottom_up.stem.norm = _bottom_up.stages.norm = model.backbone.norm = "SyncBN"
# the heads may see no ROI on some GPU: naive SyncBN weighted by per-GPU batch size copes with that
model.roi_heads.box_head.conv_norm = model.roi_heads.mask_head.conv_norm = partial(NaiveSyncBatchNorm, stats_mode="N")

model.proposal_generator.head.conv_dims = [-1, -1]  # two convs in the RPN head
model.roi_heads.box_head.update(conv_dims=[256] * 4, fc_dims=[1024])

image_size = 1024
dataloader.train.mapper.augmentations = [
    L(T.ResizeScale)(min_scale=0.1, max_scale=2.0, target_height=image_size, target_width=image_size),
    L(T.FixedSizeCrop)(crop_size=(image_size, image_size)),
    L(T.RandomFlip)(horizontal=True),
]
dataloader.train.mapper.recompute_boxes = True  # crops cut boxes: recompute them from the masks
dataloader.train.total_batch_size = 64

# 100 epochs of COCO train2017 (118k images) at 64 images per iteration
train["max_iter"] = 184375
lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(MultiStepParamScheduler)(
        values=[1.0, 0.1, 0.01], milestones=[163889, 177546], num_updates=train["max_iter"]
    ),
    warmup_length=500 / train["max_iter"],
    warmup_factor=0.067,
)

optimizer.update(lr=0.1, weight_decay=4e-5)
