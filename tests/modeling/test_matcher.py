"""Matcher on hand-made quality matrices: bands, boundaries, low-quality matches, empty inputs."""
from __future__ import annotations

import pytest
import torch

from detlightning.modeling.matcher import Matcher

# 2 ground truths x 4 predictions
IOU = torch.tensor(
    [
        [0.1, 0.5, 0.8, 0.0],
        [0.2, 0.6, 0.1, 0.25],
    ]
)


def test_bands() -> None:
    matches, labels = Matcher([0.3, 0.7], [0, -1, 1])(IOU)
    assert matches.dtype == torch.int64 and labels.dtype == torch.int8
    assert matches.tolist() == [1, 1, 0, 1]
    assert labels.tolist() == [0, -1, 1, 0]


def test_low_quality_matches() -> None:
    matches, labels = Matcher([0.3, 0.7], [0, -1, 1], allow_low_quality_matches=True)(IOU)
    # gt 1's best prediction is #1 (0.6): promoted to positive; its match index is unchanged
    assert matches.tolist() == [1, 1, 0, 1]
    assert labels.tolist() == [0, 1, 1, 0]


def test_low_quality_matches_include_ties() -> None:
    iou = torch.tensor([[0.4, 0.1, 0.4, 0.2]])
    _, labels = Matcher([0.5], [0, 1], allow_low_quality_matches=True)(iou)
    assert labels.tolist() == [1, 0, 1, 0]


def test_threshold_boundaries_are_lower_inclusive() -> None:
    iou = torch.tensor([[0.3, 0.7, 0.29999, 0.69999]])
    _, labels = Matcher([0.3, 0.7], [0, -1, 1])(iou)
    assert labels.tolist() == [-1, 1, 0, -1]


def test_roi_heads_style_two_bands() -> None:
    iou = torch.tensor([[0.49, 0.5, 0.9], [0.0, 0.2, 0.95]])
    matches, labels = Matcher([0.5], [0, 1])(iou)
    assert matches.tolist() == [0, 0, 1]
    assert labels.tolist() == [0, 1, 1]


def test_empty_ground_truth() -> None:
    matches, labels = Matcher([0.3, 0.7], [0, -1, 1])(torch.zeros(0, 5))
    assert matches.tolist() == [0] * 5 and matches.dtype == torch.int64
    assert labels.tolist() == [0] * 5 and labels.dtype == torch.int8
    # the first band's label is used: here "ignore"
    _, labels = Matcher([0.5], [-1, 1], allow_low_quality_matches=True)(torch.zeros(0, 3))
    assert labels.tolist() == [-1, -1, -1]


def test_empty_predictions() -> None:
    matches, labels = Matcher([0.5], [0, 1])(torch.zeros(2, 0))
    assert matches.shape == (0,) and labels.shape == (0,)


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="positive"):
        Matcher([0.0, 0.5], [0, -1, 1])
    with pytest.raises(ValueError, match="non-decreasing"):
        Matcher([0.7, 0.3], [0, -1, 1])
    with pytest.raises(ValueError, match="labels"):
        Matcher([0.5], [0, 2])
    with pytest.raises(ValueError, match="labels"):
        Matcher([0.5], [0, -1, 1])
    with pytest.raises(ValueError, match="non-negative"):
        Matcher([0.5], [0, 1])(torch.tensor([[-0.1, 0.5]]))
