"""Models: detectron2's ``detectron2.modeling`` API (plain ``torch.nn.Module``s, no Lightning or Hydra).

Importing this package registers every built-in component in the registries, so ``build_model(cfg)`` and
name-based selection (``model.roi_heads.name=StandardROIHeads``) work.
"""
from ..layers import ShapeSpec
from .anchor_generator import DefaultAnchorGenerator, build_anchor_generator
from .backbone import (
    FPN,
    Backbone,
    BasicBlock,
    BasicStem,
    BottleneckBlock,
    MViT,
    RegNet,
    ResNet,
    ResNetBlockBase,
    SimpleFeaturePyramid,
    SwinTransformer,
    ViT,
    build_backbone,
    build_resnet_backbone,
    build_resnet_fpn_backbone,
    build_retinanet_resnet_fpn_backbone,
    make_stage,
)
from .backbone.vit import get_vit_lr_decay_rate
from .box_regression import Box2BoxTransform, Box2BoxTransformLinear
from .fast_inference import compile_for_inference, set_inference_precision
from .matcher import Matcher
from .meta_arch.build import build_model
from .meta_arch.fcos import FCOS
from .meta_arch.panoptic_fpn import PanopticFPN
from .meta_arch.rcnn import GeneralizedRCNN, ProposalNetwork
from .meta_arch.retinanet import RetinaNet
from .meta_arch.semantic_seg import SemanticSegmentor, build_sem_seg_head
from .poolers import ROIPooler
from .postprocessing import detector_postprocess, sem_seg_postprocess
from .proposal_generator import build_proposal_generator, build_rpn_head
from .registry import (
    ANCHOR_GENERATOR_REGISTRY,
    BACKBONE_REGISTRY,
    META_ARCH_REGISTRY,
    PROPOSAL_GENERATOR_REGISTRY,
    ROI_BOX_HEAD_REGISTRY,
    ROI_HEADS_REGISTRY,
    ROI_KEYPOINT_HEAD_REGISTRY,
    ROI_MASK_HEAD_REGISTRY,
    RPN_HEAD_REGISTRY,
    SEM_SEG_HEADS_REGISTRY,
)
from .roi_heads import (
    BaseKeypointRCNNHead,
    BaseMaskRCNNHead,
    CascadeROIHeads,
    FastRCNNOutputLayers,
    Res5ROIHeads,
    ROIHeads,
    StandardROIHeads,
    build_box_head,
    build_keypoint_head,
    build_mask_head,
    build_roi_heads,
)
from .sampling import subsample_labels
from .test_time_augmentation import DatasetMapperTTA, GeneralizedRCNNWithTTA

__all__ = [k for k in globals().keys() if not k.startswith("_")]
