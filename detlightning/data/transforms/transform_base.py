"""The transform base classes and the geometric/photometric transforms that need no resampling (fvcore's set):
``Transform``, ``TransformList``, ``NoOpTransform``, flips, ``CropTransform``, ``PadTransform``,
``BlendTransform``. ``detlightning.data.transforms.transform`` re-exports all of them, as detectron2's does.

Images are numpy arrays ``(H, W)`` or ``(H, W, C)``, uint8 or float; coordinates are ``(N, 2)`` float arrays of
continuous ``(x, y)`` in pixels, with ``(0, 0)`` the top-left corner of the top-left pixel.
"""
from __future__ import annotations

import inspect
from abc import ABCMeta, abstractmethod
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = [
    "Transform",
    "TransformList",
    "NoOpTransform",
    "HFlipTransform",
    "VFlipTransform",
    "CropTransform",
    "PadTransform",
    "BlendTransform",
]


class Transform(metaclass=ABCMeta):
    """Base class of deterministic transforms.

    Subclasses implement ``apply_image`` and ``apply_coords``; boxes and polygons are derived from
    ``apply_coords`` and segmentation maps from ``apply_image`` unless overridden (a geometric transform must
    override ``apply_segmentation`` to use nearest-neighbour interpolation).
    """

    def _set_attributes(self, params: dict[str, Any] | None = None) -> None:
        """Store the constructor's arguments as attributes (except ``self`` and private names)."""
        if params:
            for k, v in params.items():
                if k != "self" and not k.startswith("_"):
                    setattr(self, k, v)

    @abstractmethod
    def apply_image(self, img: np.ndarray) -> np.ndarray:
        """img: (H, W) or (H, W, C) uint8/float array -> transformed array."""

    @abstractmethod
    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        """coords: (N, 2) float array of (x, y) -> transformed (N, 2) array."""

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        """segmentation: (H, W) integer label map (or (H, W) bitmask) -> transformed map."""
        return self.apply_image(segmentation)

    def apply_box(self, box: np.ndarray) -> np.ndarray:
        """box: (N, 4) float XYXY_ABS -> (N, 4): the axis-aligned box around the 4 transformed corners.

        Exact for flips, resizes and crops; for rotations the result encloses the rotated box.
        """
        box = np.asarray(box, dtype=np.float64).reshape(-1, 4)
        idxs = np.array([(0, 1), (2, 1), (0, 3), (2, 3)]).flatten()
        coords = box[:, idxs].reshape(-1, 2)
        coords = self.apply_coords(coords).reshape((-1, 4, 2))
        minxy = coords.min(axis=1)
        maxxy = coords.max(axis=1)
        return np.concatenate((minxy, maxxy), axis=1)

    def apply_polygons(self, polygons: list[np.ndarray]) -> list[np.ndarray]:
        """polygons: list of (N_i, 2) float arrays of (x, y) -> list of transformed arrays.

        A transform may change the number of polygons (a crop can remove some)."""
        return [self.apply_coords(np.asarray(p, dtype=np.float64)) for p in polygons]

    def apply_rotated_box(self, rotated_boxes: np.ndarray) -> np.ndarray:
        """rotated_boxes: (N, 5) float of (cx, cy, w, h, angle): absolute pixels, angle in degrees counter-clockwise
        (``BoxMode.XYWHA_ABS``) -> transformed (N, 5) array.

        Defined by the transforms that keep a rotated box a rotated box (flips, crops, pads, resizes, rotations,
        photometric ones); others raise NotImplementedError.
        """
        raise NotImplementedError(f"{type(self).__name__} does not define apply_rotated_box")

    def inverse(self) -> Transform:
        """The transform that undoes this one (NotImplementedError where it is not invertible)."""
        raise NotImplementedError(f"{type(self).__name__} has no inverse")

    @classmethod
    def register_type(cls, data_type: str, func: Callable[[Transform, Any], Any] | None = None) -> Any:
        """Add ``apply_<data_type>`` to all transforms; ``func(transform, data)`` returns the transformed data.

        Usable as a decorator: ``@HFlipTransform.register_type("voxel")``.
        """
        if func is None:

            def wrapper(decorated: Callable) -> Callable:
                cls.register_type(data_type, decorated)
                return decorated

            return wrapper
        if not callable(func):
            raise TypeError(f"register_type needs a callable, got {type(func).__name__}")
        if len(inspect.signature(func).parameters) != 2:
            raise TypeError(f"The function registered for '{data_type}' must take (transform, data)")
        setattr(cls, "apply_" + data_type, func)
        return func

    def __repr__(self) -> str:
        try:
            sig = inspect.signature(self.__init__)
            items = []
            for name, param in sig.parameters.items():
                if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD) or not hasattr(self, name):
                    continue
                attr = getattr(self, name)
                if isinstance(attr, np.ndarray) and attr.size > 4:
                    attr_str = f"ndarray{attr.shape}"
                else:
                    attr_str = repr(attr)
                if param.default is not param.empty and _equal_default(attr, param.default):
                    continue
                items.append(f"{name}={attr_str}")
            return f"{type(self).__name__}({', '.join(items)})"
        except (TypeError, ValueError):
            return super().__repr__()

    __str__ = __repr__


def _equal_default(value: Any, default: Any) -> bool:
    try:
        return bool(value == default)
    except Exception:
        return False


def _as_rotated_boxes(rotated_boxes: np.ndarray, where: str) -> np.ndarray:
    """A float64 (N, 5) copy of ``rotated_boxes`` (the input is never modified in place)."""
    arr = np.array(rotated_boxes, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 5:
        raise ValueError(f"{where}.apply_rotated_box expects (N, 5) boxes (cx, cy, w, h, angle), got {arr.shape}")
    return arr


def _shift_rotated_boxes(rotated_boxes: np.ndarray, dx: float, dy: float, where: str) -> np.ndarray:
    out = _as_rotated_boxes(rotated_boxes, where)
    out[:, 0] += dx
    out[:, 1] += dy
    return out


def _mirror_rotated_boxes(rotated_boxes: np.ndarray, axis: int, size: float, where: str) -> np.ndarray:
    """Mirror the centres along ``axis`` (0: x, 1: y) of an image ``size`` pixels long; a mirror negates the angle."""
    out = _as_rotated_boxes(rotated_boxes, where)
    out[:, axis] = size - out[:, axis]
    out[:, 4] = -out[:, 4]
    return out


class TransformList(Transform):
    """A sequence of transforms applied in order; nested lists are flattened.

    Every ``apply_*`` method (including types added with ``register_type``) applies each member in turn.
    """

    def __init__(self, transforms: list[Transform]):
        super().__init__()
        flat: list[Transform] = []
        for t in transforms:
            if not isinstance(t, Transform):
                raise TypeError(f"TransformList takes Transform objects, got {type(t).__name__}")
            if isinstance(t, TransformList):
                flat.extend(t.transforms)
            else:
                flat.append(t)
        self.transforms = flat

    def _apply(self, x: Any, meth: str) -> Any:
        for t in self.transforms:
            x = getattr(t, meth)(x)
        return x

    def __getattribute__(self, name: str) -> Any:
        # Route every apply_* through the members, so types registered later also work.
        if name.startswith("apply_"):
            return lambda x: self._apply(x, name)
        return super().__getattribute__(name)

    def apply_image(self, img: np.ndarray) -> np.ndarray:  # pragma: no cover - routed by __getattribute__
        return self._apply(img, "apply_image")

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:  # pragma: no cover - routed by __getattribute__
        return self._apply(coords, "apply_coords")

    def __add__(self, other: Transform) -> TransformList:
        others = other.transforms if isinstance(other, TransformList) else [other]
        return TransformList(self.transforms + others)

    def __iadd__(self, other: Transform) -> TransformList:
        others = other.transforms if isinstance(other, TransformList) else [other]
        self.transforms.extend(others)
        return self

    def __radd__(self, other: Transform) -> TransformList:
        others = other.transforms if isinstance(other, TransformList) else [other]
        return TransformList(others + self.transforms)

    def __len__(self) -> int:
        return len(self.transforms)

    def __getitem__(self, idx: int) -> Transform:
        return self.transforms[idx]

    def inverse(self) -> TransformList:
        return TransformList([t.inverse() for t in reversed(self.transforms)])

    def __repr__(self) -> str:
        return f"TransformList[{', '.join(repr(t) for t in self.transforms)}]"

    __str__ = __repr__


class NoOpTransform(Transform):
    """Returns every input unchanged."""

    def __init__(self) -> None:
        super().__init__()

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        return img

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        return coords

    def apply_rotated_box(self, rotated_boxes: np.ndarray) -> np.ndarray:
        return rotated_boxes

    def inverse(self) -> Transform:
        return self

    def __getattr__(self, name: str) -> Any:
        # Types registered later (apply_voxel, ...) are no-ops too.
        if name.startswith("apply_"):
            return lambda x: x
        raise AttributeError(f"NoOpTransform object has no attribute {name}")


class HFlipTransform(Transform):
    """Horizontal flip of an image ``width`` pixels wide: x -> width - x."""

    def __init__(self, width: int):
        super().__init__()
        self._set_attributes(locals())

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        # (H, W) / (H, W, C) flip axis 1; (N, H, W, C) flips axis -2.
        axis = 1 if img.ndim <= 3 else -2
        return np.flip(img, axis=axis)

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        coords = np.array(coords, dtype=np.float64)
        coords[:, 0] = self.width - coords[:, 0]
        return coords

    def apply_rotated_box(self, rotated_boxes: np.ndarray) -> np.ndarray:
        """The centre's x is mirrored and the angle negated."""
        return _mirror_rotated_boxes(rotated_boxes, 0, self.width, "HFlipTransform")

    def inverse(self) -> Transform:
        return self


class VFlipTransform(Transform):
    """Vertical flip of an image ``height`` pixels high: y -> height - y."""

    def __init__(self, height: int):
        super().__init__()
        self._set_attributes(locals())

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        axis = 0 if img.ndim <= 3 else -3
        return np.flip(img, axis=axis)

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        coords = np.array(coords, dtype=np.float64)
        coords[:, 1] = self.height - coords[:, 1]
        return coords

    def apply_rotated_box(self, rotated_boxes: np.ndarray) -> np.ndarray:
        """The centre's y is mirrored and the angle negated."""
        return _mirror_rotated_boxes(rotated_boxes, 1, self.height, "VFlipTransform")

    def inverse(self) -> Transform:
        return self


def _clip_polygon_to_rect(poly: np.ndarray, x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    """Sutherland-Hodgman clipping of a polygon (N, 2) to the rectangle [x0, x1] x [y0, y1].

    A non-convex polygon that the window cuts into several pieces comes back as one polygon whose pieces are
    joined along the window border (zero-area edges), which rasterises to the same pixels.
    """
    pts = poly
    for axis, bound, keep_greater in ((0, x0, True), (0, x1, False), (1, y0, True), (1, y1, False)):
        if len(pts) == 0:
            break
        cur = pts
        prev = np.roll(cur, 1, axis=0)
        cur_in = cur[:, axis] >= bound if keep_greater else cur[:, axis] <= bound
        prev_in = prev[:, axis] >= bound if keep_greater else prev[:, axis] <= bound
        out: list[np.ndarray] = []
        for i in range(len(cur)):
            if cur_in[i] != prev_in[i]:
                d = cur[i, axis] - prev[i, axis]
                t = (bound - prev[i, axis]) / d
                inter = prev[i] + t * (cur[i] - prev[i])
                inter[axis] = bound
                out.append(inter)
            if cur_in[i]:
                out.append(cur[i])
        pts = np.array(out, dtype=np.float64).reshape(-1, 2)
    return pts


class CropTransform(Transform):
    """Crop the window ``[x0, x0 + w) x [y0, y0 + h)``; coordinates shift by ``(-x0, -y0)``.

    ``orig_w`` / ``orig_h`` (the size before cropping) are only needed for ``inverse``.
    """

    def __init__(self, x0: int, y0: int, w: int, h: int, orig_w: int | None = None, orig_h: int | None = None):
        super().__init__()
        self._set_attributes(locals())

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        if img.ndim <= 3:
            return img[self.y0 : self.y0 + self.h, self.x0 : self.x0 + self.w]
        return img[..., self.y0 : self.y0 + self.h, self.x0 : self.x0 + self.w, :]

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        coords = np.array(coords, dtype=np.float64)
        coords[:, 0] -= self.x0
        coords[:, 1] -= self.y0
        return coords

    def apply_rotated_box(self, rotated_boxes: np.ndarray) -> np.ndarray:
        """Centres shift by ``(-x0, -y0)``; like ``apply_box``, boxes are not clipped to the window."""
        return _shift_rotated_boxes(rotated_boxes, -self.x0, -self.y0, "CropTransform")

    def apply_polygons(self, polygons: list[np.ndarray]) -> list[np.ndarray]:
        """Clip each polygon to the crop window, then shift it; polygons left with < 3 points are dropped."""
        x0, y0, x1, y1 = self.x0, self.y0, self.x0 + self.w, self.y0 + self.h
        out = []
        for poly in polygons:
            poly = np.asarray(poly, dtype=np.float64).reshape(-1, 2)
            clipped = _clip_polygon_to_rect(poly, x0, y0, x1, y1)
            # d2-parity: detectron2 (shapely) drops pieces that vanish entirely outside the crop.
            if len(clipped) >= 3 and _polygon_area(clipped) > 0:
                out.append(self.apply_coords(clipped))
        return out

    def inverse(self) -> Transform:
        if self.orig_w is None or self.orig_h is None:
            raise NotImplementedError("CropTransform.inverse needs orig_w and orig_h")
        pad_x1 = self.orig_w - self.x0 - self.w
        pad_y1 = self.orig_h - self.y0 - self.h
        return PadTransform(self.x0, self.y0, pad_x1, pad_y1, orig_w=self.w, orig_h=self.h)


def _polygon_area(poly: np.ndarray) -> float:
    x, y = poly[:, 0], poly[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


class PadTransform(Transform):
    """Pad ``x0`` / ``y0`` pixels before and ``x1`` / ``y1`` after; coordinates shift by ``(x0, y0)``."""

    def __init__(
        self,
        x0: int,
        y0: int,
        x1: int,
        y1: int,
        orig_w: int | None = None,
        orig_h: int | None = None,
        pad_value: float = 0,
        seg_pad_value: int = 0,
    ):
        super().__init__()
        self._set_attributes(locals())

    def _pad(self, img: np.ndarray, value: float) -> np.ndarray:
        if img.ndim == 3:
            padding = ((self.y0, self.y1), (self.x0, self.x1), (0, 0))
        else:
            padding = ((self.y0, self.y1), (self.x0, self.x1))
        return np.pad(img, padding, mode="constant", constant_values=value)

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        return self._pad(img, self.pad_value)

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        return self._pad(segmentation, self.seg_pad_value)

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        coords = np.array(coords, dtype=np.float64)
        coords[:, 0] += self.x0
        coords[:, 1] += self.y0
        return coords

    def apply_rotated_box(self, rotated_boxes: np.ndarray) -> np.ndarray:
        return _shift_rotated_boxes(rotated_boxes, self.x0, self.y0, "PadTransform")

    def inverse(self) -> Transform:
        if self.orig_w is None or self.orig_h is None:
            raise NotImplementedError("PadTransform.inverse needs orig_w and orig_h")
        neww = self.orig_w + self.x0 + self.x1
        newh = self.orig_h + self.y0 + self.y1
        return CropTransform(self.x0, self.y0, self.orig_w, self.orig_h, orig_w=neww, orig_h=newh)


class BlendTransform(Transform):
    """``src_weight * src_image + dst_weight * image`` (uint8 results are clipped to [0, 255]).

    Photometric: coordinates and segmentation maps are unchanged.
    """

    def __init__(self, src_image: np.ndarray | float, src_weight: float, dst_weight: float):
        super().__init__()
        self._set_attributes(locals())

    def apply_image(self, img: np.ndarray, interp: Any = None) -> np.ndarray:
        if img.dtype == np.uint8:
            out = self.src_weight * self.src_image + self.dst_weight * img.astype(np.float32)
            return np.clip(out, 0, 255).astype(np.uint8)
        return self.src_weight * self.src_image + self.dst_weight * img

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        return coords

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        return segmentation

    def apply_rotated_box(self, rotated_boxes: np.ndarray) -> np.ndarray:
        return rotated_boxes

    def inverse(self) -> Transform:
        # d2-parity: photometric changes are not undone (detectron2 returns a no-op as well).
        return NoOpTransform()
