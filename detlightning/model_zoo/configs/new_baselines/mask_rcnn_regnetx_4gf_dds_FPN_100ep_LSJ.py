# The 100-epoch LSJ Mask R-CNN with a RegNetX-4.0GF bottom-up (the DDS paper's model, as in
# COCO-InstanceSegmentation/mask_rcnn_regnetx_4gf_dds_fpn_1x.py) in place of R-50: trained from scratch with SyncBN.
from detlightning.config import LazyCall as L
from detlightning.modeling.backbone import RegNet
from detlightning.modeling.backbone.regnet import ResBottleneckBlock, SimpleStem

from .mask_rcnn_R_50_FPN_100ep_LSJ import dataloader, lr_multiplier, model, optimizer, train

model.backbone.bottom_up = L(RegNet)(
    stem_class=SimpleStem,
    stem_width=32,
    block_class=ResBottleneckBlock,
    depth=23,
    w_a=38.65,
    w_0=96,
    w_m=2.43,
    group_width=40,
    norm="SyncBN",
    out_features=["s1", "s2", "s3", "s4"],
)
model.pixel_std = [57.375, 57.120, 58.395]  # pycls normalises by the ImageNet std

train.cudnn_benchmark = True  # grouped convs: cudnn's autotuner pays off
