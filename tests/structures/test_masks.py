from __future__ import annotations

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch

from detlightning.layers.mask_ops import paste_masks_in_image
from detlightning.structures import (
    BitMasks,
    Boxes,
    PolygonMasks,
    ROIMasks,
    polygons_to_bitmask,
    rasterize_polygons_within_box,
)

SQUARE = [2.0, 2.0, 6.0, 2.0, 6.0, 6.0, 2.0, 6.0]  # covers pixels 2..5 in x and y
TRIANGLE = [0.0, 0.0, 4.0, 0.0, 0.0, 3.0]  # area 6


def _expected_block(size: int, lo: int, hi: int) -> np.ndarray:
    m = np.zeros((size, size), dtype=bool)
    m[lo:hi, lo:hi] = True
    return m


def _paste_reference(mask: np.ndarray, box: list[float], h: int, w: int) -> np.ndarray:
    """Soft pasted mask by the pixel model written out: pixel (i, j) has centre (j + .5, i + .5); mask cell k has
    centre at box-relative k + .5 of M cells; bilinear interpolation with zeros outside the mask."""
    m = mask.shape[0]
    x0, y0, x1, y1 = box
    out = np.zeros((h, w))
    for i in range(h):
        for j in range(w):
            u = (j + 0.5 - x0) / (x1 - x0) * m - 0.5
            v = (i + 0.5 - y0) / (y1 - y0) * m - 0.5
            fu, fv = int(np.floor(u)), int(np.floor(v))
            val = 0.0
            for dv in (0, 1):
                for du in (0, 1):
                    cu, cv = fu + du, fv + dv
                    if 0 <= cu < m and 0 <= cv < m:
                        val += (1 - abs(u - cu)) * (1 - abs(v - cv)) * mask[cv, cu]
            out[i, j] = val
    return out


# ---------------------------------------------------------------- polygons
def test_polygons_to_bitmask_square_and_empty():
    m = polygons_to_bitmask([np.array(SQUARE)], 8, 8)
    assert m.dtype == bool
    np.testing.assert_array_equal(m, _expected_block(8, 2, 6))
    assert not polygons_to_bitmask([], 5, 6).any() and polygons_to_bitmask([], 5, 6).shape == (5, 6)


def test_polygon_masks_validation_errors():
    with pytest.raises(TypeError, match="list"):
        PolygonMasks(np.zeros((2, 6)))
    with pytest.raises(TypeError, match="instance 0"):
        PolygonMasks([np.array(SQUARE)])
    with pytest.raises(ValueError, match="polygon 0 of instance 1"):
        PolygonMasks([[np.array(SQUARE)], [np.array([0.0, 0.0, 1.0, 1.0])]])
    with pytest.raises(ValueError, match="even number"):
        PolygonMasks([[np.arange(7.0)]])
    pm = PolygonMasks([[torch.tensor(SQUARE), SQUARE]])
    assert all(p.dtype == np.float64 for p in pm.polygons[0])


def test_polygon_area_by_hand_and_against_pycocotools():
    pm = PolygonMasks([[np.array(SQUARE)], [np.array([0.0, 0.0, 10.0, 0.0, 10.0, 10.0, 0.0, 10.0]),
                                            np.array(TRIANGLE) + 20], []])
    area = pm.area()
    assert area.dtype == torch.float64
    assert area.tolist() == [16.0, 106.0, 0.0]
    # an integer-aligned rectangle rasterises to exactly its geometric area
    rle = mask_util.merge(mask_util.frPyObjects([SQUARE], 8, 8))
    assert float(mask_util.area(rle)) == area[0].item()


def test_polygon_bounding_boxes_and_nonempty():
    pm = PolygonMasks([[np.array(SQUARE), np.array(TRIANGLE) + 10], [np.array(TRIANGLE) + [1, 2, 1, 2, 1, 2]], []])
    boxes = pm.get_bounding_boxes()
    assert isinstance(boxes, Boxes)
    assert boxes.tensor[0].tolist() == [2.0, 2.0, 14.0, 13.0]
    assert boxes.tensor[1].tolist() == [1.0, 2.0, 5.0, 5.0]
    assert pm.nonempty().tolist() == [True, True, False]


def test_polygon_masks_indexing_and_cat():
    pm = PolygonMasks([[np.array(SQUARE)], [np.array(TRIANGLE)], [np.array(SQUARE) + 1]])
    assert len(pm[1]) == 1 and np.array_equal(pm[1].polygons[0][0], TRIANGLE)
    assert len(pm[1:]) == 2
    assert np.array_equal(pm[[2, 0]].polygons[0][0], np.array(SQUARE) + 1)
    assert np.array_equal(pm[torch.tensor([False, True, False])].polygons[0][0], TRIANGLE)
    assert np.array_equal(pm[torch.tensor([2])].polygons[0][0], np.array(SQUARE) + 1)
    with pytest.raises(ValueError, match="dtype"):
        pm[torch.tensor([0.5])]
    cat = PolygonMasks.cat([pm, pm[0]])
    assert len(cat) == 4 and np.array_equal(cat.polygons[3][0], SQUARE)
    assert pm.to("cpu") is pm and pm.device == torch.device("cpu")
    assert [len(p) for p in pm] == [1, 1, 1]


def test_polygon_crop_and_resize_fills_expected_region():
    pm = PolygonMasks([[np.array(SQUARE)], [np.array(SQUARE)], [np.array(SQUARE)]])
    boxes = torch.tensor([[0.0, 0.0, 8.0, 8.0], [2.0, 2.0, 6.0, 6.0], [0.0, 0.0, 16.0, 16.0]])
    out = pm.crop_and_resize(boxes, 8)
    assert out.shape == (3, 8, 8) and out.dtype == torch.bool
    np.testing.assert_array_equal(out[0].numpy(), _expected_block(8, 2, 6))  # same frame
    assert out[1].all()  # the box is the square itself
    np.testing.assert_array_equal(out[2].numpy(), _expected_block(8, 1, 3))  # box twice as big: half size
    assert PolygonMasks([]).crop_and_resize(torch.zeros(0, 4), 5).shape == (0, 5, 5)
    with pytest.raises(ValueError, match="2 boxes for 3"):
        pm.crop_and_resize(boxes[:2], 8)


def test_rasterize_polygons_within_box_does_not_modify_input():
    poly = [np.array(SQUARE)]
    mask = rasterize_polygons_within_box(poly, np.array([2.0, 2.0, 6.0, 6.0], dtype=np.float32), 4)
    assert mask.dtype == torch.bool and mask.shape == (4, 4) and mask.all()
    assert poly[0].tolist() == SQUARE


# ---------------------------------------------------------------- BitMasks
def test_bitmasks_bounding_boxes_nonempty_area():
    t = torch.zeros(3, 6, 8, dtype=torch.bool)
    t[0, 1:4, 2:7] = True
    t[1, 5, 0] = True
    bm = BitMasks(t)
    assert bm.get_bounding_boxes().tensor.tolist() == [[2.0, 1.0, 7.0, 4.0], [0.0, 5.0, 1.0, 6.0], [0.0] * 4]
    assert bm.nonempty().tolist() == [True, True, False]
    assert bm.area().tolist() == [15, 1, 0]
    assert bm.image_size == (6, 8)


def test_bitmasks_construction_indexing_cat():
    bm = BitMasks(np.ones((2, 3, 4)))
    assert bm.tensor.dtype == torch.bool
    assert bm[0].tensor.shape == (1, 3, 4)
    assert len(bm[torch.tensor([True, False])]) == 1
    assert len(bm[0:2]) == 2
    assert len(BitMasks.cat([bm, bm[1]])) == 3
    assert "num_instances=2" in repr(bm)
    assert len(list(bm)) == 2 and bm.to("cpu").device == torch.device("cpu")
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        BitMasks(torch.zeros(3, 4))


def test_bitmasks_from_polygon_masks():
    bm = BitMasks.from_polygon_masks(PolygonMasks([[np.array(SQUARE)]]), 8, 10)
    assert bm.tensor.shape == (1, 8, 10)
    expected = np.zeros((8, 10), dtype=bool)
    expected[2:6, 2:6] = True
    np.testing.assert_array_equal(bm.tensor[0].numpy(), expected)
    assert BitMasks.from_polygon_masks([], 4, 5).tensor.shape == (0, 4, 5)


def test_bitmasks_crop_and_resize_by_hand():
    t = torch.zeros(3, 8, 8, dtype=torch.bool)
    t[0, 2:6, 2:6] = True
    t[1, 3:5, 3:5] = True  # each 2x2 bin sees only a quarter of it
    t[2, 2:6, 2:6] = True
    boxes = torch.tensor([[0.0, 0.0, 8.0, 8.0], [0.0, 0.0, 8.0, 8.0], [2.0, 2.0, 6.0, 6.0]])
    out = BitMasks(t).crop_and_resize(boxes, 4)
    assert out.shape == (3, 4, 4) and out.dtype == torch.bool
    np.testing.assert_array_equal(out[0].numpy(), _expected_block(4, 1, 3))
    assert not out[1].any()
    assert out[2].all()
    assert torch.equal(BitMasks(t).crop_and_resize(Boxes(boxes), 4), out)


# ---------------------------------------------------------------- pasting / ROIMasks
def test_paste_all_ones_fills_box_region_within_one_pixel():
    box = [2.3, 3.7, 10.2, 8.9]
    out = paste_masks_in_image(torch.ones(1, 28, 28), torch.tensor([box]), (12, 14))
    assert out.shape == (1, 12, 14) and out.dtype == torch.bool
    ys, xs = np.nonzero(out[0].numpy())
    # the filled region is a rectangle whose edges are within a pixel of the box's edges
    assert out[0, ys.min():ys.max() + 1, xs.min():xs.max() + 1].all()
    assert abs(xs.min() - box[0]) <= 1 and abs(xs.max() + 1 - box[2]) <= 1
    assert abs(ys.min() - box[1]) <= 1 and abs(ys.max() + 1 - box[3]) <= 1
    # and every pixel whose centre is well inside the box is set
    centre_inside = np.zeros((12, 14), dtype=bool)
    centre_inside[int(np.ceil(box[1])):int(np.floor(box[3])), int(np.ceil(box[0])):int(np.floor(box[2]))] = True
    assert out[0].numpy()[centre_inside].all()


def test_paste_known_masks_matches_pixel_model_reference():
    g = torch.Generator().manual_seed(0)
    masks = torch.rand(3, 7, 7, generator=g)
    boxes = torch.tensor([[1.2, 2.5, 9.7, 11.1], [-3.0, 4.0, 6.0, 30.0], [0.0, 0.0, 24.0, 20.0]])
    h, w = 20, 24
    out = paste_masks_in_image(masks, boxes, (h, w), threshold=0.5)
    for i in range(3):
        ref = _paste_reference(masks[i].numpy().astype(np.float64), boxes[i].tolist(), h, w)
        decided = np.abs(ref - 0.5) > 1e-4
        np.testing.assert_array_equal(out[i].numpy()[decided], (ref >= 0.5)[decided])
    soft = paste_masks_in_image(masks, boxes, (h, w), threshold=-1)
    assert soft.dtype == torch.uint8
    ref0 = _paste_reference(masks[0].numpy().astype(np.float64), boxes[0].tolist(), h, w)
    assert np.abs(soft[0].numpy().astype(np.float64) - ref0 * 255).max() <= 1.0


def test_paste_edge_cases():
    assert paste_masks_in_image(torch.zeros(0, 28, 28), torch.zeros(0, 4), (5, 6)).shape == (0, 5, 6)
    with pytest.raises(ValueError, match="square"):
        paste_masks_in_image(torch.zeros(1, 28, 14), torch.zeros(1, 4), (5, 6))
    with pytest.raises(ValueError, match="2 boxes for 1"):
        paste_masks_in_image(torch.zeros(1, 4, 4), torch.zeros(2, 4), (5, 6))
    boxes = Boxes(torch.tensor([[0.0, 0.0, 4.0, 4.0]]))
    assert paste_masks_in_image(torch.ones(1, 4, 4), boxes, (6, 6))[0, :4, :4].all()


def test_roimasks_to_bitmasks_and_indexing():
    roi = ROIMasks(torch.ones(2, 14, 14))
    boxes = Boxes(torch.tensor([[0.0, 0.0, 5.0, 5.0], [4.0, 2.0, 10.0, 6.0]]))
    bm = roi.to_bitmasks(boxes, 8, 12)
    assert isinstance(bm, BitMasks) and bm.tensor.shape == (2, 8, 12)
    assert bm.get_bounding_boxes().tensor.tolist() == [[0.0, 0.0, 5.0, 5.0], [4.0, 2.0, 10.0, 6.0]]
    assert torch.equal(BitMasks.from_roi_masks(roi, 8, 12, boxes=boxes).tensor, bm.tensor)
    with pytest.raises(TypeError, match="boxes"):
        BitMasks.from_roi_masks(roi, 8, 12)
    assert len(roi) == 2 and roi[1].tensor.shape == (1, 14, 14) and len(roi[roi.tensor.sum((1, 2)) > 0]) == 2
    assert roi.to(torch.float64).tensor.dtype == torch.float64
    with pytest.raises(ValueError, match=r"\(N, M, M\)"):
        ROIMasks(torch.ones(14, 14))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device for the chunked GPU paste path")
def test_paste_gpu_path_matches_cpu():
    g = torch.Generator().manual_seed(1)
    masks = torch.rand(5, 28, 28, generator=g)
    xy = torch.rand(5, 2, generator=g) * 40
    boxes = torch.cat([xy, xy + 5 + torch.rand(5, 2, generator=g) * 30], dim=1)
    cpu = paste_masks_in_image(masks, boxes, (64, 72))
    gpu = paste_masks_in_image(masks.cuda(), boxes.cuda(), (64, 72)).cpu()
    assert (cpu != gpu).float().mean().item() < 1e-3
