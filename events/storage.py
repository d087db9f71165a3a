"""``EventStorage``: where a training loop puts its metrics, with detectron2's API and semantics.

Code written against ``detectron2.utils.events`` runs unchanged after swapping the import. What
differs is what detectron2 gets wrong (see shared/FACTS.md): every key's history is bounded
(``HistoryBuffer``), the storage has a ``state_dict`` so smoothing windows, global averages and
the iteration survive a resume, ``name_scope`` nests and restores its prefix on exceptions,
``put_histogram`` counts every element (not ``len``), and ``put_scalars_bulk`` is a hot path for
putting a whole loss dict at once.

This module imports neither torch nor torch.distributed: tensors are accepted by duck typing.
"""
from __future__ import annotations

import contextlib
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from events.history_buffer import DEFAULT_MAX_LENGTH, HistoryBuffer

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


class EventStorage:
    """The user-facing store of metrics: scalars (with history), images and histograms.

    Use it as a context manager so that ``get_event_storage()`` finds it. Scalars put with
    ``smoothing_hint=True`` are reported by writers as a window median; others as the latest
    value. Each key keeps at most ``history_length`` values in memory; the full history belongs
    on disk (metrics.json, TensorBoard).

    ``start_iter`` is the iteration training started (or resumed) at, as the trainer opened the
    storage with it; it is not part of ``state_dict``. Writers read it on their first write to
    supersede what a crashed run left from there on (see ``events.writers.ResumableWriter``).
    """

    def __init__(self, start_iter: int = 0, history_length: int = DEFAULT_MAX_LENGTH) -> None:
        self.start_iter = int(start_iter)
        self._history: Dict[str, HistoryBuffer] = {}
        self._smoothing_hints: Dict[str, bool] = {}
        self._latest_scalars: Dict[str, Tuple[float, int]] = {}
        self._iter = int(start_iter)
        self._current_prefix = ""
        self._vis_data: List[Tuple[str, Any, int]] = []
        self._histograms: List[Dict[str, Any]] = []
        self._history_length = int(history_length)
        # Every writer asks for the smoothed view at each period; compute it once per change.
        self._smoothed_cache: Optional[Tuple[int, int, Dict[str, Tuple[float, int]]]] = None
        self._version = 0

    # ------------------------------------------------------------------ scalars
    def _buffer(self, name: str) -> HistoryBuffer:
        buffer = self._history.get(name)
        if buffer is None:
            buffer = self._history[name] = HistoryBuffer(self._history_length)
        return buffer

    def _check_hint(self, name: str, smoothing_hint: bool) -> None:
        existing = self._smoothing_hints.setdefault(name, smoothing_hint)
        if existing != smoothing_hint:
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
        self._version += 1
        self._buffer(name).update(value, cur_iter)
        self._latest_scalars[name] = (value, cur_iter)
        self._check_hint(name, smoothing_hint)

    def put_scalars(
        self, *, smoothing_hint: bool = True, cur_iter: Optional[int] = None, **kwargs: float
    ) -> None:
        """Put several scalars with the same smoothing hint: ``put_scalars(loss=1.0, acc=0.5)``."""
        for name, value in kwargs.items():
            self.put_scalar(name, value, smoothing_hint=smoothing_hint, cur_iter=cur_iter)

    def put_scalars_bulk(
        self,
        names: Sequence[str],
        values: Sequence[float],
        *,
        smoothing_hint: bool = True,
        cur_iter: Optional[int] = None,
    ) -> None:
        """Put many scalars at once: the per-step hot path for a whole loss dict.

        ``values`` are Python floats (e.g. from one ``tensor.tolist()``), aligned with ``names``.
        Same semantics as calling ``put_scalar`` for each pair, at a fraction of the cost.
        """
        if len(names) != len(values):
            raise ValueError(f"put_scalars_bulk got {len(names)} names and {len(values)} values")
        cur_iter = self._iter if cur_iter is None else int(cur_iter)
        self._version += 1
        prefix = self._current_prefix
        history, latest, hints = self._history, self._latest_scalars, self._smoothing_hints
        for name, value in zip(names, values):
            if prefix:
                name = prefix + name
            buffer = history.get(name)
            if buffer is None:
                buffer = self._buffer(name)
                self._check_hint(name, smoothing_hint)
            elif hints[name] is not smoothing_hint:
                self._check_hint(name, smoothing_hint)
            buffer.update(value, cur_iter)
            latest[name] = (value, cur_iter)

    def history(self, name: str) -> HistoryBuffer:
        """The ``HistoryBuffer`` of ``name``; ``KeyError`` if it was never put."""
        buffer = self._history.get(name)
        if buffer is None:
            raise KeyError(f"No history metric available for {name}!")
        return buffer

    def histories(self) -> Dict[str, HistoryBuffer]:
        return self._history

    def latest(self) -> Dict[str, Tuple[float, int]]:
        """``name -> (latest value, iteration it was put at)``."""
        return self._latest_scalars

    def latest_with_smoothing_hint(self, window_size: int = 20) -> Dict[str, Tuple[float, int]]:
        """Like ``latest`` but smoothed keys report the median of their last ``window_size``
        values (the values put within the last ``window_size`` iterations when several values
        are put per iteration, as detectron2's ``count_samples`` does)."""
        cache = self._smoothed_cache
        if cache is not None and cache[0] == self._version and cache[1] == window_size:
            return dict(cache[2])
        result = {}
        for name, (value, itr) in self._latest_scalars.items():
            if self._smoothing_hints[name]:
                value = self._history[name].median(self.count_samples(name, window_size))
            result[name] = (value, itr)
        self._smoothed_cache = (self._version, window_size, result)
        return dict(result)

    def count_samples(self, name: str, window_size: int = 20) -> int:
        """How many of ``name``'s last values were put within the last ``window_size`` iterations
        (equals ``window_size`` when one value is put per iteration)."""
        buffer = self.history(name)
        last_iter = self._latest_scalars[name][1]
        look_back = window_size
        while True:
            # Usually one value per iteration: the first look at window_size values decides.
            recent = buffer.recent_iterations(look_back)
            inside = int(np.count_nonzero(recent > last_iter - window_size))
            if inside < len(recent) or len(recent) == len(buffer):
                return max(inside, 1)
            look_back *= 2

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
        """Iteration, every key's kept history, running sums, hints and latest values.

        Plain Python types only, so checkpoints load with ``torch.load(weights_only=True)``.
        """
        return {
            "iteration": self._iter,
            "history_length": self._history_length,
            "histories": {name: buf.state_dict() for name, buf in self._history.items()},
            "smoothing_hints": dict(self._smoothing_hints),
            "latest": {name: [value, itr] for name, (value, itr) in self._latest_scalars.items()},
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore what ``state_dict`` saved; the iteration is restored too."""
        self._iter = int(state["iteration"])
        self._history_length = int(state.get("history_length", self._history_length))
        self._history = {}
        for name, buffer_state in state["histories"].items():
            buffer = HistoryBuffer(self._history_length)
            buffer.load_state_dict(buffer_state)
            self._history[name] = buffer
        self._smoothing_hints = dict(state["smoothing_hints"])
        self._latest_scalars = {
            name: (float(value), int(itr)) for name, (value, itr) in state["latest"].items()
        }
        self._version += 1
