"""Stand-in for tests, NOT detectron2: ``detectron2/utils/events.py`` (commit 02b5c4e) reduced to
what the bridge and the trainer loop touch. A module-level storage stack read by
``get_event_storage``; writers that read the storage through ``get_event_storage`` and its
public API (plus ``_vis_data`` / ``_histograms``); a storage on fvcore's ``HistoryBuffer`` that
is not checkpointed. The console printer logs under ``detectron2.utils.events``.
"""
import datetime
import json
import logging
import os
from collections import defaultdict
from contextlib import contextmanager
from functools import cached_property

from fvcore.common.history_buffer import HistoryBuffer

_CURRENT_STORAGE_STACK = []


def get_event_storage():
    assert len(_CURRENT_STORAGE_STACK), "get_event_storage() has to be called inside a 'with EventStorage(...)' context!"
    return _CURRENT_STORAGE_STACK[-1]


def has_event_storage():
    return len(_CURRENT_STORAGE_STACK) > 0


class EventWriter:
    def write(self):
        raise NotImplementedError

    def close(self):
        pass


class JSONWriter(EventWriter):
    """Appends one JSON object per iteration not yet written."""

    def __init__(self, json_file, window_size=20):
        self._file_handle = open(json_file, "a")
        self._window_size = window_size
        self._last_write = -1

    def write(self):
        storage = get_event_storage()
        to_save = defaultdict(dict)
        for k, (v, itr) in storage.latest_with_smoothing_hint(self._window_size).items():
            if itr > self._last_write:
                to_save[itr][k] = v
        if to_save:
            self._last_write = max(to_save)
        for itr, scalars in to_save.items():
            scalars["iteration"] = itr
            self._file_handle.write(json.dumps(scalars, sort_keys=True) + "\n")
        self._file_handle.flush()

    def close(self):
        self._file_handle.close()


class TensorboardXWriter(EventWriter):
    """One ``add_scalar`` per key through ``torch.utils.tensorboard``, created on first use."""

    def __init__(self, log_dir, window_size=20, **kwargs):
        self._window_size = window_size
        self._writer_args = {"log_dir": log_dir, **kwargs}
        self._last_write = -1

    @cached_property
    def _writer(self):
        from torch.utils.tensorboard import SummaryWriter

        return SummaryWriter(**self._writer_args)

    def write(self):
        storage = get_event_storage()
        new_last_write = self._last_write
        for k, (v, itr) in storage.latest_with_smoothing_hint(self._window_size).items():
            if itr > self._last_write:
                self._writer.add_scalar(k, v, itr)
                new_last_write = max(new_last_write, itr)
        self._last_write = new_last_write
        for img_name, img, step in storage._vis_data:
            self._writer.add_image(img_name, img, step)
        storage.clear_images()
        for params in storage._histograms:
            self._writer.add_histogram_raw(**params)
        storage.clear_histograms()

    def close(self):
        if "_writer" in self.__dict__:
            self._writer.close()


class CommonMetricPrinter(EventWriter):
    """The console line: eta, iter, window medians of losses, times, lr."""

    def __init__(self, max_iter=None, window_size=20):
        self.logger = logging.getLogger("detectron2.utils.events")
        self._max_iter = max_iter
        self._window_size = window_size

    def write(self):
        storage = get_event_storage()
        iteration = storage.iter
        if iteration == self._max_iter:
            return
        fields = []
        try:
            eta = storage.history("time").median(1000) * (self._max_iter - iteration - 1)
            storage.put_scalar("eta_seconds", eta, smoothing_hint=False)
            fields.append(f"eta: {datetime.timedelta(seconds=int(eta))}")
        except (KeyError, TypeError):
            pass
        fields.append(f"iter: {iteration}")
        fields += [
            f"{k}: {v.median(storage.count_samples(k, self._window_size)):.4g}"
            for k, v in storage.histories().items()
            if "loss" in k
        ]
        try:
            fields.append(f"time: {storage.history('time').global_avg():.4f}")
            fields.append(f"data_time: {storage.history('data_time').avg(storage.count_samples('data_time', self._window_size)):.4f}")
        except KeyError:
            pass
        try:
            fields.append(f"lr: {storage.history('lr').latest():.5g}")
        except KeyError:
            fields.append("lr: N/A")
        self.logger.info(" " + "  ".join(fields))


class EventStorage:
    def __init__(self, start_iter=0):
        self._history = defaultdict(HistoryBuffer)
        self._smoothing_hints = {}
        self._latest_scalars = {}
        self._iter = start_iter
        self._current_prefix = ""
        self._vis_data = []
        self._histograms = []

    def put_scalar(self, name, value, smoothing_hint=True, cur_iter=None):
        name = self._current_prefix + name
        cur_iter = self._iter if cur_iter is None else cur_iter
        value = float(value)
        self._history[name].update(value, cur_iter)
        self._latest_scalars[name] = (value, cur_iter)
        assert self._smoothing_hints.setdefault(name, smoothing_hint) == smoothing_hint

    def put_scalars(self, *, smoothing_hint=True, cur_iter=None, **kwargs):
        for k, v in kwargs.items():
            self.put_scalar(k, v, smoothing_hint=smoothing_hint, cur_iter=cur_iter)

    def put_image(self, img_name, img_tensor):
        self._vis_data.append((img_name, img_tensor, self._iter))

    def history(self, name):
        if name not in self._history:
            raise KeyError(f"No history metric available for {name}!")
        return self._history[name]

    def histories(self):
        return self._history

    def latest(self):
        return self._latest_scalars

    def latest_with_smoothing_hint(self, window_size=20):
        return {
            k: (self._history[k].median(self.count_samples(k, window_size)) if self._smoothing_hints[k] else v, itr)
            for k, (v, itr) in self._latest_scalars.items()
        }

    def count_samples(self, name, window_size=20):
        data = self._history[name].values()
        return sum(1 for _, itr in data if itr > data[-1][1] - window_size)

    def smoothing_hints(self):
        return self._smoothing_hints

    def step(self):
        self._iter += 1

    @property
    def iter(self):
        return self._iter

    @iter.setter
    def iter(self, val):
        self._iter = int(val)

    def __enter__(self):
        _CURRENT_STORAGE_STACK.append(self)
        return self

    def __exit__(self, exc_type, exc_val, exc_tb):
        assert _CURRENT_STORAGE_STACK[-1] == self
        _CURRENT_STORAGE_STACK.pop()

    @contextmanager
    def name_scope(self, name):
        old_prefix = self._current_prefix
        self._current_prefix = name.rstrip("/") + "/"
        yield
        self._current_prefix = old_prefix

    def clear_images(self):
        self._vis_data = []

    def clear_histograms(self):
        self._histograms = []
