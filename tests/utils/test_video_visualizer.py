"""VideoVisualizer: an object that moves a little between frames keeps its colour, a new object gets another one;
semantic and panoptic frames are drawn."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from detlightning.data.catalog import Metadata
from detlightning.structures import Boxes, Instances
from detlightning.utils._raster import to_rgb255
from detlightning.utils.video_visualizer import VideoVisualizer
from detlightning.utils.visualizer import ColorMode, VisImage

H, W = 64, 96


@pytest.fixture
def meta() -> Metadata:
    return Metadata(name="video_vis_test").set(
        thing_classes=["circle", "square"], stuff_classes=["sky", "ground"],
        stuff_colors=[[135, 206, 235], [110, 160, 60]],
    )


def _frame() -> np.ndarray:
    return np.full((H, W, 3), 40, dtype=np.uint8)


def _instances(boxes: list[list[float]], classes: list[int]) -> Instances:
    inst = Instances((H, W))
    inst.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
    inst.pred_classes = torch.tensor(classes)
    inst.scores = torch.full((len(classes),), 0.9)
    return inst


def _rect(x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    m = np.zeros((H, W), dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


def test_moved_object_keeps_its_colour_and_new_object_gets_another(meta):
    np.random.seed(0)
    vv = VideoVisualizer(meta)
    first = vv.draw_instance_predictions(_frame(), _instances([[10, 10, 40, 40]], [0]))
    assert isinstance(first, VisImage) and first.get_image().shape == (H, W, 3)
    (c1,) = [i.color for i in vv._old_instances]

    # moved by 2 px (box IoU ~0.77 > 0.6), plus a new object far away
    vv.draw_instance_predictions(_frame(), _instances([[12, 11, 42, 41], [60, 10, 90, 40]], [0, 0]))
    moved, new = vv._old_instances[:2]
    assert moved.color == c1
    assert new.color != c1

    # the box edge (a ~4.6 px line at alpha 0.5) is drawn in the tracked colour over the grey 40 background
    out = vv.draw_instance_predictions(_frame(), _instances([[12, 11, 42, 41]], [0])).get_image()
    assert vv._old_instances[0].color == c1
    expected = 0.5 * np.asarray(to_rgb255(c1)) + 0.5 * 40
    assert np.abs(out[25, 12] - expected).max() <= 6, (out[25, 12], expected)


def test_other_class_or_far_box_does_not_inherit_the_colour(meta):
    np.random.seed(1)
    vv = VideoVisualizer(meta)
    vv.draw_instance_predictions(_frame(), _instances([[10, 10, 40, 40]], [0]))
    (c1,) = [i.color for i in vv._old_instances]
    vv.draw_instance_predictions(_frame(), _instances([[10, 10, 40, 40]], [1]))  # same place, other class
    assert vv._old_instances[0].color != c1
    # the unmatched instance is remembered (ttl counted down) and reclaims its colour when it comes back
    assert vv._old_instances[1].color == c1 and vv._old_instances[1].ttl == 7
    vv.draw_instance_predictions(_frame(), _instances([[11, 10, 41, 40]], [0]))
    assert vv._old_instances[0].color == c1


def test_masks_without_boxes_are_tracked_by_mask_iou(meta):
    np.random.seed(2)
    vv = VideoVisualizer(meta)

    def frame_with(masks: list[np.ndarray]) -> Instances:
        inst = Instances((H, W))
        inst.pred_masks = torch.from_numpy(np.stack(masks))
        inst.pred_classes = torch.zeros(len(masks), dtype=torch.int64)
        return inst

    vv.draw_instance_predictions(_frame(), frame_with([_rect(10, 10, 30, 30)]))
    c1 = vv._old_instances[0].color
    out = vv.draw_instance_predictions(_frame(), frame_with([_rect(60, 10, 80, 30), _rect(11, 10, 31, 30)]))
    assert vv._old_instances[1].color == c1 and vv._old_instances[0].color != c1
    img = out.get_image()
    assert (img[20, 70] != 40).any() and (img[20, 20] != 40).any()  # both masks blended in
    assert (img[55, 45] == 40).all()  # background untouched


def test_sem_seg_frame(meta):
    vv = VideoVisualizer(meta)
    sem = np.zeros((H, W), dtype=np.int64)
    sem[32:] = 1
    img = vv.draw_sem_seg(_frame(), sem).get_image()
    assert img.shape == (H, W, 3)
    # ground (110, 160, 60) blended at alpha 0.8 over grey 40 in the lower half's interior
    assert abs(int(img[50, 5, 1]) - round(0.8 * 160 + 0.2 * 40)) <= 3


def test_panoptic_frames_keep_thing_colours(meta):
    np.random.seed(3)
    vv = VideoVisualizer(meta)
    info = [{"id": 1, "category_id": 0, "isthing": False}, {"id": 2, "category_id": 1, "isthing": True}]
    pan = np.ones((H, W), dtype=np.int64)
    pan[_rect(40, 20, 60, 40)] = 2
    out = vv.draw_panoptic_seg(_frame(), torch.from_numpy(pan), info, alpha=0.5)
    assert out.get_image().shape == (H, W, 3)
    c1 = vv._old_instances[0].color
    pan2 = np.ones((H, W), dtype=np.int64)
    pan2[_rect(41, 20, 61, 40)] = 2
    vv.draw_panoptic_seg(_frame(), pan2, info)
    assert vv._old_instances[0].color == c1


def test_unsupported_mode_is_refused(meta):
    with pytest.raises(ValueError, match="IMAGE_BW"):
        VideoVisualizer(meta, instance_mode=ColorMode.SEGMENTATION)
