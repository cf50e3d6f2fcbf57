# Cascade Mask R-CNN with an MViTv2-B backbone (ImageNet-21k pre-training) under an FPN with LayerNorm, RGB input
# padded to a 1024 square, 100 epochs of COCO with large-scale jitter.
from functools import partial

from torch import nn

from detlightning import model_zoo
from detlightning.config import LazyCall as L
from detlightning.modeling import MViT
from detlightning.solver import MultiStepParamScheduler, WarmupParamScheduler

from ...common.models.cascade_rcnn import to_cascade_roi_heads
from ..common.coco_loader_lsj import dataloader

model = model_zoo.get_config("common/models/mask_rcnn_fpn.py").model
constants = model_zoo.get_config("common/data/constants.py").constants
model.input_format = "RGB"
model.pixel_mean = constants.imagenet_rgb256_mean
model.pixel_std = constants.imagenet_rgb256_std

# MViTv2-B: 24 blocks in stages of 2 / 3 / 16 / 3, width 96 doubling per stage
model.backbone.bottom_up = L(MViT)(
    embed_dim=96, depth=24, num_heads=1, last_block_indexes=(1, 4, 20, 23), drop_path_rate=0.4,
    residual_pooling=True, norm_layer=partial(nn.LayerNorm, eps=1e-6),
    out_features=("scale2", "scale3", "scale4", "scale5"),
)  # fmt: skip
# the FPN takes all four stages, with LayerNorm, on inputs padded to a 1024 square
model.backbone.update(in_features="${.bottom_up.out_features}", norm="LN", square_pad=1024)

model.proposal_generator.head.conv_dims = [-1, -1]  # two convs in the RPN head

# three class-agnostic box stages, 4conv1fc LayerNorm heads
to_cascade_roi_heads(model.roi_heads, conv_dims=[256] * 4, fc_dims=[1024], conv_norm="LN")
model.roi_heads.mask_head.conv_norm = "LN"

train = model_zoo.get_config("common/train.py").train
train.amp.enabled = True
train.ddp.fp16_compression = True
train.init_checkpoint = "detectron2://ImageNetPretrained/mvitv2/MViTv2_B_in21k.pyth"

# 100 epochs of COCO train2017 (118k images) at 64 images per iteration
train.max_iter = 184375
lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(MultiStepParamScheduler)(
        values=[1.0, 0.1, 0.01], milestones=[163889, 177546], num_updates=train.max_iter
    ),
    warmup_length=250 / train.max_iter,
    warmup_factor=0.001,
)

optimizer = model_zoo.get_config("common/optim.py").AdamW
optimizer.params.overrides = {"pos_embed": {"weight_decay": 0.0}}
optimizer.lr = 8e-5
