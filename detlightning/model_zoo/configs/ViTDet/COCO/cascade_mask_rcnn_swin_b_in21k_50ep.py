# Cascade Mask R-CNN with a Swin-B backbone (ImageNet-21k pre-training): the MViTv2 cascade model with Swin in its
# FPN, 50 epochs of COCO with large-scale jitter.
from detlightning import model_zoo
from detlightning.config import LazyCall as L
from detlightning.modeling import SwinTransformer
from detlightning.solver import MultiStepParamScheduler, WarmupParamScheduler

from ..common.coco_loader_lsj import dataloader
from .cascade_mask_rcnn_mvitv2_b_in21k_100ep import model

# Swin-B: width 128, stages of 2 / 2 / 18 / 2 blocks; its four outputs p0-p3 (strides 4-32) feed the FPN
model.backbone.bottom_up = L(SwinTransformer)(embed_dim=128, depths=[2, 2, 18, 2], num_heads=[4, 8, 16, 32],
                                              drop_path_rate=0.4)
model.backbone.update(in_features=("p0", "p1", "p2", "p3"), square_pad=1024)

train = model_zoo.get_config("common/train.py").train
train.update(init_checkpoint="detectron2://ImageNetPretrained/swin/swin_base_patch4_window7_224_22k.pth")
train.amp.enabled = True
train.ddp.fp16_compression = True

# the 100-epoch schedule (184375 iterations of 64 images) halved
_iters_100ep = 184375
train.max_iter = _iters_100ep // 2
lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(MultiStepParamScheduler)(
        values=[1.0, 0.1, 0.01],
        milestones=[m // 2 for m in (163889, 177546)],
        num_updates=train.max_iter,
    ),
    warmup_length=250 / _iters_100ep,
    warmup_factor=0.001,
)

optimizer = model_zoo.get_config("common/optim.py").AdamW
optimizer.update(lr=4e-5, weight_decay=0.05)
optimizer.params.overrides = {"relative_position_bias_table": {"weight_decay": 0.0}}
