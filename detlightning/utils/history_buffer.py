"""``HistoryBuffer``: the bounded ``(value, iteration)`` series behind every scalar of an ``EventStorage``."""
from __future__ import annotations

from collections import deque
from itertools import islice

import numpy as np

__all__ = ["HistoryBuffer"]


class HistoryBuffer:
    """The last ``max_length`` ``(value, iteration)`` pairs of one scalar, plus a running mean over all of them.

    Same interface and semantics as fvcore's ``HistoryBuffer``: ``median``/``avg`` look at the last ``window_size``
    stored values, ``global_avg`` at every value ever added (including those already dropped from the buffer).
    """

    def __init__(self, max_length: int = 1000000) -> None:
        if max_length < 1:
            raise ValueError(f"HistoryBuffer max_length must be >= 1, got {max_length}")
        self._max_length = max_length
        self._data: deque[tuple[float, float]] = deque(maxlen=max_length)
        self._count = 0
        self._global_avg = 0.0

    def update(self, value: float, iteration: float | None = None) -> None:
        """Append ``value`` at ``iteration`` (default: the number of values added so far)."""
        if iteration is None:
            iteration = self._count
        self._data.append((value, iteration))
        self._count += 1
        # Running mean: exact over all values without keeping them (the buffer may have dropped some).
        self._global_avg += (value - self._global_avg) / self._count

    def _window(self, window_size: int) -> list[float]:
        if window_size < 1:
            raise ValueError(f"window_size must be >= 1, got {window_size}")
        if not self._data:
            raise ValueError("HistoryBuffer is empty: no value has been added yet")
        recent = list(islice(reversed(self._data), window_size))
        return [v for v, _ in recent]

    def latest(self) -> float:
        """The most recently added value."""
        if not self._data:
            raise ValueError("HistoryBuffer is empty: no value has been added yet")
        return self._data[-1][0]

    def median(self, window_size: int) -> float:
        """Median of the last ``window_size`` values."""
        return float(np.median(self._window(window_size)))

    def avg(self, window_size: int) -> float:
        """Mean of the last ``window_size`` values."""
        return float(np.mean(self._window(window_size)))

    def global_avg(self) -> float:
        """Mean of every value ever added (also those beyond ``max_length``)."""
        return self._global_avg

    def values(self) -> list[tuple[float, float]]:
        """The stored ``(value, iteration)`` pairs, oldest first."""
        return list(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return f"HistoryBuffer(len={len(self._data)}, max_length={self._max_length}, count={self._count})"
