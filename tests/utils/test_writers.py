from __future__ import annotations

import json

import pytest
import torch

from detlightning.utils import events
from detlightning.utils.events import CommonMetricPrinter, EventStorage, JSONWriter, TensorboardXWriter


def _read_json_lines(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def test_json_writer_one_line_per_new_iteration(tmp_path):
    path = tmp_path / "metrics.json"
    writer = JSONWriter(str(path), window_size=2)
    with EventStorage() as s:
        s.put_scalars(loss=4.0)
        s.put_scalar("lr", 0.1, smoothing_hint=False)
        writer.write()
        s.step()
        s.put_scalars(loss=2.0)
        s.put_scalar("lr", 0.2, smoothing_hint=False)
        s.step()
        s.put_scalars(loss=6.0)
        s.put_scalar("lr", 0.3, smoothing_hint=False)
        writer.write()
        s.step()
        s.put_scalar("loss", 1.0)  # lr not put at iteration 3: it must not be written again
        writer.write()
        writer.write()  # nothing new: no line
        s.step()
        s.put_scalar("eval/AP", 50.0, smoothing_hint=False, cur_iter=4)
        s.put_scalar("other", 7.0, smoothing_hint=False, cur_iter=5)
        writer.write()
    writer.close()

    assert _read_json_lines(path) == [
        {"iteration": 0, "loss": 4.0, "lr": 0.1},
        {"iteration": 2, "loss": 4.0, "lr": 0.3},  # loss: median of iterations 1-2 = (2 + 6) / 2
        {"iteration": 3, "loss": 3.5},  # median of (6, 1)
        {"iteration": 4, "eval/AP": 50.0},
        {"iteration": 5, "other": 7.0},
    ]


def test_json_writer_appends_to_existing_file(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps({"iteration": -1}) + "\n")
    writer = JSONWriter(path)
    with EventStorage(start_iter=9) as s:
        s.put_scalar("x", 1.0, smoothing_hint=False)
        writer.write()
    writer.close()
    assert _read_json_lines(path) == [{"iteration": -1}, {"iteration": 9, "x": 1.0}]


def test_writer_outside_storage_raises(tmp_path):
    writer = JSONWriter(tmp_path / "m.json")
    with pytest.raises(RuntimeError, match="EventStorage"):
        writer.write()
    writer.close()


def test_tensorboard_writer_scalars_and_images(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    log_dir = tmp_path / "tb"
    writer = TensorboardXWriter(str(log_dir), window_size=20)
    with EventStorage() as s:
        for v in [3.0, 1.0, 2.0]:
            s.put_scalar("loss", v)
            s.put_scalar("lr", v / 10, smoothing_hint=False)
            s.step()
        s.put_image("vis/img", torch.rand(3, 8, 6))
        s.put_histogram("weights", torch.arange(10, dtype=torch.float32), bins=5)
        writer.write()
        assert s.vis_data == [] and s._histograms == []  # consumed by the writer
    writer.close()

    files = list(log_dir.glob("events.out.tfevents.*"))
    assert len(files) == 1 and files[0].stat().st_size > 0
    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 0, "histograms": 0})
    acc.Reload()
    tags = acc.Tags()
    assert set(tags["scalars"]) == {"loss", "lr"}
    (loss,) = acc.Scalars("loss")
    assert (loss.step, loss.value) == (2, 2.0)  # median of 3, 1, 2
    (lr,) = acc.Scalars("lr")
    assert lr.step == 2 and lr.value == pytest.approx(0.2)
    assert tags["images"] == ["vis/img"]
    (img,) = acc.Images("vis/img")
    assert (img.step, img.height, img.width) == (3, 8, 6)
    assert tags["histograms"] == ["weights"]


def test_common_metric_printer_line(printer_messages, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    printer = CommonMetricPrinter(max_iter=13, window_size=20)
    with EventStorage() as s:
        for t, dt, loss in [(0.2, 0.01, 1.0), (0.7, 0.03, 3.0), (0.3, 0.02, 2.5)]:
            s.put_scalars(time=t, data_time=dt, loss_cls=loss)
            s.put_scalar("lr", 0.01, smoothing_hint=False)
            s.step()
        s.iter = 2
        printer.write()
        # eta = median(time) * (max_iter - iter - 1) = 0.3 * 10 s
        assert s.latest()["eta_seconds"] == (pytest.approx(3.0), 2)
        s.iter = 13
        printer.write()  # the last iteration: silent
    (line,) = printer_messages
    assert line.split("  ") == [
        " eta: 0:00:03",
        "iter: 2",
        "loss_cls: 2.5",
        "time: 0.4000",  # global average of (0.2, 0.7, 0.3)
        "last_time: 0.3000",
        "data_time: 0.0200",
        "last_data_time: 0.0200",
        "lr: 0.01",
    ]


def test_common_metric_printer_without_time_estimates_eta(printer_messages, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    clock = iter([100.0, 105.0])
    monkeypatch.setattr(events, "_clock", lambda: next(clock))
    printer = CommonMetricPrinter(max_iter=31)
    with EventStorage() as s:
        s.put_scalar("loss", 1.0)
        printer.write()  # no previous write: no ETA yet
        s.iter = 10
        printer.write()  # 5 s for 10 iterations -> 0.5 s/iter * 20 remaining
    assert printer_messages == [" iter: 0  loss: 1  lr: N/A", " eta: 0:00:10  iter: 10  loss: 1  lr: N/A"]
