"""Writers that turn the ``EventStorage`` into a console line and ``metrics.json``.

Both keep detectron2's formats so existing parsers read our files. TensorBoard and W&B writers
live in their own modules (their packages are optional and imported lazily).
"""
from __future__ import annotations

import datetime
import json
import logging
import os
import sys
import time
from collections import defaultdict
from typing import Dict, List, Optional, Tuple

from events.durable_files import write_lines_durably
from events.storage import get_event_storage

# detectron2's logger name: handlers a detectron2 project set up on the ``detectron2`` logger (its
# ``setup_logger()``) receive our metric lines, and log.txt reads ``d2.utils.events INFO:`` once a
# formatter abbreviates the name as detectron2's does (see ``engine.logger``).
METRICS_LOGGER_NAME = "detectron2.utils.events"


class EventWriter:
    """Base class for writers that obtain events from the current ``EventStorage``."""

    def write(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


class ResumableWriter(EventWriter):
    """An ``EventWriter`` whose output must follow where training started.

    After a crash at iteration 130 and a resume from the checkpoint at 99, training starts at
    100: the crashed run's records from 100 on are superseded (metrics.json moves them aside,
    TensorBoard purges those steps, W&B continues the same run after what it holds). A writer
    learns the start iteration once, before its first write: from its constructor when the
    caller knows it (``resume_from``, ``purge_step``, ``resume``), otherwise from the storage
    it first writes from (``EventStorage(start_iter)``, which every trainer opens at its start
    iteration). So a trainer that builds its writers before it loads the checkpoint (detectron2's
    ``DefaultTrainer``: ``build_writers`` in ``__init__``, then ``resume_or_load``) needs to
    tell them nothing. A start at 0 is a fresh run: whatever the files hold is superseded.

    Subclasses implement ``_begin_at(start_iter)`` and call ``self._begin()`` at the top of
    ``write()``.
    """

    _started = False

    def _begin(self) -> None:
        if not self._started:
            self._start_at(get_event_storage().start_iter)

    def _start_at(self, start_iter: int) -> None:
        self._started = True
        self._begin_at(int(start_iter))

    def _begin_at(self, start_iter: int) -> None:
        raise NotImplementedError


def _iteration_of(line: str) -> Optional[int]:
    try:
        record = json.loads(line)
        return int(record["iteration"])
    except (ValueError, KeyError, TypeError):
        return None


def rewind_json_lines(json_file: str, resume_from: int) -> Tuple[int, int]:
    """Move the records of ``json_file`` at iteration >= ``resume_from`` to a side file.

    After a crash at iteration 130 and a resume from the checkpoint at 100, the crashed run's
    records 100..130 would otherwise sit before the resumed run's 100.. and the file would go
    backwards. They are moved (not deleted) to ``<json_file>.superseded-at-<resume_from>``
    together with any line that is not a complete JSON record (a write cut by SIGKILL).
    The rewrite goes through a temporary file and ``os.replace``, so a crash during the
    rewind loses nothing.

    Returns: (last iteration kept, or -1; number of lines moved aside).
    """
    if not os.path.exists(json_file):
        return -1, 0
    kept: List[str] = []
    moved: List[str] = []
    last_kept = -1
    with open(json_file, "r", encoding="utf-8", errors="replace") as f:
        for line in f:
            if not line.strip():
                continue
            itr = _iteration_of(line)
            if itr is not None and itr < resume_from and line.endswith("\n"):
                kept.append(line)
                last_kept = max(last_kept, itr)
            else:
                moved.append(line if line.endswith("\n") else line + "\n")
    if not moved:
        return last_kept, 0
    # Side file first: if the process dies in between, the records exist twice, never zero times.
    write_lines_durably(f"{json_file}.superseded-at-{resume_from}", moved, append=True)
    write_lines_durably(json_file, kept)
    return last_kept, len(moved)


class JSONWriter(ResumableWriter):
    """Append the latest (window-smoothed) scalars to a JSON-lines file, one object per iteration.

    Each line looks like detectron2's ``metrics.json``::

        {"data_time": 0.0011, "iteration": 19, "loss_ce": 1.31, "lr": 0.0001, ...}

    Only iterations not yet written are written, in increasing order, and every write is flushed
    and fsynced. The file stays strictly increasing across resumes: the records a crashed run left
    at iterations >= the start iteration are moved to a side file before the first write (see
    ``rewind_json_lines``). The start is ``resume_from`` when given, else the storage's
    ``start_iter`` (see ``ResumableWriter``).
    """

    def __init__(self, json_file: str, window_size: int = 20, resume_from: Optional[int] = None):
        self.json_file = json_file
        self._window_size = window_size
        self._last_write = -1
        # Opened now, as detectron2 does: a path that cannot be written fails at construction.
        self._file_handle = open(json_file, "a", encoding="utf-8")
        if resume_from is not None:
            self._start_at(resume_from)

    def _begin_at(self, start_iter: int) -> None:
        self._last_write, moved = rewind_json_lines(self.json_file, start_iter)
        if moved:
            # The rewind replaced the file: append to the new one, not the old inode.
            self._file_handle.close()
            self._file_handle = open(self.json_file, "a", encoding="utf-8")
            logging.getLogger(__name__).info(
                "Training starts at iteration %d: moved %d records of %s to %s.superseded-at-%d",
                start_iter, moved, self.json_file, self.json_file, start_iter,
            )

    def write(self) -> None:
        self._begin()
        storage = get_event_storage()
        to_save: Dict[int, Dict[str, float]] = defaultdict(dict)
        for name, (value, itr) in storage.latest_with_smoothing_hint(self._window_size).items():
            if itr > self._last_write:
                to_save[itr][name] = value
        for itr in sorted(to_save):
            record = to_save[itr]
            record["iteration"] = itr
            self._file_handle.write(json.dumps(record, sort_keys=True) + "\n")
        if to_save:
            self._last_write = max(to_save)
        self._file_handle.flush()
        os.fsync(self._file_handle.fileno())

    def close(self) -> None:
        self._file_handle.close()


def _cuda_max_memory_mb() -> Optional[float]:
    """Peak CUDA memory in MB when torch is already imported and CUDA is in use, else None."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None
    return torch.cuda.max_memory_allocated() / 1024.0 / 1024.0


class CommonMetricPrinter(EventWriter):
    """Log detectron2's one-line training summary through ``logging`` (and so into log.txt)::

        eta: 0:00:41  iter: 39  total_loss: 3.21  loss_ce: 1.1  ...  time: 0.0512  \
last_time: 0.0498  data_time: 0.0012  last_data_time: 0.0011  lr: 0.0001  max_mem: 123M

    Every key with "loss" in its name is the median over the window. ETA is the median
    iteration time (last 1000) times the iterations left; the storage's ``time`` history is part
    of its state, so the ETA is right straight after a resume.
    """

    def __init__(self, max_iter: Optional[int] = None, window_size: int = 20):
        self.logger = logging.getLogger(METRICS_LOGGER_NAME)
        self._max_iter = max_iter
        self._window_size = window_size
        self._last_write: Optional[Tuple[int, float]] = None

    def _get_eta(self, storage) -> Optional[str]:
        if self._max_iter is None:
            return ""
        iteration = storage.iter
        try:
            eta_seconds = storage.history("time").median(1000) * (self._max_iter - iteration - 1)
            # Recorded at the last timed (completed) iteration: after a crash mid-step, the
            # storage's iteration is one no step finished, and no record should appear there.
            storage.put_scalar("eta_seconds", eta_seconds, smoothing_hint=False, cur_iter=storage.latest()["time"][1])
            return str(datetime.timedelta(seconds=int(eta_seconds)))
        except KeyError:
            # No per-iteration "time" (no IterationTimer): estimate from the write cadence.
            eta_string = None
            now = time.perf_counter()
            if self._last_write is not None and iteration > self._last_write[0]:
                per_iter = (now - self._last_write[1]) / (iteration - self._last_write[0])
                eta_string = str(datetime.timedelta(seconds=int(per_iter * (self._max_iter - iteration - 1))))
            self._last_write = (iteration, now)
            return eta_string

    def _window_median(self, storage, name: str) -> float:
        return storage.history(name).median(storage.count_samples(name, self._window_size))

    def write(self) -> None:
        storage = get_event_storage()
        iteration = storage.iter
        if iteration == self._max_iter:
            # Training finished: this writer reports progress only.
            return
        histories = storage.histories()
        fields = [f"eta: {eta}" for eta in [self._get_eta(storage)] if eta]
        fields.append(f"iter: {iteration}")
        fields += [f"{k}: {self._window_median(storage, k):.4g}" for k in histories if "loss" in k]
        fields += [f"{k}: {self._window_median(storage, k):.4g}" for k in histories if "[metric]" in k]
        if "time" in histories:
            fields.append(f"time: {histories['time'].global_avg():.4f}")
            fields.append(f"last_time: {histories['time'].latest():.4f}")
        if "data_time" in histories:
            data_time = histories["data_time"]
            fields.append(f"data_time: {data_time.avg(storage.count_samples('data_time', self._window_size)):.4f}")
            fields.append(f"last_data_time: {data_time.latest():.4f}")
        fields.append(f"lr: {histories['lr'].latest():.5g}" if "lr" in histories else "lr: N/A")
        # Put by the reducer only while one rank is consistently the slowest (engine/rank_stats.py).
        slowest = storage.latest().get("slowest_rank")
        if slowest is not None and slowest[1] == iteration:
            fields.append(f"slowest_rank: {slowest[0]:.0f}")
        max_mem_mb = _cuda_max_memory_mb()
        if max_mem_mb is not None:
            fields.append(f"max_mem: {max_mem_mb:.0f}M")
        self.logger.info(" " + "  ".join(fields))
