# ViTDet Mask R-CNN, ViT-B backbone from MAE ImageNet-1k pre-training, 100 epochs of COCO with large-scale jitter.
from functools import partial

from detlightning import model_zoo
from detlightning.config import LazyCall as L
from detlightning.modeling.backbone.vit import get_vit_lr_decay_rate
from detlightning.solver import MultiStepParamScheduler, WarmupParamScheduler

from ..common.coco_loader_lsj import dataloader

model = model_zoo.get_config("common/models/mask_rcnn_vitdet.py").model

train = model_zoo.get_config("common/train.py").train
train.amp.enabled = True
train.ddp.fp16_compression = True
train.init_checkpoint = "detectron2://ImageNetPretrained/MAE/mae_pretrain_vit_base.pth?matching_heuristics=True"

# 100 epochs of COCO train2017 (118k images) at 64 images per iteration; LR / 10 at ~89% and ~96%
train.max_iter = 184375
lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(MultiStepParamScheduler)(
        values=[1.0, 0.1, 0.01], milestones=[163889, 177546], num_updates=train.max_iter
    ),
    warmup_length=250 / train.max_iter,
    warmup_factor=0.001,
)

# AdamW with layer-wise LR decay (0.7 per block, from the last block down to the embeddings)
optimizer = model_zoo.get_config("common/optim.py").AdamW
optimizer.params.lr_factor_func = partial(get_vit_lr_decay_rate, num_layers=12, lr_decay_rate=0.7)
optimizer.params.overrides = {"pos_embed": {"weight_decay": 0.0}}
