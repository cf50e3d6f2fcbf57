"""Concrete augmentations (detectron2's names and sampling rules)."""
from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from ...structures import Boxes, pairwise_iou
from .augmentation import AugInput, Augmentation, _resolve_input_args, _transform_to_aug
from .transform import (
    BlendTransform,
    CropTransform,
    ExtentTransform,
    HFlipTransform,
    NoOpTransform,
    PadTransform,
    ResizeTransform,
    RotationTransform,
    Transform,
    TransformList,
    VFlipTransform,
)

__all__ = [
    "RandomApply",
    "RandomBrightness",
    "RandomContrast",
    "RandomCrop",
    "RandomExtent",
    "RandomFlip",
    "RandomSaturation",
    "RandomLighting",
    "RandomRotation",
    "Resize",
    "ResizeScale",
    "ResizeShortestEdge",
    "FixedSizeCrop",
    "RandomCrop_CategoryAreaConstraint",
    "RandomResize",
    "MinIoURandomCrop",
]


class RandomApply(Augmentation):
    """Apply the wrapped augmentation (or transform) with probability ``prob``."""

    def __init__(self, tfm_or_aug: Augmentation | Transform, prob: float = 0.5):
        super().__init__()
        self.aug = _transform_to_aug(tfm_or_aug)
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"RandomApply: probability must be in [0, 1], got {prob}")
        self.prob = prob

    @property
    def input_args(self) -> tuple[str, ...]:  # type: ignore[override]
        return _resolve_input_args(self.aug)

    def get_transform(self, *args: Any) -> Transform:
        do = self._rand_range() < self.prob
        if do:
            return self.aug.get_transform(*args)
        return NoOpTransform()

    def __call__(self, aug_input: AugInput) -> Transform:
        do = self._rand_range() < self.prob
        if do:
            return self.aug(aug_input)
        return NoOpTransform()

    def __repr__(self) -> str:
        return f"RandomApply({self.aug!r}, prob={self.prob})"

    __str__ = __repr__


class RandomFlip(Augmentation):
    """Flip the image horizontally or vertically with probability ``prob``."""

    def __init__(self, prob: float = 0.5, *, horizontal: bool = True, vertical: bool = False):
        super().__init__()
        if horizontal and vertical:
            raise ValueError("RandomFlip: cannot flip both horizontally and vertically; use two RandomFlips.")
        if not horizontal and not vertical:
            raise ValueError("RandomFlip: at least one of horizontal or vertical has to be True.")
        self._init(locals())

    def get_transform(self, image: np.ndarray) -> Transform:
        h, w = image.shape[:2]
        do = self._rand_range() < self.prob
        if do:
            if self.horizontal:
                return HFlipTransform(w)
            return VFlipTransform(h)
        return NoOpTransform()


class Resize(Augmentation):
    """Resize to a fixed ``shape = (h, w)`` (or a square ``shape``)."""

    def __init__(self, shape: int | Sequence[int], interp: int = Image.BILINEAR):
        super().__init__()
        if isinstance(shape, int):
            shape = (shape, shape)
        shape = tuple(int(s) for s in shape)
        self._init(locals())

    def get_transform(self, image: np.ndarray) -> Transform:
        return ResizeTransform(image.shape[0], image.shape[1], self.shape[0], self.shape[1], self.interp)


class ResizeShortestEdge(Augmentation):
    """Resize so the shorter side is a sampled length, unless the longer side would exceed ``max_size``.

    ``sample_style="range"`` samples an integer uniformly in ``[short_edge_length[0], short_edge_length[1]]``;
    ``"choice"`` picks one of ``short_edge_length``. A sampled length of 0 means no resize.
    """

    def __init__(
        self,
        short_edge_length: int | Sequence[int],
        max_size: int = sys.maxsize,
        sample_style: str = "range",
        interp: int = Image.BILINEAR,
    ):
        super().__init__()
        if sample_style not in ("range", "choice"):
            raise ValueError(f"ResizeShortestEdge: sample_style must be 'range' or 'choice', got {sample_style!r}")
        self.is_range = sample_style == "range"
        if isinstance(short_edge_length, int):
            short_edge_length = (short_edge_length, short_edge_length)
        short_edge_length = tuple(int(s) for s in short_edge_length)
        if self.is_range and len(short_edge_length) != 2:
            raise ValueError(
                f"short_edge_length must be two values using 'range' sample style. Got {short_edge_length}!"
            )
        self._init(locals())

    def _sample_short_edge(self) -> int:
        lengths = self.short_edge_length
        if not self.is_range:
            return int(np.random.choice(lengths))
        return int(np.random.randint(lengths[0], lengths[1] + 1))  # inclusive upper bound

    def get_transform(self, image: np.ndarray) -> Transform:
        target = self._sample_short_edge()
        if target == 0:
            return NoOpTransform()
        src_h, src_w = image.shape[:2]
        dst_h, dst_w = ResizeShortestEdge.get_output_shape(src_h, src_w, target, self.max_size)
        return ResizeTransform(src_h, src_w, dst_h, dst_w, self.interp)

    @staticmethod
    def get_output_shape(oldh: int, oldw: int, short_edge_length: int, max_size: int) -> tuple[int, int]:
        """(new_h, new_w) for an ``oldh x oldw`` image resized to ``short_edge_length`` with a ``max_size`` cap."""
        short_target = float(short_edge_length)
        factor = short_target / min(oldh, oldw)
        # The shorter side is set to the target directly, the other one scaled (ties count as portrait).
        out_h, out_w = (short_target, factor * oldw) if oldh < oldw else (factor * oldh, short_target)
        longest = max(out_h, out_w)
        if longest > max_size:
            shrink = max_size / longest
            out_h, out_w = out_h * shrink, out_w * shrink
        # d2-parity: round half up, not banker's rounding.
        return int(out_h + 0.5), int(out_w + 0.5)


class ResizeScale(Augmentation):
    """Resize by a random scale in ``[min_scale, max_scale]`` of the scale that fits ``(target_height,
    target_width)`` while keeping the aspect ratio (large-scale jitter)."""

    def __init__(
        self,
        min_scale: float,
        max_scale: float,
        target_height: int,
        target_width: int,
        interp: int = Image.BILINEAR,
    ):
        super().__init__()
        self._init(locals())

    def _get_resize(self, image: np.ndarray, scale: float) -> Transform:
        in_h, in_w = image.shape[:2]
        # Largest factor at which the image still fits inside the (scaled) target box, aspect ratio kept.
        fit = min(self.target_height * scale / in_h, self.target_width * scale / in_w)
        out_h, out_w = (int(v) for v in np.round(np.array([in_h, in_w]) * fit))
        return ResizeTransform(in_h, in_w, out_h, out_w, self.interp)

    def get_transform(self, image: np.ndarray) -> Transform:
        return self._get_resize(image, np.random.uniform(self.min_scale, self.max_scale))


class RandomRotation(Augmentation):
    """Rotate by a random angle (degrees, counter-clockwise) around the centre or a random centre.

    ``angle``: ``[min, max]`` for ``sample_style="range"`` or a list of choices for ``"choice"``.
    ``center``: None (image centre) or ``[[min_x, min_y], [max_x, max_y]]`` relative to the image size
    (range) / a list of relative ``(x, y)`` (choice).
    """

    def __init__(
        self,
        angle: float | Sequence[float],
        expand: bool = True,
        center: Any = None,
        sample_style: str = "range",
        interp: int | None = None,
    ):
        super().__init__()
        if sample_style not in ("range", "choice"):
            raise ValueError(f"RandomRotation: sample_style must be 'range' or 'choice', got {sample_style!r}")
        self.is_range = sample_style == "range"
        if isinstance(angle, (float, int)):
            angle = (angle, angle)
        if center is not None and isinstance(center[0], (float, int)):
            center = (center, center)
        self._init(locals())

    def _sample(self) -> tuple[float, Any]:
        """(angle in degrees, rotation centre relative to the image size, or None for the image centre)."""
        if not self.is_range:
            angle = np.random.choice(self.angle)
            relative = None if self.center is None else self.center[np.random.randint(len(self.center))]
            return angle, relative
        angle = np.random.uniform(self.angle[0], self.angle[1])
        if self.center is None:
            return angle, None
        (x_lo, y_lo), (x_hi, y_hi) = self.center
        return angle, (np.random.uniform(x_lo, x_hi), np.random.uniform(y_lo, y_hi))

    def get_transform(self, image: np.ndarray) -> Transform:
        angle, relative = self._sample()
        if angle % 360 == 0:
            return NoOpTransform()
        img_h, img_w = image.shape[:2]
        pivot = None if relative is None else (img_w * relative[0], img_h * relative[1])
        return RotationTransform(img_h, img_w, float(angle), expand=self.expand, center=pivot, interp=self.interp)


class RandomCrop(Augmentation):
    """Crop a random window of a size given by ``crop_type``:

    - ``"relative"``: ``(h * crop_size[0], w * crop_size[1])``
    - ``"relative_range"``: uniform in ``[crop_size[0], 1] x [crop_size[1], 1]`` of ``(h, w)``
    - ``"absolute"``: ``crop_size`` pixels (clamped to the image)
    - ``"absolute_range"``: uniform integers in ``[crop_size[0], crop_size[1]]`` for both sides (clamped)
    """

    _TYPES = ("relative_range", "relative", "absolute", "absolute_range")

    def __init__(self, crop_type: str, crop_size: Sequence[float]):
        super().__init__()
        if crop_type not in self._TYPES:
            raise ValueError(f"RandomCrop: crop_type must be one of {self._TYPES}, got {crop_type!r}")
        crop_size = tuple(crop_size)
        if len(crop_size) != 2:
            raise ValueError(f"RandomCrop: crop_size must have 2 values, got {crop_size}")
        if crop_type in ("relative", "relative_range") and not all(0 < s <= 1 for s in crop_size):
            raise ValueError(f"RandomCrop: relative crop_size must be in (0, 1], got {crop_size}")
        if crop_type == "absolute_range" and crop_size[0] > crop_size[1]:
            raise ValueError(f"RandomCrop: absolute_range needs crop_size[0] <= crop_size[1], got {crop_size}")
        self._init(locals())

    def get_transform(self, image: np.ndarray) -> Transform:
        h, w = image.shape[:2]
        croph, cropw = self.get_crop_size((h, w))
        assert h >= croph and w >= cropw, f"Shape computation in {self} has bugs."
        h0 = np.random.randint(h - croph + 1)
        w0 = np.random.randint(w - cropw + 1)
        return CropTransform(w0, h0, cropw, croph)

    def get_crop_size(self, image_size: tuple[int, int]) -> tuple[int, int]:
        """(crop_h, crop_w) for an image of ``image_size = (h, w)``."""
        h, w = image_size
        if self.crop_type == "relative":
            ch, cw = self.crop_size
            return int(h * ch + 0.5), int(w * cw + 0.5)
        if self.crop_type == "relative_range":
            crop_size = np.asarray(self.crop_size, dtype=np.float32)
            ch, cw = crop_size + np.random.rand(2) * (1 - crop_size)
            return int(h * ch + 0.5), int(w * cw + 0.5)
        if self.crop_type == "absolute":
            return min(int(self.crop_size[0]), h), min(int(self.crop_size[1]), w)
        # absolute_range
        ch = np.random.randint(min(h, self.crop_size[0]), min(h, self.crop_size[1]) + 1)
        cw = np.random.randint(min(w, self.crop_size[0]), min(w, self.crop_size[1]) + 1)
        return int(ch), int(cw)


class RandomCrop_CategoryAreaConstraint(Augmentation):  # noqa: N801  (detectron2's name)
    """A :class:`RandomCrop` whose window is re-drawn (up to 10 times) until no single category of the semantic
    segmentation covers more than ``single_category_max_area`` of it; the last window drawn is used otherwise.

    ``ignored_category`` (e.g. the ignore label) is left out of the check. ``single_category_max_area >= 1``
    turns the check off (a plain RandomCrop).
    """

    def __init__(
        self,
        crop_type: str,
        crop_size: Sequence[float],
        single_category_max_area: float = 1.0,
        ignored_category: int | None = None,
    ):
        super().__init__()
        self.crop_aug = RandomCrop(crop_type, crop_size)
        self._init(locals())

    def get_transform(self, image: np.ndarray, sem_seg: np.ndarray) -> Transform:
        if self.single_category_max_area >= 1.0:
            return self.crop_aug.get_transform(image)
        if sem_seg is None:
            raise ValueError("RandomCrop_CategoryAreaConstraint needs the input's sem_seg (it is None)")
        h, w = sem_seg.shape
        for _ in range(10):
            crop_h, crop_w = self.crop_aug.get_crop_size((h, w))
            y0 = np.random.randint(h - crop_h + 1)
            x0 = np.random.randint(w - crop_w + 1)
            labels, counts = np.unique(sem_seg[y0 : y0 + crop_h, x0 : x0 + crop_w], return_counts=True)
            if self.ignored_category is not None:
                counts = counts[labels != self.ignored_category]
            # at least two categories, and the largest below the allowed share of the counted pixels
            if len(counts) > 1 and counts.max() < counts.sum() * self.single_category_max_area:
                break
        return CropTransform(x0, y0, crop_w, crop_h)


class RandomResize(Augmentation):
    """Resize to a shape ``(h, w)`` drawn uniformly from ``shape_list``."""

    def __init__(self, shape_list: Sequence[tuple[int, int]], interp: int = Image.BILINEAR):
        super().__init__()
        if len(shape_list) == 0:
            raise ValueError("RandomResize: shape_list is empty")
        self._init(locals())

    def get_transform(self, image: np.ndarray) -> Transform:
        h, w = self.shape_list[np.random.randint(low=0, high=len(self.shape_list))]
        return ResizeTransform(image.shape[0], image.shape[1], int(h), int(w), self.interp)


class MinIoURandomCrop(Augmentation):
    """SSD-style crop: a random window whose IoU with every box is at least a threshold drawn from ``min_ious``.

    Each of up to ``mode_trials`` rounds draws a mode from ``(1, *min_ious, 0)``: 1 means no crop; otherwise up to
    ``crop_trials`` windows are drawn (sides uniform in ``[min_crop_size, 1]`` of the image's, aspect ratio h / w
    in [0.5, 2]) and the first one with IoU >= the threshold with all boxes and containing at least one box centre
    is used. Without boxes (``boxes`` None) nothing is cropped.
    """

    def __init__(
        self,
        min_ious: Sequence[float] = (0.1, 0.3, 0.5, 0.7, 0.9),
        min_crop_size: float = 0.3,
        mode_trials: int = 1000,
        crop_trials: int = 50,
    ):
        super().__init__()
        self.min_ious = min_ious
        self.sample_mode = (1, *min_ious, 0)
        self.min_crop_size = min_crop_size
        self.mode_trials = mode_trials
        self.crop_trials = crop_trials

    def get_transform(self, image: np.ndarray, boxes: np.ndarray | None) -> Transform:
        if boxes is None:
            return NoOpTransform()
        boxes = np.asarray(boxes).reshape(-1, 4)
        h, w = image.shape[:2]
        gt = Boxes(torch.as_tensor(boxes, dtype=torch.float32))
        centers = (boxes[:, :2] + boxes[:, 2:]) / 2
        for _ in range(self.mode_trials):
            mode = np.random.choice(self.sample_mode)
            self.mode = mode
            if mode == 1:
                return NoOpTransform()
            for _ in range(self.crop_trials):
                new_w = np.random.uniform(self.min_crop_size * w, w)
                new_h = np.random.uniform(self.min_crop_size * h, h)
                if not 0.5 <= new_h / new_w <= 2:
                    continue
                # d2-parity: a single argument is numpy's `low` (high=1.0), as in detectron2 and mmdetection.
                left = np.random.uniform(w - new_w)
                top = np.random.uniform(h - new_h)
                patch = np.array((int(left), int(top), int(left + new_w), int(top + new_h)))
                if patch[2] == patch[0] or patch[3] == patch[1]:  # a line or a point
                    continue
                if len(boxes):
                    ious = pairwise_iou(Boxes(torch.as_tensor(patch[None], dtype=torch.float32)), gt).reshape(-1)
                    if ious.min() < mode:
                        continue
                    inside = (
                        (centers[:, 0] > patch[0])
                        & (centers[:, 1] > patch[1])
                        & (centers[:, 0] < patch[2])
                        & (centers[:, 1] < patch[3])
                    )
                    if not inside.any():
                        continue
                return CropTransform(int(left), int(top), int(new_w), int(new_h))
        return NoOpTransform()


class FixedSizeCrop(Augmentation):
    """Crop a random ``crop_size = (h, w)`` window if the image is larger, then pad to ``crop_size``."""

    def __init__(
        self, crop_size: tuple[int, int], pad: bool = True, pad_value: float = 128.0, seg_pad_value: int = 255
    ):
        super().__init__()
        self._init(locals())

    def get_transform(self, image: np.ndarray) -> Transform:
        input_size = image.shape[:2]
        output_size = self.crop_size
        max_offset = np.maximum(np.subtract(input_size, output_size), 0)
        offset = np.multiply(max_offset, np.random.uniform(0.0, 1.0))
        offset = np.round(offset).astype(int)
        crop = CropTransform(
            int(offset[1]),
            int(offset[0]),
            int(min(output_size[1], input_size[1])),
            int(min(output_size[0], input_size[0])),
            int(input_size[1]),
            int(input_size[0]),
        )
        if not self.pad:
            return TransformList([crop])
        pad_size = np.maximum(np.subtract(output_size, np.minimum(input_size, output_size)), 0)
        original_size = np.minimum(input_size, output_size)
        pad = PadTransform(
            0,
            0,
            int(pad_size[1]),
            int(pad_size[0]),
            int(original_size[1]),
            int(original_size[0]),
            self.pad_value,
            self.seg_pad_value,
        )
        return TransformList([crop, pad])


class RandomExtent(Augmentation):
    """Take a random sub-rectangle: scaled by ``scale_range`` and shifted by ``shift_range`` (fractions of the
    half-size); the output size is the sub-rectangle's size, so this crops and/or pads."""

    def __init__(self, scale_range: tuple[float, float], shift_range: tuple[float, float]):
        super().__init__()
        self._init(locals())

    def get_transform(self, image: np.ndarray) -> Transform:
        size_xy = np.array(image.shape[1::-1], dtype=np.float64)  # (w, h)
        # Draw order (scale, x shift, y shift) is fixed: it decides which rectangle a seed gives.
        half_extent = 0.5 * size_xy * np.random.uniform(self.scale_range[0], self.scale_range[1])
        offset = np.asarray(self.shift_range, dtype=np.float64) * size_xy * (np.random.rand(2) - 0.5)
        x0, y0 = -half_extent + offset + 0.5 * size_xy
        x1, y1 = half_extent + offset + 0.5 * size_xy
        return ExtentTransform(src_rect=(x0, y0, x1, y1), output_size=(int(y1 - y0), int(x1 - x0)))


class RandomContrast(Augmentation):
    """Scale contrast around the image mean by a factor uniform in ``[intensity_min, intensity_max]``."""

    def __init__(self, intensity_min: float, intensity_max: float):
        super().__init__()
        self._init(locals())

    def get_transform(self, image: np.ndarray) -> Transform:
        w = np.random.uniform(self.intensity_min, self.intensity_max)
        return BlendTransform(src_image=image.mean(), src_weight=1 - w, dst_weight=w)


class RandomBrightness(Augmentation):
    """Scale intensities by a factor uniform in ``[intensity_min, intensity_max]``."""

    def __init__(self, intensity_min: float, intensity_max: float):
        super().__init__()
        self._init(locals())

    def get_transform(self, image: np.ndarray) -> Transform:
        w = np.random.uniform(self.intensity_min, self.intensity_max)
        return BlendTransform(src_image=0, src_weight=1 - w, dst_weight=w)


class RandomSaturation(Augmentation):
    """Blend with the grayscale image by a factor uniform in ``[intensity_min, intensity_max]`` (RGB input)."""

    def __init__(self, intensity_min: float, intensity_max: float):
        super().__init__()
        self._init(locals())

    def get_transform(self, image: np.ndarray) -> Transform:
        if image.ndim != 3 or image.shape[-1] != 3:
            raise ValueError(f"RandomSaturation only works on 3-channel images, got shape {image.shape}")
        w = np.random.uniform(self.intensity_min, self.intensity_max)
        grayscale = image.dot([0.299, 0.587, 0.114])[:, :, np.newaxis]
        return BlendTransform(src_image=grayscale, src_weight=1 - w, dst_weight=w)


class RandomLighting(Augmentation):
    """AlexNet-style PCA lighting noise with standard deviation ``scale`` (RGB input)."""

    def __init__(self, scale: float):
        super().__init__()
        self._init(locals())
        # Principal components of ImageNet RGB pixel values (Krizhevsky et al. 2012).
        self.eigen_vecs = np.array(
            [[-0.5675, 0.7192, 0.4009], [-0.5808, -0.0045, -0.8140], [-0.5836, -0.6948, 0.4203]]
        )
        self.eigen_vals = np.array([0.2175, 0.0188, 0.0045])

    def get_transform(self, image: np.ndarray) -> Transform:
        if image.ndim != 3 or image.shape[-1] != 3:
            raise ValueError(f"RandomLighting only works on 3-channel images, got shape {image.shape}")
        weights = np.random.normal(scale=self.scale, size=3)
        return BlendTransform(src_image=self.eigen_vecs.dot(weights * self.eigen_vals), src_weight=1.0, dst_weight=1.0)
