"""Backbones: the Backbone base class, ResNet/ResNeXt, FPN, and the BACKBONE_REGISTRY builders."""
from .build import BACKBONE_REGISTRY, build_backbone  # noqa: I001  (registry first, as in detectron2)

from .backbone import Backbone
from .fpn import FPN, LastLevelMaxPool, LastLevelP6P7, build_resnet_fpn_backbone, build_retinanet_resnet_fpn_backbone
from .regnet import RegNet
from .resnet import (
    BasicBlock,
    BasicStem,
    BottleneckBlock,
    DeformBottleneckBlock,
    ResNet,
    ResNetBlockBase,
    build_resnet_backbone,
    make_stage,
)
from .vit import SimpleFeaturePyramid, ViT, get_vit_lr_decay_rate
from .mvit import MViT
from .swin import SwinTransformer

__all__ = [k for k in globals().keys() if not k.startswith("_")]
