"""Bounded scalar histories: fvcore's ``HistoryBuffer`` API over column blocks of ring buffers.

fvcore keeps up to a million ``(value, iteration)`` Python tuples per key and evicts with
``list.pop(0)``; training for days then costs hundreds of MB and the eviction is O(n). Here
the kept window lives in preallocated numpy arrays (O(1) update, O(capacity) memory), and the
global average is a running sum over *all* updates, so it stays exact after eviction.

Scalars that are put together (the keys of a loss dict) share one :class:`ScalarBlock`: a ring of
``max_length`` rows with one column per key, so a training step is one row write and a writer's
smoothing is one vectorised median over the block. A :class:`HistoryBuffer` is one column of a
block; a standalone ``HistoryBuffer()`` owns a block of one column.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

DEFAULT_MAX_LENGTH = 4096
_PREFAULT_ROWS = DEFAULT_MAX_LENGTH


class ScalarBlock:
    """The histories of a fixed set of scalars: a ring of ``max_length`` rows, one column each.

    Column ``j``'s ``i``-th update (counting from 0 over the whole run) lives in row
    ``i % max_length`` of ``values`` / ``iterations`` (both ``[max_length, num_columns]``).
    While every update wrote every column (the usual case: a whole loss dict per step) all
    columns share one update count and a step is a plain row write; after a partial update each
    column keeps its own count (``counts()``), and writes scatter to each column's next slot.
    ``sums()`` is the sum of every value ever put, per column: rows written whole are added to
    it when the ring is about to overwrite them (once per ``max_length`` rows, not per row).
    """

    __slots__ = ("max_length", "values", "iterations", "_sums", "_summed_rows", "_rows", "_counts", "_all")

    def __init__(self, max_length: int, num_columns: int) -> None:
        if max_length < 1:
            raise ValueError(f"HistoryBuffer max_length must be >= 1, got {max_length}")
        self.max_length = int(max_length)
        self.values = np.zeros((self.max_length, num_columns), dtype=np.float64)
        self.iterations = np.zeros((self.max_length, num_columns), dtype=np.float64)
        # np.zeros maps its pages lazily: the training loop would fault them in one by one, a
        # page fault every few steps (about 0.6 µs a step over a ring's first pass). Writing the
        # first _PREFAULT_ROWS rows now moves that to the block's creation (once per key set).
        # A much longer ring keeps its tail lazy: memory is only committed as it is used.
        for array in (self.values, self.iterations):
            array[:_PREFAULT_ROWS].fill(0.0)
        self._sums = np.zeros(num_columns, dtype=np.float64)
        self._summed_rows = 0  # while rows are written whole: rows already in _sums
        self._rows = 0  # the shared update count while all columns move together, else -1
        self._counts = np.zeros(0, dtype=np.int64)  # per-column counts once they differ
        self._all = np.arange(num_columns)

    @property
    def num_columns(self) -> int:
        return self.values.shape[1]

    def counts(self) -> np.ndarray:
        """Updates ever made, per column (``[num_columns]`` int64)."""
        if self._rows >= 0:
            return np.full(self.num_columns, self._rows, dtype=np.int64)
        return self._counts

    def count(self, column: int) -> int:
        return self._rows if self._rows >= 0 else int(self._counts[column])

    def _per_column_counts(self) -> np.ndarray:
        if self._rows >= 0:  # from now on every write updates the sums itself
            self._sums, self._counts, self._rows = self.sums(), self.counts(), -1
        return self._counts

    def sums(self) -> np.ndarray:
        """The sum of every value ever put, per column (``[num_columns]``)."""
        if self._rows < 0 or self._summed_rows == self._rows:
            return self._sums
        return self._sums + self._unsummed().sum(axis=0)

    def column_sum(self, column: int) -> float:
        """``sums()[column]``, touching that column only."""
        if self._rows < 0 or self._summed_rows == self._rows:
            return float(self._sums[column])
        return float(self._sums[column] + self._unsummed()[:, column].sum())

    def _unsummed(self) -> np.ndarray:
        """The rows written since the last addition to the sums (at most ``max_length``)."""
        start, end = self._summed_rows % self.max_length, self._rows % self.max_length
        if self._rows - self._summed_rows == self.max_length:
            return self.values
        if start <= end:
            return self.values[start:end]
        return np.concatenate((self.values[start:], self.values[:end]))

    # ------------------------------------------------------------------ writes
    def put_row(self, row: Any, iteration: float) -> None:
        """One value for every column (``row``: ``[num_columns]``) at ``iteration``."""
        rows = self._rows
        if rows < 0:
            self.put_columns(self._all, row, iteration)
            return
        if rows - self._summed_rows == self.max_length:  # about to overwrite unsummed values
            self._fold()
        slot = rows % self.max_length
        self.values[slot] = row
        self.iterations[slot] = iteration
        self._rows = rows + 1

    def put_rows(self, rows: np.ndarray, iterations: np.ndarray) -> None:
        """:meth:`put_row` for each of ``rows`` (``[n, num_columns]``) at ``iterations``
        (``[n]``), in order: slices of the ring, not ``n`` row writes. The sums are folded at
        the same rows as ``n`` calls to :meth:`put_row` fold them (same rounding)."""
        if self._rows < 0:
            for row, iteration in zip(rows, iterations):
                self.put_columns(self._all, row, iteration)
            return
        done, total = 0, len(rows)
        while done < total:
            if self._rows - self._summed_rows == self.max_length:  # as in put_row
                self._fold()
            slot = self._rows % self.max_length
            # Up to the end of the ring or the next fold, whichever comes first.
            take = min(total - done, self.max_length - slot, self._summed_rows + self.max_length - self._rows)
            self.values[slot : slot + take] = rows[done : done + take]
            self.iterations[slot : slot + take] = iterations[done : done + take, None]
            self._rows += take
            done += take

    def _fold(self) -> None:
        """Add the whole ring, every row of it not summed yet, to the sums (while rows are
        written whole, just before the ring overwrites the oldest of them)."""
        self._sums += self.values.sum(axis=0)
        self._summed_rows = self._rows

    def put_columns(self, columns: np.ndarray, row: Any, iteration: float) -> None:
        """Values for the distinct ``columns`` (an index array), aligned with ``row``."""
        if self._rows >= 0 and len(columns) == self.num_columns:
            self.put_row(np.asarray(row, dtype=np.float64)[np.argsort(columns)], iteration)
            return
        counts = self._per_column_counts()
        slots = counts[columns] % self.max_length
        self.values[slots, columns] = row
        self.iterations[slots, columns] = iteration
        self._sums[columns] += self.values[slots, columns]
        counts[columns] += 1

    def put_cell(self, column: int, value: float, iteration: float) -> None:
        """One value for one column."""
        if self.num_columns == 1 and self._rows >= 0:
            self.put_row(value, iteration)
            return
        counts = self._per_column_counts()
        slot = counts[column] % self.max_length
        self.values[slot, column] = value
        self.iterations[slot, column] = iteration
        self._sums[column] += value
        counts[column] += 1

    def load_column(self, column: int, count: int, total: float, values: Sequence[float],
                    iterations: Sequence[float]) -> None:
        """Make ``column`` continue a history of ``count`` updates whose last ``len(values)``
        values (at most ``max_length`` are kept) and running sum ``total`` are given."""
        kept = min(len(values), self.max_length, count)
        counts = self._per_column_counts()
        # The value with global index i lives in row i % max_length: the ring continues exactly.
        slots = np.arange(count - kept, count) % self.max_length
        self.values[slots, column] = values[len(values) - kept:]
        self.iterations[slots, column] = iterations[len(iterations) - kept:]
        counts[column] = count
        self._sums[column] = total

    def realign(self) -> None:
        """Go back to whole-row writes if every column holds as many values as the others, put
        at the same iterations (after loading the columns of a saved block)."""
        counts = self.counts()
        kept = min(int(counts[0]), self.max_length)
        if (counts == counts[0]).all() and (self.iterations[:kept] == self.iterations[:kept, :1]).all():
            self._rows = self._summed_rows = int(counts[0])

    # ------------------------------------------------------------------ reads
    def tail(self, window: int) -> Tuple[np.ndarray, np.ndarray]:
        """The last ``n = min(window, max_length)`` values and iterations of every column,
        oldest first: two ``[n, num_columns]`` arrays. Rows a column has not filled yet hold an
        iteration of ``-inf`` (their values are meaningless)."""
        n = min(max(int(window), 1), self.max_length)
        if self._rows >= 0:
            end = self._rows % self.max_length if self._rows >= self.max_length else self._rows
            start = end - n
            if start >= 0:
                values, iterations = self.values[start:end], self.iterations[start:end]
            elif self._rows >= self.max_length:  # the window wraps around the end of the ring
                values = np.concatenate((self.values[start:], self.values[:end]))
                iterations = np.concatenate((self.iterations[start:], self.iterations[:end]))
            else:  # fewer than n rows written: pad at the front
                values = np.concatenate((np.zeros((-start, self.num_columns)), self.values[:end]))
                iterations = np.concatenate(
                    (np.full((-start, self.num_columns), -np.inf), self.iterations[:end])
                )
            return values, iterations
        counts = self._counts
        index = counts - n + np.arange(n)[:, None]  # [n, columns], global update index
        slots = index % self.max_length
        values = self.values[slots, self._all]
        iterations = np.where(index >= 0, self.iterations[slots, self._all], -np.inf)
        return values, iterations

    def latest(self) -> Tuple[np.ndarray, List[int]]:
        """Each column's most recent value (``[num_columns]``) and its iteration (ints)."""
        if self._rows >= 0:  # whole rows: one iteration for every column
            slot = (self._rows - 1) % self.max_length
            return self.values[slot], [int(self.iterations[slot, 0])] * self.num_columns
        slots = (self._counts - 1) % self.max_length
        return self.values[slots, self._all], self.iterations[slots, self._all].astype(np.int64).tolist()

    def window_medians(self, window: int) -> np.ndarray:
        """Each column's median over the values put within its last ``window`` iterations, as
        :meth:`HistoryBuffer.median` of :meth:`HistoryBuffer.count_within` computes it column by
        column (same looks back, vectorised)."""
        window = max(int(window), 1)
        if self._rows > 0:  # whole rows: every column has the same iterations, so one count
            values, iterations = self.tail(2 * window)
            count = _count_within(iterations[:, 0], min(self._rows, self.max_length), window, window)
            if count is None:  # more than two values per iteration: look further back
                count = HistoryBuffer._view(self, 0).count_within(window)
            return column_medians(values[len(values) - count:] if count <= len(values) else self.tail(count)[0])
        if self._rows == 0:
            raise IndexError("HistoryBuffer is empty")
        values, iterations = self.tail(2 * window)
        n = len(values)
        kept = np.minimum(self.counts(), self.max_length)
        inside = iterations > iterations[-1] - window
        # count_within looks at the last `window` values, then (if all of them are inside and
        # the column keeps more) at the last 2 * window, and so on.
        first = inside[-window:].sum(axis=0)
        second = inside.sum(axis=0)
        first_decides = (first < np.minimum(window, kept)) | (kept <= window)
        decided = first_decides | (second < np.minimum(2 * window, kept)) | (kept <= 2 * window)
        samples = np.maximum(np.where(first_decides, first, second), 1)
        if samples.min() == samples.max() and decided.all():
            return column_medians(values[n - samples[0]:])
        # Keys put at different cadences: one median per distinct sample count.
        medians = np.empty(self.num_columns)
        for count in np.unique(samples[decided]).tolist():
            columns = np.flatnonzero(decided & (samples == count))
            medians[columns] = column_medians(values[n - count:, columns])
        for column in np.flatnonzero(~decided).tolist():
            buffer = HistoryBuffer._view(self, column)
            medians[column] = buffer.median(buffer.count_within(window))
        return medians


class HistoryBuffer:
    """Track a series of scalar values and give windowed and global statistics over it.

    Only the last ``max_length`` ``(value, iteration)`` pairs are kept; ``global_avg`` covers
    every value ever added. Windowed statistics over more values than are kept use what is kept.
    Inside an ``EventStorage`` a buffer is a view of one column of a :class:`ScalarBlock`; it reads
    and updates the same memory as the storage does.
    """

    __slots__ = ("_block", "_column", "_values", "_iters", "_owns_block")

    def __init__(self, max_length: int = DEFAULT_MAX_LENGTH) -> None:
        self._attach(ScalarBlock(max_length, 1), 0)
        self._owns_block = True

    @classmethod
    def _view(cls, block: ScalarBlock, column: int) -> "HistoryBuffer":
        buffer = cls.__new__(cls)
        buffer._attach(block, column)
        buffer._owns_block = False
        return buffer

    def _attach(self, block: ScalarBlock, column: int) -> None:
        self._block, self._column = block, column
        # Strided views: the block's arrays are never reallocated.
        self._values = block.values[:, column]
        self._iters = block.iterations[:, column]

    def update(self, value: float, iteration: float | None = None) -> None:
        """Add ``value`` at ``iteration`` (defaults to the number of updates so far)."""
        self._block.put_cell(self._column, value, self.count if iteration is None else iteration)

    @property
    def max_length(self) -> int:
        return self._block.max_length

    @property
    def count(self) -> int:
        """Number of updates ever made (not only the kept ones)."""
        return self._block.count(self._column)

    def __len__(self) -> int:
        return min(self.count, self._block.max_length)

    def _last(self, window_size: int, column: np.ndarray | None = None) -> np.ndarray:
        """The last ``window_size`` kept values (or iterations when ``column`` is the iteration
        array), oldest first; a view when the window does not wrap around the ring."""
        column = self._values if column is None else column
        count, max_length = self.count, self._block.max_length
        kept = min(count, max_length)
        if kept == 0:
            raise IndexError("HistoryBuffer is empty")
        n = min(max(int(window_size), 1), kept)
        end = count % max_length if count >= max_length else count
        start = end - n
        if start >= 0:
            return column[start:end]
        # The window wraps around the end of the ring.
        return np.concatenate((column[start:], column[:end]))

    def latest(self) -> float:
        """The most recently added value."""
        count = self.count
        if count == 0:
            raise IndexError("HistoryBuffer is empty")
        return float(self._values[(count - 1) % self._block.max_length])

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

    def count_within(self, window_size: int) -> int:
        """How many of the last values were put within the last ``window_size`` iterations
        (``window_size`` when one value is put per iteration; at least 1)."""
        look_back = window_size
        while True:
            # Usually one value per iteration: the looks at window_size and 2 * window_size decide.
            count = _count_within(self.recent_iterations(2 * look_back), len(self), window_size, look_back)
            if count is not None:
                return count
            look_back *= 4

    def global_avg(self) -> float:
        """Mean of every value ever added (NaN if none, as an empty mean is)."""
        count = self.count
        return self.global_sum() / count if count else math.nan

    def global_sum(self) -> float:
        return self._block.column_sum(self._column)

    def values(self) -> List[Tuple[float, float]]:
        """Kept ``(value, iteration)`` pairs, oldest first."""
        order = self._kept_order()
        return list(zip(self._values[order].tolist(), self._iters[order].tolist()))

    def _kept_order(self) -> np.ndarray:
        count, max_length = self.count, self._block.max_length
        kept = min(count, max_length)
        if count <= max_length:
            return np.arange(kept)
        return (np.arange(kept) + count % max_length) % max_length

    def state_dict(self) -> Dict[str, Any]:
        """Plain Python types only, so a checkpoint loads with ``torch.load(weights_only=True)``."""
        order = self._kept_order()
        return {
            "max_length": self._block.max_length,
            "count": self.count,
            "sum": self.global_sum(),
            "values": self._values[order].tolist(),
            "iterations": self._iters[order].tolist(),
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore what ``state_dict`` saved; a standalone buffer takes the saved
        ``max_length``, a storage's view keeps its block's and the most recent values."""
        values, iterations = check_buffer_state(state)
        if self._owns_block:
            self._attach(ScalarBlock(max(int(state["max_length"]), 1), 1), 0)
        self._block.load_column(self._column, int(state["count"]), float(state["sum"]), values, iterations)
        self._block.realign()


def _count_within(recent: np.ndarray, kept: int, window: int, look_back: int) -> Optional[int]:
    """Two steps of :meth:`HistoryBuffer.count_within`: of the values put within the last
    ``window`` iterations, how many are among the last ``look_back`` values, if fewer than those
    (or all ``kept`` values were looked at); else among the last ``2 * look_back``; ``None`` when
    neither decides. ``recent``: iterations of the last ``min(2 * look_back, kept)`` values,
    oldest first (rows before the first value padded with ``-inf`` are never inside)."""
    inside = recent > recent[-1] - window
    for look in (look_back, 2 * look_back):
        count = int(np.count_nonzero(inside[-look:]))
        if count < min(look, kept) or kept <= look:
            return max(count, 1)
    return None


def column_medians(values: np.ndarray) -> np.ndarray:
    """``np.median(values, axis=0)`` of a ``[n, columns]`` array, the same numbers without its
    per-call overhead: one sort (or, for long windows, one partition around the middle)."""
    n = len(values)
    half = n // 2
    if n <= 64:  # a writer's window: sorting the few rows costs less than partitioning them
        part = np.sort(values, axis=0)
    else:
        part = np.partition(values, sorted({max(half - 1, 0), half, n - 1}), axis=0)
    median = part[half] if n % 2 else (part[half - 1] + part[half]) / 2
    # NaN sorts last: a column holding one gets a NaN median, as with np.median.
    has_nan = np.isnan(part[-1])
    return np.where(has_nan, np.nan, median) if has_nan.any() else median


def check_buffer_state(state: Dict[str, Any]) -> Tuple[List[float], List[float]]:
    """The kept values and iterations of a ``HistoryBuffer.state_dict()``, checked for
    consistency (``ValueError`` naming what does not add up)."""
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
    return values, iterations
