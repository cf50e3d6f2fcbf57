from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from detlightning.data import transforms as T
from detlightning.data.detection_utils import transform_keypoint_annotations


def _img(h: int = 12, w: int = 16, c: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, c), dtype=np.uint8)


BOXES = np.array([[1.0, 2.0, 5.0, 9.0], [0.0, 0.0, 16.0, 12.0]])
POLYS = [np.array([[1.0, 2.0], [5.0, 2.0], [3.0, 9.0]])]


def test_hflip_vflip_match_numpy_and_are_involutions():
    img = _img()
    h = T.HFlipTransform(16)
    np.testing.assert_array_equal(h.apply_image(img), img[:, ::-1])
    np.testing.assert_array_equal(h.apply_box(BOXES), [[11, 2, 15, 9], [0, 0, 16, 12]])
    np.testing.assert_array_equal(h.apply_coords(np.array([[0.5, 3.0]])), [[15.5, 3.0]])
    twice = T.TransformList([h, h])
    np.testing.assert_array_equal(twice.apply_image(img), img)
    np.testing.assert_array_equal(twice.apply_box(BOXES), BOXES)
    np.testing.assert_allclose(twice.apply_polygons(POLYS)[0], POLYS[0])
    v = T.VFlipTransform(12)
    np.testing.assert_array_equal(v.apply_image(img), img[::-1])
    np.testing.assert_array_equal(v.apply_box(BOXES[:1]), [[1, 3, 5, 10]])
    assert h.inverse() is h


def test_flipped_pixel_and_coordinate_agree():
    img = np.zeros((10, 20), np.uint8)
    img[3, 4] = 255  # pixel (x=4, y=3), centre (4.5, 3.5)
    for t in (T.HFlipTransform(20), T.VFlipTransform(10)):
        out = t.apply_image(img)
        y, x = np.argwhere(out == 255)[0]
        np.testing.assert_allclose(t.apply_coords(np.array([[4.5, 3.5]]))[0], [x + 0.5, y + 0.5])


def test_resize_scales_by_exact_factor():
    t = T.ResizeTransform(12, 16, 30, 24)
    out = t.apply_image(_img())
    assert out.shape == (30, 24, 3) and out.dtype == np.uint8
    np.testing.assert_allclose(t.apply_box(BOXES), BOXES * np.array([1.5, 2.5, 1.5, 2.5]))
    np.testing.assert_allclose(t.apply_polygons(POLYS)[0], POLYS[0] * np.array([1.5, 2.5]))
    np.testing.assert_allclose(t.inverse().apply_box(t.apply_box(BOXES)), BOXES)
    # float images and label maps
    f = t.apply_image(_img().astype(np.float32))
    assert f.shape == (30, 24, 3) and f.dtype == np.float32
    seg = np.random.default_rng(0).integers(0, 5, (12, 16)).astype(np.uint8)
    assert set(np.unique(t.apply_segmentation(seg))) <= set(np.unique(seg))  # nearest: no new labels
    # a constant image stays constant
    np.testing.assert_array_equal(t.apply_image(np.full((12, 16, 3), 77, np.uint8)), 77)
    with pytest.raises(ValueError):
        t.apply_image(_img(5, 5))


@pytest.mark.parametrize(
    ("hw", "short", "max_size", "expected"),
    [((480, 640), 800, 1333, (800, 1067)), ((200, 1000), 400, 600, (120, 600)), ((641, 480), 800, 1333, (1068, 800))],
)
def test_resize_shortest_edge_shape(hw, short, max_size, expected):
    aug = T.ResizeShortestEdge(short, max_size)
    t = aug.get_transform(np.zeros((*hw, 3), np.uint8))
    assert (t.new_h, t.new_w) == expected
    assert T.ResizeShortestEdge.get_output_shape(*hw, short, max_size) == expected


def test_resize_shortest_edge_sampling():
    np.random.seed(0)
    img = np.zeros((100, 200, 3), np.uint8)
    choice = {T.ResizeShortestEdge([50, 70], 1000, "choice").get_transform(img).new_h for _ in range(40)}
    assert choice == {50, 70}
    rng = {T.ResizeShortestEdge([50, 53], 1000, "range").get_transform(img).new_h for _ in range(100)}
    assert rng == {50, 51, 52, 53}
    assert isinstance(T.ResizeShortestEdge(0).get_transform(img), T.NoOpTransform)
    with pytest.raises(ValueError):
        T.ResizeShortestEdge([1, 2, 3], sample_style="range")


def test_crop_image_coords_and_polygons():
    img = _img(20, 20)
    t = T.CropTransform(5, 4, 10, 8, orig_w=20, orig_h=20)
    np.testing.assert_array_equal(t.apply_image(img), img[4:12, 5:15])
    np.testing.assert_array_equal(t.apply_box(np.array([[6.0, 5.0, 9.0, 7.0]])), [[1, 1, 4, 3]])
    # square [0, 10]^2 clipped to the window [5, 15] x [4, 12] -> [5, 10] x [4, 10]: area 30, in crop coordinates
    square = np.array([[0.0, 0.0], [10.0, 0.0], [10.0, 10.0], [0.0, 10.0]])
    (clipped,) = t.apply_polygons([square])
    x, y = clipped[:, 0], clipped[:, 1]
    area = 0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1)))
    assert area == pytest.approx(30.0)
    assert x.min() == 0 and x.max() == 5 and y.min() == 0 and y.max() == 6
    # a polygon entirely outside is dropped
    assert t.apply_polygons([square + 100]) == []
    # inverse pads back to the original size, content in place
    back = t.inverse().apply_image(t.apply_image(img))
    assert back.shape == img.shape
    np.testing.assert_array_equal(back[4:12, 5:15], img[4:12, 5:15])
    assert back[0, 0].sum() == 0


def test_rotation_moves_pixels_where_coords_go():
    img = np.zeros((30, 40), np.uint8)
    img[5:8, 10:13] = 255  # a 3x3 blob centred at (11.5, 6.5)
    for angle, expand in ((90, True), (30, True), (-45, False)):
        t = T.RotationTransform(30, 40, angle, expand=expand)
        out = t.apply_image(img)
        assert out.shape == ((40, 30) if (angle == 90) else (t.bound_h, t.bound_w))
        ys, xs = np.nonzero(out > 127)
        centre = t.apply_coords(np.array([[11.5, 6.5]]))[0]
        np.testing.assert_allclose([xs.mean() + 0.5, ys.mean() + 0.5], centre, atol=0.6)
    # 90 degrees counter-clockwise, by hand: (x, y) -> (y, W - x) in the expanded (40 x 30) image
    t = T.RotationTransform(30, 40, 90)
    np.testing.assert_allclose(t.apply_coords(np.array([[0.0, 0.0], [40.0, 30.0]])), [[0, 40], [30, 0]], atol=1e-9)
    # the inverse maps coordinates back
    inv = t.inverse()
    pts = np.array([[3.0, 4.0], [20.0, 11.0]])
    np.testing.assert_allclose(inv.apply_coords(t.apply_coords(pts)), pts, atol=1e-6)
    assert isinstance(T.RandomRotation([0, 0]).get_transform(img), T.NoOpTransform)


def test_rotation_keeps_label_maps_discrete():
    seg = np.zeros((20, 20), np.uint8)
    seg[5:15, 5:15] = 3
    out = T.RotationTransform(20, 20, 33).apply_segmentation(seg)
    assert set(np.unique(out)) == {0, 3}


def test_photometric_blends_by_hand():
    img = _img()
    f = img.astype(np.float32)
    np.random.seed(1)
    t = T.RandomBrightness(0.5, 1.5).get_transform(img)
    np.testing.assert_array_equal(t.apply_image(img), np.clip(t.dst_weight * f, 0, 255).astype(np.uint8))
    t = T.RandomContrast(0.5, 1.5).get_transform(img)
    expected = np.clip((1 - t.dst_weight) * f.mean() + t.dst_weight * f, 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(t.apply_image(img), expected)
    t = T.RandomSaturation(0.0, 0.0).get_transform(img)  # weight 0: pure grey
    grey = (f @ np.array([0.299, 0.587, 0.114]))[..., None]
    np.testing.assert_array_equal(t.apply_image(img), np.clip(np.repeat(grey, 3, 2), 0, 255).astype(np.uint8))
    assert np.array_equal(t.apply_coords(np.ones((2, 2))), np.ones((2, 2)))
    assert isinstance(t.inverse(), T.NoOpTransform)


def test_random_crop_sizes():
    img = np.zeros((100, 200, 3), np.uint8)
    np.random.seed(0)
    assert T.RandomCrop("relative", (0.5, 0.25)).get_crop_size((100, 200)) == (50, 50)
    assert T.RandomCrop("absolute", (30, 500)).get_crop_size((100, 200)) == (30, 200)
    for _ in range(20):
        ch, cw = T.RandomCrop("relative_range", (0.5, 0.8)).get_crop_size((100, 200))
        assert 50 <= ch <= 100 and 160 <= cw <= 200
        ch, cw = T.RandomCrop("absolute_range", (20, 40)).get_crop_size((100, 200))
        assert 20 <= ch <= 40 and 20 <= cw <= 40
        t = T.RandomCrop("absolute", (30, 50)).get_transform(img)
        assert 0 <= t.x0 <= 150 and 0 <= t.y0 <= 70 and t.apply_image(img).shape == (30, 50, 3)
    with pytest.raises(ValueError):
        T.RandomCrop("bogus", (1, 1))


def test_random_flip_and_apply():
    img = _img()
    assert isinstance(T.RandomFlip(1.0).get_transform(img), T.HFlipTransform)
    assert isinstance(T.RandomFlip(1.0, horizontal=False, vertical=True).get_transform(img), T.VFlipTransform)
    assert isinstance(T.RandomFlip(0.0).get_transform(img), T.NoOpTransform)
    with pytest.raises(ValueError):
        T.RandomFlip(horizontal=True, vertical=True)
    with pytest.raises(ValueError):
        T.RandomFlip(horizontal=False, vertical=False)
    assert isinstance(T.RandomApply(T.RandomFlip(1.0), prob=0.0)(T.AugInput(img)), T.NoOpTransform)
    assert isinstance(T.RandomApply(T.HFlipTransform(16), prob=1.0)(T.AugInput(img)), T.HFlipTransform)


@pytest.mark.parametrize(
    "aug",
    [
        T.RandomFlip(1.0),
        T.RandomFlip(1.0, horizontal=False, vertical=True),
        T.Resize((24, 20)),
        T.ResizeShortestEdge([20, 30], 64, "range"),
        T.AugmentationList([T.CropTransform(1, 2, 12, 10)]),  # a window that contains the polygon
        T.RandomExtent((0.8, 1.2), (0.2, 0.2)),
        T.ResizeScale(0.5, 1.5, 16, 16),
    ],
    ids=lambda a: type(a).__name__,
)
def test_aug_input_keeps_boxes_polygons_keypoints_consistent(aug):
    """For axis-aligned transforms, boxes stay the bounding boxes of the transformed polygons, and keypoints go
    where the corresponding polygon vertices go."""
    np.random.seed(0)
    poly = np.array([[2.0, 3.0], [9.0, 3.5], [6.0, 10.0]])
    box = np.array([[poly[:, 0].min(), poly[:, 1].min(), poly[:, 0].max(), poly[:, 1].max()]])
    kpts = np.concatenate([poly, np.full((3, 1), 2.0)], axis=1)[None]  # (1, 3, 3)
    seg = np.zeros((12, 16), np.uint8)
    seg[2:6, 3:8] = 1
    inp = T.AugInput(_img(), boxes=box, sem_seg=seg, polygons=[[poly]], keypoints=kpts,
                     keypoint_hflip_indices=np.array([0, 2, 1]))  # fmt: skip
    tfm = aug(inp)
    (new_poly,) = inp.polygons[0] or [np.zeros((0, 2))]
    if len(new_poly):
        np.testing.assert_allclose(inp.boxes[0], [*new_poly.min(0), *new_poly.max(0)], atol=1e-6)
    moved = tfm.apply_coords(poly)
    flips = tfm.transforms if isinstance(tfm, T.TransformList) else [tfm]
    order = [0, 2, 1] if sum(isinstance(t, T.HFlipTransform) for t in flips) % 2 else [0, 1, 2]
    np.testing.assert_allclose(inp.keypoints[0, :, :2], moved[order], atol=1e-6)
    assert inp.image.shape[:2] == inp.sem_seg.shape


def test_keypoint_flip_swaps_via_flip_map():
    kp = [1.0, 1.0, 2, 2.0, 5.0, 2, 8.0, 5.0, 1]  # apex, left, right
    out = transform_keypoint_annotations(kp, T.TransformList([T.HFlipTransform(10)]), (10, 10), [0, 2, 1])
    # positions are mirrored (x -> 10 - x), then left/right swap names
    np.testing.assert_allclose(out, [[9, 1, 2], [2, 5, 1], [8, 5, 2]])
    with pytest.raises(ValueError, match="flip"):
        transform_keypoint_annotations(kp, T.TransformList([T.HFlipTransform(10)]), (10, 10), None)
    # two flips: no swap
    two = T.TransformList([T.HFlipTransform(10), T.HFlipTransform(10)])
    np.testing.assert_allclose(transform_keypoint_annotations(kp, two, (10, 10), None), np.reshape(kp, (3, 3)))
    # keypoints that leave the image become unlabelled (0, 0, 0): x - 3 < 0 for apex (1) and left (2)
    out = transform_keypoint_annotations(kp, T.TransformList([T.CropTransform(3, 0, 7, 10)]), (10, 7))
    np.testing.assert_allclose(out, [[0, 0, 0], [0, 0, 0], [5, 5, 1]])


def test_transform_list_flattens_and_inverts():
    a, b = T.HFlipTransform(16), T.ResizeTransform(12, 16, 24, 32)
    tl = T.TransformList([a, T.TransformList([b, T.NoOpTransform()])])
    assert len(tl) == 3 and tl[1] is b
    tl2 = tl + a
    assert len(tl2) == 4 and len(tl) == 3
    pts = np.array([[1.0, 2.0], [3.0, 4.0]])
    np.testing.assert_allclose(tl.inverse().apply_coords(tl.apply_coords(pts)), pts)
    with pytest.raises(TypeError):
        T.TransformList([a, "not a transform"])  # type: ignore[list-item]


def test_register_type():
    @T.HFlipTransform.register_type("points_list")
    def _flip_points(t, pts):
        return [(t.width - x, y) for x, y in pts]

    assert T.HFlipTransform(10).apply_points_list([(1, 2)]) == [(9, 2)]
    assert T.TransformList([T.HFlipTransform(10), T.HFlipTransform(10)]).apply_points_list([(1, 2)]) == [(1, 2)]
    assert T.NoOpTransform().apply_points_list([(1, 2)]) == [(1, 2)]


def test_extent_transform_coords_match_pixels():
    img = np.zeros((20, 20), np.uint8)
    img[4:6, 10:12] = 255  # centre (11, 5)
    t = T.ExtentTransform((5.0, 0.0, 15.0, 10.0), (20, 20))  # 2x zoom of [5, 15] x [0, 10]
    out = t.apply_image(img)
    ys, xs = np.nonzero(out > 127)
    np.testing.assert_allclose([xs.mean() + 0.5, ys.mean() + 0.5], t.apply_coords(np.array([[11.0, 5.0]]))[0], atol=0.6)
    np.testing.assert_allclose(t.apply_coords(np.array([[11.0, 5.0]]))[0], [12.0, 10.0])


def test_apply_augmentations_on_array_and_repr():
    img = _img()
    out, tfms = T.apply_augmentations([T.Resize(8)], img)
    assert out.shape == (8, 8, 3) and isinstance(tfms, T.TransformList)
    assert "Resize" in repr(T.Resize(8)) and "short_edge_length" in repr(T.ResizeShortestEdge(8))
    with pytest.raises(TypeError):
        T.AugInput(img.astype(np.int32))
    assert math.isclose(T.RandomLighting(0.0).get_transform(img).src_image.sum(), 0.0)
    assert isinstance(T.Resize(8, Image.NEAREST).get_transform(img), T.ResizeTransform)
