"""Augmentations and transforms that apply consistently to images, boxes, polygons, keypoints and segmentation.

``from detectron2.data import transforms as T`` ports as ``from detlightning.data import transforms as T``.
"""
from .augmentation import (
    AugInput,
    Augmentation,
    AugmentationList,
    StandardAugInput,
    TransformGen,
    apply_augmentations,
    apply_transform_gens,
)
from .augmentation_impl import (
    FixedSizeCrop,
    MinIoURandomCrop,
    RandomApply,
    RandomBrightness,
    RandomContrast,
    RandomCrop,
    RandomCrop_CategoryAreaConstraint,
    RandomExtent,
    RandomFlip,
    RandomLighting,
    RandomResize,
    RandomRotation,
    RandomSaturation,
    Resize,
    ResizeScale,
    ResizeShortestEdge,
)
from .transform import (
    BlendTransform,
    ColorTransform,
    CropTransform,
    ExtentTransform,
    GridSampleTransform,
    HFlipTransform,
    NoOpTransform,
    PadTransform,
    PILColorTransform,
    ResizeTransform,
    RotationTransform,
    ScaleTransform,
    Transform,
    TransformList,
    VFlipTransform,
)

__all__ = [k for k in globals().keys() if not k.startswith("_")]
