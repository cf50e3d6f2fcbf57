"""DefaultAnchorGenerator: hand-computed anchors, ordering, broadcasting, config building."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from detlightning.config import compose
from detlightning.layers import ShapeSpec
from detlightning.modeling.anchor_generator import DefaultAnchorGenerator, build_anchor_generator
from detlightning.structures import Boxes


def test_2x2_feature_map_by_hand() -> None:
    gen = DefaultAnchorGenerator(sizes=[[32]], aspect_ratios=[[1.0]], strides=[16], offset=0.0)
    (anchors,) = gen([torch.zeros(1, 8, 2, 2)])
    assert isinstance(anchors, Boxes)
    expected = torch.tensor(
        [
            [-16.0, -16.0, 16.0, 16.0],  # (x=0, y=0)
            [0.0, -16.0, 32.0, 16.0],  # (x=16, y=0): x varies fastest
            [-16.0, 0.0, 16.0, 32.0],  # (x=0, y=16)
            [0.0, 0.0, 32.0, 32.0],
        ]
    )
    assert torch.equal(anchors.tensor, expected)


def test_offset_half_stride() -> None:
    gen = DefaultAnchorGenerator(sizes=[[32]], aspect_ratios=[[1.0]], strides=[16], offset=0.5)
    (anchors,) = gen([torch.zeros(1, 1, 2, 2)])
    centres = (anchors.tensor[:, :2] + anchors.tensor[:, 2:]) / 2
    assert centres.tolist() == [[8.0, 8.0], [24.0, 8.0], [8.0, 24.0], [24.0, 24.0]]


def test_cell_anchor_order_sizes_then_ratios() -> None:
    sizes, ratios = [32.0, 64.0], [0.5, 1.0, 2.0]
    gen = DefaultAnchorGenerator(sizes=sizes, aspect_ratios=ratios, strides=[8], offset=0.0)
    assert gen.num_anchors == [6] and gen.num_cell_anchors == [6]
    expected = []
    for s in sizes:
        for a in ratios:
            w = np.sqrt(s * s / a)
            h = a * w
            expected.append([-w / 2, -h / 2, w / 2, h / 2])
    (anchors,) = gen([torch.zeros(1, 1, 1, 2)])
    got = anchors.tensor.numpy()
    assert got.shape == (12, 4)
    np.testing.assert_allclose(got[:6], np.array(expected), rtol=1e-6)
    np.testing.assert_allclose(got[6:], np.array(expected) + np.array([8, 0, 8, 0]), rtol=1e-6)
    # every anchor keeps the area size^2 and the ratio h / w
    wh = got[:6, 2:] - got[:6, :2]
    np.testing.assert_allclose(wh[:, 0] * wh[:, 1], [32.0**2] * 3 + [64.0**2] * 3, rtol=1e-5)
    np.testing.assert_allclose(wh[:, 1] / wh[:, 0], ratios * 2, rtol=1e-5)


def test_multi_level_broadcast_and_shapes() -> None:
    gen = DefaultAnchorGenerator(sizes=[[32], [64], [128]], aspect_ratios=[[0.5, 1.0, 2.0]], strides=[4, 8, 16])
    feats = [torch.zeros(2, 3, 8, 6), torch.zeros(2, 3, 4, 3), torch.zeros(2, 3, 2, 2)]
    out = gen(feats)
    assert [len(b) for b in out] == [8 * 6 * 3, 4 * 3 * 3, 2 * 2 * 3]
    assert gen.num_anchors == [3, 3, 3]
    # level 2: square anchor of size 128 at the first location (offset 0.5 -> centre (8, 8))
    square = out[2].tensor[1]
    assert torch.allclose(square, torch.tensor([8 - 64.0, 8 - 64.0, 8 + 64.0, 8 + 64.0]))


def test_param_length_mismatch() -> None:
    with pytest.raises(ValueError, match="sizes"):
        DefaultAnchorGenerator(sizes=[[32], [64]], aspect_ratios=[1.0], strides=[4, 8, 16])
    with pytest.raises(ValueError, match="offset"):
        DefaultAnchorGenerator(sizes=[32], aspect_ratios=[1.0], strides=[4], offset=1.0)


def test_cell_anchors_not_in_state_dict_but_follow_device() -> None:
    gen = DefaultAnchorGenerator(sizes=[[32], [64]], aspect_ratios=[1.0], strides=[4, 8])
    assert len(gen.state_dict()) == 0
    assert len(list(gen.buffers())) == 2
    gen = gen.to(torch.float64)
    assert all(b.dtype == torch.float64 for b in gen.cell_anchors)


def test_from_config_default_c4() -> None:
    cfg = compose(["model=faster_rcnn_c4", "backbone=resnet50_c4"])  # C4: 5 sizes x 3 ratios on one map
    gen = build_anchor_generator(cfg, [ShapeSpec(channels=1024, stride=16)])
    assert isinstance(gen, DefaultAnchorGenerator)
    assert gen.num_anchors == [15] and gen.strides == [16] and gen.offset == 0.0
    (anchors,) = gen([torch.zeros(1, 1, 3, 5)])
    assert len(anchors) == 3 * 5 * 15


def test_from_config_fpn() -> None:
    cfg = compose(["backbone=resnet50"])
    shapes = [ShapeSpec(channels=256, stride=s) for s in (4, 8, 16, 32, 64)]
    gen = DefaultAnchorGenerator(cfg, shapes)
    assert gen.num_anchors == [3] * 5 and gen.strides == [4, 8, 16, 32, 64]
    sizes = [math.sqrt(float((c[2] - c[0]) * (c[3] - c[1]))) for c in (b[1] for b in gen.cell_anchors)]
    assert sizes == pytest.approx([32, 64, 128, 256, 512], rel=1e-5)
