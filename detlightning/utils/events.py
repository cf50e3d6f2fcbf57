"""``EventStorage`` (where models put training metrics and images) and the writers that drain it.

Model code calls ``get_event_storage().put_scalar(...)`` during training; the loop that owns the storage
(``with EventStorage(start_iter) as storage:``) advances ``storage.iter`` and periodically calls the writers:
``JSONWriter`` (``metrics.json``, one line per iteration), ``CommonMetricPrinter`` (a log line with ETA, losses,
time, lr) and ``TensorboardXWriter``.
"""
from __future__ import annotations

import datetime
import json
import logging
import math
import os
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from .file_io import PathManager
from .history_buffer import HistoryBuffer

__all__ = [
    "CommonMetricPrinter",
    "EventStorage",
    "EventStorageError",
    "EventWriter",
    "HistoryBuffer",
    "JSONWriter",
    "TensorboardXWriter",
    "check_losses_finite",
    "get_event_storage",
    "has_event_storage",
]

logger = logging.getLogger(__name__)

_CURRENT_STORAGE_STACK: list[EventStorage] = []
_clock = time.perf_counter  # module-level so the ETA fallback can be tested without patching the time module


class EventStorageError(RuntimeError, AssertionError):
    """No ``EventStorage`` is active.

    d2-parity: detectron2 signals this with ``assert``, so the error is also an ``AssertionError`` for code that
    catches that.
    """


def get_event_storage() -> EventStorage:
    """The innermost active ``EventStorage``; ``EventStorageError`` (a ``RuntimeError``) when there is none."""
    if not _CURRENT_STORAGE_STACK:
        raise EventStorageError("get_event_storage() has to be called inside a 'with EventStorage(...)' context!")
    return _CURRENT_STORAGE_STACK[-1]


def has_event_storage() -> bool:
    """Whether some ``with EventStorage(...)`` block is active."""
    return bool(_CURRENT_STORAGE_STACK)


def _to_float(name: str, value: Any) -> float:
    numel = value.numel() if isinstance(value, torch.Tensor) else value.size if isinstance(value, np.ndarray) else 1
    if numel != 1:
        raise ValueError(f"scalar {name!r} must be a number or a one-element tensor, got shape {tuple(value.shape)}")
    try:
        return float(value)
    except (TypeError, ValueError) as e:
        raise TypeError(f"scalar {name!r} must be convertible to float, got {type(value).__name__}: {e}") from None


def check_losses_finite(loss_dict: Mapping[str, Any], iteration: int) -> dict[str, float]:
    """The losses of one iteration as floats (a tensor counts as the sum of its elements); ``FloatingPointError``
    naming every NaN/inf loss, the iteration and the whole loss dict.

    The one check that the plain loops (``SimpleTrainer``, ``scripts/plain_train_net.py``) and the Lightning
    module run before a step's losses reach the storage.
    """
    values = {
        k: float(v.detach().float().sum()) if isinstance(v, torch.Tensor) else float(v) for k, v in loss_dict.items()
    }
    bad = [k for k, v in values.items() if not math.isfinite(v)]
    if bad:
        raise FloatingPointError(
            f"Loss became infinite or NaN at iteration={iteration}: {', '.join(bad)} (loss_dict = {values})"
        )
    return values


class EventStorage:
    """Per-run store of scalar histories, images and histograms, keyed by name and tagged with the iteration.

    Used as a context manager: inside ``with EventStorage(start_iter):`` ``get_event_storage()`` returns it.
    Storages nest; the innermost one is current.
    """

    def __init__(self, start_iter: int = 0) -> None:
        self._history: defaultdict[str, HistoryBuffer] = defaultdict(HistoryBuffer)
        self._smoothing_hints: dict[str, bool] = {}
        self._latest_scalars: dict[str, tuple[float, int]] = {}
        self._iter = int(start_iter)
        self._current_prefix = ""
        # (name, (C, H, W) image, iteration); writers read these private fields directly, as detectron2's do
        self._vis_data: list[tuple[str, Any, int]] = []
        self._histograms: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ scalars
    def put_scalar(self, name: str, value: Any, smoothing_hint: bool = True, cur_iter: int | None = None) -> None:
        """Append ``value`` (number, 0-dim/one-element tensor or array; stored as float) to the history of ``name``.

        ``smoothing_hint``: whether writers should median-smooth it (noisy values such as losses) or report the
        latest value; a name keeps the hint it was first put with. ``cur_iter``: the iteration to tag the value
        with instead of ``self.iter``.
        """
        name = self._current_prefix + name
        existing_hint = self._smoothing_hints.get(name)
        if existing_hint is not None and existing_hint != smoothing_hint:
            raise ValueError(
                f"Scalar {name!r} was put with a different smoothing_hint: first {existing_hint}, now {smoothing_hint}"
            )
        value = _to_float(name, value)
        cur_iter = self._iter if cur_iter is None else int(cur_iter)
        self._history[name].update(value, cur_iter)
        self._latest_scalars[name] = (value, cur_iter)
        self._smoothing_hints[name] = smoothing_hint

    def put_scalars(self, *, smoothing_hint: bool = True, cur_iter: int | None = None, **kwargs: Any) -> None:
        """``put_scalar`` for each keyword: ``storage.put_scalars(loss=l, accuracy=a)``."""
        for k, v in kwargs.items():
            self.put_scalar(k, v, smoothing_hint=smoothing_hint, cur_iter=cur_iter)

    def history(self, name: str) -> HistoryBuffer:
        """The ``HistoryBuffer`` of scalar ``name``; ``KeyError`` listing the known names when absent."""
        ret = self._history.get(name)
        if ret is None:
            known = ", ".join(sorted(self._history)) or "<none>"
            raise KeyError(f"No history metric available for {name!r}; known scalars: {known}")
        return ret

    def histories(self) -> dict[str, HistoryBuffer]:
        """``{name: HistoryBuffer}`` of every scalar."""
        return self._history

    def latest(self) -> dict[str, tuple[float, int]]:
        """``{name: (latest value, iteration it was put at)}``."""
        return self._latest_scalars

    def count_samples(self, name: str, window_size: int = 20) -> int:
        """How many values of ``name`` were put in the last ``window_size`` iterations (up to its latest one)."""
        data = self._history[name].values()
        if not data:
            return 0
        last_iter = data[-1][1]
        n = 0
        for _, itr in reversed(data):
            if itr <= last_iter - window_size:
                break
            n += 1
        return n

    def latest_with_smoothing_hint(self, window_size: int = 20) -> dict[str, tuple[float, int]]:
        """Like ``latest()``, but scalars put with ``smoothing_hint=True`` give the median of their values from the
        last ``window_size`` iterations.

        d2-parity: the window counts iterations, not values (``count_samples``), so a scalar put every k-th
        iteration is smoothed over ``window_size / k`` values, as in detectron2.
        """
        result: dict[str, tuple[float, int]] = {}
        for k, (v, itr) in self._latest_scalars.items():
            if self._smoothing_hints[k]:
                v = self._history[k].median(max(1, self.count_samples(k, window_size)))
            result[k] = (v, itr)
        return result

    def smoothing_hints(self) -> dict[str, bool]:
        """``{name: smoothing_hint}`` as first put."""
        return self._smoothing_hints

    # ------------------------------------------------------------------ images / histograms
    def put_image(self, img_name: str, img_tensor: torch.Tensor | np.ndarray) -> None:
        """Keep an image for the tensorboard writer, tagged with the current iteration.

        ``img_tensor``: ``(3, H, W)`` RGB (or ``(1, H, W)``), float in [0, 1] or uint8 in [0, 255].
        Tensors are detached and moved to the CPU so the storage never pins GPU memory.
        """
        if not isinstance(img_tensor, torch.Tensor | np.ndarray):
            raise TypeError(f"put_image({img_name!r}) expects a torch.Tensor or numpy array, got {type(img_tensor)}")
        if img_tensor.ndim != 3 or img_tensor.shape[0] not in (1, 3):
            raise ValueError(
                f"put_image({img_name!r}) expects a (3, H, W) or (1, H, W) image, got shape {tuple(img_tensor.shape)}"
            )
        if isinstance(img_tensor, torch.Tensor):
            img_tensor = img_tensor.detach().cpu()
        self._vis_data.append((img_name, img_tensor, self._iter))

    @property
    def vis_data(self) -> list[tuple[str, Any, int]]:
        """The kept images as ``(name, (C, H, W) image, iteration)``."""
        return self._vis_data

    def clear_images(self) -> None:
        """Drop the kept images (the writer that consumed them calls this)."""
        self._vis_data = []

    def put_histogram(self, hist_name: str, hist_tensor: torch.Tensor, bins: int = 1000) -> None:
        """Keep a histogram of ``hist_tensor`` (any shape) for the tensorboard writer, in ``add_histogram_raw`` form."""
        t = hist_tensor.detach().float().flatten().cpu()
        if t.numel() == 0:
            raise ValueError(f"put_histogram({hist_name!r}) got an empty tensor")
        ht_min, ht_max = t.min().item(), t.max().item()
        counts = torch.histc(t, bins=bins, min=ht_min, max=ht_max)
        edges = torch.linspace(ht_min, ht_max, steps=bins + 1, dtype=torch.float32)
        self._histograms.append(
            dict(
                tag=hist_name,
                min=ht_min,
                max=ht_max,
                # detectron2 passes len(tensor) (first dim); the element count is what tensorboard means by num
                num=t.numel(),
                sum=float(t.sum()),
                sum_squares=float((t**2).sum()),
                bucket_limits=edges[1:].tolist(),
                bucket_counts=counts.tolist(),
                global_step=self._iter,
            )
        )

    def clear_histograms(self) -> None:
        """Drop the kept histograms (the writer that consumed them calls this)."""
        self._histograms = []

    # ------------------------------------------------------------------ iteration / context
    def step(self) -> None:
        """Advance ``iter`` by one (alternatively, set ``storage.iter`` before each iteration)."""
        self._iter += 1

    @property
    def iter(self) -> int:
        """The current iteration; new values are tagged with it."""
        return self._iter

    @iter.setter
    def iter(self, val: int) -> None:
        self._iter = int(val)

    @property
    def iteration(self) -> int:
        """Alias of ``iter`` (kept for detectron2 backward compatibility)."""
        return self._iter

    @iteration.setter
    def iteration(self, val: int) -> None:
        self._iter = int(val)

    def __enter__(self) -> EventStorage:
        _CURRENT_STORAGE_STACK.append(self)
        return self

    def __exit__(self, exc_type: Any, exc_val: Any, exc_tb: Any) -> None:
        if not _CURRENT_STORAGE_STACK or _CURRENT_STORAGE_STACK[-1] is not self:
            raise RuntimeError("EventStorage contexts must be exited in the reverse order they were entered")
        _CURRENT_STORAGE_STACK.pop()

    @contextmanager
    def name_scope(self, name: str) -> Iterator[None]:
        """Within the block, scalar names are stored as ``"{name}/{scalar}"``.

        d2-parity: nested scopes replace the prefix rather than stacking it, as in detectron2.
        """
        old_prefix = self._current_prefix
        self._current_prefix = name.rstrip("/") + "/"
        try:
            yield
        finally:
            self._current_prefix = old_prefix


# ---------------------------------------------------------------------- writers
class EventWriter:
    """Base of the writers: ``write()`` reads the current ``EventStorage`` and emits what it needs."""

    def write(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


class JSONWriter(EventWriter):
    """Append scalars to ``json_file`` as one JSON object per iteration (detectron2's ``metrics.json``).

    Each line is ``{"iteration": i, name: value, ...}`` with the scalars put at iteration ``i`` since the last
    write, median-smoothed over ``window_size`` iterations when their smoothing hint is True. Parse it with
    ``[json.loads(line) for line in open(path)]``.
    """

    def __init__(self, json_file: str | os.PathLike, window_size: int = 20) -> None:
        self._file_handle = PathManager.open(json_file, "a")
        self._window_size = window_size
        self._last_write = -1
        self._keys_at_last_write: set[str] = set()

    def write(self) -> None:
        self._write(late=False)

    def write_late(self) -> None:
        """:meth:`write`, plus the scalars put at the last written iteration after its line went out (an
        evaluation run after that iteration), on a line of their own."""
        self._write(late=True)

    def _write(self, late: bool) -> None:
        storage = get_event_storage()
        to_save: defaultdict[int, dict[str, Any]] = defaultdict(dict)
        for k, (v, itr) in storage.latest_with_smoothing_hint(self._window_size).items():
            written = itr < self._last_write or itr == self._last_write and (not late or k in self._keys_at_last_write)
            if written:
                continue
            to_save[itr][k] = v
        if to_save:
            newest = max(to_save)
            if newest > self._last_write:
                self._last_write, self._keys_at_last_write = newest, set(to_save[newest])
            else:
                self._keys_at_last_write |= set(to_save[newest])
        for itr in sorted(to_save):
            scalars = to_save[itr]
            scalars["iteration"] = itr
            self._file_handle.write(json.dumps(scalars, sort_keys=True) + "\n")
        self._file_handle.flush()
        try:
            os.fsync(self._file_handle.fileno())
        except (AttributeError, OSError):  # not a real file
            pass

    def close(self) -> None:
        self._file_handle.close()


class TensorboardXWriter(EventWriter):
    """Write scalars (smoothed like ``JSONWriter``), images and histograms to tensorboard event files in ``log_dir``.

    Images and histograms are removed from the storage once written: one tensorboard writer per storage.
    """

    def __init__(self, log_dir: str | os.PathLike, window_size: int = 20, **kwargs: Any) -> None:
        """``kwargs`` go to ``torch.utils.tensorboard.SummaryWriter``."""
        self._window_size = window_size
        self._last_write = -1
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:
            raise ImportError(f"TensorboardXWriter needs the 'tensorboard' package: pip install tensorboard ({e})")
        self._writer = SummaryWriter(os.fspath(log_dir), **kwargs)

    def write(self) -> None:
        storage = get_event_storage()
        new_last_write = self._last_write
        for k, (v, itr) in storage.latest_with_smoothing_hint(self._window_size).items():
            if itr > self._last_write:
                self._writer.add_scalar(k, v, itr)
                new_last_write = max(new_last_write, itr)
        self._last_write = new_last_write

        if storage._vis_data:
            for img_name, img, step_num in storage._vis_data:
                self._writer.add_image(img_name, img, step_num)
            storage.clear_images()
        if storage._histograms:
            for params in storage._histograms:
                self._writer.add_histogram_raw(**params)
            storage.clear_histograms()
        self._writer.flush()

    def close(self) -> None:
        if hasattr(self, "_writer"):  # absent when __init__ failed
            self._writer.close()


class CommonMetricPrinter(EventWriter):
    """Log one line of common training metrics: ETA, iteration, losses, other metrics, iteration/data time, lr,
    max GPU memory.

    Losses (scalars whose name contains ``"loss"``) and other metrics (scalars whose name contains ``"[metric]"``,
    e.g. ``storage.put_scalar("[metric]grad_scaler", ...)``) are median-smoothed over ``window_size`` iterations.
    ``max_iter`` enables the ETA (and the printer stays silent once ``storage.iter == max_iter``).
    """

    def __init__(self, max_iter: int | None = None, window_size: int = 20) -> None:
        self.logger = logging.getLogger(__name__)
        self._max_iter = max_iter
        self._window_size = window_size
        self._last_write: tuple[int, float] | None = None  # (iteration, perf_counter) for the fallback ETA

    def _get_eta(self, storage: EventStorage) -> str | None:
        if self._max_iter is None:
            return ""
        remaining = self._max_iter - storage.iter - 1
        iter_times = storage.histories().get("time")
        if iter_times is None:
            # no "time" scalar (e.g. a custom loop): estimate from the interval between two writes, noisier
            return self._eta_from_write_interval(storage.iter, remaining)
        eta_seconds = iter_times.median(1000) * remaining
        storage.put_scalar("eta_seconds", eta_seconds, smoothing_hint=False)
        return str(datetime.timedelta(seconds=int(eta_seconds)))

    def _eta_from_write_interval(self, iteration: int, remaining: int) -> str | None:
        """ETA from the wall time since the previous write; None on the first write (nothing to measure)."""
        now = _clock()
        previous, self._last_write = self._last_write, (iteration, now)
        if previous is None or iteration <= previous[0]:
            return None
        seconds_per_iter = (now - previous[1]) / (iteration - previous[0])
        return str(datetime.timedelta(seconds=int(seconds_per_iter * remaining)))

    def _format(self, storage: EventStorage) -> str:
        def _maybe(name: str, fn: str) -> float | None:
            try:
                h = storage.history(name)
            except KeyError:  # absent in the first iterations or with custom loops
                return None
            if fn == "avg":
                return h.avg(max(1, storage.count_samples(name, self._window_size)))
            return getattr(h, fn)()

        avg_data_time = _maybe("data_time", "avg")
        last_data_time = _maybe("data_time", "latest")
        avg_iter_time = _maybe("time", "global_avg")
        last_iter_time = _maybe("time", "latest")
        lr = _maybe("lr", "latest")
        eta_string = self._get_eta(storage)
        max_mem_mb = torch.cuda.max_memory_allocated() / 1024.0 / 1024.0 if torch.cuda.is_available() else None

        def _smoothed(selected: Callable[[str], bool]) -> str:
            return "  ".join(
                f"{k}: {h.median(max(1, storage.count_samples(k, self._window_size))):.4g}"
                for k, h in storage.histories().items()
                if selected(k)
            )

        parts = [
            f"eta: {eta_string}" if eta_string else "",
            f"iter: {storage.iter}",
            _smoothed(lambda k: "loss" in k),
            # d2-parity: the other metrics printed are those put with the "[metric]" tag in their name
            _smoothed(lambda k: "[metric]" in k and "loss" not in k),
            f"time: {avg_iter_time:.4f}" if avg_iter_time is not None else "",
            f"last_time: {last_iter_time:.4f}" if last_iter_time is not None else "",
            f"data_time: {avg_data_time:.4f}" if avg_data_time is not None else "",
            f"last_data_time: {last_data_time:.4f}" if last_data_time is not None else "",
            f"lr: {lr:.5g}" if lr is not None else "lr: N/A",
            # NOTE: "max_mem: <n>M" is grep-parsed by detectron2 tooling; keep the format
            f"max_mem: {max_mem_mb:.0f}M" if max_mem_mb is not None else "",
        ]
        return " " + "  ".join(p for p in parts if p)

    def write(self) -> None:
        storage = get_event_storage()
        if storage.iter == self._max_iter:
            # the run is over; only progress is reported here, so there is nothing left to say
            return
        self.logger.info(self._format(storage))
