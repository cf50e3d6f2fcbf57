"""Meta-architectures: whole models taking detectron2's ``list[dict]`` inputs (``detectron2.modeling.meta_arch``).

Importing this package registers every built-in meta-architecture in ``META_ARCH_REGISTRY``.
"""
from .build import META_ARCH_REGISTRY, build_model  # noqa: I001  (registry first, as in detectron2)
from .rcnn import GeneralizedRCNN, ProposalNetwork
from .dense_detector import DenseDetector
from .retinanet import RetinaNet, RetinaNetHead
from .fcos import FCOS, FCOSHead
from .semantic_seg import SEM_SEG_HEADS_REGISTRY, SemanticSegmentor, SemSegFPNHead, build_sem_seg_head
from .panoptic_fpn import PanopticFPN, combine_semantic_and_instance_outputs

__all__ = [
    "META_ARCH_REGISTRY",
    "SEM_SEG_HEADS_REGISTRY",
    "DenseDetector",
    "FCOS",
    "FCOSHead",
    "GeneralizedRCNN",
    "PanopticFPN",
    "ProposalNetwork",
    "RetinaNet",
    "RetinaNetHead",
    "SemSegFPNHead",
    "SemanticSegmentor",
    "build_model",
    "build_sem_seg_head",
    "combine_semantic_and_instance_outputs",
]
