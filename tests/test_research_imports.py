"""The names that detectron2 research projects import from detectron2 resolve under detlightning.

Lists gathered from the projects' sources (facebookresearch/detectron2 projects/PointRend, projects/DeepLab,
projects/Panoptic-DeepLab, projects/TridentNet, and facebookresearch/Mask2Former): every
``from detectron2.<module> import <name>`` and ``import detectron2.<module>`` there, minus
``detectron2.projects.*`` (the projects themselves). A port renames ``detectron2`` to ``detlightning``.
"""
from __future__ import annotations

import importlib

import pytest
import torch

from detlightning.utils.logger import create_small_table
from detlightning.utils.memory import retry_if_cuda_oom

# (module under detlightning, names imported from it)
_IMPORTS: dict[str, dict[str, tuple[str, ...]]] = {
    "PointRend": {
        "config": ("configurable",),
        "layers": ("Conv2d", "ShapeSpec", "cat", "interpolate"),
        "modeling": ("ROI_MASK_HEAD_REGISTRY", "ROI_HEADS_REGISTRY", "SEM_SEG_HEADS_REGISTRY", "StandardROIHeads"),
        "modeling.roi_heads.mask_head": ("build_mask_head", "mask_rcnn_inference", "mask_rcnn_loss"),
        "modeling.roi_heads.roi_heads": ("select_foreground_proposals",),
        "structures": ("Boxes",),
        "utils.events": ("get_event_storage",),
        "utils.registry": ("Registry",),
    },
    "DeepLab": {
        "config": ("CfgNode", "configurable", "get_cfg"),
        "layers": ("ASPP", "CNNBlockBase", "Conv2d", "DepthwiseSeparableConv2d", "ShapeSpec", "get_norm"),
        "modeling": ("BACKBONE_REGISTRY", "SEM_SEG_HEADS_REGISTRY", "GeneralizedRCNNWithTTA"),
        "modeling.backbone.resnet": ("BasicStem", "BottleneckBlock", "DeformBottleneckBlock", "ResNet"),
        "solver": ("LRScheduler", "build_lr_scheduler"),
        "solver.lr_scheduler": ("_get_warmup_factor_at_iter", "LRScheduler"),
        "checkpoint": ("DetectionCheckpointer",),
        "data": ("MetadataCatalog",),
        "engine": ("DefaultTrainer", "default_argument_parser", "default_setup", "hooks", "launch"),
        "evaluation": (
            "CityscapesInstanceEvaluator", "CityscapesSemSegEvaluator", "COCOEvaluator", "COCOPanopticEvaluator",
            "DatasetEvaluators", "LVISEvaluator", "PascalVOCDetectionEvaluator", "SemSegEvaluator", "verify_results",
        ),
        "utils.comm": ("get_rank",),
    },
    "Panoptic-DeepLab": {
        "config": ("configurable", "get_cfg"),
        "data": ("MetadataCatalog", "build_detection_train_loader", "detection_utils", "transforms"),
        "data.transforms": ("Augmentation", "AugmentationList", "AugInput", "ResizeShortestEdge", "RandomCrop",
                            "RandomFlip", "Transform"),
        "data.detection_utils": ("read_image", "check_image_size"),
        "layers": ("Conv2d", "ShapeSpec", "get_norm"),
        "modeling": ("META_ARCH_REGISTRY", "SEM_SEG_HEADS_REGISTRY", "build_backbone", "build_sem_seg_head"),
        "modeling.postprocessing": ("sem_seg_postprocess",),
        "structures": ("BitMasks", "ImageList", "Instances"),
        "utils.registry": ("Registry",),
        "engine": ("DefaultTrainer", "default_argument_parser", "default_setup", "launch"),
        "evaluation": ("CityscapesInstanceEvaluator", "CityscapesSemSegEvaluator", "COCOEvaluator",
                       "COCOPanopticEvaluator", "DatasetEvaluators"),
        "solver": ("get_default_optimizer_params",),
        "solver.build": ("maybe_add_gradient_clipping", "get_default_optimizer_params"),
    },
    "TridentNet": {
        "layers": ("Conv2d", "FrozenBatchNorm2d", "get_norm", "batched_nms"),
        "layers.wrappers": ("_NewEmptyTensorOp",),
        "modeling": ("BACKBONE_REGISTRY", "PROPOSAL_GENERATOR_REGISTRY", "ROI_HEADS_REGISTRY", "ResNet",
                     "ResNetBlockBase", "StandardROIHeads"),
        "modeling.backbone.resnet": ("BasicStem", "BottleneckBlock", "DeformBottleneckBlock"),
        "modeling.proposal_generator.rpn": ("RPN",),
        "modeling.roi_heads.roi_heads": ("Res5ROIHeads",),
        "structures": ("ImageList", "Instances"),
    },
    "Mask2Former": {
        "checkpoint": ("DetectionCheckpointer",),
        "config": ("CfgNode", "configurable", "get_cfg"),
        "data": ("DatasetCatalog", "MetadataCatalog", "build_detection_train_loader", "build_detection_test_loader"),
        "data.datasets": ("load_sem_seg",),
        "data.transforms": ("Augmentation", "Transform", "ResizeShortestEdge", "RandomCrop", "RandomFlip",
                            "ResizeScale", "FixedSizeCrop"),
        "engine": ("DefaultTrainer", "default_argument_parser", "default_setup", "launch", "hooks"),
        "engine.defaults": ("create_ddp_model",),
        "engine.train_loop": ("AMPTrainer", "SimpleTrainer"),
        "evaluation": ("CityscapesInstanceEvaluator", "CityscapesSemSegEvaluator", "COCOEvaluator",
                       "COCOPanopticEvaluator", "DatasetEvaluator", "DatasetEvaluators", "LVISEvaluator",
                       "SemSegEvaluator", "inference_on_dataset", "print_csv_format", "verify_results"),
        "layers": ("Conv2d", "ShapeSpec", "get_norm"),
        "modeling": ("BACKBONE_REGISTRY", "META_ARCH_REGISTRY", "SEM_SEG_HEADS_REGISTRY", "Backbone", "ShapeSpec",
                     "build_backbone", "build_sem_seg_head"),
        "modeling.backbone": ("Backbone",),
        "modeling.postprocessing": ("sem_seg_postprocess",),
        "solver.build": ("maybe_add_gradient_clipping",),
        "structures": ("BitMasks", "Boxes", "BoxMode", "ImageList", "Instances", "PolygonMasks",
                       "polygons_to_bitmask"),
        "utils.comm": ("get_world_size", "is_main_process", "get_rank"),
        "utils.file_io": ("PathManager",),
        "utils.logger": ("setup_logger", "create_small_table"),
        "utils.memory": ("retry_if_cuda_oom",),
    },
}

def _cases() -> list[tuple[str, str, str]]:
    out = []
    for project, modules in _IMPORTS.items():
        for module, names in modules.items():
            out += [(project, module, name) for name in names]
    return out


@pytest.mark.parametrize(("project", "module", "name"), _cases(), ids=lambda v: str(v))
def test_research_import_resolves(project: str, module: str, name: str) -> None:
    mod = importlib.import_module(f"detlightning.{module}")
    assert hasattr(mod, name), f"{project}: `from detectron2.{module} import {name}` has no detlightning equivalent"
    # a module (``from detectron2.data import transforms``) or something callable / a class
    assert getattr(mod, name) is not None


# ---- behaviour of the names added for research code (layers are in tests/layers/test_aspp.py) ----


class _CudaLike:
    """Stands for a CUDA tensor on a CPU-only machine: ``.device.type == "cuda"`` and ``.to(device=...)``."""

    device = torch.device("cuda")

    def __init__(self, value: torch.Tensor) -> None:
        self.value = value

    def to(self, device: str) -> torch.Tensor:
        return self.value.to(device)


def _oom_then(n_failures: int, seen: list):
    def func(a, *, b):
        seen.append((a, b))
        if len(seen) <= n_failures:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return a + b if isinstance(a, torch.Tensor) else "no-tensor"

    return func


def test_retry_if_cuda_oom_calls_through_and_retries() -> None:
    seen: list = []
    assert retry_if_cuda_oom(_oom_then(0, seen))(torch.ones(2), b=torch.ones(2)).tolist() == [2.0, 2.0]
    assert len(seen) == 1

    seen = []  # one OOM: retried once (after emptying the cache) with the same arguments
    assert retry_if_cuda_oom(_oom_then(1, seen))(torch.ones(2), b=1).tolist() == [2.0, 2.0]
    assert len(seen) == 2

    seen = []  # two OOMs: the CUDA arguments (positional and keyword) go to the CPU for the third call
    wrapped = retry_if_cuda_oom(_oom_then(2, seen))
    out = wrapped(_CudaLike(torch.full((2,), 3.0)), b=_CudaLike(torch.ones(2)))
    assert out.tolist() == [4.0, 4.0] and out.device.type == "cpu" and len(seen) == 3
    assert isinstance(seen[1][0], _CudaLike) and isinstance(seen[2][0], torch.Tensor)

    seen = []  # three OOMs: the CPU call's error reaches the caller
    with pytest.raises(torch.cuda.OutOfMemoryError):
        retry_if_cuda_oom(_oom_then(3, seen))(torch.ones(1), b=torch.ones(1))


def test_retry_if_cuda_oom_propagates_other_errors_at_once() -> None:
    calls = []

    def broken(x):
        calls.append(x)
        raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        retry_if_cuda_oom(broken)(1)
    assert calls == [1]
    assert retry_if_cuda_oom(broken).__name__ == "broken"


def test_create_small_table() -> None:
    table = create_small_table({"AP": 40.12345, "AP50": 60.0, "split": "val"})
    assert table == (
        "|   AP   |  AP50  |  split  |\n"
        "|:------:|:------:|:-------:|\n"
        "| 40.123 | 60.000 |   val   |"
    )
