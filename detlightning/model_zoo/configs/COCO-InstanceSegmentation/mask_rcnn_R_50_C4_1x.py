# Mask R-CNN R-50-C4, 1x schedule, from the ImageNet MSRA R-50.
from ..common.coco_schedule import lr_multiplier_1x as lr_multiplier
from ..common.data.coco import dataloader
from ..common.models.mask_rcnn_c4 import model
from ..common.optim import SGD as optimizer
from ..common.train import train

model.backbone.freeze_at = 2
train.init_checkpoint = "detectron2://ImageNetPretrained/MSRA/R-50.pkl"
