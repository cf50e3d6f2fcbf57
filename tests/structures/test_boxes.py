from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.ops import box_iou

from detlightning.structures import (
    Boxes,
    BoxMode,
    matched_pairwise_iou,
    pairwise_intersection,
    pairwise_ioa,
    pairwise_iou,
    pairwise_point_box_distance,
)


def _random_boxes(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 50
    wh = torch.rand(n, 2, generator=g) * 30 + 1
    return torch.cat([xy, xy + wh], dim=1)


# ---------------------------------------------------------------- BoxMode
def test_boxmode_convert_list_tuple_hand_values():
    assert BoxMode.convert([1, 2, 3, 4], BoxMode.XYWH_ABS, BoxMode.XYXY_ABS) == [1, 2, 4, 6]
    out = BoxMode.convert((1.0, 2.0, 4.0, 6.0), BoxMode.XYXY_ABS, BoxMode.XYWH_ABS)
    assert isinstance(out, tuple) and out == (1.0, 2.0, 3.0, 4.0)


def test_boxmode_convert_numpy_and_tensor_keep_type_and_input():
    arr = np.array([[10.0, 20.0, 5.0, 8.0], [0.0, 0.0, 1.0, 2.0]], dtype=np.float32)
    out = BoxMode.convert(arr, BoxMode.XYWH_ABS, BoxMode.XYXY_ABS)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32
    np.testing.assert_allclose(out, [[10, 20, 15, 28], [0, 0, 1, 2]])
    np.testing.assert_allclose(arr[0], [10, 20, 5, 8])  # input untouched

    t = torch.tensor([[10.0, 20.0, 15.0, 28.0]])
    out_t = BoxMode.convert(t, BoxMode.XYXY_ABS, BoxMode.XYWH_ABS)
    assert torch.equal(out_t, torch.tensor([[10.0, 20.0, 5.0, 8.0]]))
    assert torch.equal(t, torch.tensor([[10.0, 20.0, 15.0, 28.0]]))
    # a single (4,) tensor keeps its shape
    assert BoxMode.convert(torch.tensor([1.0, 1.0, 2.0, 2.0]), 1, 0).tolist() == [1.0, 1.0, 3.0, 3.0]


def test_boxmode_round_trip():
    boxes = _random_boxes(20, 0)
    xywh = BoxMode.convert(boxes, BoxMode.XYXY_ABS, BoxMode.XYWH_ABS)
    assert torch.allclose(BoxMode.convert(xywh, BoxMode.XYWH_ABS, BoxMode.XYXY_ABS), boxes)
    assert BoxMode.convert(boxes, BoxMode.XYXY_ABS, BoxMode.XYXY_ABS) is boxes


def test_boxmode_rotated_hand_values():
    # a 4x2 box centred at (10, 10), turned by 90 degrees, is enclosed by a 2x4 rectangle
    out = BoxMode.convert(torch.tensor([[10.0, 10.0, 4.0, 2.0, 90.0]]), BoxMode.XYWHA_ABS, BoxMode.XYXY_ABS)
    assert torch.allclose(out, torch.tensor([[9.0, 8.0, 11.0, 12.0]]), atol=1e-5)
    out = BoxMode.convert([0.0, 0.0, 4.0, 2.0], BoxMode.XYWH_ABS, BoxMode.XYWHA_ABS)
    assert out == [2.0, 1.0, 4.0, 2.0, 0.0]


def test_boxmode_relative_and_bad_input_raise():
    with pytest.raises(ValueError, match="Relative"):
        BoxMode.convert([0, 0, 1, 1], BoxMode.XYXY_REL, BoxMode.XYXY_ABS)
    with pytest.raises(AssertionError):  # detectron2 raises AssertionError here; both must work
        BoxMode.convert([0, 0, 1, 1], BoxMode.XYXY_ABS, BoxMode.XYWH_REL)
    with pytest.raises(ValueError, match="k == 4 or 5"):
        BoxMode.convert([0, 0, 1], BoxMode.XYXY_ABS, BoxMode.XYWH_ABS)
    with pytest.raises(NotImplementedError):
        BoxMode.convert([0, 0, 1, 1], BoxMode.XYXY_ABS, BoxMode.XYWHA_ABS)


# ---------------------------------------------------------------- Boxes
def test_boxes_construction_and_empty():
    b = Boxes([[0, 0, 1, 1]])
    assert b.tensor.dtype == torch.float32 and b.tensor.shape == (1, 4)
    assert Boxes(torch.zeros(2, 4, dtype=torch.float64)).tensor.dtype == torch.float32
    for empty in (torch.empty(0), [], torch.zeros(0, 4)):
        e = Boxes(empty)
        assert e.tensor.shape == (0, 4) and len(e) == 0
    assert Boxes.cat([]).tensor.shape == (0, 4)
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        Boxes(torch.zeros(3, 5))


def test_boxes_area_centers_scale_nonempty():
    b = Boxes(torch.tensor([[0.0, 0.0, 4.0, 2.0], [1.0, 1.0, 1.0, 5.0], [2.0, 2.0, 3.5, 3.5]]))
    assert b.area().tolist() == [8.0, 0.0, 2.25]
    assert b.get_centers().tolist() == [[2.0, 1.0], [1.0, 3.0], [2.75, 2.75]]
    assert b.nonempty().tolist() == [True, False, True]
    assert b.nonempty(threshold=1.5).tolist() == [True, False, False]  # strictly larger
    b.scale(2.0, 0.5)
    assert b.tensor[0].tolist() == [0.0, 0.0, 8.0, 1.0]


def test_boxes_clip_and_inside_box():
    b = Boxes(torch.tensor([[-5.0, -1.0, 30.0, 8.0], [2.0, 3.0, 4.0, 5.0]]))
    inside = b.inside_box((10, 20))
    assert inside.tolist() == [False, True]
    assert b.inside_box((10, 20), boundary_threshold=11).tolist() == [True, True]
    original = b.tensor
    b.clip((10, 20))  # (height, width)
    assert b.tensor.tolist() == [[0.0, 0.0, 20.0, 8.0], [2.0, 3.0, 4.0, 5.0]]
    assert original[0, 0].item() == -5.0  # clip does not write into the old storage
    with pytest.raises(ValueError, match="inf or NaN"):
        Boxes(torch.tensor([[0.0, 0.0, float("nan"), 1.0]])).clip((4, 4))


def test_boxes_indexing_always_returns_boxes():
    t = _random_boxes(5, 1)
    b = Boxes(t)
    one = b[2]
    assert isinstance(one, Boxes) and one.tensor.shape == (1, 4) and torch.equal(one.tensor[0], t[2])
    assert torch.equal(b[-1].tensor[0], t[4])
    assert torch.equal(b[np.int64(1)].tensor[0], t[1])
    assert torch.equal(b[1:3].tensor, t[1:3])
    mask = torch.tensor([True, False, True, False, False])
    assert torch.equal(b[mask].tensor, t[[0, 2]])
    assert torch.equal(b[torch.tensor([4, 0])].tensor, t[[4, 0]])
    assert len(b[torch.zeros(5, dtype=torch.bool)]) == 0
    rows = list(b)
    assert len(rows) == 5 and torch.equal(rows[3], t[3])
    assert b.device == torch.device("cpu")
    assert repr(Boxes(torch.zeros(1, 4))).startswith("Boxes(tensor(")


def test_boxes_clone_to_cat():
    b = Boxes(_random_boxes(3, 2))
    c = b.clone()
    c.tensor[0, 0] = -100.0
    assert b.tensor[0, 0].item() != -100.0
    moved = b.to("cpu")
    assert isinstance(moved, Boxes) and torch.equal(moved.tensor, b.tensor)
    assert b.to(torch.float64).tensor.dtype == torch.float32  # boxes stay float32
    cat = Boxes.cat([b, Boxes(torch.zeros(0, 4)), c])
    assert len(cat) == 6 and torch.equal(cat.tensor[:3], b.tensor)
    cat.tensor[0, 0] = 1234.0
    assert b.tensor[0, 0].item() != 1234.0  # cat never shares storage
    with pytest.raises(TypeError):
        Boxes.cat([b, b.tensor])


# ---------------------------------------------------------------- pairwise functions
def test_pairwise_iou_matches_torchvision():
    b1, b2 = _random_boxes(7, 3), _random_boxes(5, 4)
    ours = pairwise_iou(Boxes(b1), Boxes(b2))
    assert ours.shape == (7, 5)
    assert torch.allclose(ours, box_iou(b1, b2), atol=1e-6)


def test_pairwise_iou_hand_case_and_empty_boxes():
    a = Boxes(torch.tensor([[0.0, 0.0, 2.0, 2.0]]))
    b = Boxes(torch.tensor([[1.0, 1.0, 3.0, 3.0], [5.0, 5.0, 6.0, 6.0], [1.0, 1.0, 1.0, 1.0]]))
    # overlap 1x1 = 1, union 4 + 4 - 1 = 7
    assert torch.allclose(pairwise_iou(a, b), torch.tensor([[1 / 7, 0.0, 0.0]]))
    assert pairwise_iou(a, Boxes(torch.zeros(0, 4))).shape == (1, 0)
    assert torch.allclose(pairwise_intersection(a, b), torch.tensor([[1.0, 0.0, 0.0]]))


def test_pairwise_ioa_hand_case():
    a = Boxes(torch.tensor([[0.0, 0.0, 4.0, 4.0]]))
    b = Boxes(torch.tensor([[2.0, 2.0, 6.0, 6.0], [1.0, 1.0, 2.0, 2.0], [10.0, 10.0, 11.0, 11.0]]))
    # intersections 4, 1, 0 over areas of b: 16, 1, 1
    assert torch.allclose(pairwise_ioa(a, b), torch.tensor([[0.25, 1.0, 0.0]]))


def test_pairwise_point_box_distance_hand_case():
    points = torch.tensor([[1.0, 2.0], [10.0, 10.0]])
    boxes = Boxes(torch.tensor([[0.0, 0.0, 4.0, 5.0]]))
    d = pairwise_point_box_distance(points, boxes)
    assert d.shape == (2, 1, 4)
    assert d[0, 0].tolist() == [1.0, 2.0, 3.0, 3.0]
    assert d[1, 0].tolist() == [10.0, 10.0, -6.0, -5.0]


def test_matched_pairwise_iou_is_diagonal():
    b1, b2 = _random_boxes(6, 5), _random_boxes(6, 6)
    b2[0] = b1[0]  # one identical pair -> IoU 1
    ours = matched_pairwise_iou(Boxes(b1), Boxes(b2))
    assert torch.allclose(ours, torch.diagonal(box_iou(b1, b2)), atol=1e-6)
    assert ours[0].item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="same number"):
        matched_pairwise_iou(Boxes(b1), Boxes(b2[:2]))
