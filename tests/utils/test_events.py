from __future__ import annotations

import numpy as np
import pytest
import torch

from detlightning.utils.events import EventStorage, get_event_storage, has_event_storage
from detlightning.utils.history_buffer import HistoryBuffer


def test_history_buffer_median_avg_by_hand():
    h = HistoryBuffer()
    for i, v in enumerate([5.0, 1.0, 4.0, 2.0, 8.0]):
        h.update(v, iteration=10 + i)
    assert h.latest() == 8.0
    assert h.median(3) == 4.0  # median of [4, 2, 8]
    assert h.median(4) == 3.0  # median of [1, 4, 2, 8] = (2 + 4) / 2
    assert h.avg(2) == 5.0  # (2 + 8) / 2
    assert h.global_avg() == pytest.approx(4.0)  # 20 / 5
    assert h.median(100) == 4.0  # window larger than the history: all values
    assert h.values() == [(5.0, 10), (1.0, 11), (4.0, 12), (2.0, 13), (8.0, 14)]


def test_history_buffer_max_length_keeps_global_avg():
    h = HistoryBuffer(max_length=2)
    for v in [1.0, 2.0, 3.0, 10.0]:
        h.update(v)
    assert h.values() == [(3.0, 2), (10.0, 3)]  # default iteration = number of earlier updates
    assert h.avg(5) == 6.5
    assert h.global_avg() == 4.0  # (1 + 2 + 3 + 10) / 4, including dropped values


def test_history_buffer_empty_and_bad_window():
    h = HistoryBuffer()
    with pytest.raises(ValueError, match="empty"):
        h.latest()
    h.update(1.0)
    with pytest.raises(ValueError, match="window_size"):
        h.median(0)


def test_put_scalar_accepts_numbers_and_tensors():
    with EventStorage(start_iter=3) as s:
        s.put_scalar("a", 1)
        s.put_scalar("b", torch.tensor(2.5))
        s.put_scalar("c", np.float32(0.25))
        s.put_scalar("d", torch.tensor([7.0]))
        latest = s.latest()
    assert latest == {"a": (1.0, 3), "b": (2.5, 3), "c": (0.25, 3), "d": (7.0, 3)}
    assert all(type(v) is float for v, _ in latest.values())


def test_put_scalar_rejects_multi_element_tensor():
    s = EventStorage()
    with pytest.raises(ValueError, match="'x'.*shape"):
        s.put_scalar("x", torch.zeros(2))
    with pytest.raises(TypeError, match="'y'"):
        s.put_scalar("y", "abc")


def test_iteration_tagging_step_setter_and_cur_iter():
    s = EventStorage(start_iter=5)
    s.put_scalar("loss", 1.0)
    s.step()
    assert s.iter == 6 and s.iteration == 6
    s.put_scalar("loss", 2.0)
    s.iter = 10
    s.put_scalars(loss=3.0, acc=0.5)
    s.put_scalar("loss", 4.0, cur_iter=20)
    assert s.history("loss").values() == [(1.0, 5), (2.0, 6), (3.0, 10), (4.0, 20)]
    assert s.latest()["acc"] == (0.5, 10)
    assert s.latest()["loss"] == (4.0, 20)
    s.put_scalars(lr=0.1, cur_iter=3, smoothing_hint=False)
    assert s.latest()["lr"] == (0.1, 3)
    assert s.smoothing_hints() == {"loss": True, "acc": True, "lr": False}


def test_smoothing_hint_conflict_raises():
    s = EventStorage()
    s.put_scalar("lr", 0.1, smoothing_hint=False)
    with pytest.raises(ValueError, match="'lr'.*smoothing_hint"):
        s.put_scalar("lr", 0.2, smoothing_hint=True)
    assert s.history("lr").values() == [(0.1, 0)]  # the rejected value was not recorded


def test_history_unknown_name_lists_known():
    s = EventStorage()
    s.put_scalars(beta=1.0, alpha=2.0)
    with pytest.raises(KeyError) as ei:
        s.history("gamma")
    assert "'gamma'" in str(ei.value) and "alpha, beta" in str(ei.value)
    assert set(s.histories()) == {"alpha", "beta"}


def test_latest_with_smoothing_hint_median_vs_latest():
    s = EventStorage()
    values = [9.0, 1.0, 5.0, 3.0, 8.0]
    for v in values:
        s.put_scalar("loss", v)
        s.put_scalar("lr", v / 10, smoothing_hint=False)
        s.step()
    out = s.latest_with_smoothing_hint(window_size=3)
    assert out["loss"] == (5.0, 4)  # median of the last 3 iterations' [5, 3, 8]
    assert out["lr"] == (0.8, 4)  # not smoothed: latest
    assert s.latest_with_smoothing_hint(window_size=2)["loss"] == (5.5, 4)  # median of [3, 8]
    assert s.latest_with_smoothing_hint(window_size=4)["loss"] == (4.0, 4)  # median of [1, 5, 3, 8]
    assert s.latest_with_smoothing_hint(window_size=20)["loss"] == (5.0, 4)  # median of all 5


def test_latest_with_smoothing_hint_window_counts_iterations():
    # a scalar put every 4th iteration: a 10-iteration window holds the values of iterations 12, 16 and 20 only
    s = EventStorage()
    for itr, v in zip([0, 4, 8, 12, 16, 20], [100.0, 100.0, 100.0, 1.0, 2.0, 6.0]):
        s.put_scalar("loss", v, cur_iter=itr)
    assert s.count_samples("loss", 10) == 3
    assert s.latest_with_smoothing_hint(10)["loss"] == (2.0, 20)


def test_name_scope_prefixes_and_restores():
    s = EventStorage()
    with s.name_scope("rpn/"):
        s.put_scalar("loss", 1.0)
        with s.name_scope("inner"):
            s.put_scalar("x", 2.0)
        s.put_scalar("y", 3.0)
    s.put_scalar("z", 4.0)
    # d2-parity: a nested scope replaces the outer prefix
    assert set(s.latest()) == {"rpn/loss", "inner/x", "rpn/y", "z"}


def test_name_scope_restored_after_exception():
    s = EventStorage()
    with pytest.raises(RuntimeError):
        with s.name_scope("scope"):
            raise RuntimeError("boom")
    s.put_scalar("a", 1.0)
    assert list(s.latest()) == ["a"]


def test_get_event_storage_outside_context_raises():
    assert not has_event_storage()
    with pytest.raises(RuntimeError, match=r"inside a 'with EventStorage\(\.\.\.\)' context"):
        get_event_storage()
    with pytest.raises(AssertionError):  # d2-parity: code catching detectron2's assert still works
        get_event_storage()


def test_nested_storages_innermost_is_current():
    with EventStorage() as outer:
        assert get_event_storage() is outer
        with EventStorage(start_iter=7) as inner:
            assert get_event_storage() is inner
            get_event_storage().put_scalar("x", 1.0)
        assert get_event_storage() is outer
        assert "x" not in outer.latest() and inner.latest()["x"] == (1.0, 7)
    assert not has_event_storage()


def test_storage_popped_when_block_raises():
    with pytest.raises(ZeroDivisionError):
        with EventStorage():
            1 / 0
    assert not has_event_storage()


def test_put_image_and_clear():
    s = EventStorage(start_iter=2)
    img = torch.rand(3, 4, 5, requires_grad=True)
    s.put_image("vis", img)
    s.put_image("u8", np.zeros((3, 4, 5), dtype=np.uint8))
    assert [(n, it) for n, _, it in s.vis_data] == [("vis", 2), ("u8", 2)]
    assert not s.vis_data[0][1].requires_grad
    torch.testing.assert_close(s.vis_data[0][1], img.detach())
    s.clear_images()
    assert s.vis_data == []
    with pytest.raises(ValueError, match=r"'bad'.*\(3, H, W\)"):
        s.put_image("bad", torch.zeros(4, 5))


def test_put_histogram_counts():
    s = EventStorage(start_iter=1)
    t = torch.tensor([[0.0, 1.0], [1.0, 3.0]])
    s.put_histogram("w", t, bins=3)
    (h,) = s._histograms
    # bins over [0, 3]: [0, 1), [1, 2), [2, 3]
    assert h["bucket_counts"] == [1.0, 2.0, 1.0]
    assert h["bucket_limits"] == [1.0, 2.0, 3.0]
    assert (h["min"], h["max"], h["num"], h["sum"], h["sum_squares"]) == (0.0, 3.0, 4, 5.0, 11.0)
    assert h["global_step"] == 1
    s.clear_histograms()
    assert s._histograms == []
