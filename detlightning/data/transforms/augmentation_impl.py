"""Concrete augmentations (detectron2's names and sampling rules)."""
from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from .augmentation import Augmentation, AugInput, _transform_to_aug
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
        return self.aug.input_args

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

    def get_transform(self, image: np.ndarray) -> Transform:
        h, w = image.shape[:2]
        if self.is_range:
            size = np.random.randint(self.short_edge_length[0], self.short_edge_length[1] + 1)
        else:
            size = np.random.choice(self.short_edge_length)
        if size == 0:
            return NoOpTransform()
        newh, neww = ResizeShortestEdge.get_output_shape(h, w, size, self.max_size)
        return ResizeTransform(h, w, newh, neww, self.interp)

    @staticmethod
    def get_output_shape(oldh: int, oldw: int, short_edge_length: int, max_size: int) -> tuple[int, int]:
        """(new_h, new_w) for an ``oldh x oldw`` image resized to ``short_edge_length`` with a ``max_size`` cap."""
        h, w = oldh, oldw
        size = short_edge_length * 1.0
        scale = size / min(h, w)
        if h < w:
            newh, neww = size, scale * w
        else:
            newh, neww = scale * h, size
        if max(newh, neww) > max_size:
            scale = max_size * 1.0 / max(newh, neww)
            newh = newh * scale
            neww = neww * scale
        # d2-parity: round half up, not banker's rounding.
        return int(newh + 0.5), int(neww + 0.5)


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
        input_size = image.shape[:2]
        target_size = (self.target_height, self.target_width)
        target_scale_size = np.multiply(target_size, scale)
        output_scale = np.minimum(target_scale_size[0] / input_size[0], target_scale_size[1] / input_size[1])
        output_size = np.round(np.multiply(input_size, output_scale)).astype(int)
        return ResizeTransform(input_size[0], input_size[1], int(output_size[0]), int(output_size[1]), self.interp)

    def get_transform(self, image: np.ndarray) -> Transform:
        random_scale = np.random.uniform(self.min_scale, self.max_scale)
        return self._get_resize(image, random_scale)


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

    def get_transform(self, image: np.ndarray) -> Transform:
        h, w = image.shape[:2]
        center = None
        if self.is_range:
            angle = np.random.uniform(self.angle[0], self.angle[1])
            if self.center is not None:
                center = (
                    np.random.uniform(self.center[0][0], self.center[1][0]),
                    np.random.uniform(self.center[0][1], self.center[1][1]),
                )
        else:
            angle = np.random.choice(self.angle)
            if self.center is not None:
                center = self.center[np.random.randint(len(self.center))]
        if center is not None:
            center = (w * center[0], h * center[1])
        if angle % 360 == 0:
            return NoOpTransform()
        return RotationTransform(h, w, float(angle), expand=self.expand, center=center, interp=self.interp)


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
        img_h, img_w = image.shape[:2]
        src_rect = np.array([-0.5 * img_w, -0.5 * img_h, 0.5 * img_w, 0.5 * img_h])
        src_rect *= np.random.uniform(self.scale_range[0], self.scale_range[1])
        src_rect[0::2] += self.shift_range[0] * img_w * (np.random.rand() - 0.5)
        src_rect[1::2] += self.shift_range[1] * img_h * (np.random.rand() - 0.5)
        src_rect[0::2] += 0.5 * img_w
        src_rect[1::2] += 0.5 * img_h
        return ExtentTransform(
            src_rect=(src_rect[0], src_rect[1], src_rect[2], src_rect[3]),
            output_size=(int(src_rect[3] - src_rect[1]), int(src_rect[2] - src_rect[0])),
        )


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
