"""A bounded history of one scalar: fvcore's ``HistoryBuffer`` API on a fixed-size ring buffer.

fvcore keeps up to a million ``(value, iteration)`` Python tuples per key and evicts with
``list.pop(0)``; training for days then costs hundreds of MB and the eviction is O(n). Here the
kept window lives in two preallocated numpy arrays (O(1) update, O(capacity) memory), and the
global average is a running sum over *all* updates, so it stays exact after eviction.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Tuple

import numpy as np

DEFAULT_MAX_LENGTH = 4096


class HistoryBuffer:
    """Track a series of scalar values and give windowed and global statistics over it.

    Only the last ``max_length`` ``(value, iteration)`` pairs are kept; ``global_avg`` covers
    every value ever added. Windowed statistics over more values than are kept use what is kept.
    """

    __slots__ = ("_max_length", "_values", "_iters", "_count", "_sum")

    def __init__(self, max_length: int = DEFAULT_MAX_LENGTH) -> None:
        if max_length < 1:
            raise ValueError(f"HistoryBuffer max_length must be >= 1, got {max_length}")
        self._max_length = int(max_length)
        self._values = np.empty(self._max_length, dtype=np.float64)
        self._iters = np.empty(self._max_length, dtype=np.float64)
        self._count = 0
        self._sum = 0.0

    def update(self, value: float, iteration: float | None = None) -> None:
        """Add ``value`` at ``iteration`` (defaults to the number of updates so far)."""
        count = self._count
        slot = count % self._max_length
        self._values[slot] = value
        self._iters[slot] = count if iteration is None else iteration
        self._count = count + 1
        self._sum += value

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def count(self) -> int:
        """Number of updates ever made (not only the kept ones)."""
        return self._count

    def __len__(self) -> int:
        return min(self._count, self._max_length)

    def _last(self, window_size: int, column: np.ndarray | None = None) -> np.ndarray:
        """The last ``window_size`` kept values (or iterations when ``column`` is the iteration
        array), oldest first; a view when the window does not wrap around the ring."""
        column = self._values if column is None else column
        kept = len(self)
        if kept == 0:
            raise IndexError("HistoryBuffer is empty")
        n = min(max(int(window_size), 1), kept)
        end = self._count % self._max_length if self._count >= self._max_length else self._count
        start = end - n
        if start >= 0:
            return column[start:end]
        # The window wraps around the end of the ring.
        return np.concatenate((column[start:], column[:end]))

    def latest(self) -> float:
        """The most recently added value."""
        if self._count == 0:
            raise IndexError("HistoryBuffer is empty")
        return float(self._values[(self._count - 1) % self._max_length])

    def median(self, window_size: int) -> float:
        return float(np.median(self._last(window_size)))

    def avg(self, window_size: int) -> float:
        return float(np.mean(self._last(window_size)))

    def max(self, window_size: int) -> float:
        return float(np.max(self._last(window_size)))

    def min(self, window_size: int) -> float:
        return float(np.min(self._last(window_size)))

    def recent_iterations(self, window_size: int) -> np.ndarray:
        """Iterations of the last ``window_size`` kept values, oldest first."""
        return self._last(window_size, self._iters)

    def global_avg(self) -> float:
        """Mean of every value ever added (NaN if none, as an empty mean is)."""
        return self._sum / self._count if self._count else math.nan

    def global_sum(self) -> float:
        return self._sum

    def values(self) -> List[Tuple[float, float]]:
        """Kept ``(value, iteration)`` pairs, oldest first."""
        order = self._kept_order()
        return list(zip(self._values[order].tolist(), self._iters[order].tolist()))

    def _kept_order(self) -> np.ndarray:
        kept = len(self)
        if self._count <= self._max_length:
            return np.arange(kept)
        start = self._count % self._max_length
        return (np.arange(kept) + start) % self._max_length

    def state_dict(self) -> Dict[str, Any]:
        """Plain Python types only, so a checkpoint loads with ``torch.load(weights_only=True)``."""
        order = self._kept_order()
        return {
            "max_length": self._max_length,
            "count": self._count,
            "sum": self._sum,
            "values": self._values[order].tolist(),
            "iterations": self._iters[order].tolist(),
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        values, iterations = state["values"], state["iterations"]
        if len(values) != len(iterations):
            raise ValueError("HistoryBuffer state has different numbers of values and iterations")
        count = int(state["count"])
        max_length = max(int(state["max_length"]), 1)
        kept = min(count, max_length)
        if len(values) != kept:
            raise ValueError(
                f"HistoryBuffer state holds {len(values)} values, expected min(count={count}, "
                f"max_length={max_length}) = {kept}"
            )
        self.__init__(max_length)
        # The value with global index i lives in slot i % max_length; put the kept tail there so
        # the ring continues exactly where the saved one stopped.
        slots = (np.arange(count - kept, count)) % self._max_length
        self._values[slots] = values
        self._iters[slots] = iterations
        self._count = count
        self._sum = float(state["sum"])
