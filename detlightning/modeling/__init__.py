"""Models: detectron2's ``detectron2.modeling`` API (plain ``torch.nn.Module``s, no Lightning or Hydra).

Importing this package registers every built-in component in the registries, so ``build_model(cfg)`` and
name-based selection (``model.roi_heads.name=StandardROIHeads``) work.
"""
from ..layers import ShapeSpec
from .anchor_generator import ANCHOR_GENERATOR_REGISTRY, DefaultAnchorGenerator, build_anchor_generator
from .backbone import (
    BACKBONE_REGISTRY,
    FPN,
    Backbone,
    BasicBlock,
    BasicStem,
    BottleneckBlock,
    ResNet,
    ResNetBlockBase,
    build_backbone,
    build_resnet_backbone,
    build_resnet_fpn_backbone,
    build_retinanet_resnet_fpn_backbone,
    make_stage,
)
from .box_regression import Box2BoxTransform, Box2BoxTransformLinear
from .matcher import Matcher
from .meta_arch import META_ARCH_REGISTRY, SEM_SEG_HEADS_REGISTRY, build_model, build_sem_seg_head
from .meta_arch import GeneralizedRCNN, PanopticFPN, ProposalNetwork, RetinaNet, SemanticSegmentor
from .postprocessing import detector_postprocess, sem_seg_postprocess
from .poolers import ROIPooler
from .proposal_generator import (
    PROPOSAL_GENERATOR_REGISTRY,
    RPN_HEAD_REGISTRY,
    build_proposal_generator,
    build_rpn_head,
)
from .registry import (
    ROI_BOX_HEAD_REGISTRY,
    ROI_HEADS_REGISTRY,
    ROI_KEYPOINT_HEAD_REGISTRY,
    ROI_MASK_HEAD_REGISTRY,
)
from .roi_heads import (
    BaseKeypointRCNNHead,
    BaseMaskRCNNHead,
    CascadeROIHeads,
    FastRCNNOutputLayers,
    ROIHeads,
    Res5ROIHeads,
    StandardROIHeads,
    build_box_head,
    build_keypoint_head,
    build_mask_head,
    build_roi_heads,
)
from .sampling import subsample_labels

__all__ = [k for k in globals().keys() if not k.startswith("_")]
