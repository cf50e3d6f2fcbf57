"""Meta-architectures: whole models taking detectron2's ``list[dict]`` inputs (``detectron2.modeling.meta_arch``)."""
from .build import META_ARCH_REGISTRY, build_model  # noqa: I001  (registry first, as in detectron2)
from .rcnn import GeneralizedRCNN, ProposalNetwork

__all__ = ["META_ARCH_REGISTRY", "GeneralizedRCNN", "ProposalNetwork", "build_model"]

# issue 4: dense detectors, semantic / panoptic segmentation (importing registers them)
from .dense_detector import DenseDetector  # noqa: E402
from .retinanet import RetinaNet, RetinaNetHead  # noqa: E402

__all__ += ["DenseDetector", "RetinaNet", "RetinaNetHead"]
from .semantic_seg import SEM_SEG_HEADS_REGISTRY, SemanticSegmentor, SemSegFPNHead, build_sem_seg_head  # noqa: E402
from .panoptic_fpn import PanopticFPN, combine_semantic_and_instance_outputs  # noqa: E402

__all__ += [
    "PanopticFPN",
    "SEM_SEG_HEADS_REGISTRY",
    "SemSegFPNHead",
    "SemanticSegmentor",
    "build_sem_seg_head",
    "combine_semantic_and_instance_outputs",
]
