"""``EventStorage``: where a training loop puts its metrics, with detectron2's API and semantics.

Code written against ``detectron2.utils.events`` runs unchanged after swapping the import. What
differs is what detectron2 gets wrong: every key's history is bounded (``HistoryBuffer``), the
storage has a ``state_dict`` so smoothing windows, global averages and the iteration survive a
resume, ``name_scope`` nests and restores its prefix on exceptions, ``put_histogram`` counts
every element (not ``len``), a value put at an iteration the writers have already written is
reported (once per key) instead of vanishing, and ``put_scalars_bulk`` is a hot path for putting
a whole loss dict at once.

How scalars are kept: keys first put together (one ``put_scalars_bulk`` / ``put_scalars`` call,
i.e. one loss dict) share a ``ScalarBlock``, a ring of rows with one column per key, so a step
is one row write and the writers' window medians are one vectorised ``np.median`` per block.
``history(name)`` / ``histories()`` hand out ``HistoryBuffer`` views of those columns.

This module imports neither torch nor torch.distributed: tensors are accepted by duck typing.
"""
from __future__ import annotations

import contextlib
import warnings
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from events.history_buffer import DEFAULT_MAX_LENGTH, HistoryBuffer, ScalarBlock, check_buffer_state

_CURRENT_STORAGE_STACK: List["EventStorage"] = []


def get_event_storage() -> "EventStorage":
    """The ``EventStorage`` of the innermost ``with EventStorage(...)`` block."""
    if not _CURRENT_STORAGE_STACK:
        raise RuntimeError(
            "get_event_storage() has to be called inside a 'with EventStorage(...)' context!"
        )
    return _CURRENT_STORAGE_STACK[-1]


def has_event_storage() -> bool:
    """Whether some ``with EventStorage(...)`` block is active."""
    return bool(_CURRENT_STORAGE_STACK)


def _to_numpy(values: Any) -> np.ndarray:
    """Any tensor (torch, on any device) or array-like as a flat float64 numpy array."""
    if hasattr(values, "detach"):
        values = values.detach().float().cpu().numpy()
    return np.asarray(values, dtype=np.float64).reshape(-1)


class StaleIterationWarning(UserWarning):
    """A scalar was put at an iteration the writers have already written: they only write newer
    iterations, so the value never reaches metrics.json, TensorBoard or W&B."""


class _KeyBlock:
    """Keys first put together, their smoothing hint and the block holding their histories."""

    __slots__ = ("names", "hint", "block")

    def __init__(self, names: Tuple[str, ...], hint: bool, block: ScalarBlock) -> None:
        self.names, self.hint, self.block = names, hint, block


class _PutPlan:
    """Where the values of one ``names`` sequence go (cached per sequence and name prefix).

    ``block`` is set when the names are exactly one block's keys in its column order: the
    common case of a loss dict, written as one row. Otherwise ``segments`` lists, per block,
    ``(block, positions in the values, columns)``; ``None`` when names repeat (sequential puts).
    """

    __slots__ = ("prefix", "names", "hint", "block", "segments")

    def __init__(self, prefix: str, names: Tuple[str, ...], hint: Optional[bool],
                 block: Optional[ScalarBlock], segments: Optional[List[Tuple[ScalarBlock, np.ndarray, np.ndarray]]]):
        self.prefix, self.names, self.hint, self.block, self.segments = prefix, names, hint, block, segments


class EventStorage:
    """The user-facing store of metrics: scalars (with history), images and histograms.

    Use it as a context manager so that ``get_event_storage()`` finds it. Scalars put with
    ``smoothing_hint=True`` are reported by writers as a window median; others as the latest
    value. Each key keeps at most ``history_length`` values in memory; the full history belongs
    on disk (metrics.json, TensorBoard).

    Writers (``JSONWriter``, ``TensorboardXWriter``, W&B) read ``latest_with_smoothing_hint`` and
    write only iterations newer than the last one they wrote. A scalar put afterwards at an
    iteration they already read (at the storage's current iteration or later) is never written;
    when a key does that twice (typically a loop that never calls ``step()``) the storage warns
    once for it with a ``StaleIterationWarning``. Values deliberately put at an earlier iteration
    (``cur_iter < storage.iter``, such as an ETA for the last finished step) are not counted.

    ``start_iter`` is the iteration training started (or resumed) at, as the trainer opened the
    storage with it; it is not part of ``state_dict``. Writers read it on their first write to
    supersede what a crashed run left from there on (see ``events.writers.ResumableWriter``).
    """

    def __init__(self, start_iter: int = 0, history_length: int = DEFAULT_MAX_LENGTH) -> None:
        self.start_iter = int(start_iter)
        self._iter = int(start_iter)
        self._current_prefix = ""
        self._vis_data: List[Tuple[str, Any, int]] = []
        self._histograms: List[Dict[str, Any]] = []
        self._history_length = int(history_length)
        self._reset_scalars()

    def _reset_scalars(self) -> None:
        self._blocks: List[_KeyBlock] = []
        self._history: Dict[str, HistoryBuffer] = {}  # views, in the order keys were first put
        self._smoothing_hints: Dict[str, bool] = {}
        self._plans: Dict[Tuple[str, ...], _PutPlan] = {}
        self._last_plan: Optional[Tuple[Tuple[str, ...], _PutPlan]] = None
        # Readers ask for the same views many times per change; build each once per version.
        self._version = 0
        self._latest_cache: Optional[Tuple[int, Dict[str, Tuple[float, int]]]] = None
        self._smoothed_cache: Optional[Tuple[int, int, Dict[str, Tuple[float, int]], int]] = None
        self._written_through = -1  # the newest iteration handed to the writers
        self._warned_stale: set = set()
        self._lost_puts: Dict[str, int] = {}  # puts the writers will never see, per key not yet warned

    # ------------------------------------------------------------------ scalars
    def _new_block(self, names: Tuple[str, ...], hint: bool) -> ScalarBlock:
        block = ScalarBlock(self._history_length, len(names))
        self._blocks.append(_KeyBlock(names, hint, block))
        for column, name in enumerate(names):
            self._history[name] = HistoryBuffer._view(block, column)
            self._smoothing_hints[name] = hint
        return block

    def _check_hint(self, name: str, smoothing_hint: bool) -> None:
        if self._smoothing_hints[name] != smoothing_hint:
            raise ValueError(f"Scalar {name} was put with a different smoothing_hint!")

    def put_scalar(
        self, name: str, value: float, smoothing_hint: bool = True, cur_iter: Optional[int] = None
    ) -> None:
        """Add a scalar ``value`` to the history of ``name`` at ``cur_iter`` (default: now).

        ``smoothing_hint`` tells writers whether to report a window median (True) or the raw
        latest value (False); a key keeps the hint it was first put with.
        """
        name = self._current_prefix + name
        cur_iter = self._iter if cur_iter is None else int(cur_iter)
        value = float(value)
        buffer = self._history.get(name)
        if buffer is None:
            self._new_block((name,), bool(smoothing_hint)).put_row(value, cur_iter)
        else:
            self._check_hint(name, smoothing_hint)
            buffer._block.put_cell(buffer._column, value, cur_iter)
        self._version += 1
        if cur_iter <= self._written_through:
            self._warn_stale((name,), cur_iter)

    def put_scalars(
        self, *, smoothing_hint: bool = True, cur_iter: Optional[int] = None, **kwargs: float
    ) -> None:
        """Put several scalars with the same smoothing hint: ``put_scalars(loss=1.0, acc=0.5)``."""
        self.put_scalars_bulk(
            tuple(kwargs), [float(v) for v in kwargs.values()], smoothing_hint=smoothing_hint, cur_iter=cur_iter
        )

    def put_scalars_bulk(
        self,
        names: Sequence[str],
        values: Sequence[float],
        *,
        smoothing_hint: bool = True,
        cur_iter: Optional[int] = None,
    ) -> None:
        """Put many scalars at once: the per-step hot path for a whole loss dict.

        ``values`` (floats, a ``[len(names)]`` array, or 0-dim tensors) are aligned with ``names``.
        Same semantics as calling ``put_scalar`` for each pair. Keys first put together share a
        block, and putting the same tuple of names again is one row write.
        """
        if len(names) != len(values):
            raise ValueError(f"put_scalars_bulk got {len(names)} names and {len(values)} values")
        cur_iter = self._iter if cur_iter is None else int(cur_iter)
        plan = self._plan_for(names, smoothing_hint)
        if plan.block is not None:
            plan.block.put_row(values, cur_iter)
        elif plan.segments is None:  # a name repeats: put them one after the other
            for name, value in zip(names, values):
                self.put_scalar(name, value, smoothing_hint, cur_iter)
            return
        else:
            row = np.asarray(values, dtype=np.float64)
            for block, positions, columns in plan.segments:
                block.put_columns(columns, row[positions], cur_iter)
        self._version += 1
        if cur_iter <= self._written_through:
            self._warn_stale(plan.names, cur_iter)

    def put_scalar_rows(
        self,
        names: Sequence[str],
        rows: np.ndarray,
        iterations: Sequence[int],
        *,
        smoothing_hint: bool = True,
    ) -> None:
        """``put_scalars_bulk(names, row, cur_iter=iteration)`` for each of ``rows``
        (``[len(iterations), len(names)]`` float64) in order, with the same semantics: a
        period of deferred steps is written as slices of the ring, not row by row."""
        if rows.shape != (len(iterations), len(names)):
            raise ValueError(
                f"put_scalar_rows got {len(names)} names and {len(iterations)} iterations, "
                f"but rows of shape {list(rows.shape)}"
            )
        if not len(iterations):
            return
        plan = self._plan_for(names, smoothing_hint)
        if plan.block is None:  # several blocks or repeated names: rare
            for row, iteration in zip(rows, iterations):
                self.put_scalars_bulk(names, row, smoothing_hint=smoothing_hint, cur_iter=iteration)
            return
        plan.block.put_rows(rows, np.asarray(iterations, dtype=np.float64))
        self._version += 1
        if min(iterations) <= self._written_through:
            for iteration in iterations:
                if iteration <= self._written_through:
                    self._warn_stale(plan.names, int(iteration))

    def _plan_for(self, names: Sequence[str], smoothing_hint: bool) -> _PutPlan:
        last = self._last_plan
        # The reducer hands over the same tuple object every step: identity is enough. (A
        # list could have been changed in place since, so lists are looked up by content.)
        if last is not None and last[0] is names and last[1].prefix == self._current_prefix:
            plan = last[1]
        else:
            key = names if isinstance(names, tuple) else tuple(names)
            plan = self._plans.get(key)
            if plan is None or plan.prefix != self._current_prefix:
                plan = self._plans[key] = self._make_plan(key, bool(smoothing_hint))
            self._last_plan = (key, plan) if key is names else None
        if smoothing_hint != plan.hint:
            for name in plan.names:  # raises for the first key with another hint
                self._check_hint(name, smoothing_hint)
        return plan

    def _make_plan(self, names: Tuple[str, ...], smoothing_hint: bool) -> _PutPlan:
        prefix = self._current_prefix
        full = tuple(prefix + name for name in names) if prefix else names
        if len(set(full)) != len(full):
            return _PutPlan(prefix, full, smoothing_hint, None, None)
        new = tuple(name for name in full if name not in self._history)
        if new:
            self._new_block(new, smoothing_hint)
        by_block: Dict[int, Tuple[ScalarBlock, List[int], List[int]]] = {}
        for position, name in enumerate(full):
            view = self._history[name]
            block, positions, columns = by_block.setdefault(id(view._block), (view._block, [], []))
            positions.append(position)
            columns.append(view._column)
        hints = {self._smoothing_hints[name] for name in full}
        hint = hints.pop() if len(hints) == 1 else None
        if len(by_block) == 1:
            block, _, columns = next(iter(by_block.values()))
            if columns == list(range(block.num_columns)):
                return _PutPlan(prefix, full, hint, block, None)
        segments = [
            (block, np.asarray(positions), np.asarray(columns))
            for block, positions, columns in by_block.values()
        ]
        return _PutPlan(prefix, full, hint, None, segments)

    def _warn_stale(self, names: Sequence[str], cur_iter: int) -> None:
        """Count a put of ``names`` that the writers will never see; warn for the keys that
        reach two such puts (a loop that never steps), not for a one-off (the console's ETA
        re-put by a final write at the iteration it already wrote)."""
        if cur_iter < self._iter:  # deliberately dated before the current iteration
            return
        lost, fresh = self._lost_puts, []
        for name in names:
            if name not in self._warned_stale:
                lost[name] = lost.get(name, 0) + 1
                if lost[name] >= 2:
                    fresh.append(name)
        if not fresh:
            return
        self._warned_stale.update(fresh)
        shown = ", ".join(repr(name) for name in fresh[:3])
        if len(fresh) > 3:
            shown += f" and {len(fresh) - 3} more keys"
        warnings.warn(
            f"{shown} {'was' if len(fresh) == 1 else 'were'} put again at iteration {cur_iter}, which "
            "the writers have already written (they only write newer iterations), so these values "
            "are not written. Advance the iteration once per training step: storage.step(), or "
            "storage.iter = i, or cur_iter=i. (Reported once per key.)",
            StaleIterationWarning,
            stacklevel=3,
        )

    def history(self, name: str) -> HistoryBuffer:
        """The ``HistoryBuffer`` of ``name``; ``KeyError`` if it was never put."""
        buffer = self._history.get(name)
        if buffer is None:
            raise KeyError(f"No history metric available for {name}!")
        return buffer

    def histories(self) -> Dict[str, HistoryBuffer]:
        """``name -> HistoryBuffer`` (views of the storage's memory), in the order keys were
        first put."""
        return self._history

    def _latest_arrays(self) -> Tuple[List[np.ndarray], List[int]]:
        """Every block's latest values (arrays) and every key's latest iteration (ints, in the
        order of ``_history``)."""
        values, iterations = [], []
        for key_block in self._blocks:
            block_values, block_iterations = key_block.block.latest()
            values.append(block_values)
            iterations += block_iterations
        return values, iterations

    def _as_dict(self, values: List[np.ndarray], iterations: List[int]) -> Dict[str, Tuple[float, int]]:
        if not self._blocks:
            return {}
        return dict(zip(self._history, zip(np.concatenate(values).tolist(), iterations)))

    def latest(self) -> Dict[str, Tuple[float, int]]:
        """``name -> (latest value, iteration it was put at)``."""
        cache = self._latest_cache
        if cache is None or cache[0] != self._version:
            cache = self._latest_cache = (self._version, self._as_dict(*self._latest_arrays()))
        return dict(cache[1])

    def latest_with_smoothing_hint(self, window_size: int = 20) -> Dict[str, Tuple[float, int]]:
        """Like ``latest`` but smoothed keys report the median of their last ``window_size``
        values (the values put within the last ``window_size`` iterations when several values
        are put per iteration, as detectron2's ``count_samples`` does).

        Computed once per change of the storage, with one vectorised median per key block,
        however many writers ask. This is what writers read: a later put at an iteration it
        returned is reported (see the class docstring).
        """
        cache = self._smoothed_cache
        if cache is None or cache[0] != self._version or cache[1] != window_size:
            values, iterations = self._latest_arrays()
            for index, key_block in enumerate(self._blocks):
                if key_block.hint:
                    values[index] = key_block.block.window_medians(window_size)
            newest = max(iterations, default=-1)
            cache = self._smoothed_cache = (
                self._version, window_size, self._as_dict(values, iterations), newest
            )
        self._written_through = max(self._written_through, cache[3])
        return dict(cache[2])

    def count_samples(self, name: str, window_size: int = 20) -> int:
        """How many of ``name``'s last values were put within the last ``window_size`` iterations
        (equals ``window_size`` when one value is put per iteration)."""
        return self.history(name).count_within(window_size)

    def smoothing_hints(self) -> Dict[str, bool]:
        return self._smoothing_hints

    # ------------------------------------------------------------------ images & histograms
    def put_image(self, img_name: str, img_tensor: Any) -> None:
        """Queue an image (``[C, H, W]`` in [0, 1] or uint8) for the writers at this iteration."""
        self._vis_data.append((self._current_prefix + img_name, img_tensor, self._iter))

    def put_histogram(self, hist_name: str, hist_tensor: Any, bins: int = 1000) -> None:
        """Queue a histogram of all elements of ``hist_tensor`` (any shape) for the writers."""
        values = _to_numpy(hist_tensor)
        if values.size == 0:
            raise ValueError(f"put_histogram({hist_name!r}) got an empty tensor")
        finite = values[np.isfinite(values)]
        low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
        counts, edges = np.histogram(finite, bins=bins, range=(low, high) if high > low else None)
        self._histograms.append(
            dict(
                tag=self._current_prefix + hist_name,
                min=low,
                max=high,
                num=int(values.size),
                sum=float(finite.sum()),
                sum_squares=float(np.square(finite).sum()),
                bucket_limits=edges[1:].tolist(),
                bucket_counts=counts.tolist(),
                global_step=self._iter,
            )
        )

    def clear_images(self) -> None:
        """Drop queued images; writers call this after writing them."""
        self._vis_data = []

    def clear_histograms(self) -> None:
        """Drop queued histograms; writers call this after writing them."""
        self._histograms = []

    # ------------------------------------------------------------------ iteration & scope
    def step(self) -> None:
        """Advance the iteration counter by one."""
        self._iter += 1

    @property
    def iter(self) -> int:
        return self._iter

    @iter.setter
    def iter(self, val: int) -> None:
        self._iter = int(val)

    @property
    def iteration(self) -> int:
        """Backward-compatible alias of ``iter``."""
        return self._iter

    def __enter__(self) -> "EventStorage":
        _CURRENT_STORAGE_STACK.append(self)
        return self

    def __exit__(self, exc_type, exc_val, exc_tb) -> None:
        if not _CURRENT_STORAGE_STACK or _CURRENT_STORAGE_STACK[-1] is not self:
            raise RuntimeError("EventStorage contexts were exited out of order")
        _CURRENT_STORAGE_STACK.pop()

    @contextlib.contextmanager
    def name_scope(self, name: str) -> Iterator[None]:
        """Prefix every name put inside the block with ``name/``; scopes nest (``a/b/loss``)."""
        old_prefix = self._current_prefix
        self._current_prefix = old_prefix + name.rstrip("/") + "/"
        try:
            yield
        finally:
            self._current_prefix = old_prefix

    # ------------------------------------------------------------------ resume
    def state_dict(self) -> Dict[str, Any]:
        """Iteration, every key's kept history, running sums, hints, latest values and which keys
        share a block.

        Plain Python types only, so checkpoints load with ``torch.load(weights_only=True)``.
        """
        return {
            "iteration": self._iter,
            "history_length": self._history_length,
            "histories": {name: buf.state_dict() for name, buf in self._history.items()},
            "smoothing_hints": dict(self._smoothing_hints),
            "latest": {name: list(pair) for name, pair in self.latest().items()},
            "blocks": [list(key_block.names) for key_block in self._blocks],
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore what ``state_dict`` saved; the iteration is restored too. (States saved
        before keys shared blocks, without ``"blocks"``, load with one block per key.)"""
        histories, hints = state["histories"], state["smoothing_hints"]
        groups = state.get("blocks") or [[name] for name in histories]
        checked = {name: check_buffer_state(buffer_state) for name, buffer_state in histories.items()}
        self._iter = int(state["iteration"])
        self._history_length = int(state.get("history_length", self._history_length))
        self._reset_scalars()
        for names in groups:
            # A block holds one hint; split a saved group whose hints differ.
            for hint in dict.fromkeys(bool(hints[name]) for name in names):
                members = tuple(name for name in names if bool(hints[name]) == hint)
                block = self._new_block(members, hint)
                for column, name in enumerate(members):
                    buffer_state = histories[name]
                    values, iterations = checked[name]
                    block.load_column(
                        column, int(buffer_state["count"]), float(buffer_state["sum"]), values, iterations
                    )
                block.realign()
