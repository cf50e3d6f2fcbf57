"""Backbone: the abstract base of every feature extractor (ResNet, FPN, user backbones)."""
from __future__ import annotations

from abc import ABCMeta, abstractmethod

import torch
from torch import nn

from ...layers import ShapeSpec

__all__ = ["Backbone"]


class Backbone(nn.Module, metaclass=ABCMeta):
    """A module mapping an (N, C, H, W) image batch to named feature maps.

    Subclasses implement ``forward`` and either override ``output_shape`` or set ``_out_features`` (names, in
    order), ``_out_feature_channels`` and ``_out_feature_strides`` (dicts keyed by name).
    """

    def __init__(self) -> None:
        super().__init__()

    @abstractmethod
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Returns: feature name (e.g. "res2", "p3") -> (N, Ci, H / stride_i, W / stride_i) tensor."""

    @property
    def size_divisibility(self) -> int:
        """Input height and width must be multiples of this (0 = no requirement), e.g. FPN's largest stride so
        that top-down and lateral maps line up."""
        return 0

    @property
    def padding_constraints(self) -> dict[str, int]:
        """Optional padding requirements of the input: ``"size_divisibility"`` (overrides the property above when
        present) and ``"square_size"`` (pad to a square of that side when > 0)."""
        return {}

    def output_shape(self) -> dict[str, ShapeSpec]:
        """Feature name -> ShapeSpec(channels, stride), for every output feature, in output order."""
        return {
            name: ShapeSpec(channels=self._out_feature_channels[name], stride=self._out_feature_strides[name])
            for name in self._out_features
        }
