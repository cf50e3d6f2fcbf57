"""A fixed palette of distinct, saturated colours for drawing instances (detectron2's ``utils.colormap`` API).

``colormap()`` returns the whole palette, ``random_color()`` one entry, ``random_colors(N)`` N distinct entries.
Colours are BGR unless ``rgb=True`` (OpenCV's order, as in detectron2) and scaled to ``maximum`` (255 or 1).
The palette has no greys, so a mask drawn in any of its colours stands out from a grey-ish background; it is
generated once, deterministically, by walking the hue circle in golden-ratio steps while cycling through a few
saturation/brightness levels, which keeps neighbouring entries far apart.
"""
from __future__ import annotations

import colorsys

import numpy as np

__all__ = ["colormap", "random_color", "random_colors"]

_NUM_COLORS = 80
_GOLDEN = 0.381966011250105  # 1 - 1/phi: successive hues land far from all previous ones
_SATURATIONS = (0.85, 0.6, 1.0, 0.7)
_VALUES = (0.95, 0.75, 0.85)


def _make_palette(n: int) -> np.ndarray:
    """(n, 3) float32 RGB in [0, 1]."""
    rows = []
    for i in range(n):
        hue = (0.58 + i * _GOLDEN) % 1.0
        sat = _SATURATIONS[i % len(_SATURATIONS)]
        val = _VALUES[(i // len(_SATURATIONS)) % len(_VALUES)]
        rows.append(colorsys.hsv_to_rgb(hue, sat, val))
    return np.asarray(rows, dtype=np.float32)


_COLORS = _make_palette(_NUM_COLORS)  # RGB in [0, 1]


def _check_maximum(maximum: float) -> None:
    if maximum not in (255, 1):
        raise ValueError(f"colormap: maximum must be 255 or 1, got {maximum!r}")


def colormap(rgb: bool = False, maximum: int = 255) -> np.ndarray:
    """The whole palette: (N, 3) float32, BGR (``rgb=False``) or RGB, values in [0, ``maximum``]."""
    _check_maximum(maximum)
    c = _COLORS * maximum
    return c if rgb else c[:, ::-1].copy()


def random_color(rgb: bool = False, maximum: int = 255) -> np.ndarray:
    """One palette colour picked with ``np.random``: (3,) float32, BGR or RGB, values in [0, ``maximum``]."""
    _check_maximum(maximum)
    ret = _COLORS[np.random.randint(0, len(_COLORS))] * maximum
    return ret if rgb else ret[::-1].copy()


def random_colors(N: int, rgb: bool = False, maximum: int = 255) -> list[np.ndarray]:  # noqa: N803 (d2 name)
    """``N`` palette colours picked with ``np.random``, all different while ``N`` <= the palette size (beyond it
    the palette is reused in fresh random orders). Each is a (3,) float32 array, BGR or RGB, in [0, ``maximum``]."""
    _check_maximum(maximum)
    if N < 0:
        raise ValueError(f"random_colors: N must be >= 0, got {N}")
    n = len(_COLORS)
    idx = np.concatenate([np.random.permutation(n) for _ in range(-(-N // n))])[:N] if N else np.zeros(0, int)
    out = _COLORS[idx] * maximum
    if not rgb:
        out = out[:, ::-1]
    return [row.copy() for row in out]
