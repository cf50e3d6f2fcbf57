"""Visualizer: PNGs for instances / sem_seg / panoptic / dataset dicts change the pixels where objects are and
leave far-away pixels untouched; labels carry class names; keypoints and their connections are drawn."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from PIL import Image

from detlightning.data.catalog import Metadata
from detlightning.structures import Boxes, BoxMode, Instances
from detlightning.utils._raster import connected_components, to_rgb
from detlightning.utils.colormap import colormap, random_color, random_colors
from detlightning.utils.visualizer import ColorMode, VisImage, Visualizer

H, W = 120, 240
FAR = np.s_[:, 200:]  # nothing is drawn right of x = 200 in these tests
RULE_COLOR = (255, 128, 0)


class RecordingVisualizer(Visualizer):
    """The Visualizer, remembering the texts its composites ask ``draw_text`` to write."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.texts: list[str] = []

    def draw_text(self, text, position, **kwargs):
        self.texts.append(text)
        return super().draw_text(text, position, **kwargs)


@pytest.fixture
def image() -> np.ndarray:
    yy, xx = np.mgrid[:H, :W]
    return np.stack([xx, yy * 2, np.full_like(xx, 90)], axis=2).astype(np.uint8)


@pytest.fixture
def meta() -> Metadata:
    return Metadata(name="vis_test").set(
        thing_classes=["circle", "triangle", "square"],
        thing_colors=[[220, 20, 60], [0, 130, 200], [255, 200, 0]],
        stuff_classes=["sky", "ground"],
        stuff_colors=[[135, 206, 235], [110, 160, 60]],
        keypoint_names=["apex", "left_base", "right_base", "center"],
        keypoint_connection_rules=[("apex", "left_base", RULE_COLOR)],
    )


def _disk(cx: float, cy: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[:H, :W]
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= r**2


def _rect(x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    m = np.zeros((H, W), dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


def _changed(out: np.ndarray, img: np.ndarray, x: int, y: int, min_diff: int = 10) -> bool:
    return int(np.abs(out[y, x].astype(int) - img[y, x].astype(int)).sum()) >= min_diff


def _png(vis_image: VisImage, path: Path) -> np.ndarray:
    vis_image.save(path)
    out = np.asarray(Image.open(path))
    assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3
    np.testing.assert_array_equal(out, vis_image.get_image())
    return out


def _predictions() -> Instances:
    kps = torch.zeros(2, 4, 3)
    # apex and left_base visible (joined by the rule), right_base below the threshold, center visible
    kps[0] = torch.tensor([[30.0, 100.0, 0.9], [70.0, 100.0, 0.8], [50.0, 112.0, 0.01], [120.0, 105.0, 0.7]])
    return Instances(
        (H, W),
        pred_boxes=Boxes(torch.tensor([[20.0, 30.0, 60.0, 70.0], [80.0, 40.0, 110.0, 90.0]])),
        scores=torch.tensor([0.9, 0.75]),
        pred_classes=torch.tensor([0, 2]),
        pred_masks=torch.from_numpy(np.stack([_disk(40, 50, 18), _rect(82, 42, 108, 88)])),
        pred_keypoints=kps,
    )


@pytest.mark.parametrize("mode", [ColorMode.IMAGE, ColorMode.SEGMENTATION])
def test_instance_predictions_png(image, meta, tmp_path, mode):
    np.random.seed(0)
    vis = RecordingVisualizer(image, meta, instance_mode=mode)
    out = _png(vis.draw_instance_predictions(_predictions()), tmp_path / "instances.png")
    assert out.shape == image.shape
    # larger box first; "name score%" labels
    assert vis.texts == ["circle 90%", "square 75%"]
    for x, y in [(40, 50), (95, 65), (20, 50), (110, 80)]:  # mask interiors, box edges
        assert _changed(out, image, x, y), (x, y)
    np.testing.assert_array_equal(out[FAR], image[FAR])
    # the label sits on a dark box at the top-left corner of the first box
    assert out[32, 22].sum() < image[32, 22].sum() * 0.6
    # keypoints: red dots, the connection in the rule's colour, nothing for a low score
    np.testing.assert_array_equal(out[100, 30], [255, 0, 0])
    np.testing.assert_array_equal(out[100, 70], [255, 0, 0])
    np.testing.assert_array_equal(out[105, 120], [255, 0, 0])
    np.testing.assert_array_equal(out[100, 50], RULE_COLOR)
    np.testing.assert_array_equal(out[112, 50], image[112, 50])


def test_labels_without_metadata_use_ids(image):
    vis = RecordingVisualizer(image)
    vis.draw_instance_predictions(_predictions())
    assert vis.texts == ["0 90%", "2 75%"]


def test_image_bw_greys_the_background(image, meta):
    out = Visualizer(image, meta, instance_mode=ColorMode.IMAGE_BW).draw_instance_predictions(_predictions())
    out = out.get_image()
    far = out[FAR].astype(int)
    assert (far[..., 0] == far[..., 1]).all() and (far[..., 1] == far[..., 2]).all()
    assert len(set(out[50, 40].tolist())) > 1  # colour kept under the mask


def test_sem_seg_png(image, meta, tmp_path):
    sem = np.full((H, W), 255, dtype=np.int64)  # 255: not a stuff class, never drawn
    sem[:60, :100] = 0
    sem[60:, :100] = 1
    sem[5, 120:123] = 1  # a 3-pixel speck
    vis = RecordingVisualizer(image, meta)
    out = _png(vis.draw_sem_seg(torch.from_numpy(sem), area_threshold=10), tmp_path / "sem_seg.png")
    assert sorted(vis.texts) == ["ground", "sky"]
    assert _changed(out, image, 10, 10) and _changed(out, image, 90, 110)
    np.testing.assert_array_equal(out[5, 120:123], image[5, 120:123])  # below area_threshold
    np.testing.assert_array_equal(out[FAR], image[FAR])
    # sky is blended towards its stuff colour (alpha 0.8)
    expected = 0.2 * image[10, 10] + 0.8 * np.array([135, 206, 235])
    assert np.abs(out[10, 10] - expected).max() <= 2

    out = Visualizer(image, meta).draw_sem_seg(sem).get_image()  # no threshold: the speck is drawn
    assert _changed(out, image, 121, 5)


def test_panoptic_png(image, meta, tmp_path):
    seg = np.zeros((H, W), dtype=np.int32)  # id 0 has no segment info: left alone
    seg[:40, :120] = 1
    seg[50:90, 20:60] = 2
    seg[50:100, 80:110] = 3
    info = [
        {"id": 1, "category_id": 0, "isthing": False},
        {"id": 2, "category_id": 0, "isthing": True, "score": 0.95},
        {"id": 3, "category_id": 1, "isthing": True, "score": 0.6},
    ]
    vis = RecordingVisualizer(image, meta)
    out = _png(vis.draw_panoptic_seg(torch.from_numpy(seg), info), tmp_path / "panoptic.png")
    assert vis.texts[0] == "sky" and sorted(vis.texts[1:]) == ["circle 95%", "triangle 60%"]
    for x, y in [(10, 10), (40, 70), (95, 75)]:
        assert _changed(out, image, x, y), (x, y)
    np.testing.assert_array_equal(out[FAR], image[FAR])
    np.testing.assert_array_equal(out[110, 150:200], image[110, 150:200])


def test_panoptic_without_segments_info(image, meta):
    meta.set(label_divisor=1000, thing_dataset_id_to_contiguous_id={1: 0, 2: 1, 3: 2})
    seg = np.full((H, W), -1, dtype=np.int64)  # -1: void
    seg[50:90, 20:60] = 2 * 1000 + 1  # category 2 (square), instance 1
    vis = RecordingVisualizer(image, meta)
    out = vis.draw_panoptic_seg(torch.from_numpy(seg), None).get_image()
    assert vis.texts == ["square"]
    assert _changed(out, image, 40, 70)
    np.testing.assert_array_equal(out[FAR], image[FAR])


def test_dataset_dict_png(image, meta, tmp_path):
    rect = _rect(82, 42, 108, 88)
    rle = mask_util.encode(np.asfortranarray(rect.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    sem = np.full((H, W), 255, dtype=np.uint8)
    sem[:20, 120:140] = 1
    Image.fromarray(sem).save(tmp_path / "sem.png")
    dic = {
        "file_name": "unused.png", "height": H, "width": W, "sem_seg_file_name": str(tmp_path / "sem.png"),
        "annotations": [
            {"bbox": [20.0, 30.0, 40.0, 40.0], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 0,
             "segmentation": [[20.0, 50.0, 40.0, 30.0, 60.0, 50.0, 40.0, 70.0]],
             "keypoints": [30, 100, 2, 70, 100, 2, 50, 112, 0, 120, 105, 1]},
            {"bbox": [80.0, 40.0, 110.0, 90.0], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 2, "iscrowd": 1,
             "segmentation": rle, "keypoints": [0] * 12},
        ],
    }  # fmt: skip
    vis = RecordingVisualizer(image, meta)
    out = _png(vis.draw_dataset_dict(dic), tmp_path / "dataset_dict.png")
    assert vis.texts[:2] == ["circle", "square|crowd"] and vis.texts[2:] == ["ground"]
    for x, y in [(40, 50), (95, 65), (130, 10)]:  # polygon, RLE, sem_seg file
        assert _changed(out, image, x, y), (x, y)
    np.testing.assert_array_equal(out[100, 30], [255, 0, 0])
    np.testing.assert_array_equal(out[100, 50], RULE_COLOR)
    np.testing.assert_array_equal(out[112, 50], image[112, 50])  # visibility 0
    np.testing.assert_array_equal(out[FAR], image[FAR])


def test_dataset_dict_panoptic_file(image, meta, tmp_path):
    ids = np.zeros((H, W), dtype=np.int64)
    ids[50:90, 20:60] = 300  # > 255: needs the G channel of the COCO id encoding
    rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], axis=2).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "pan.png")
    dic = {"pan_seg_file_name": str(tmp_path / "pan.png"),
           "segments_info": [{"id": 300, "category_id": 1, "isthing": True, "iscrowd": 0}]}
    vis = RecordingVisualizer(image, meta)
    out = vis.draw_dataset_dict(dic).get_image()
    assert vis.texts == ["triangle"]
    assert _changed(out, image, 40, 70)
    np.testing.assert_array_equal(out[FAR], image[FAR])


def test_primitives_and_scale(image):
    vis = Visualizer(image, scale=2.0)
    vis.draw_binary_mask(_rect(20, 20, 60, 60), color="r", text="obj")
    vis.draw_polygon(np.array([[80, 20], [120, 20], [100, 60]]), color=(0.0, 0.0, 1.0), alpha=0.9)
    vis.draw_line([10, 150], [100, 100], color="g", linestyle="--")
    vis.draw_circle((170, 30), color="white", radius=5)
    vis.draw_box((130, 60, 180, 90), edge_color="#00ffff")
    vis.draw_text("hello", (140, 10), color="y")
    out = vis.get_output().get_image()
    assert out.shape == (2 * H, 2 * W, 3)
    assert out[2 * 40, 2 * 50, 0] > out[2 * 40, 2 * 50, 2]  # red mask
    assert out[2 * 30, 2 * 100, 2] > 200  # opaque-ish blue polygon
    np.testing.assert_array_equal(out[2 * 30, 2 * 170], [255, 255, 255])
    # the box edge: cyan at opacity 0.5 over the upscaled image
    edge, below = out[2 * 60, 2 * 155].astype(int), out[2 * 60 + 12, 2 * 155].astype(int)
    assert edge[1] - below[1] > 40 and edge[2] - below[2] > 60 and edge[0] < below[0] - 60


def test_bad_input_is_rejected(image):
    vis = Visualizer(image)
    with pytest.raises(ValueError, match="mask shape"):
        vis.draw_binary_mask(np.ones((10, 10), dtype=bool))
    with pytest.raises(ValueError, match="outside"):
        vis.draw_box((0, 0, 10, 10), edge_color=(255, 0, 0))
    with pytest.raises(ValueError, match="unknown colour"):
        vis.draw_box((0, 0, 10, 10), edge_color="notacolour")
    with pytest.raises(ValueError, match="labels"):
        vis.overlay_instances(boxes=np.zeros((2, 4)), labels=["a"])
    with pytest.raises(ValueError, match="RGB image"):
        Visualizer(np.zeros((4, 4, 2)))


def test_to_rgb_matches_matplotlib_names():
    assert to_rgb("g") == (0.0, 0.5, 0.0)
    assert to_rgb("white") == (1.0, 1.0, 1.0)
    assert to_rgb("#ff8000") == (1.0, 128 / 255, 0.0)
    assert to_rgb([0.1, 0.2, 0.3, 0.5]) == (0.1, 0.2, 0.3)


def test_colormap():
    rgb = colormap(rgb=True, maximum=1)
    assert rgb.dtype == np.float32 and rgb.ndim == 2 and rgb.shape[1] == 3 and len(rgb) >= 70
    assert (rgb.max(1) - rgb.min(1) > 0.2).all()  # no greys
    assert len(np.unique(np.round(rgb, 3), axis=0)) == len(rgb)  # all distinct
    np.testing.assert_allclose(colormap(rgb=False, maximum=255), rgb[:, ::-1] * 255, rtol=1e-6)
    np.random.seed(1)
    c = random_color(rgb=True, maximum=255)
    assert c.shape == (3,) and any(np.allclose(c, row * 255) for row in rgb)
    many = random_colors(len(rgb), rgb=True, maximum=1)
    assert len(np.unique(np.round(np.stack(many), 4), axis=0)) == len(rgb)
    assert len(random_colors(len(rgb) + 5)) == len(rgb) + 5
    with pytest.raises(ValueError, match="maximum"):
        colormap(maximum=100)


def test_connected_components():
    m = np.zeros((6, 8), dtype=bool)
    m[0, 0] = m[1, 1] = True  # diagonal neighbours: one component (8-connectivity)
    m[0, 5:8] = True
    m[1:4, 7] = True  # an L shape
    m[5, 2:4] = True
    num, labels, areas = connected_components(m)
    assert num == 3
    assert labels[0, 0] == labels[1, 1] != 0
    assert len({labels[0, 5], labels[3, 7]}) == 1 and labels[5, 2] not in (labels[0, 0], labels[0, 5])
    assert sorted(areas[1:].tolist()) == [2, 2, 6] and areas[0] == m.size - 10
    assert (labels[~m] == 0).all()
