"""ScaleTransform, GridSampleTransform, apply_rotated_box, RandomResize, MinIoURandomCrop,
RandomCrop_CategoryAreaConstraint, RandomCrop's absolute types and the input_args lookup of Augmentation."""
from __future__ import annotations

import math

import numpy as np
import pytest

from detlightning.data import transforms as T
from detlightning.data.detection_utils import transform_instance_annotations
from detlightning.structures import BoxMode


def _sorted_rows(a: np.ndarray) -> np.ndarray:
    a = np.round(np.asarray(a, dtype=np.float64).reshape(-1, 2), 9)
    return a[np.lexsort((a[:, 1], a[:, 0]))]


# ----------------------------------------------------------------------------------- polygons: resize then crop
def test_polygon_through_resize_then_crop_lands_on_hand_computed_coordinates():
    # 20 x 40 image resized to 40 x 60 (x * 1.5, y * 2), then the window x in [10, 40), y in [5, 35) is cropped.
    aug_input = T.AugInput(np.zeros((20, 40, 3), np.uint8))
    tfms = aug_input.apply_augmentations([T.Resize((40, 60)), T.CropTransform(10, 5, 30, 30)])
    assert aug_input.image.shape == (30, 30, 3)
    anno = {
        "bbox": [4.0, 2.0, 20.0, 10.0],
        "bbox_mode": BoxMode.XYXY_ABS,
        "category_id": 0,
        # a rectangle (4, 2)-(20, 10) and a triangle that ends up partly outside the window
        "segmentation": [[4.0, 2.0, 20.0, 2.0, 20.0, 10.0, 4.0, 10.0], [0.0, 0.0, 12.0, 0.0, 12.0, 6.0]],
    }
    out = transform_instance_annotations(anno, tfms, (30, 30))
    # resized rectangle (6, 4)-(30, 20); clipped to the window -> (10, 5)-(30, 20); shifted by (-10, -5)
    np.testing.assert_allclose(out["bbox"], [0.0, 0.0, 20.0, 15.0])
    rect, tri = out["segmentation"]
    np.testing.assert_allclose(_sorted_rows(rect), [[0, 0], [0, 15], [20, 0], [20, 15]])
    # resized triangle (0, 0), (18, 0), (18, 12); the window keeps x >= 10, y >= 5: the region below the
    # hypotenuse y = 2 x / 3, i.e. (10, 5)-(18, 5)-(18, 12)-(10, 6.666..); shifted by (-10, -5)
    np.testing.assert_allclose(_sorted_rows(tri), _sorted_rows([[0, 0], [0, 5 / 3], [8, 0], [8, 7]]), atol=1e-9)


# ----------------------------------------------------------------------------------------------- ScaleTransform
def test_scale_transform_image_coords_segmentation_and_inverse():
    img = np.array([[0.0, 1.0], [2.0, 3.0]], dtype=np.float32)
    t = T.ScaleTransform(2, 2, 4, 4)  # bilinear, align_corners=False
    # output pixel i samples input (i + 0.5) / 2 - 0.5 = -0.25, 0.25, 0.75, 1.25, clamped to [0, 1]
    wgt = np.array([0.0, 0.25, 0.75, 1.0], dtype=np.float32)
    np.testing.assert_allclose(t.apply_image(img), wgt[None, :] * 1.0 + wgt[:, None] * 2.0, atol=1e-6)
    # uint8 (H, W, C) is rounded back to uint8 with the channels kept
    u8 = np.stack([img * 50, img * 10], axis=2).astype(np.uint8)
    out = t.apply_image(u8)
    assert out.dtype == np.uint8 and out.shape == (4, 4, 2)
    np.testing.assert_array_equal(out[..., 0], np.round((wgt[None, :] + 2 * wgt[:, None]) * 50))
    # a batch (N, H, W, C)
    assert t.apply_image(np.zeros((3, 2, 2, 1), np.float32)).shape == (3, 4, 4, 1)
    # nearest for segmentation, integer labels unchanged
    seg = np.array([[1, 2], [3, 4]], dtype=np.int64)
    out_seg = t.apply_segmentation(seg)
    assert out_seg.dtype == np.int64
    np.testing.assert_array_equal(out_seg, np.kron(seg, np.ones((2, 2), np.int64)))
    np.testing.assert_allclose(t.apply_coords(np.array([[1.0, 0.5], [2.0, 2.0]])), [[2.0, 1.0], [4.0, 4.0]])
    inv = t.inverse()
    assert isinstance(inv, T.ScaleTransform) and (inv.h, inv.w, inv.new_h, inv.new_w) == (4, 4, 2, 2)
    np.testing.assert_array_equal(inv.apply_segmentation(out_seg), seg)
    # a non-square scale on coordinates and boxes
    t2 = T.ScaleTransform(10, 20, 30, 10, interp="nearest")
    np.testing.assert_allclose(t2.apply_box(np.array([[2.0, 1.0, 8.0, 5.0]])), [[1.0, 3.0, 4.0, 15.0]])
    with pytest.raises(ValueError, match="size"):
        t2.apply_image(np.zeros((5, 5), np.float32))


# ----------------------------------------------------------------------------------------- GridSampleTransform
def _identity_grid(h: int, w: int) -> np.ndarray:
    # align_corners=False: pixel centre j of w maps to (2 j + 1) / w - 1
    xs = (2 * np.arange(w) + 1) / w - 1
    ys = (2 * np.arange(h) + 1) / h - 1
    gx, gy = np.meshgrid(xs, ys)
    return np.stack([gx, gy], axis=-1)[None].astype(np.float32)


@pytest.mark.parametrize("interp", ["bilinear", "nearest"])
def test_grid_sample_identity_grid_is_identity(interp):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
    t = T.GridSampleTransform(_identity_grid(5, 7), interp)
    out = t.apply_image(img)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, img)
    flt = rng.random((5, 7)).astype(np.float64)
    np.testing.assert_allclose(t.apply_image(flt), flt, atol=1e-6)
    seg = rng.integers(0, 9, size=(5, 7)).astype(np.int32)
    np.testing.assert_array_equal(t.apply_segmentation(seg), seg)
    with pytest.raises(NotImplementedError):
        t.apply_coords(np.zeros((1, 2)))


def test_grid_sample_mirrored_grid_flips_and_border_padding_clamps():
    img = np.arange(12, dtype=np.float32).reshape(3, 4)
    grid = _identity_grid(3, 4)
    mirrored = grid.copy()
    mirrored[..., 0] *= -1
    np.testing.assert_allclose(T.GridSampleTransform(mirrored, "bilinear").apply_image(img), img[:, ::-1])
    outside = np.full((1, 1, 2, 2), 5.0, np.float32)  # far outside: padding_mode="border" takes the corner pixel
    np.testing.assert_allclose(T.GridSampleTransform(outside, "bilinear").apply_image(img), [[11.0, 11.0]])


# --------------------------------------------------------------------------------------------- apply_rotated_box
def _corners(rboxes: np.ndarray) -> np.ndarray:
    """(N, 4, 2) corners of (cx, cy, w, h, angle CCW degrees) boxes in image coordinates (y down)."""
    out = []
    for cx, cy, w, h, a in np.asarray(rboxes, dtype=np.float64):
        c, s = math.cos(math.radians(a)), math.sin(math.radians(a))
        local = [(-w / 2, -h / 2), (w / 2, -h / 2), (w / 2, h / 2), (-w / 2, h / 2)]
        out.append([(cx + c * x + s * y, cy - s * x + c * y) for x, y in local])
    return np.asarray(out)


RBOX = np.array([[10.0, 5.0, 4.0, 2.0, 30.0], [20.0, 8.0, 6.0, 3.0, -45.0]])


def test_rotated_box_hand_values_for_flips_crop_pad_and_resize():
    np.testing.assert_allclose(T.HFlipTransform(40).apply_rotated_box(RBOX[:1]), [[30.0, 5.0, 4.0, 2.0, -30.0]])
    np.testing.assert_allclose(T.VFlipTransform(12).apply_rotated_box(RBOX[:1]), [[10.0, 7.0, 4.0, 2.0, -30.0]])
    np.testing.assert_allclose(T.CropTransform(3, 1, 20, 10).apply_rotated_box(RBOX[:1]), [[7.0, 4.0, 4.0, 2.0, 30.0]])
    np.testing.assert_allclose(T.PadTransform(2, 5, 0, 0).apply_rotated_box(RBOX[:1]), [[12.0, 10.0, 4.0, 2.0, 30.0]])
    # uniform x2: centre and sides double, the angle stays
    np.testing.assert_allclose(T.ResizeTransform(10, 20, 20, 40).apply_rotated_box(RBOX[:1]), [[20, 10, 8, 4, 30]])
    # x2 along x only: a box at 90 degrees has its width along y (unchanged) and its height along x (doubled)
    box90 = np.array([[10.0, 5.0, 4.0, 2.0, 90.0]])
    np.testing.assert_allclose(T.ResizeTransform(10, 20, 10, 40).apply_rotated_box(box90), [[20, 5, 4, 4, 90]])
    # x2 along x at 45 degrees: detectron2's approximation keeps the image of the height side, which points along
    # (sin, cos) = (1, 1) / sqrt(2) -> (2, 1) / sqrt(2): angle atan2(2, 1), both sides scaled by sqrt(2.5)
    box45 = np.array([[10.0, 5.0, 4.0, 2.0, 45.0]])
    np.testing.assert_allclose(
        T.ResizeTransform(10, 20, 10, 40).apply_rotated_box(box45),
        [[20, 5, 4 * math.sqrt(2.5), 2 * math.sqrt(2.5), math.degrees(math.atan2(2, 1))]],
    )
    box0 = np.array([[10.0, 5.0, 4.0, 2.0, 0.0]])
    np.testing.assert_allclose(T.ScaleTransform(10, 20, 10, 40).apply_rotated_box(box0), [[20, 5, 8, 2, 0]])
    for t in (T.NoOpTransform(), T.BlendTransform(0.0, 0.5, 0.5), T.ColorTransform(lambda x: x)):
        np.testing.assert_array_equal(t.apply_rotated_box(RBOX), RBOX)
    # a TransformList applies its members in turn: mirror in a 40 wide image, then shift by -5
    tl = T.TransformList([T.HFlipTransform(40), T.CropTransform(5, 0, 30, 10)])
    np.testing.assert_allclose(tl.apply_rotated_box(RBOX[:1]), [[25.0, 5.0, 4.0, 2.0, -30.0]])
    # the input is not modified in place
    before = RBOX.copy()
    T.HFlipTransform(40).apply_rotated_box(RBOX)
    np.testing.assert_array_equal(RBOX, before)


@pytest.mark.parametrize(
    "tfm",
    [
        T.HFlipTransform(40),
        T.VFlipTransform(12),
        T.CropTransform(3, 1, 20, 10),
        T.PadTransform(2, 5, 1, 1),
        T.ResizeTransform(12, 40, 24, 80),
        T.ScaleTransform(12, 40, 6, 20),
        T.RotationTransform(12, 40, 30.0),
        T.RotationTransform(12, 40, -70.0, expand=False, center=(3.0, 4.0)),
        T.ExtentTransform((-4.0, 2.0, 36.0, 22.0), (10, 20)),
    ],
    ids=lambda t: type(t).__name__,
)
def test_rotated_box_corners_follow_apply_coords(tfm):
    """For rigid motions, flips and uniform scales a rotated box stays exact: its corners are the transformed
    corners (the corner order may change)."""
    out = tfm.apply_rotated_box(RBOX)
    expected = tfm.apply_coords(_corners(RBOX).reshape(-1, 2)).reshape(-1, 4, 2)
    for got, exp in zip(_corners(out), expected):
        np.testing.assert_allclose(_sorted_rows(got), _sorted_rows(exp), atol=1e-9)


def test_rotated_box_angle_zero_agrees_with_apply_box():
    xyxy = np.array([[2.0, 1.0, 10.0, 5.0]])
    rbox = np.array([[6.0, 3.0, 8.0, 4.0, 0.0]])
    for t in (T.ResizeTransform(12, 16, 24, 8), T.CropTransform(1, 1, 10, 10), T.HFlipTransform(16)):
        cx, cy, w, h, _ = t.apply_rotated_box(rbox)[0]
        np.testing.assert_allclose([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], t.apply_box(xyxy)[0])


def test_rotated_box_unsupported_transform_raises():
    t = T.GridSampleTransform(_identity_grid(2, 2), "nearest")
    with pytest.raises(NotImplementedError, match="GridSampleTransform"):
        t.apply_rotated_box(RBOX)
    with pytest.raises(ValueError, match=r"\(N, 5\)"):
        T.HFlipTransform(4).apply_rotated_box(np.zeros((2, 4)))


# -------------------------------------------------------------------------------------------------- RandomResize
def test_random_resize_draws_one_of_the_shapes():
    shapes = [(8, 10), (12, 6), (4, 4)]
    aug = T.RandomResize(shapes)
    img = np.zeros((5, 7, 3), np.uint8)
    for seed in range(6):
        np.random.seed(seed)
        t = aug.get_transform(img)
        expected = shapes[np.random.RandomState(seed).randint(0, len(shapes))]
        assert isinstance(t, T.ResizeTransform)
        assert (t.h, t.w, t.new_h, t.new_w) == (5, 7, *expected)
        assert t.apply_image(img).shape == (*expected, 3)


# --------------------------------------------------------------------------------------------- MinIoURandomCrop
def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    lt = np.maximum(a[:2], b[:, :2])
    rb = np.minimum(a[2:], b[:, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=1)
    area_a = np.prod(a[2:] - a[:2])
    area_b = np.prod(b[:, 2:] - b[:, :2], axis=1)
    return inter / (area_a + area_b - inter)


def test_min_iou_random_crop_follows_detectron2_draws():
    """With boxes that any window passes, the first window is taken: replay detectron2's draws (mode, new_w, new_h,
    then numpy's uniform(low) for left/top)."""
    img = np.zeros((100, 100, 3), np.uint8)
    boxes = np.array([[0.0, 0.0, 100.0, 100.0]])
    aug = T.MinIoURandomCrop(min_ious=(0.0,), min_crop_size=0.9)
    kinds = set()
    for seed in range(8):
        np.random.seed(seed)
        t = aug(T.AugInput(img.copy(), boxes=boxes.copy()))
        rs = np.random.RandomState(seed)
        mode = rs.choice((1, 0.0, 0))
        if mode == 1:
            assert isinstance(t, T.NoOpTransform)
            kinds.add("none")
            continue
        new_w, new_h = rs.uniform(90, 100), rs.uniform(90, 100)
        left, top = rs.uniform(100 - new_w), rs.uniform(100 - new_h)
        assert isinstance(t, T.CropTransform)
        assert (t.x0, t.y0, t.w, t.h) == (int(left), int(top), int(new_w), int(new_h))
        kinds.add("crop")
    assert kinds == {"none", "crop"}


def test_min_iou_random_crop_windows_meet_the_constraints():
    img = np.zeros((60, 80, 3), np.uint8)
    boxes = np.array([[10.0, 10.0, 40.0, 35.0], [30.0, 20.0, 70.0, 55.0]])
    aug = T.MinIoURandomCrop()
    crops = 0
    for seed in range(25):
        np.random.seed(seed)
        aug_input = T.AugInput(img.copy(), boxes=boxes.copy())
        t = aug(aug_input)  # get_transform(image, boxes): both read from the AugInput
        if isinstance(t, T.NoOpTransform):
            continue
        crops += 1
        window = np.array([t.x0, t.y0, t.x0 + t.w, t.y0 + t.h], dtype=np.float64)
        assert 0 <= window[0] < window[2] <= 80 and 0 <= window[1] < window[3] <= 60
        assert t.w >= int(0.3 * 80) - 1 and t.h >= int(0.3 * 60) - 1
        # d2-parity: the window checked is (int(left), int(top), int(left + new_w), int(top + new_h)), the crop
        # int(new_w) x int(new_h) from (int(left), int(top)): their far corners differ by at most one pixel
        checked = [window + np.array([0, 0, dx, dy]) for dx in (0, 1) for dy in (0, 1)]
        assert max(_iou(p, boxes).min() for p in checked) >= aug.mode - 1e-6
        centers = (boxes[:, :2] + boxes[:, 2:]) / 2
        assert any(((centers > p[:2]) & (centers < p[2:])).all(axis=1).any() for p in checked)
        assert aug_input.image.shape == (t.h, t.w, 3)
    assert crops > 5
    # no boxes: nothing to constrain, no crop
    assert isinstance(aug.get_transform(img, None), T.NoOpTransform)


# ---------------------------------------------------------------------------- RandomCrop_CategoryAreaConstraint
def _passes(window: np.ndarray, max_area: float, ignored: int | None) -> bool:
    labels, counts = np.unique(window, return_counts=True)
    if ignored is not None:
        counts = counts[labels != ignored]
    return len(counts) > 1 and counts.max() < counts.sum() * max_area


@pytest.mark.parametrize("ignored", [None, 255])
def test_category_area_constraint_takes_the_first_passing_window(ignored):
    sem_seg = np.zeros((10, 12), np.uint8)
    sem_seg[:4, :5] = 1
    sem_seg[8:, :] = 255
    aug = T.RandomCrop_CategoryAreaConstraint("absolute", (5, 6), single_category_max_area=0.7,
                                              ignored_category=ignored)
    img = np.zeros((10, 12, 3), np.uint8)
    for seed in range(10):
        np.random.seed(seed)
        aug_input = T.AugInput(img.copy(), sem_seg=sem_seg.copy())
        t = aug(aug_input)  # get_transform(image, sem_seg)
        rs = np.random.RandomState(seed)
        for _ in range(10):  # replay: "absolute" draws nothing for the size, then y0, x0
            y0, x0 = rs.randint(10 - 5 + 1), rs.randint(12 - 6 + 1)
            if _passes(sem_seg[y0 : y0 + 5, x0 : x0 + 6], 0.7, ignored):
                break
        assert (t.x0, t.y0, t.w, t.h) == (x0, y0, 6, 5)
        np.testing.assert_array_equal(aug_input.sem_seg, sem_seg[y0 : y0 + 5, x0 : x0 + 6])


def test_category_area_constraint_off_is_a_random_crop():
    img = np.zeros((10, 12, 3), np.uint8)
    sem_seg = np.zeros((10, 12), np.uint8)
    np.random.seed(3)
    a = T.RandomCrop_CategoryAreaConstraint("relative", (0.5, 0.5)).get_transform(img, sem_seg)
    np.random.seed(3)
    b = T.RandomCrop("relative", (0.5, 0.5)).get_transform(img)
    assert (a.x0, a.y0, a.w, a.h) == (b.x0, b.y0, b.w, b.h) and (a.w, a.h) == (6, 5)
    # nothing passes (a single category): the last window drawn is used
    t = T.RandomCrop_CategoryAreaConstraint("absolute", (4, 4), 0.5).get_transform(img, sem_seg)
    assert (t.w, t.h) == (4, 4)


# ----------------------------------------------------------------------------------- RandomCrop absolute types
def test_random_crop_absolute_and_absolute_range():
    img = np.zeros((10, 8, 3), np.uint8)
    np.random.seed(0)
    t = T.RandomCrop("absolute", (3, 5)).get_transform(img)
    assert (t.h, t.w) == (3, 5) and 0 <= t.y0 <= 7 and 0 <= t.x0 <= 3
    t = T.RandomCrop("absolute", (20, 5)).get_transform(img)  # larger than the image: clamped
    assert (t.h, t.w, t.y0) == (10, 5, 0)
    aug = T.RandomCrop("absolute_range", (4, 9))
    sizes = set()
    for seed in range(30):
        np.random.seed(seed)
        t = aug.get_transform(img)
        rs = np.random.RandomState(seed)
        ch, cw = rs.randint(4, 9 + 1), rs.randint(4, 8 + 1)  # height in [4, min(10, 9)], width in [4, min(8, 9)]
        assert (t.h, t.w) == (ch, cw)
        assert (t.y0, t.x0) == (rs.randint(10 - ch + 1), rs.randint(8 - cw + 1))
        sizes.add((t.h, t.w))
    assert len(sizes) > 5
    with pytest.raises(ValueError, match="crop_type"):
        T.RandomCrop("pixels", (3, 3))


# ---------------------------------------------------------------------------------------------------- input_args
class _ImageAndSemSeg(T.Augmentation):
    def __init__(self):
        self.seen = None

    def get_transform(self, image, sem_seg):
        self.seen = (image.shape, None if sem_seg is None else int(sem_seg.sum()))
        return T.CropTransform(0, 0, image.shape[1] // 2, image.shape[0])


class _OneArgAnyName(T.Augmentation):
    def get_transform(self, img):
        return T.HFlipTransform(img.shape[1])


class _NeedsPolygons(T.Augmentation):
    def get_transform(self, image, polygons):
        return T.NoOpTransform() if polygons else T.HFlipTransform(image.shape[1])


class _VarArgs(T.Augmentation):
    def get_transform(self, *args):
        return T.NoOpTransform()


class _Explicit(T.Augmentation):
    input_args = ("sem_seg",)

    def get_transform(self, seg):
        return T.VFlipTransform(seg.shape[0])


def test_get_transform_receives_the_inputs_its_signature_names():
    img = np.zeros((4, 6, 3), np.uint8)
    seg = np.arange(24, dtype=np.int64).reshape(4, 6)
    aug = _ImageAndSemSeg()
    aug_input = T.AugInput(img, sem_seg=seg)
    tfm = aug(aug_input)
    assert aug.seen == ((4, 6, 3), int(seg.sum())) and aug.input_args == ("image", "sem_seg")
    np.testing.assert_array_equal(aug_input.sem_seg, seg[:, :3])
    assert isinstance(tfm, T.CropTransform)
    # a single parameter is the image whatever its name
    aug_input = T.AugInput(img, sem_seg=seg)
    assert isinstance(_OneArgAnyName()(aug_input), T.HFlipTransform)
    np.testing.assert_array_equal(aug_input.sem_seg, seg[:, ::-1])
    # any AugInput attribute, including detlightning's extra fields
    assert isinstance(_NeedsPolygons()(T.AugInput(img, polygons=[[np.zeros((3, 2))]])), T.NoOpTransform)
    # an explicit input_args wins over the signature
    aug_input = T.AugInput(img, sem_seg=seg)
    assert isinstance(_Explicit()(aug_input), T.VFlipTransform)
    np.testing.assert_array_equal(aug_input.image, img)
    # inside AugmentationList / RandomApply, and through apply_augmentations
    aug_input = T.AugInput(img, sem_seg=seg)
    T.AugmentationList([T.RandomApply(_ImageAndSemSeg(), prob=1.0), _OneArgAnyName()])(aug_input)
    np.testing.assert_array_equal(aug_input.sem_seg, seg[:, :3][:, ::-1])
    assert T.RandomApply(_ImageAndSemSeg()).input_args == ("image", "sem_seg")


def test_input_args_errors_name_the_missing_input():
    img = np.zeros((4, 6, 3), np.uint8)

    class NoSemSeg:
        image = img

    with pytest.raises(AttributeError, match="'sem_seg'"):
        _ImageAndSemSeg()(NoSemSeg())
    with pytest.raises(TypeError, match=r"\*args"):
        _VarArgs()(T.AugInput(img))
