"""Deterministic transforms: one geometric or photometric operation applied consistently to an image and its
annotations (coordinates, boxes, polygons, segmentation maps).

The API is detectron2's (which re-exports fvcore's ``Transform``): ``apply_image``, ``apply_coords``,
``apply_box``, ``apply_polygons``, ``apply_segmentation`` and ``inverse``. This module holds the resampling
transforms (resize, scale, grid sampling, rotation, extent) and colour transforms, and re-exports the base classes
and simple transforms of ``transform_base``.

Rotated boxes (``apply_rotated_box``) are (N, 5) float arrays of (cx, cy, w, h, angle), angle in degrees
counter-clockwise, as in ``BoxMode.XYWHA_ABS``.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from . import transform_base
from .transform_base import *  # noqa: F403  (re-exported: the base classes and the simple transforms)
from .transform_base import (
    CropTransform,
    NoOpTransform,
    Transform,
    TransformList,
    _as_rotated_boxes,
    _shift_rotated_boxes,
)

__all__ = [
    *transform_base.__all__,
    "ResizeTransform",
    "ScaleTransform",
    "GridSampleTransform",
    "RotationTransform",
    "ExtentTransform",
    "ColorTransform",
    "PILColorTransform",
]


_PIL_TO_TORCH_MODE = {
    Image.NEAREST: "nearest",
    Image.BILINEAR: "bilinear",
    Image.BICUBIC: "bicubic",
}


def _scale_rotated_boxes(rotated_boxes: np.ndarray, sx: float, sy: float, where: str) -> np.ndarray:
    """Rotated boxes under ``x -> sx * x, y -> sy * y``.

    With ``sx != sy`` a rotated rectangle becomes a parallelogram; as in detectron2 it is approximated by the
    rectangle whose height side is the image of the original height side (direction and length) and whose width is
    the image of the width side's length.
    """
    out = _as_rotated_boxes(rotated_boxes, where)
    out[:, 0] *= sx
    out[:, 1] *= sy
    theta = np.deg2rad(out[:, 4])
    cos, sin = np.cos(theta), np.sin(theta)
    # In image coordinates the width side points along (cos, -sin) and the height side along (sin, cos).
    out[:, 2] *= np.hypot(sx * cos, sy * sin)
    out[:, 3] *= np.hypot(sx * sin, sy * cos)
    out[:, 4] = np.rad2deg(np.arctan2(sx * sin, sy * cos))
    return out


class ResizeTransform(Transform):
    """Resize an ``h x w`` image to ``new_h x new_w``; coordinates scale by ``new_w / w`` and ``new_h / h``."""

    def __init__(self, h: int, w: int, new_h: int, new_w: int, interp: int | None = None):
        """interp: a PIL resampling constant (default ``Image.BILINEAR``)."""
        super().__init__()
        if interp is None:
            interp = Image.BILINEAR
        self._set_attributes(locals())

    def apply_image(self, img: np.ndarray, interp: int | None = None) -> np.ndarray:
        if img.shape[:2] != (self.h, self.w):
            raise ValueError(f"ResizeTransform expects an image of size {(self.h, self.w)}, got {img.shape[:2]}")
        if img.ndim > 4:
            raise ValueError(f"ResizeTransform: image with {img.ndim} dimensions is not supported")
        interp_method = interp if interp is not None else self.interp
        if img.dtype == np.uint8:
            # PIL matches detectron2's (and the model zoo's) uint8 resampling.
            if img.ndim > 2 and img.shape[2] == 1:
                pil_image = Image.fromarray(img[:, :, 0], mode="L")
            elif img.ndim == 2 or img.shape[2] in (3, 4):
                pil_image = Image.fromarray(img)
            else:
                channels = [self.apply_image(img[:, :, c], interp) for c in range(img.shape[2])]
                return np.stack(channels, axis=2)
            pil_image = pil_image.resize((self.new_w, self.new_h), interp_method)
            ret = np.asarray(pil_image)
            if img.ndim > 2 and img.shape[2] == 1:
                ret = np.expand_dims(ret, -1)
            return ret
        # Float (and other) arrays: resample with torch, which handles any channel count.
        shape = list(img.shape)
        shape_4d = shape[:2] + [1] * (4 - len(shape)) + shape[2:]
        t = torch.from_numpy(np.ascontiguousarray(img)).view(shape_4d).permute(2, 3, 0, 1)  # (N, C, H, W)
        mode = _PIL_TO_TORCH_MODE.get(interp_method)
        if mode is None:
            raise ValueError(f"ResizeTransform: interpolation {interp_method} is not supported for non-uint8 images")
        kwargs = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
        orig_dtype = t.dtype
        t = F.interpolate(t.float() if not t.is_floating_point() else t, (self.new_h, self.new_w), mode=mode, **kwargs)
        if not orig_dtype.is_floating_point:
            t = t.round().to(orig_dtype) if mode != "nearest" else t.to(orig_dtype)
        shape[:2] = (self.new_h, self.new_w)
        return t.permute(2, 3, 0, 1).reshape(shape).numpy()

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        coords = np.array(coords, dtype=np.float64)
        coords[:, 0] = coords[:, 0] * (self.new_w * 1.0 / self.w)
        coords[:, 1] = coords[:, 1] * (self.new_h * 1.0 / self.h)
        return coords

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        return self.apply_image(segmentation, interp=Image.NEAREST)

    def apply_rotated_box(self, rotated_boxes: np.ndarray) -> np.ndarray:
        return _scale_rotated_boxes(rotated_boxes, self.new_w / self.w, self.new_h / self.h, "ResizeTransform")

    def inverse(self) -> Transform:
        return ResizeTransform(self.new_h, self.new_w, self.h, self.w, self.interp)


def _image_to_nchw(img: np.ndarray, where: str) -> torch.Tensor:
    """(H, W), (H, W, C) or (N, H, W, C) array -> (N, C, H, W) tensor; non-float inputs become float32."""
    if img.ndim not in (2, 3, 4):
        raise ValueError(f"{where}: expects an image (H, W), (H, W, C) or (N, H, W, C), got shape {img.shape}")
    t = torch.from_numpy(np.ascontiguousarray(img))
    if not t.is_floating_point():
        t = t.float()
    if img.ndim == 2:
        return t[None, None]
    if img.ndim == 3:
        return t.permute(2, 0, 1)[None]
    return t.permute(0, 3, 1, 2)


def _nchw_to_image(t: torch.Tensor, shape: tuple[int, ...], dtype: np.dtype, interp: str) -> np.ndarray:
    """Inverse of ``_image_to_nchw`` for a result tensor; integer dtypes are rounded (uint8 also clamped) back."""
    if len(shape) == 2:
        t = t[0, 0]
    elif len(shape) == 3:
        t = t[0].permute(1, 2, 0)
    else:
        t = t.permute(0, 2, 3, 1)
    if dtype == np.bool_:
        return (t >= 0.5).numpy()
    if np.issubdtype(dtype, np.integer):
        if interp != "nearest":
            t = t.round()
        if dtype == np.uint8:
            t = t.clamp(0, 255)
        return t.numpy().astype(dtype)
    return t.numpy()


def _torch_interp(interp: str | int, where: str) -> str:
    """A torch interpolation mode; PIL constants (``Image.BILINEAR``, ...) are accepted too."""
    if isinstance(interp, str):
        return interp
    mode = _PIL_TO_TORCH_MODE.get(interp)
    if mode is None:
        raise ValueError(f"{where}: interpolation {interp!r} is neither a torch mode name nor a PIL constant")
    return mode


class ScaleTransform(Transform):
    """Resize an ``h x w`` image (or an (N, h, w, C) batch) to ``new_h x new_w`` with torch's ``interpolate``
    (``interp``: "nearest", "bilinear", "bicubic", "area", ...; ``align_corners=False``).

    Coordinates scale like :class:`ResizeTransform`'s; unlike it, pixels are resampled by torch, not PIL.
    """

    def __init__(self, h: int, w: int, new_h: int, new_w: int, interp: str = "bilinear"):
        super().__init__()
        self._set_attributes(locals())

    def apply_image(self, img: np.ndarray, interp: str | None = None) -> np.ndarray:
        size = img.shape[1:3] if img.ndim == 4 else img.shape[:2]
        if tuple(size) != (self.h, self.w):
            raise ValueError(f"ScaleTransform expects an image of size {(self.h, self.w)}, got {tuple(size)}")
        mode = _torch_interp(interp if interp is not None else self.interp, "ScaleTransform")
        kwargs = {"align_corners": False} if mode in ("linear", "bilinear", "bicubic", "trilinear") else {}
        t = F.interpolate(_image_to_nchw(img, "ScaleTransform"), size=(self.new_h, self.new_w), mode=mode, **kwargs)
        return _nchw_to_image(t, img.shape, img.dtype, mode)

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        coords = np.array(coords, dtype=np.float64)
        coords[:, 0] = coords[:, 0] * (self.new_w / self.w)
        coords[:, 1] = coords[:, 1] * (self.new_h / self.h)
        return coords

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        return self.apply_image(segmentation, interp="nearest")

    def apply_rotated_box(self, rotated_boxes: np.ndarray) -> np.ndarray:
        return _scale_rotated_boxes(rotated_boxes, self.new_w / self.w, self.new_h / self.h, "ScaleTransform")

    def inverse(self) -> Transform:
        return ScaleTransform(self.new_h, self.new_w, self.h, self.w, self.interp)


class GridSampleTransform(Transform):
    """Resample the image at the locations of ``grid`` with ``torch.nn.functional.grid_sample``.

    ``grid``: (N, H_out, W_out, 2) float array of input (x, y) locations normalised to [-1, 1] by the input width
    and height (-1 and 1 are the outer edges of the border pixels: ``align_corners=False``); locations outside are
    clamped to the border. ``interp``: "nearest" or "bilinear". Coordinates cannot be mapped (no apply_coords).
    """

    def __init__(self, grid: np.ndarray, interp: str):
        super().__init__()
        self._set_attributes(locals())

    def apply_image(self, img: np.ndarray, interp: str | None = None) -> np.ndarray:
        mode = interp if interp is not None else self.interp
        x = _image_to_nchw(img, "GridSampleTransform")
        grid = torch.from_numpy(np.ascontiguousarray(self.grid)).to(x.dtype)
        if grid.ndim != 4 or grid.shape[-1] != 2 or grid.shape[0] != x.shape[0]:
            raise ValueError(
                f"GridSampleTransform: grid must be (N, H, W, 2) with N = {x.shape[0]} images, got {tuple(grid.shape)}"
            )
        t = F.grid_sample(x, grid, mode=mode, padding_mode="border", align_corners=False)
        return _nchw_to_image(t, img.shape, img.dtype, mode)

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        raise NotImplementedError("GridSampleTransform cannot map coordinates (the grid need not be invertible)")

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        return self.apply_image(segmentation, interp="nearest")


def _warp_affine(img: np.ndarray, out_to_in: np.ndarray, out_w: int, out_h: int, interp: int) -> np.ndarray:
    """Warp ``img`` with the 2x3 matrix mapping output continuous (x, y) to input continuous (x, y); 0 fill."""
    coeffs = tuple(float(v) for v in out_to_in.reshape(-1))

    def warp2d(channel: np.ndarray) -> np.ndarray:
        if channel.dtype == np.uint8:
            pil = Image.fromarray(channel)
            return np.asarray(pil.transform((out_w, out_h), Image.AFFINE, coeffs, resample=interp, fillcolor=0))
        pil = Image.fromarray(channel.astype(np.float32), mode="F")
        out = np.asarray(pil.transform((out_w, out_h), Image.AFFINE, coeffs, resample=interp, fillcolor=0))
        if np.issubdtype(channel.dtype, np.integer):
            out = np.round(out) if interp != Image.NEAREST else out
        return out.astype(channel.dtype)

    if img.ndim == 2:
        return warp2d(img)
    if img.dtype == np.uint8 and img.shape[2] == 3:
        pil = Image.fromarray(img)
        return np.asarray(pil.transform((out_w, out_h), Image.AFFINE, coeffs, resample=interp, fillcolor=(0, 0, 0)))
    return np.stack([warp2d(img[:, :, c]) for c in range(img.shape[2])], axis=2)


class RotationTransform(Transform):
    """Rotate an ``h x w`` image by ``angle`` degrees counter-clockwise around ``center`` (default: image centre).

    With ``expand=True`` the output is enlarged (to ``bound_h x bound_w``) so the whole rotated image fits, and
    the rotated image is centred in it; pixels outside the source are 0.
    """

    def __init__(
        self,
        h: int,
        w: int,
        angle: float,
        expand: bool = True,
        center: tuple[float, float] | None = None,
        interp: int | None = None,
    ):
        """center: (x, y) in pixels; interp: a PIL resampling constant (default ``Image.BILINEAR``)."""
        super().__init__()
        image_center = np.array((w / 2, h / 2))
        if center is None:
            center = image_center
        if interp is None:
            interp = Image.BILINEAR
        abs_cos, abs_sin = abs(math.cos(math.radians(angle))), abs(math.sin(math.radians(angle)))
        if expand:
            bound_w, bound_h = np.rint([h * abs_sin + w * abs_cos, h * abs_cos + w * abs_sin]).astype(int)
        else:
            bound_w, bound_h = w, h
        self._set_attributes(locals())
        self.bound_w, self.bound_h = int(bound_w), int(bound_h)
        self.rm_coords = self.create_rotation_matrix()

    def create_rotation_matrix(self) -> np.ndarray:
        """The 2x3 matrix mapping input continuous (x, y) to output (x, y)."""
        rad = math.radians(self.angle)
        a, b = math.cos(rad), math.sin(rad)
        cx, cy = float(self.center[0]), float(self.center[1])
        # Counter-clockwise on screen (y points down), like OpenCV's getRotationMatrix2D.
        rm = np.array([[a, b, (1 - a) * cx - b * cy], [-b, a, b * cx + (1 - a) * cy]], dtype=np.float64)
        if self.expand:
            # Centre the rotated image in the enlarged canvas.
            rot_im_center = rm[:, :2] @ self.image_center + rm[:, 2]
            new_center = np.array([self.bound_w / 2, self.bound_h / 2]) - rot_im_center
            rm[:, 2] += new_center
        return rm

    def apply_image(self, img: np.ndarray, interp: int | None = None) -> np.ndarray:
        if len(img) == 0 or self.angle % 360 == 0:
            return img
        if img.shape[:2] != (self.h, self.w):
            raise ValueError(f"RotationTransform expects an image of size {(self.h, self.w)}, got {img.shape[:2]}")
        full = np.vstack([self.rm_coords, [0.0, 0.0, 1.0]])
        inv = np.linalg.inv(full)[:2]
        return _warp_affine(img, inv, self.bound_w, self.bound_h, interp if interp is not None else self.interp)

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        coords = np.asarray(coords, dtype=np.float64)
        if len(coords) == 0 or self.angle % 360 == 0:
            return coords
        return coords @ self.rm_coords[:, :2].T + self.rm_coords[:, 2]

    def apply_rotated_box(self, rotated_boxes: np.ndarray) -> np.ndarray:
        """Centres move like coordinates; sizes are kept and the angle grows by the rotation's ``angle``."""
        out = _as_rotated_boxes(rotated_boxes, "RotationTransform")
        if len(out) == 0 or self.angle % 360 == 0:
            return out
        out[:, :2] = self.apply_coords(out[:, :2])
        out[:, 4] += self.angle
        return out

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        return self.apply_image(segmentation, interp=Image.NEAREST)

    def inverse(self) -> Transform:
        if not self.expand:
            raise NotImplementedError("RotationTransform.inverse is only defined for expand=True")
        rotation = RotationTransform(self.bound_h, self.bound_w, -self.angle, True, None, self.interp)
        crop = CropTransform(
            (rotation.bound_w - self.w) // 2, (rotation.bound_h - self.h) // 2, self.w, self.h
        )
        return TransformList([rotation, crop])


class ExtentTransform(Transform):
    """Crop/resize/pad the sub-rectangle ``src_rect = (x0, y0, x1, y1)`` of the image to ``output_size = (h, w)``.

    Pixels of ``src_rect`` outside the image are filled with ``fill``.
    """

    def __init__(
        self,
        src_rect: tuple[float, float, float, float],
        output_size: tuple[int, int],
        interp: int = Image.BILINEAR,
        fill: float = 0,
    ):
        super().__init__()
        self._set_attributes(locals())

    def apply_image(self, img: np.ndarray, interp: int | None = None) -> np.ndarray:
        h, w = self.output_size
        x0, y0, x1, y1 = (float(v) for v in self.src_rect)
        # Output (x, y) -> input (x0 + x * sx, y0 + y * sy): an affine map, so one warp does crop+resize+pad.
        out_to_in = np.array([[(x1 - x0) / w, 0.0, x0], [0.0, (y1 - y0) / h, y0]])
        method = interp if interp is not None else self.interp
        if self.fill == 0:
            return _warp_affine(img, out_to_in, w, h, method)
        # Mark the outside with a mask warp, then fill it.
        warped = _warp_affine(img, out_to_in, w, h, method)
        inside = _warp_affine(np.full(img.shape[:2], 255, np.uint8), out_to_in, w, h, Image.NEAREST) > 0
        warped = np.array(warped)
        warped[~inside] = self.fill
        return warped

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        coords = np.array(coords, dtype=np.float64)
        h, w = self.output_size
        x0, y0, x1, y1 = (float(v) for v in self.src_rect)
        coords[:, 0] = (coords[:, 0] - x0) * (w / (x1 - x0))
        coords[:, 1] = (coords[:, 1] - y0) * (h / (y1 - y0))
        return coords

    def apply_rotated_box(self, rotated_boxes: np.ndarray) -> np.ndarray:
        """A shift to ``src_rect``'s corner, then a resize (see :class:`ResizeTransform`)."""
        h, w = self.output_size
        x0, y0, x1, y1 = (float(v) for v in self.src_rect)
        shifted = _shift_rotated_boxes(rotated_boxes, -x0, -y0, "ExtentTransform")
        return _scale_rotated_boxes(shifted, w / (x1 - x0), h / (y1 - y0), "ExtentTransform")

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        return self.apply_image(segmentation, interp=Image.NEAREST)


class ColorTransform(Transform):
    """A photometric transform given by a function ``op(image) -> image``; coordinates are unchanged."""

    def __init__(self, op: Callable[[np.ndarray], np.ndarray]):
        if not callable(op):
            raise TypeError(f"ColorTransform needs a callable op, got {type(op).__name__}")
        super().__init__()
        self._set_attributes(locals())

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        return self.op(img)

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        return coords

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        return segmentation

    def apply_rotated_box(self, rotated_boxes: np.ndarray) -> np.ndarray:
        return rotated_boxes

    def inverse(self) -> Transform:
        return NoOpTransform()


class PILColorTransform(ColorTransform):
    """A photometric transform given by a PIL function ``op(PIL.Image) -> PIL.Image`` (uint8 images)."""

    def __init__(self, op: Callable[[Image.Image], Image.Image]):
        super().__init__(op)

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        return np.asarray(self.op(Image.fromarray(img)))
