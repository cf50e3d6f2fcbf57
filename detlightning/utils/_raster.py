"""Raster helpers behind :mod:`detlightning.utils.visualizer` (numpy + PIL only; OpenCV is not needed).

- ``to_rgb``: matplotlib-style colour specs ("g", "white", "#ff8800", (r, g, b) in [0, 1]) -> RGB floats.
- ``get_font``: a scalable font of a given pixel size (Pillow's bundled font, cached).
- ``text_patch``: a label rendered on a translucent box, as an RGBA image to paste.
- ``mask_boundary``: the inner contour band of a binary mask.
- ``connected_components``: 8-connected component labels of a binary mask, vectorised over row runs.
- ``GenericMask``: one instance mask as a bit mask, polygons or RLE (re-exported by the visualizer module).
- small helpers: dashed polylines, dataset-dict boxes, label PNGs.
"""
from __future__ import annotations

import colorsys
import functools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pycocotools.mask as mask_util
import torch
from PIL import Image, ImageColor, ImageDraw, ImageFont

__all__ = [
    "GenericMask",
    "as_points",
    "change_color_brightness",
    "connected_components",
    "dash_pattern",
    "dataset_box_xyxy",
    "get_font",
    "mask_boundary",
    "read_label_png",
    "text_patch",
    "to_numpy",
    "to_rgb",
    "to_rgb255",
]

# matplotlib's one-letter colours (detectron2's defaults are written this way, e.g. edge_color="g")
_SINGLE_LETTER = {
    "b": (0.0, 0.0, 1.0),
    "g": (0.0, 0.5, 0.0),
    "r": (1.0, 0.0, 0.0),
    "c": (0.0, 0.75, 0.75),
    "m": (0.75, 0.0, 0.75),
    "y": (0.75, 0.75, 0.0),
    "k": (0.0, 0.0, 0.0),
    "w": (1.0, 1.0, 1.0),
}

# BoxMode values (detlightning.structures.BoxMode is an IntEnum with these numbers)
_XYXY_ABS, _XYWH_ABS = 0, 1

ColorSpec = Any  # str name / letter / "#hex", or a sequence of 3 (or 4) floats in [0, 1]


def to_rgb(color: ColorSpec) -> tuple[float, float, float]:
    """A colour spec as (r, g, b) floats in [0, 1], like ``matplotlib.colors.to_rgb`` (alpha dropped).

    Accepts one-letter matplotlib codes, CSS/X11 names, "#rrggbb", a grey level string ("0.5"), or a sequence or
    array of 3/4 numbers in [0, 1]. Raises ValueError for anything else (e.g. 0-255 values).
    """
    if isinstance(color, str):
        key = color.strip().lower()
        if key in _SINGLE_LETTER:
            return _SINGLE_LETTER[key]
        try:
            grey = float(key)
        except ValueError:
            pass
        else:
            if 0.0 <= grey <= 1.0:
                return (grey, grey, grey)
            raise ValueError(f"grey level colour {color!r} must be in [0, 1]")
        try:
            rgb = ImageColor.getrgb(key)
        except ValueError as e:
            raise ValueError(f"unknown colour name {color!r}") from e
        return (rgb[0] / 255.0, rgb[1] / 255.0, rgb[2] / 255.0)
    arr = np.asarray(color, dtype=np.float64).reshape(-1)
    if arr.size not in (3, 4) or not np.isfinite(arr).all():
        raise ValueError(f"colour must be a name or 3/4 numbers in [0, 1], got {color!r}")
    if arr.min() < 0.0 or arr.max() > 1.0:
        raise ValueError(f"colour {color!r} has values outside [0, 1] (matplotlib convention; divide 0-255 by 255)")
    return (float(arr[0]), float(arr[1]), float(arr[2]))


def to_rgb255(color: ColorSpec) -> tuple[int, int, int]:
    """``to_rgb`` scaled to 0-255 ints."""
    r, g, b = to_rgb(color)
    return (int(round(r * 255)), int(round(g * 255)), int(round(b * 255)))


def change_color_brightness(color: ColorSpec, brightness_factor: float) -> tuple[float, float, float]:
    """Scale the HLS lightness of ``color`` by ``1 + brightness_factor`` (in [-1, 1]: < 0 darker, > 0 lighter)."""
    if not -1.0 <= brightness_factor <= 1.0:
        raise ValueError(f"brightness_factor must be in [-1, 1], got {brightness_factor}")
    h, light, s = colorsys.rgb_to_hls(*to_rgb(color))
    light = min(max(light * (1.0 + brightness_factor), 0.0), 1.0)
    return colorsys.hls_to_rgb(h, light, s)


@functools.lru_cache(maxsize=64)
def get_font(size_px: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """A sans-serif font ``size_px`` pixels tall: Pillow's bundled scalable font (Pillow >= 10.1), else a system
    DejaVu/Arial, else Pillow's fixed-size bitmap font."""
    size_px = max(int(size_px), 6)
    try:
        return ImageFont.load_default(size=size_px)
    except (TypeError, AttributeError, OSError, ImportError):  # old Pillow or no FreeType
        pass
    for name in ("DejaVuSans.ttf", "Arial.ttf", "LiberationSans-Regular.ttf"):
        try:
            return ImageFont.truetype(name, size_px)
        except OSError:
            continue
    return ImageFont.load_default()


_MEASURE = ImageDraw.Draw(Image.new("L", (1, 1)))


def text_patch(
    text: str,
    size_px: int,
    color: tuple[int, int, int],
    background: tuple[int, int, int] = (0, 0, 0),
    background_alpha: float = 0.8,
    pad_px: int = 1,
) -> Image.Image:
    """``text`` in ``color`` on a ``background`` box of opacity ``background_alpha``: an RGBA image whose size is
    the text's extent plus ``pad_px`` on each side (line height from the font's ascent + descent)."""
    font = get_font(size_px)
    left, top, right, bottom = _MEASURE.multiline_textbbox((0, 0), text, font=font)
    try:
        ascent, descent = font.getmetrics()  # type: ignore[union-attr]
        top, bottom = min(top, 0), max(bottom, ascent + descent)
    except AttributeError:
        pass
    w = max(int(np.ceil(right - left)) + 2 * pad_px, 1)
    h = max(int(np.ceil(bottom - top)) + 2 * pad_px, 1)
    patch = Image.new("RGBA", (w, h), (*background, int(round(255 * background_alpha))))
    ImageDraw.Draw(patch).multiline_text((pad_px - left, pad_px - top), text, font=font, fill=(*color, 255))
    return patch


def mask_boundary(mask: np.ndarray, width: int = 1) -> np.ndarray:
    """The pixels of ``mask`` (H, W) bool within ``width`` 4-neighbour steps of a background pixel, (H, W) bool.
    The image border does not count as background, so masks cut by the border stay open there."""
    inner = mask.astype(bool, copy=True)
    for _ in range(max(int(width), 1)):
        eroded = inner.copy()
        eroded[1:] &= inner[:-1]
        eroded[:-1] &= inner[1:]
        eroded[:, 1:] &= inner[:, :-1]
        eroded[:, :-1] &= inner[:, 1:]
        inner = eroded
    return mask.astype(bool) & ~inner


def connected_components(mask: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    """8-connected components of a binary ``mask`` (H, W).

    Returns ``(num, labels, areas)``: ``labels`` (H, W) int32 with 0 for background and 1..num for the components,
    ``areas`` (num + 1,) int64 pixel counts (``areas[0]`` is the background's).

    Works on horizontal runs of foreground pixels: runs in consecutive rows that touch (diagonally included) are
    linked, and the run graph is collapsed with vectorised label propagation plus pointer jumping.
    """
    m = np.asarray(mask).astype(bool)
    if m.ndim != 2:
        raise ValueError(f"connected_components expects a 2-d mask, got shape {m.shape}")
    h, w = m.shape
    labels_img = np.zeros((h, w), dtype=np.int32)
    if not m.any():
        return 0, labels_img, np.array([h * w], dtype=np.int64)
    padded = np.zeros((h, w + 2), dtype=np.int8)
    padded[:, 1:-1] = m
    d = np.diff(padded, axis=1)
    rows, starts = np.nonzero(d == 1)  # row-major order: runs sorted by (row, start)
    _, ends = np.nonzero(d == -1)  # exclusive ends, in the same order
    n_runs = len(rows)
    stride = w + 2
    start_key = rows.astype(np.int64) * stride + starts
    end_key = rows.astype(np.int64) * stride + ends
    # run a (row r) touches run b (row r+1) iff start_b <= end_a and start_a <= end_b; those b form a contiguous
    # range because the runs of one row are disjoint and sorted
    nxt = (rows.astype(np.int64) + 1) * stride
    lo = np.searchsorted(end_key, nxt + starts, side="left")
    hi = np.searchsorted(start_key, nxt + ends, side="right")
    counts = np.maximum(hi - lo, 0)
    a = np.repeat(np.arange(n_runs), counts)
    offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    b = np.repeat(lo, counts) + offsets
    parent = np.arange(n_runs)
    while len(a):
        pa, pb = parent[a], parent[b]
        differ = pa != pb
        if not differ.any():
            break
        pa, pb = pa[differ], pb[differ]
        low = np.minimum(pa, pb)
        np.minimum.at(parent, pa, low)
        np.minimum.at(parent, pb, low)
        while True:  # pointer jumping until every run points at a root
            jumped = parent[parent]
            if np.array_equal(jumped, parent):
                break
            parent = jumped
    _, comp = np.unique(parent, return_inverse=True)
    comp = comp.reshape(-1).astype(np.int32) + 1
    lengths = ends - starts
    flat = np.repeat(rows.astype(np.int64) * w + starts, lengths)
    flat += np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    labels_img.reshape(-1)[flat] = np.repeat(comp, lengths)
    num = int(comp.max())
    areas = np.bincount(comp, weights=lengths, minlength=num + 1).astype(np.int64)
    areas[0] = h * w - int(lengths.sum())
    return num, labels_img, areas


def to_numpy(x: Any) -> np.ndarray:
    """A tensor (any device) or array-like as a numpy array."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def as_points(seq: Sequence[float] | np.ndarray) -> np.ndarray:
    """A flat [x0, y0, x1, y1, ...] list or an (N, 2) array as (N, 2) float64."""
    arr = np.asarray(seq, dtype=np.float64)
    if arr.ndim == 1:
        if arr.size % 2:
            raise ValueError(f"a flat polygon needs an even number of coordinates, got {arr.size}")
        arr = arr.reshape(-1, 2)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(f"polygon must be (N, 2) or flat [x0, y0, ...], got shape {arr.shape}")
    return arr


def dash_pattern(pts: list[tuple[float, float]], pattern: list[float]) -> list[list[tuple[float, float]]]:
    """Split the polyline ``pts`` into its "on" pieces for the on/off length ``pattern``."""
    pieces: list[list[tuple[float, float]]] = []
    k, left, on = 0, pattern[0], True
    current: list[tuple[float, float]] = [pts[0]]
    for (ax, ay), (bx, by) in zip(pts[:-1], pts[1:]):
        seg = math.hypot(bx - ax, by - ay)
        pos = 0.0
        while seg - pos > left:
            pos += left
            p = (ax + (bx - ax) * pos / seg, ay + (by - ay) * pos / seg)
            if on:
                current.append(p)
                pieces.append(current)
            current = [p]
            k = (k + 1) % len(pattern)
            left, on = pattern[k], not on
        left -= seg - pos
        if on:
            current.append((bx, by))
        else:
            current = [(bx, by)]
    if on and len(current) > 1:
        pieces.append(current)
    return pieces


def dataset_box_xyxy(anno: dict[str, Any]) -> np.ndarray:
    box = np.asarray(anno["bbox"], dtype=np.float64).reshape(-1)
    if box.size == 5:
        return box  # rotated (cx, cy, w, h, angle)
    if box.size != 4:
        raise ValueError(f"annotation bbox must have 4 (or 5 for rotated) numbers, got {anno['bbox']!r}")
    mode = int(anno.get("bbox_mode", _XYXY_ABS))
    if mode == _XYWH_ABS:
        return np.array([box[0], box[1], box[0] + box[2], box[1] + box[3]])
    if mode != _XYXY_ABS:
        raise ValueError(f"annotation bbox_mode {anno.get('bbox_mode')!r} is not supported for drawing "
                         "(expected XYXY_ABS or XYWH_ABS)")
    return box


def read_label_png(path: str, field: str, mode: str | None = None) -> np.ndarray:
    try:
        with Image.open(path) as im:
            im.load()
            return np.asarray(im.convert(mode) if mode else im)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{field}: file not found: {path}") from e
    except OSError as e:
        raise ValueError(f"{field}: cannot read {path}: {e}") from e


class GenericMask:
    """One instance mask given as a bit mask (H, W), a list of polygons ([x0, y0, x1, y1, ...] each) or a COCO RLE
    dict; converts lazily between the forms.

    ``mask``: (H, W) bool; ``polygons``: list of flat float arrays (from a bit mask this needs OpenCV);
    ``area()``: pixel count; ``bbox()``: (4,) XYXY.
    """

    def __init__(self, mask_or_polygons: Any, height: int, width: int):
        self.height, self.width = int(height), int(width)
        self._mask: np.ndarray | None = None
        self._polygons: list[np.ndarray] | None = None
        self._has_holes: bool | None = None
        m = mask_or_polygons
        if isinstance(m, GenericMask):
            self._mask, self._polygons, self._has_holes = m._mask, m._polygons, m._has_holes
            return
        if isinstance(m, dict):
            if "counts" not in m or "size" not in m:
                raise ValueError(f"an RLE mask needs 'counts' and 'size', got keys {sorted(m)}")
            h, w = (int(v) for v in m["size"])
            if (h, w) != (self.height, self.width):
                raise ValueError(f"RLE mask size {(h, w)} does not match the image size {(self.height, self.width)}")
            rle = mask_util.frPyObjects(m, h, w) if isinstance(m["counts"], list) else m
            self._mask = mask_util.decode(rle).astype(bool)
            return
        if isinstance(m, (list, tuple)):
            self._polygons = [as_points(p).reshape(-1) for p in m]
            self._polygons = [p for p in self._polygons if len(p) >= 6]
            return
        arr = to_numpy(m)
        if arr.ndim != 2 or arr.shape != (self.height, self.width):
            raise ValueError(f"a bit mask must have shape {(self.height, self.width)} (the image), got {arr.shape}")
        self._mask = arr.astype(bool)

    @property
    def is_polygon(self) -> bool:
        return self._polygons is not None

    @property
    def mask(self) -> np.ndarray:
        if self._mask is None:
            if not self._polygons:
                self._mask = np.zeros((self.height, self.width), dtype=bool)
            else:
                rles = mask_util.frPyObjects([p.tolist() for p in self._polygons], self.height, self.width)
                self._mask = mask_util.decode(mask_util.merge(rles)).astype(bool)
        return self._mask

    @property
    def polygons(self) -> list[np.ndarray]:
        if self._polygons is None:
            self._polygons, self._has_holes = _mask_to_polygons(self._mask)  # type: ignore[arg-type]
        return self._polygons

    @property
    def has_holes(self) -> bool:
        if self._has_holes is None:
            if self._mask is not None and self._polygons is None:
                self._polygons, self._has_holes = _mask_to_polygons(self._mask)
            else:
                self._has_holes = False
        return bool(self._has_holes)

    def area(self) -> int:
        return int(self.mask.sum())

    def bbox(self) -> np.ndarray:
        """(4,) float XYXY of the mask's pixels (zeros for an empty mask)."""
        if self._polygons is not None and self._mask is None:
            if not self._polygons:
                return np.zeros(4)
            pts = np.concatenate([p.reshape(-1, 2) for p in self._polygons])
            return np.concatenate([pts.min(0), pts.max(0)])
        ys = np.flatnonzero(self.mask.any(1))
        xs = np.flatnonzero(self.mask.any(0))
        if not len(ys):
            return np.zeros(4)
        return np.array([xs[0], ys[0], xs[-1] + 1, ys[-1] + 1], dtype=np.float64)


def _mask_to_polygons(mask: np.ndarray) -> tuple[list[np.ndarray], bool]:
    try:
        import cv2  # optional: only GenericMask.polygons of a bit mask needs contour tracing
    except ImportError as e:
        raise ImportError("GenericMask.polygons of a bit mask needs OpenCV (pip install opencv-python-headless); "
                          "the Visualizer itself draws bit masks without it") from e
    res = cv2.findContours(np.ascontiguousarray(mask, dtype=np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
    hierarchy = res[-1]
    if hierarchy is None:
        return [], False
    has_holes = bool((hierarchy.reshape(-1, 4)[:, 3] >= 0).any())
    return [c.reshape(-1).astype(np.float64) + 0.5 for c in res[-2] if c.size >= 6], has_holes
