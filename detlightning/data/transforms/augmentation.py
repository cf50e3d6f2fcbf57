"""Augmentation API: an ``Augmentation`` looks at its inputs and returns a deterministic ``Transform``; an
``AugInput`` holds the data a transform is applied to.

As in detectron2, ``aug(aug_input)`` both returns the transform and applies it in place, so that the returned
transform can later be applied to more data (annotations, other images) consistently.
"""
from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import numpy as np

from .transform import HFlipTransform, Transform, TransformList

__all__ = [
    "Augmentation",
    "AugmentationList",
    "AugInput",
    "TransformGen",
    "apply_transform_gens",
    "StandardAugInput",
    "apply_augmentations",
]


def _check_img_dtype(img: np.ndarray) -> None:
    if not isinstance(img, np.ndarray):
        raise TypeError(f"[Augmentation] needs a numpy array as image, got {type(img).__name__}")
    if np.issubdtype(img.dtype, np.integer) and img.dtype != np.uint8:
        raise TypeError(f"[Augmentation] integer images must be uint8, got {img.dtype}")
    if img.ndim not in (2, 3):
        raise ValueError(f"[Augmentation] image must be (H, W) or (H, W, C), got shape {img.shape}")


class Augmentation:
    """Base class: ``get_transform(*args)`` returns a Transform, possibly random.

    ``input_args`` names the ``AugInput`` attributes passed to ``get_transform``, in order. When a subclass leaves
    it None it is read from ``get_transform``'s signature: ``("image",)`` for a single parameter (whatever its name),
    otherwise the parameter names, e.g. ``def get_transform(self, image, sem_seg)`` receives ``aug_input.image``
    and ``aug_input.sem_seg``. Randomness comes from numpy's global generator (seeded per data-loader worker).
    """

    input_args: tuple[str, ...] | None = None

    def _init(self, params: dict[str, Any] | None = None) -> None:
        if params:
            for k, v in params.items():
                if k != "self" and not k.startswith("_"):
                    setattr(self, k, v)

    def get_transform(self, *args: Any) -> Transform:
        """Return the deterministic Transform to apply to the inputs named by ``input_args``."""
        raise NotImplementedError

    def __call__(self, aug_input: AugInput) -> Transform:
        """Compute the transform from ``aug_input``, apply it to ``aug_input`` in place and return it."""
        args = _get_aug_input_args(self, aug_input)
        tfm = self.get_transform(*args)
        if not isinstance(tfm, (Transform, TransformList)):
            raise TypeError(
                f"{type(self).__name__}.get_transform must return a Transform, got {type(tfm).__name__}"
            )
        aug_input.transform(tfm)
        return tfm

    def _rand_range(self, low: float = 1.0, high: float | None = None, size: Any = None) -> Any:
        """Uniform float in [low, high) (or [0, low) when ``high`` is None)."""
        if high is None:
            low, high = 0, low
        if size is None:
            size = []
        return np.random.uniform(low, high, size)

    def __repr__(self) -> str:
        try:
            sig = inspect.signature(self.__init__)
            argstr = []
            for name, param in sig.parameters.items():
                if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD) or not hasattr(self, name):
                    continue
                attr = getattr(self, name)
                if param.default is not param.empty:
                    try:
                        if attr == param.default:
                            continue
                    except Exception:
                        pass
                argstr.append(f"{name}={attr!r}")
            return f"{type(self).__name__}({', '.join(argstr)})"
        except (TypeError, ValueError):
            return super().__repr__()

    __str__ = __repr__


# d2-parity: TransformGen is the old name of Augmentation.
TransformGen = Augmentation


def _resolve_input_args(aug: Augmentation) -> tuple[str, ...]:
    """``aug.input_args``, derived from ``aug.get_transform``'s signature (and cached on ``aug``) when None."""
    names = aug.input_args
    if names is not None:
        return tuple(names)
    params = list(inspect.signature(aug.get_transform).parameters.values())
    if any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params):
        raise TypeError(
            f"{type(aug).__name__}.get_transform takes *args/**kwargs, so the inputs it needs are unknown: "
            "set the class attribute input_args (names of AugInput attributes) or override __call__"
        )
    # d2-parity: a single parameter is the image, whatever its name.
    names = ("image",) if len(params) == 1 else tuple(p.name for p in params)
    aug.input_args = names
    return names


def _get_aug_input_args(aug: Augmentation, aug_input: Any) -> list[Any]:
    """The values of ``aug_input``'s attributes named by ``aug``'s input_args, in order."""
    args = []
    for name in _resolve_input_args(aug):
        try:
            args.append(getattr(aug_input, name))
        except AttributeError as e:
            raise AttributeError(
                f"{type(aug).__name__}.get_transform needs '{name}' but the input "
                f"{type(aug_input).__name__} has no attribute '{name}'"
            ) from e
    return args


class _TransformToAug(Augmentation):
    """Use a fixed Transform where an Augmentation is expected."""

    def __init__(self, tfm: Transform):
        self.tfm = tfm

    def get_transform(self, image: np.ndarray) -> Transform:
        return self.tfm

    def __repr__(self) -> str:
        return repr(self.tfm)

    __str__ = __repr__


def _transform_to_aug(tfm_or_aug: Transform | Augmentation) -> Augmentation:
    if isinstance(tfm_or_aug, Augmentation):
        return tfm_or_aug
    if isinstance(tfm_or_aug, Transform):
        return _TransformToAug(tfm_or_aug)
    raise TypeError(f"Expected an Augmentation or a Transform, got {type(tfm_or_aug).__name__}")


class AugmentationList(Augmentation):
    """Apply a sequence of augmentations (or fixed transforms) in order; returns their TransformList."""

    def __init__(self, augs: Sequence[Augmentation | Transform]):
        super().__init__()
        self.augs = [_transform_to_aug(x) for x in augs]

    def __call__(self, aug_input: AugInput) -> TransformList:
        tfms = []
        for x in self.augs:
            tfms.append(x(aug_input))
        return TransformList(tfms)

    def __repr__(self) -> str:
        return f"AugmentationList[{', '.join(str(x) for x in self.augs)}]"

    __str__ = __repr__


class AugInput:
    """The inputs of an augmentation, transformed in place by ``transform(tfm)``.

    Args:
        image: (H, W) or (H, W, C) uint8 or float array.
        boxes: (N, 4) float XYXY_ABS boxes.
        sem_seg: (H, W) integer label map.
        polygons: per instance, a list of (K, 2) float arrays (one per polygon part). (detlightning extension)
        keypoints: (N, K, 3) float array of (x, y, visibility). (detlightning extension)
        keypoint_hflip_indices: (K,) index array swapping left/right keypoints; needed with keypoints when a
            transform flips horizontally.

    detectron2's AugInput holds image, boxes and sem_seg; the mapper transforms polygons and keypoints through
    the returned transforms. The extra fields here do the same, so one object can carry all annotations.
    """

    def __init__(
        self,
        image: np.ndarray,
        *,
        boxes: np.ndarray | None = None,
        sem_seg: np.ndarray | None = None,
        polygons: list[list[np.ndarray]] | None = None,
        keypoints: np.ndarray | None = None,
        keypoint_hflip_indices: np.ndarray | None = None,
    ):
        _check_img_dtype(image)
        self.image = image
        self.boxes = boxes
        self.sem_seg = sem_seg
        self.polygons = polygons
        self.keypoints = keypoints
        self.keypoint_hflip_indices = keypoint_hflip_indices

    def transform(self, tfm: Transform) -> None:
        """Apply ``tfm`` to every field that is set."""
        self.image = tfm.apply_image(self.image)
        if self.boxes is not None:
            self.boxes = tfm.apply_box(self.boxes)
        if self.sem_seg is not None:
            self.sem_seg = tfm.apply_segmentation(self.sem_seg)
        if self.polygons is not None:
            self.polygons = [tfm.apply_polygons(polys) for polys in self.polygons]
        if self.keypoints is not None:
            kpts = np.array(self.keypoints, dtype=np.float64)
            n, k = kpts.shape[:2]
            if n:
                kpts[:, :, :2] = tfm.apply_coords(kpts[:, :, :2].reshape(-1, 2)).reshape(n, k, 2)
            flips = [tfm] if not isinstance(tfm, TransformList) else tfm.transforms
            if sum(isinstance(t, HFlipTransform) for t in flips) % 2 == 1:
                if self.keypoint_hflip_indices is None:
                    raise ValueError("Cannot flip keypoints without keypoint_hflip_indices")
                kpts = kpts[:, np.asarray(self.keypoint_hflip_indices, dtype=np.int64), :]
            self.keypoints = kpts

    def apply_augmentations(self, augmentations: Sequence[Augmentation | Transform]) -> TransformList:
        """Apply the augmentations in order, in place; returns the combined TransformList."""
        return AugmentationList(augmentations)(self)


def apply_augmentations(
    augmentations: Sequence[Augmentation | Transform], inputs: AugInput | np.ndarray
) -> tuple[AugInput | np.ndarray, TransformList]:
    """Apply augmentations to an AugInput (in place) or an image array; returns (result, transforms)."""
    if isinstance(inputs, np.ndarray):
        image_only = True
        inputs = AugInput(inputs)
    else:
        image_only = False
    tfms = inputs.apply_augmentations(augmentations)
    return (inputs.image if image_only else inputs), tfms


# d2-parity: old names.
apply_transform_gens = apply_augmentations
StandardAugInput = AugInput
