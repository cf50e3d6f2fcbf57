# Mask R-CNN R-50-FPN, 1x schedule, from the ImageNet MSRA R-50 (the yaml entry of the same name, as a lazy config).
from ..common.coco_schedule import lr_multiplier_1x as lr_multiplier
from ..common.data.coco import dataloader
from ..common.models.mask_rcnn_fpn import model
from ..common.optim import SGD as optimizer
from ..common.train import train

model.backbone.bottom_up.freeze_at = 2  # stem and res2 stay frozen
train.init_checkpoint = "detectron2://ImageNetPretrained/MSRA/R-50.pkl"
