"""Every component registry of the model, in one place, under detectron2's names.

Each registry is filled by ``@X_REGISTRY.register()`` next to the implementation; ``build_*`` looks a name up with
``X_REGISTRY.get(name)`` and calls it the detectron2 way (signature given per registry below). A user's own class
registered the same way becomes selectable from the config by name.

This module imports nothing but ``detlightning.utils.registry``, so anything may import it without cycles.
"""
from __future__ import annotations

from ..utils.registry import Registry

__all__ = [
    "ANCHOR_GENERATOR_REGISTRY",
    "BACKBONE_REGISTRY",
    "META_ARCH_REGISTRY",
    "PROPOSAL_GENERATOR_REGISTRY",
    "ROI_BOX_HEAD_REGISTRY",
    "ROI_HEADS_REGISTRY",
    "ROI_KEYPOINT_HEAD_REGISTRY",
    "ROI_MASK_HEAD_REGISTRY",
    "RPN_HEAD_REGISTRY",
    "SEM_SEG_HEADS_REGISTRY",
    "Registry",
]

BACKBONE_REGISTRY = Registry("BACKBONE")
BACKBONE_REGISTRY.__doc__ = """
Backbones: feature extractors from images to a dict of feature maps.

Called as ``obj(cfg, input_shape: ShapeSpec)``; returns a ``Backbone`` whose ``output_shape()`` describes its
``{name: (N, C, H/stride, W/stride)}`` outputs.
"""

META_ARCH_REGISTRY = Registry("META_ARCH")
META_ARCH_REGISTRY.__doc__ = """
Meta-architectures: the whole model (e.g. ``GeneralizedRCNN``), taking ``list[dict]`` inputs.

Called as ``obj(cfg)``; returns an ``nn.Module``.
"""

PROPOSAL_GENERATOR_REGISTRY = Registry("PROPOSAL_GENERATOR")
PROPOSAL_GENERATOR_REGISTRY.__doc__ = """
Proposal generators (e.g. ``RPN``): from backbone features to per-image proposal ``Instances``.

Called as ``obj(cfg, input_shape: dict[str, ShapeSpec])``; returns an ``nn.Module``.
"""

RPN_HEAD_REGISTRY = Registry("RPN_HEAD")
RPN_HEAD_REGISTRY.__doc__ = """
RPN heads: per-level objectness logits and anchor deltas from a list of feature maps.

Called as ``obj(cfg, input_shape: list[ShapeSpec])``; returns an ``nn.Module``.
"""

ANCHOR_GENERATOR_REGISTRY = Registry("ANCHOR_GENERATOR")
ANCHOR_GENERATOR_REGISTRY.__doc__ = """
Anchor generators: per-level anchors (``Boxes`` or ``RotatedBoxes``) for a list of feature maps.

Called as ``obj(cfg, input_shape: list[ShapeSpec])``; returns an ``nn.Module``.
"""

ROI_HEADS_REGISTRY = Registry("ROI_HEADS")
ROI_HEADS_REGISTRY.__doc__ = """
ROI heads (e.g. ``StandardROIHeads``): per-region computation from features and proposals to detections.

Called as ``obj(cfg, input_shape: dict[str, ShapeSpec])``; returns an ``ROIHeads``.
"""

ROI_BOX_HEAD_REGISTRY = Registry("ROI_BOX_HEAD")
ROI_BOX_HEAD_REGISTRY.__doc__ = """
Box heads: from pooled region features ``(R, C, h, w)`` to per-region feature vectors.

Called as ``obj(cfg, input_shape: ShapeSpec)``; returns an ``nn.Module``.
"""

ROI_MASK_HEAD_REGISTRY = Registry("ROI_MASK_HEAD")
ROI_MASK_HEAD_REGISTRY.__doc__ = """
Mask heads: from pooled region features to per-region mask logits.

Called as ``obj(cfg, input_shape: ShapeSpec)``; returns an ``nn.Module``.
"""

ROI_KEYPOINT_HEAD_REGISTRY = Registry("ROI_KEYPOINT_HEAD")
ROI_KEYPOINT_HEAD_REGISTRY.__doc__ = """
Keypoint heads: from pooled region features to per-region keypoint heatmap logits.

Called as ``obj(cfg, input_shape: ShapeSpec)``; returns an ``nn.Module``.
"""

SEM_SEG_HEADS_REGISTRY = Registry("SEM_SEG_HEADS")
SEM_SEG_HEADS_REGISTRY.__doc__ = """
Semantic segmentation heads: from backbone features to per-pixel class logits.

Called as ``obj(cfg, input_shape: dict[str, ShapeSpec])``; returns an ``nn.Module``.
"""
