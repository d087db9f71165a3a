"""Per-rank timing and memory, carried by the loss reducer's one collective: which rank holds
the others back?

Each rank samples three numbers per step (``RANK_FIELDS``):

* ``data_time``: seconds it waited for its batch (what the trainer passes to the reducer);
* ``step_time``: seconds from the later of its previous step's packing and the end of its
  previous exchange to this step's packing: the time it needed to bring a step to the reduction
  (waiting for data, forward, backward, and DDP's gradient all-reduce);
* ``max_mem``: peak memory in MB: ``torch.cuda.max_memory_allocated`` on a CUDA device, else
  the process's peak resident set size.

They travel as three more host columns of the reducer's packed row. The reducer gathers every
rank's row, so after the exchange the ``[world, steps, 3]`` block holds every rank's numbers in
its own row: no extra collective.

``RankStats.decode`` turns the block into storage scalars, with ``W`` ranks:

* ``rank_<field>/r<i>`` for each rank ``i``: the per-rank curves;
* ``rank_<field>/max``, ``rank_<field>/median``, ``rank_<field>/argmax`` (the rank holding the max);
* ``slowest_rank``: present only while one rank has been the slowest (largest data_time +
  step_time) in at least ``CONSISTENT_SHARE`` of the last ``WINDOW`` steps: the console names it.
"""
from __future__ import annotations

import collections
import sys
import time
from typing import Deque, Dict, List, Optional

import numpy as np
import torch

from events.rank_keys import PREFIX, RANK_FIELDS, SLOWEST_RANK, is_rank_key, per_rank_key

__all__ = ["RANK_FIELDS", "RankStats", "is_rank_key", "WINDOW", "CONSISTENT_SHARE"]

WINDOW = 20
CONSISTENT_SHARE = 0.75
# ru_maxrss is in KiB on Linux, in bytes on macOS.
_RSS_TO_MB = 1.0 / (1 << 20) if sys.platform == "darwin" else 1.0 / 1024


def _peak_memory_mb(device: Optional[torch.device]) -> float:
    if device is not None and device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / (1 << 20)
    try:
        import resource
    except ImportError:  # Windows: no peak RSS to read (0, not NaN: NaN would look like a bad loss)
        return 0.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * _RSS_TO_MB


class RankStats:
    """Samples this rank's numbers at each packing and decodes every rank's after the exchange.

    One per reducer; every rank's instance sees the same gathered numbers, so the decoded
    scalars (and the ``slowest_rank`` decision) are identical on all ranks.
    """

    def __init__(self) -> None:
        self._last = time.perf_counter()
        self._slowest: Deque[int] = collections.deque(maxlen=WINDOW)  # slowest rank of the last steps
        self._counts: List[int] = []  # how often each rank is in _slowest
        self._names: Dict[int, List[str]] = {}  # decode's key names, per world size

    def sample(self, data_time: float, device: Optional[torch.device]) -> np.ndarray:
        """``[len(RANK_FIELDS)]`` this rank's numbers for the step being packed now."""
        now = time.perf_counter()
        step_time, self._last = now - self._last, now
        return np.array([data_time, step_time, _peak_memory_mb(device)])

    def exchanged(self) -> None:
        """Call when an exchange ends: time spent waiting in it is not the next step's."""
        self._last = time.perf_counter()

    def decode(self, block: np.ndarray) -> List[Dict[str, float]]:
        """Per step, the scalars of every rank (module docstring); ``block`` is ``[world, steps,
        len(RANK_FIELDS)]``. Empty dicts with one rank: there is nothing to compare."""
        world, steps, _ = block.shape
        if world < 2:
            return [{} for _ in range(steps)]
        names = self._names.get(world)
        if names is None:
            names = self._names[world] = [per_rank_key(field, rank) for field in RANK_FIELDS for rank in range(world)] + [
                f"{PREFIX}{field}/{stat}" for stat in ("max", "median", "argmax") for field in RANK_FIELDS]
        ordered = np.sort(block, axis=0)  # a handful of ranks: sorting beats np.median's overhead
        medians = 0.5 * (ordered[(world - 1) // 2] + ordered[world // 2])  # [steps, fields]
        columns = np.concatenate([block.transpose(1, 2, 0).reshape(steps, -1), ordered[-1], medians, block.argmax(axis=0)], axis=1)
        slowest = (block[:, :, 0] + block[:, :, 1]).argmax(axis=0).tolist()  # [steps]
        out = []
        for row, rank in zip(columns.tolist(), slowest):
            values = dict(zip(names, row))
            consistent = self._record_slowest(rank, world)
            if consistent is not None:
                values[SLOWEST_RANK] = float(consistent)
            out.append(values)
        return out

    def _record_slowest(self, rank: int, world: int) -> Optional[int]:
        """Add a step's slowest rank to the window; the rank slowest in ``CONSISTENT_SHARE`` of
        it (once it holds ``WINDOW // 2`` steps), else None."""
        if len(self._counts) != world:
            self._counts, self._slowest = [0] * world, collections.deque(maxlen=WINDOW)
        if len(self._slowest) == WINDOW:
            self._counts[self._slowest[0]] -= 1
        self._slowest.append(rank)
        self._counts[rank] += 1
        if len(self._slowest) < WINDOW // 2:
            return None
        top = max(range(world), key=self._counts.__getitem__)
        return top if self._counts[top] >= CONSISTENT_SHARE * len(self._slowest) else None
