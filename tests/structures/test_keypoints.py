from __future__ import annotations

import numpy as np
import pytest
import torch

from detlightning.structures import Boxes, Keypoints, heatmaps_to_keypoints


def test_to_heatmap_hand_case():
    kp = Keypoints(
        torch.tensor(
            [[[3.0, 7.9, 2.0], [10.0, 1.0, 1.0], [-1.0, 3.0, 2.0], [4.0, 4.0, 0.0], [9.99, 10.0, 2.0]]]
        )
    )
    heatmaps, valid = kp.to_heatmap(torch.tensor([[0.0, 0.0, 10.0, 10.0]]), 5)
    # cell = floor(coord * 5 / 10): (3, 7.9) -> x 1, y 3 -> 3 * 5 + 1 = 16; x == right edge -> last cell 4;
    # outside the box or unlabelled -> invalid (and 0); (9.99, 10) -> x 4, y on the bottom edge -> 4
    assert heatmaps.tolist() == [[16, 4, 0, 0, 24]]
    assert valid.tolist() == [[1, 1, 0, 0, 1]]
    assert heatmaps.dtype == torch.int64


def test_to_heatmap_with_offset_box_and_boxes_input():
    kp = Keypoints([[[25.0, 42.0, 2.0]], [[0.0, 0.0, 2.0]]])
    boxes = Boxes(torch.tensor([[20.0, 40.0, 30.0, 60.0], [0.0, 0.0, 56.0, 56.0]]))
    heatmaps, valid = kp.to_heatmap(boxes, 56)
    # x: (25 - 20) * 56 / 10 = 28; y: (42 - 40) * 56 / 20 = 5.6 -> 5  => 5 * 56 + 28
    assert heatmaps.tolist() == [[5 * 56 + 28], [0]]
    assert valid.tolist() == [[1], [1]]
    empty_h, empty_v = Keypoints(torch.zeros(0, 3, 3)).to_heatmap(torch.zeros(0, 4), 56)
    assert empty_h.numel() == 0 and empty_v.numel() == 0


def test_heatmaps_to_keypoints_recovers_single_peak():
    maps = torch.zeros(2, 2, 56, 56)
    maps[:, 0, 12, 30] = 10.0  # keypoint 0 at column 30, row 12
    maps[:, 1, 40, 5] = 10.0
    rois = torch.tensor([[10.0, 20.0, 66.0, 76.0], [10.0, 20.0, 122.0, 132.0]])  # 1x and 2x the map size
    out = heatmaps_to_keypoints(maps, rois)
    assert out.shape == (2, 2, 4)
    # same size: cell d -> d + 0.5 in the box frame
    assert out[0, 0, :2].tolist() == [10.0 + 30.5, 20.0 + 12.5]
    assert out[0, 1, :2].tolist() == [10.0 + 5.5, 20.0 + 40.5]
    assert out[0, 0, 2].item() == pytest.approx(10.0)  # logit at the peak
    # twice the size: the peak's centre scales to 2 * (d + 0.5)
    expected = torch.tensor([[10.0 + 61.0, 20.0 + 25.0], [10.0 + 11.0, 20.0 + 81.0]])
    assert (out[1, :, :2] - expected).abs().max().item() <= 0.5 + 1e-6
    # score: exp(peak - peak) over the sum of exp(map - peak) at pooled resolution
    pooled_sum = 1.0 + (56 * 56 - 1) * np.exp(-10.0)
    assert out[0, 0, 3].item() == pytest.approx(1.0 / pooled_sum, rel=1e-4)


def test_heatmaps_to_keypoints_fractional_box_uses_width_correction():
    maps = torch.zeros(1, 1, 4, 4)
    maps[0, 0, 1, 2] = 5.0
    # width 3.5 -> resized to ceil(3.5) = 4 columns, each 3.5 / 4 wide
    out = heatmaps_to_keypoints(maps, torch.tensor([[0.0, 0.0, 3.5, 4.0]]))
    assert out[0, 0, 0].item() == pytest.approx(2.5 * 3.5 / 4)
    assert out[0, 0, 1].item() == pytest.approx(1.5)


def test_keypoints_container():
    t = torch.rand(3, 17, 3)
    kp = Keypoints(t)
    assert len(kp) == 3 and kp.device == torch.device("cpu")
    assert kp[1].tensor.shape == (1, 17, 3) and torch.equal(kp[1].tensor[0], t[1])
    assert len(kp[torch.tensor([True, False, True])]) == 2 and len(kp[1:]) == 2
    assert len(Keypoints.cat([kp, kp[0]])) == 4
    assert kp.to(torch.float64).tensor.dtype == torch.float32  # like detectron2, always float32
    assert "num_instances=3" in repr(kp)
    with pytest.raises(ValueError, match=r"\(N, K, 3\)"):
        Keypoints(torch.zeros(3, 17, 2))
    with pytest.raises(ValueError, match="non-empty"):
        Keypoints.cat([])
