"""CommonMetricPrinter's non-loss metrics, and the Visualizer drawing a mask with a hole as one region."""
from __future__ import annotations

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch

from detlightning.structures import BitMasks, Instances
from detlightning.utils.events import CommonMetricPrinter, EventStorage
from detlightning.utils.visualizer import GenericMask, Visualizer


def test_common_metric_printer_puts_metrics_after_losses(printer_messages, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    printer = CommonMetricPrinter(max_iter=100, window_size=2)
    with EventStorage() as s:
        for it, (loss, scale, acc) in enumerate([(4.0, 1024.0, 0.1), (1.0, 512.0, 0.2), (3.0, 256.0, 0.3)]):
            s.iter = it
            s.put_scalars(total_loss=loss, loss_box_reg=loss / 2, time=0.5, data_time=0.25)
            s.put_scalar("[metric]grad_scaler", scale)
            s.put_scalar("fast_rcnn/cls_accuracy", acc)  # not a loss and not tagged "[metric]": not printed
            s.put_scalar("lr", 0.02, smoothing_hint=False)
        printer.write()
    (line,) = printer_messages
    # window_size=2: medians over iterations 1 and 2 -> mean of the two middle values
    assert line.split("  ") == [
        " eta: 0:00:48",  # median(time) 0.5 * (100 - 2 - 1)
        "iter: 2",
        "total_loss: 2",
        "loss_box_reg: 1",
        "[metric]grad_scaler: 384",
        "time: 0.5000",
        "last_time: 0.5000",
        "data_time: 0.2500",
        "last_data_time: 0.2500",
        "lr: 0.02",
    ]


# --------------------------------------------------------------------------------------------------- ring mask
H = W = 40
GREY = 100


def _ring() -> np.ndarray:
    m = np.zeros((H, W), dtype=bool)
    m[5:35, 5:35] = True
    m[15:25, 15:25] = False  # the hole
    return m


def _image() -> np.ndarray:
    return np.full((H, W, 3), GREY, dtype=np.uint8)


def _check_ring(out: np.ndarray, scale: float = 1.0) -> None:
    s = scale
    hole = out[int(16 * s) : int(24 * s), int(16 * s) : int(24 * s)].reshape(-1, 3)
    np.testing.assert_array_equal(hole, np.full_like(hole, GREY))  # the hole keeps the image colour
    band = out[int(8 * s) : int(12 * s), int(8 * s) : int(32 * s)].reshape(-1, 3)
    assert (band[:, 0] > band[:, 1] + 50).all()  # the ring itself is tinted red
    outside = out[: int(3 * s), : int(3 * s)].reshape(-1, 3)
    np.testing.assert_array_equal(outside, np.full_like(outside, GREY))


def test_generic_mask_of_a_ring_has_holes():
    gm = GenericMask(_ring(), H, W)
    assert gm.has_holes
    assert len(gm.polygons) == 2  # outer contour + hole contour: drawing both filled would paint the hole
    assert not GenericMask(np.pad(np.ones((30, 30), bool), 5), H, W).has_holes


@pytest.mark.parametrize("scale", [1.0, 2.0])
def test_draw_binary_mask_keeps_the_hole(scale):
    out = Visualizer(_image(), scale=scale).draw_binary_mask(_ring(), color=(1.0, 0.0, 0.0)).get_image()
    assert out.shape == (int(H * scale), int(W * scale), 3)
    _check_ring(out, scale)


@pytest.mark.parametrize("form", ["array", "bitmasks", "rle"])
def test_overlay_instances_keeps_the_hole(form):
    ring = _ring()
    if form == "array":
        masks = ring[None]
    elif form == "bitmasks":
        masks = BitMasks(torch.from_numpy(ring[None]))
    else:
        masks = [mask_util.encode(np.asfortranarray(ring.astype(np.uint8)))]
    out = Visualizer(_image()).overlay_instances(masks=masks, assigned_colors=[(1.0, 0.0, 0.0)]).get_image()
    _check_ring(out)


def test_draw_instance_predictions_keeps_the_hole():
    inst = Instances((H, W))
    inst.pred_masks = torch.from_numpy(_ring()[None])
    out = Visualizer(_image()).draw_instance_predictions(inst).get_image()  # random colour, no label
    hole = out[16:24, 16:24].reshape(-1, 3)
    np.testing.assert_array_equal(hole, np.full_like(hole, GREY))
    band = out[8:12, 8:32].reshape(-1, 3)
    assert (band != GREY).any(axis=1).all()  # every ring pixel is tinted
