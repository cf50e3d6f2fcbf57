"""ROIPooler: FPN level assignment by hand, routing, agreement with torchvision's roi_align, edge cases."""
from __future__ import annotations

import math

import pytest
import torch
from torchvision.ops import roi_align, roi_pool

from detlightning.modeling.poolers import ROIPooler, assign_boxes_to_levels, convert_boxes_to_pooler_format
from detlightning.structures import Boxes


def _square(cx: float, cy: float, size: float) -> list[float]:
    return [cx - size / 2, cy - size / 2, cx + size / 2, cy + size / 2]


def test_assign_boxes_to_levels_by_hand() -> None:
    # level = floor(4 + log2(size / 224)), clamped to [2, 5], minus 2
    sizes = [224, 112, 448, 10, 1000, 223.9, 56, 55.9]
    expected = [2, 1, 3, 0, 3, 1, 0, 0]  # 4, 3, 5, 2(clamped), 5(clamped), 3, 2, 2(clamped)
    boxes = Boxes(torch.tensor([_square(500, 500, s) for s in sizes]))
    got = assign_boxes_to_levels([boxes], min_level=2, max_level=5, canonical_box_size=224, canonical_level=4)
    assert got.dtype == torch.int64
    assert got.tolist() == expected


def test_assign_rectangular_box_uses_sqrt_area() -> None:
    boxes = Boxes(torch.tensor([[0.0, 0.0, 448.0, 112.0]]))  # sqrt(area) = 224
    got = assign_boxes_to_levels([boxes], 2, 5, 224, 4)
    assert got.tolist() == [2]


def test_convert_boxes_to_pooler_format() -> None:
    a = Boxes(torch.tensor([[0.0, 1.0, 2.0, 3.0], [4.0, 5.0, 6.0, 7.0]]))
    b = Boxes(torch.zeros(0, 4))
    c = Boxes(torch.tensor([[8.0, 9.0, 10.0, 11.0]]))
    rois = convert_boxes_to_pooler_format([a, b, c])
    assert rois.tolist() == [[0, 0, 1, 2, 3], [0, 4, 5, 6, 7], [2, 8, 9, 10, 11]]


def _constant_pyramid(batch: int = 2, channels: int = 3, image: int = 1024) -> list[torch.Tensor]:
    # level k (stride 2**k) is filled with the value k, so the output reveals which level was used
    return [torch.full((batch, channels, image >> k, image >> k), float(k)) for k in (2, 3, 4, 5)]


def test_roialignv2_constant_maps_route_by_size() -> None:
    pooler = ROIPooler(7, scales=(1 / 4, 1 / 8, 1 / 16, 1 / 32), sampling_ratio=0, pooler_type="ROIAlignV2")
    feats = _constant_pyramid()
    img0 = Boxes(torch.tensor([_square(512, 512, 40), _square(512, 512, 230)]))  # levels 2, 4
    img1 = Boxes(torch.tensor([_square(400, 420, 120), _square(512, 512, 460), _square(60, 60, 30)]))  # 3, 5, 2
    out = pooler(feats, [img0, img1])
    assert out.shape == (5, 3, 7, 7)
    expected_levels = [2.0, 4.0, 3.0, 5.0, 2.0]
    for i, lvl in enumerate(expected_levels):
        assert torch.allclose(out[i], torch.full((3, 7, 7), lvl)), (i, out[i].unique())


def test_matches_torchvision_roi_align_per_box() -> None:
    g = torch.Generator().manual_seed(0)
    feats = [torch.randn(2, 4, 64 >> k, 80 >> k, generator=g) for k in (2, 3, 4, 5)]
    pooler = ROIPooler((5, 6), scales=(1 / 4, 1 / 8, 1 / 16, 1 / 32), sampling_ratio=2, pooler_type="ROIAlignV2")
    # canonical 32 px at level 3 so that small boxes spread across the levels of a small image
    pooler.canonical_box_size, pooler.canonical_level = 32, 3
    boxes = [
        Boxes(torch.tensor([[1.0, 2.0, 9.0, 12.0], [10.0, 5.0, 70.0, 60.0], [3.3, 4.4, 30.0, 25.5]])),
        Boxes(torch.tensor([[0.0, 0.0, 79.0, 63.0], [20.0, 20.0, 36.0, 36.0]])),
    ]
    out = pooler(feats, boxes)
    k = 0
    for img, bl in enumerate(boxes):
        for box in bl.tensor:
            size = math.sqrt(float((box[2] - box[0]) * (box[3] - box[1])))
            level = min(max(math.floor(3 + math.log2(size / 32 + 1e-8)), 2), 5)
            roi = torch.cat([torch.tensor([float(img)]), box])[None]
            ref = roi_align(feats[level - 2], roi, (5, 6), 1 / 2**level, 2, aligned=True)
            assert torch.allclose(out[k], ref[0], atol=1e-6), (img, box, level)
            k += 1
    assert k == out.shape[0]


@pytest.mark.parametrize("pooler_type", ["ROIAlign", "ROIPool"])
def test_single_level_types(pooler_type: str) -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 2, 16, 16, generator=g)
    boxes = [Boxes(torch.tensor([[4.0, 4.0, 40.0, 30.0], [0.0, 8.0, 20.0, 60.0]]))]
    out = ROIPooler(4, scales=[1 / 4], sampling_ratio=2, pooler_type=pooler_type)([x], boxes)
    rois = torch.tensor([[0.0, 4.0, 4.0, 40.0, 30.0], [0.0, 0.0, 8.0, 20.0, 60.0]])
    if pooler_type == "ROIAlign":
        ref = roi_align(x, rois, (4, 4), 0.25, 2, aligned=False)
    else:
        ref = roi_pool(x, rois, (4, 4), 0.25)
    assert torch.allclose(out, ref)


def test_empty_boxes() -> None:
    pooler = ROIPooler(7, scales=(1 / 4, 1 / 8, 1 / 16, 1 / 32), sampling_ratio=0, pooler_type="ROIAlignV2")
    feats = _constant_pyramid()
    out = pooler(feats, [Boxes(torch.zeros(0, 4)), Boxes(torch.zeros(0, 4))])
    assert out.shape == (0, 3, 7, 7)
    out = pooler([f[:0] for f in feats], [])
    assert out.shape == (0, 3, 7, 7)
    single = ROIPooler(7, scales=[1 / 16], sampling_ratio=0, pooler_type="ROIAlignV2")
    assert single([feats[2]], [Boxes(torch.zeros(0, 4))] * 2).shape == (0, 3, 7, 7)


def test_errors() -> None:
    pooler = ROIPooler(7, scales=(1 / 4, 1 / 8), sampling_ratio=0, pooler_type="ROIAlignV2")
    feats = _constant_pyramid()
    box = Boxes(torch.tensor([[0.0, 0.0, 10.0, 10.0]]))
    with pytest.raises(ValueError, match="2 feature maps.*list of 4 Tensors"):
        pooler(feats, [box, box])
    with pytest.raises(ValueError, match="batch size"):
        pooler(feats[:2], [box])
    with pytest.raises(TypeError, match="lists"):
        pooler(tuple(feats[:2]), [box, box])
    with pytest.raises(ValueError, match="Unknown pooler type"):
        ROIPooler(7, scales=[1 / 4], sampling_ratio=0, pooler_type="ROIAlignRotatedX")
    with pytest.raises(ValueError, match="pyramid"):
        ROIPooler(7, scales=(1 / 4, 1 / 16), sampling_ratio=0, pooler_type="ROIAlignV2")
    with pytest.raises(ValueError, match="power of 2"):
        ROIPooler(7, scales=(1 / 3,), sampling_ratio=0, pooler_type="ROIAlignV2")
