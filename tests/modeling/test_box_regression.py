"""Box2BoxTransform / Box2BoxTransformLinear / _dense_box_regression_loss against hand-computed values."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torchvision.ops import generalized_box_iou

from detlightning.modeling.box_regression import (
    Box2BoxTransform,
    Box2BoxTransformLinear,
    Box2BoxTransformRotated,
    _dense_box_regression_loss,
)
from detlightning.structures import Boxes


def _random_boxes(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 100
    wh = torch.rand(n, 2, generator=g) * 50 + 1
    return torch.cat([xy, xy + wh], dim=1)


def test_get_deltas_hand_case() -> None:
    src = torch.tensor([[0.0, 0.0, 10.0, 10.0]])  # centre (5, 5), 10 x 10
    tgt = torch.tensor([[5.0, 5.0, 15.0, 25.0]])  # centre (10, 15), 10 x 20
    d = Box2BoxTransform(weights=(1.0, 1.0, 1.0, 1.0)).get_deltas(src, tgt)
    assert torch.allclose(d, torch.tensor([[0.5, 1.0, 0.0, math.log(2.0)]]))
    d = Box2BoxTransform(weights=(10.0, 10.0, 5.0, 5.0)).get_deltas(src, tgt)
    assert torch.allclose(d, torch.tensor([[5.0, 10.0, 0.0, 5 * math.log(2.0)]]))


def test_apply_deltas_hand_case() -> None:
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    deltas = torch.tensor([[0.5, 1.0, 0.0, math.log(2.0)]])
    out = Box2BoxTransform(weights=(1.0, 1.0, 1.0, 1.0)).apply_deltas(deltas, boxes)
    assert torch.allclose(out, torch.tensor([[5.0, 5.0, 15.0, 25.0]]), atol=1e-5)


@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)])
def test_round_trip(weights: tuple[float, ...]) -> None:
    t = Box2BoxTransform(weights=weights)
    src, tgt = _random_boxes(50, 0), _random_boxes(50, 1)
    back = t.apply_deltas(t.get_deltas(src, tgt), src)
    assert torch.allclose(back, tgt, atol=1e-3)


def test_class_specific_deltas_decode_each_block() -> None:
    t = Box2BoxTransform(weights=(10.0, 10.0, 5.0, 5.0))
    boxes = _random_boxes(6)
    d1 = torch.randn(6, 4, generator=torch.Generator().manual_seed(2))
    d2 = torch.randn(6, 4, generator=torch.Generator().manual_seed(3))
    out = t.apply_deltas(torch.cat([d1, d2], dim=1), boxes)
    assert out.shape == (6, 8)
    assert torch.allclose(out[:, :4], t.apply_deltas(d1, boxes))
    assert torch.allclose(out[:, 4:], t.apply_deltas(d2, boxes))


def test_scale_clamp() -> None:
    t = Box2BoxTransform(weights=(1.0, 1.0, 1.0, 1.0))
    boxes = torch.tensor([[0.0, 0.0, 16.0, 16.0]])
    out = t.apply_deltas(torch.tensor([[0.0, 0.0, 100.0, -1.0]]), boxes)
    # dw clamped to log(1000/16): width 16 * 1000 / 16 = 1000, centred on 8
    assert torch.allclose(out[0, [0, 2]], torch.tensor([8.0 - 500.0, 8.0 + 500.0]), atol=1e-3)
    h = 16 * math.exp(-1.0)
    assert torch.allclose(out[0, [1, 3]], torch.tensor([8 - h / 2, 8 + h / 2]), atol=1e-5)
    small = Box2BoxTransform(weights=(1.0, 1.0, 1.0, 1.0), scale_clamp=math.log(2.0))
    out = small.apply_deltas(torch.tensor([[0.0, 0.0, 5.0, 5.0]]), boxes)
    assert torch.allclose(out, torch.tensor([[-8.0, -8.0, 24.0, 24.0]]), atol=1e-5)


def test_apply_deltas_decodes_in_float32() -> None:
    t = Box2BoxTransform(weights=(1.0, 1.0, 1.0, 1.0))
    out = t.apply_deltas(torch.zeros(2, 4, dtype=torch.float16), _random_boxes(2).half())
    assert out.dtype == torch.float32


def test_invalid_source_boxes() -> None:
    t = Box2BoxTransform(weights=(1.0, 1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="positive width"):
        t.get_deltas(torch.tensor([[5.0, 0.0, 5.0, 10.0]]), torch.tensor([[0.0, 0.0, 1.0, 1.0]]))
    with pytest.raises(ValueError, match="4 weights"):
        Box2BoxTransform(weights=(1.0, 1.0))


def test_linear_transform_hand_case() -> None:
    anchor = torch.tensor([[0.0, 0.0, 8.0, 8.0]])  # centre (4, 4), size 8
    tgt = torch.tensor([[1.0, 2.0, 10.0, 12.0]])
    t = Box2BoxTransformLinear(normalize_by_size=True)
    d = t.get_deltas(anchor, tgt)
    assert torch.allclose(d, torch.tensor([[3.0, 2.0, 6.0, 8.0]]) / 8.0)
    assert torch.allclose(t.apply_deltas(d, anchor), tgt)
    # negative distances are clipped to 0 -> a degenerate box on the centre
    assert torch.allclose(t.apply_deltas(-d, anchor), torch.tensor([[4.0, 4.0, 4.0, 4.0]]))
    raw = Box2BoxTransformLinear(normalize_by_size=False)
    assert torch.allclose(raw.get_deltas(anchor, tgt), torch.tensor([[3.0, 2.0, 6.0, 8.0]]))


def test_rotated_round_trip() -> None:
    t = Box2BoxTransformRotated(weights=(10.0, 10.0, 5.0, 5.0, 1.0))
    src = torch.tensor([[10.0, 10.0, 4.0, 8.0, 30.0], [0.0, 5.0, 2.0, 2.0, -170.0]])
    tgt = torch.tensor([[12.0, 9.0, 6.0, 4.0, 45.0], [1.0, 5.0, 3.0, 1.0, 170.0]])
    d = t.get_deltas(src, tgt)
    # angle delta wraps to the short way round: 170 - (-170) = 340 -> -20 degrees
    assert d[1, 4].item() == pytest.approx(math.radians(-20.0), abs=1e-5)
    assert torch.allclose(t.apply_deltas(d, src), tgt, atol=1e-4)


def _numpy_deltas(src: np.ndarray, tgt: np.ndarray, w: tuple[float, ...]) -> np.ndarray:
    sw, sh = src[:, 2] - src[:, 0], src[:, 3] - src[:, 1]
    tw, th = tgt[:, 2] - tgt[:, 0], tgt[:, 3] - tgt[:, 1]
    sx, sy = src[:, 0] + sw / 2, src[:, 1] + sh / 2
    tx, ty = tgt[:, 0] + tw / 2, tgt[:, 1] + th / 2
    return np.stack(
        [w[0] * (tx - sx) / sw, w[1] * (ty - sy) / sh, w[2] * np.log(tw / sw), w[3] * np.log(th / sh)], axis=1
    )


def _dense_inputs():
    anchors = [_random_boxes(3, 10), _random_boxes(2, 11)]  # two levels, R = 5
    gt = [_random_boxes(5, 12), _random_boxes(5, 13)]  # two images
    g = torch.Generator().manual_seed(14)
    pred = [torch.randn(2, 3, 4, generator=g) * 0.1, torch.randn(2, 2, 4, generator=g) * 0.1]
    fg = torch.tensor([[True, False, True, True, False], [False, True, False, False, True]])
    return anchors, gt, pred, fg


def test_dense_loss_smooth_l1_matches_numpy() -> None:
    anchors, gt, pred, fg = _dense_inputs()
    weights = (1.0, 1.0, 1.0, 1.0)
    t = Box2BoxTransform(weights=weights)
    a = torch.cat(anchors).numpy().astype(np.float64)
    p = torch.cat(pred, dim=1).numpy().astype(np.float64)
    expected = 0.0
    for i in range(2):
        target = _numpy_deltas(a, gt[i].numpy().astype(np.float64), weights)
        diff = np.abs(p[i] - target)[fg[i].numpy()]
        expected += diff.sum()  # beta = 0: L1
    for anchors_in in (anchors, [Boxes(x) for x in anchors]):
        loss = _dense_box_regression_loss(anchors_in, t, pred, gt, fg, "smooth_l1", 0.0)
        assert loss.item() == pytest.approx(expected, rel=1e-5)
    beta = 0.05
    expected_beta = 0.0
    for i in range(2):
        n = np.abs(p[i] - _numpy_deltas(a, gt[i].numpy().astype(np.float64), weights))[fg[i].numpy()]
        expected_beta += np.where(n < beta, 0.5 * n * n / beta, n - 0.5 * beta).sum()
    loss = _dense_box_regression_loss(anchors, t, pred, gt, fg, "smooth_l1", beta)
    assert loss.item() == pytest.approx(expected_beta, rel=1e-5)


def test_dense_loss_giou_matches_torchvision() -> None:
    anchors, gt, pred, fg = _dense_inputs()
    t = Box2BoxTransform(weights=(1.0, 1.0, 1.0, 1.0))
    all_anchors = torch.cat(anchors)
    p = torch.cat(pred, dim=1)
    expected = 0.0
    for i in range(2):
        decoded = t.apply_deltas(p[i], all_anchors)[fg[i]]
        expected += (1 - torch.diag(generalized_box_iou(decoded, gt[i][fg[i]]))).sum().item()
    loss = _dense_box_regression_loss([Boxes(x) for x in anchors], t, pred, gt, fg, "giou")
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_dense_loss_zero_deltas_on_identical_boxes() -> None:
    anchors = [torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 25.0, 15.0]])]
    gt = [anchors[0].clone()]
    pred = [torch.zeros(1, 2, 4)]
    fg = torch.tensor([[True, True]])
    for kind in ("smooth_l1", "giou", "diou", "ciou"):
        loss = _dense_box_regression_loss(anchors, Box2BoxTransform((1.0, 1.0, 1.0, 1.0)), pred, gt, fg, kind)
        assert loss.item() == pytest.approx(0.0, abs=1e-5), kind


def test_dense_loss_linear_transform() -> None:
    anchors = [torch.tensor([[0.0, 0.0, 8.0, 8.0], [8.0, 0.0, 16.0, 8.0]])]
    gt = [torch.tensor([[1.0, 2.0, 10.0, 12.0], [1.0, 2.0, 10.0, 12.0]]), torch.zeros(2, 4) + 1]
    pred = [torch.zeros(2, 2, 4)]
    fg = torch.tensor([[True, False], [False, False]])
    loss = _dense_box_regression_loss(anchors, Box2BoxTransformLinear(), pred, gt, fg, "smooth_l1")
    assert loss.item() == pytest.approx((3 + 2 + 6 + 8) / 8.0)


def test_dense_loss_unknown_type() -> None:
    anchors, gt, pred, fg = _dense_inputs()
    with pytest.raises(ValueError, match="l2"):
        _dense_box_regression_loss(anchors, Box2BoxTransform((1.0, 1.0, 1.0, 1.0)), pred, gt, fg, "l2")


def test_dense_loss_ellipsis_mask_and_empty() -> None:
    # Fast R-CNN calls it with one "level" of foreground proposals and fg_mask=... (all of them)
    t = Box2BoxTransform(weights=(10.0, 10.0, 5.0, 5.0))
    props = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    gt = torch.tensor([[5.0, 5.0, 15.0, 25.0]])
    pred = torch.zeros(1, 1, 4)
    loss = _dense_box_regression_loss([props], t, [pred], [gt], ..., "smooth_l1", 0.0)
    assert loss.item() == pytest.approx(5.0 + 10.0 + 0.0 + 5 * math.log(2.0), rel=1e-6)
    empty = _dense_box_regression_loss([torch.zeros(0, 4)], t, [torch.zeros(1, 0, 4)], [torch.zeros(0, 4)], ..., "giou")
    assert empty.item() == 0.0
