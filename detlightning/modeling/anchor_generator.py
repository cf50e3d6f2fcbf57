"""Anchor generators: the cell anchors of each feature level, tiled over its grid (Faster R-CNN / RetinaNet)."""
from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from omegaconf import ListConfig
from torch import nn

from ..config import configurable
from ..config.reader import cfg_view
from ..layers import ShapeSpec
from ..structures import Boxes
from .build import build_component
from .registry import ANCHOR_GENERATOR_REGISTRY

__all__ = ["ANCHOR_GENERATOR_REGISTRY", "BufferList", "DefaultAnchorGenerator", "build_anchor_generator"]


class BufferList(nn.Module):
    """A list of tensors registered as non-persistent buffers: they follow ``.to(device)`` but stay out of the
    state_dict (anchors are derived from the config, not learnt)."""

    def __init__(self, buffers: Sequence[torch.Tensor]) -> None:
        super().__init__()
        for i, buffer in enumerate(buffers):
            self.register_buffer(str(i), buffer, persistent=False)

    def __len__(self) -> int:
        return len(self._buffers)

    def __iter__(self) -> Iterator[torch.Tensor]:
        return iter(self._buffers.values())

    def __getitem__(self, idx: int) -> torch.Tensor:
        return list(self._buffers.values())[idx]


def _plain(value: Any) -> Any:
    """Nested OmegaConf lists / tuples / tensors as plain Python lists (scalars unchanged)."""
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, (list, tuple, ListConfig)):
        return [_plain(v) for v in value]
    return value


def _broadcast_params(params: Any, num_features: int, name: str) -> list[list[float]]:
    """Per-feature parameter lists: a flat list, or a list holding one list, applies to every feature map."""
    params = _plain(params)
    if not isinstance(params, list):
        raise TypeError(f"{name} in anchor generator has to be a list, got {params!r}")
    if not params:
        raise ValueError(f"{name} in anchor generator cannot be empty")
    if not isinstance(params[0], list):
        return [params] * num_features
    if len(params) == 1:
        return params * num_features
    if len(params) != num_features:
        raise ValueError(
            f"Got {name} of length {len(params)} in anchor generator, but the number of input features is "
            f"{num_features}"
        )
    return params


def _create_grid_offsets(
    size: Sequence[int], stride: int, offset: float, target_device_tensor: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flattened (H*W,) x and y pixel positions of the grid cells, row-major (y slow, x fast)."""
    grid_height, grid_width = size[0], size[1]
    if not torch.jit.is_tracing():
        grid_height, grid_width = int(grid_height), int(grid_width)
    # while tracing they stay 0-dim tensors, so the traced arange follows the feature-map size of each input
    # Built directly on the target device (no host-to-device copy per forward); for the usual offsets (0, 0.5) the
    # values are exact in float32 on any device.
    device = target_device_tensor.device
    shifts_x = torch.arange(offset * stride, grid_width * stride, step=stride, dtype=torch.float32, device=device)
    shifts_y = torch.arange(offset * stride, grid_height * stride, step=stride, dtype=torch.float32, device=device)
    shift_y, shift_x = torch.meshgrid(shifts_y, shifts_x, indexing="ij")
    return shift_x.reshape(-1), shift_y.reshape(-1)


@ANCHOR_GENERATOR_REGISTRY.register()
class DefaultAnchorGenerator(nn.Module):
    """Axis-aligned anchors of every (size, aspect ratio) pair at every location of each feature map.

    Anchor order within a level is location-major (row by row), then size, then aspect ratio, as in detectron2.
    """

    box_dim: int = 4

    @configurable
    def __init__(
        self,
        *,
        sizes: Sequence[Sequence[float]] | Sequence[float],
        aspect_ratios: Sequence[Sequence[float]] | Sequence[float],
        strides: Sequence[int],
        offset: float = 0.5,
    ) -> None:
        """
        Args:
            sizes: per feature map, the anchor sizes (sqrt of the area, in input pixels); a flat list (or a list
                holding one list) is used for every feature map.
            aspect_ratios: per feature map, the anchor aspect ratios (height / width); broadcast like ``sizes``.
            strides: the stride of each input feature map.
            offset: position of the first anchor centre relative to the top-left of its cell, in [0, 1).
        """
        super().__init__()
        self.strides = [int(s) for s in _plain(strides)]
        self.num_features = len(self.strides)
        sizes = _broadcast_params(sizes, self.num_features, "sizes")
        aspect_ratios = _broadcast_params(aspect_ratios, self.num_features, "aspect_ratios")
        self.cell_anchors = self._calculate_anchors(sizes, aspect_ratios)
        self.offset = float(offset)
        if not 0.0 <= self.offset < 1.0:
            raise ValueError(f"anchor offset must be in [0, 1), got {offset}")

    @classmethod
    def from_config(cls, cfg: Any, input_shape: list[ShapeSpec]) -> dict[str, Any]:
        cfg = cfg_view(cfg)
        node = cfg.model.anchor_generator
        return {
            "sizes": _plain(node.sizes),
            "aspect_ratios": _plain(node.aspect_ratios),
            "strides": [x.stride for x in input_shape],
            "offset": node.offset,
        }

    def _calculate_anchors(self, sizes: list[list[float]], aspect_ratios: list[list[float]]) -> BufferList:
        return BufferList([self.generate_cell_anchors(s, a).float() for s, a in zip(sizes, aspect_ratios)])

    @property
    def num_cell_anchors(self) -> list[int]:
        """Alias of ``num_anchors``."""
        return self.num_anchors

    @property
    def num_anchors(self) -> list[int]:
        """Number of anchors at each location, per feature map (e.g. 3 sizes x 5 ratios = 15)."""
        return [len(cell_anchors) for cell_anchors in self.cell_anchors]

    def _grid_anchors(self, grid_sizes: list[Sequence[int]]) -> list[torch.Tensor]:
        """Per feature map, (H*W*A, 4) XYXY anchors."""
        anchors = []
        for size, stride, base_anchors in zip(grid_sizes, self.strides, self.cell_anchors):
            shift_x, shift_y = _create_grid_offsets(size, stride, self.offset, base_anchors)
            shifts = torch.stack((shift_x, shift_y, shift_x, shift_y), dim=1)
            anchors.append((shifts.view(-1, 1, 4) + base_anchors.view(1, -1, 4)).reshape(-1, 4))
        return anchors

    def generate_cell_anchors(
        self,
        sizes: Sequence[float] = (32, 64, 128, 256, 512),
        aspect_ratios: Sequence[float] = (0.5, 1, 2),
    ) -> torch.Tensor:
        """The (len(sizes) * len(aspect_ratios), 4) XYXY anchors centred on (0, 0), size-major.

        A ratio ``a = h / w`` at size ``s`` keeps the area ``s * s``: ``w = sqrt(s * s / a)``, ``h = a * w``.
        """
        anchors = []
        for size in sizes:
            area = float(size) ** 2.0
            for aspect_ratio in aspect_ratios:
                # d2-parity: computed in Python doubles, then rounded once to float32.
                w = math.sqrt(area / aspect_ratio)
                h = aspect_ratio * w
                anchors.append([-w / 2.0, -h / 2.0, w / 2.0, h / 2.0])
        return torch.tensor(anchors)

    def forward(self, features: list[torch.Tensor]) -> list[Boxes]:
        """
        Args:
            features: the feature maps, each (N, C, Hi, Wi), in the order of ``strides``.
        Returns:
            per feature map, Boxes of Hi * Wi * num_anchors[i] anchors in input-image pixels.
        """
        if len(features) != self.num_features:
            raise ValueError(
                f"DefaultAnchorGenerator was built for {self.num_features} feature maps (strides {self.strides}), "
                f"got {len(features)}"
            )
        grid_sizes = [feature_map.shape[-2:] for feature_map in features]
        return [Boxes(x) for x in self._grid_anchors(grid_sizes)]


def build_anchor_generator(cfg: Any, input_shape: list[ShapeSpec]) -> nn.Module:
    """The anchor generator that ``cfg.model.anchor_generator`` selects (``name:`` or ``_target_:``)."""
    return build_component(ANCHOR_GENERATOR_REGISTRY, "model.anchor_generator", cfg, input_shape)
