"""detectron2's scalar logging path, re-implemented for the benches (detectron2 is not on PyPI).

Each piece follows detectron2's main branch line by line (``detectron2/utils/events.py``:
``EventStorage.put_scalar``, ``latest_with_smoothing_hint``, ``count_samples``,
``TensorboardXWriter.write``; ``detectron2/engine/train_loop.py``:
``SimpleTrainer.write_metrics``) on fvcore's ``HistoryBuffer``, which is what detectron2 uses.
Only what the benches time is here; the storage is passed in instead of found through
``get_event_storage()``.
"""
from __future__ import annotations

import collections
from typing import Dict, Mapping, Optional, Tuple

import numpy as np
import torch

from engine import comm


class Detectron2Storage:
    """detectron2's ``EventStorage`` scalar path on fvcore's ``HistoryBuffer`` (up to 1M values
    per key, evicted with ``list.pop(0)``)."""

    def __init__(self, start_iter: int = 0) -> None:
        from fvcore.common.history_buffer import HistoryBuffer

        self._history = collections.defaultdict(HistoryBuffer)
        self._smoothing_hints: Dict[str, bool] = {}
        self._latest_scalars: Dict[str, Tuple[float, int]] = {}
        self.iter = start_iter

    def put_scalar(
        self, name: str, value: float, smoothing_hint: bool = True, cur_iter: Optional[int] = None
    ) -> None:
        cur_iter = self.iter if cur_iter is None else cur_iter
        history = self._history[name]
        value = float(value)
        history.update(value, cur_iter)
        self._latest_scalars[name] = (value, cur_iter)
        existing_hint = self._smoothing_hints.get(name)
        if existing_hint is not None:
            assert existing_hint == smoothing_hint, f"Scalar {name} was put with a different smoothing_hint!"
        else:
            self._smoothing_hints[name] = smoothing_hint

    def put_scalars(self, *, smoothing_hint: bool = True, cur_iter: Optional[int] = None, **kwargs: float) -> None:
        for k, v in kwargs.items():
            self.put_scalar(k, v, smoothing_hint=smoothing_hint, cur_iter=cur_iter)

    def latest_with_smoothing_hint(self, window_size: int = 20) -> Dict[str, Tuple[float, int]]:
        result = {}
        for k, (v, itr) in self._latest_scalars.items():
            result[k] = (
                self._history[k].median(self.count_samples(k, window_size)) if self._smoothing_hints[k] else v,
                itr,
            )
        return result

    def count_samples(self, name: str, window_size: int = 20) -> int:
        samples = 0
        data = self._history[name].values()
        for _, iter_ in reversed(data):
            if iter_ > data[-1][1] - window_size:
                samples += 1
            else:
                break
        return samples


def write_metrics(
    storage: Detectron2Storage, loss_dict: Mapping[str, torch.Tensor], data_time: float, cur_iter: int
) -> None:
    """``SimpleTrainer.write_metrics``: per-key ``.item()``, ``gather`` to rank 0, per-key mean."""
    metrics_dict = {k: v.detach().cpu().item() for k, v in loss_dict.items()}
    metrics_dict["data_time"] = data_time
    storage.put_scalar("rank_data_time", data_time, cur_iter=cur_iter)
    all_metrics_dict = comm.gather(metrics_dict)
    if comm.is_main_process():
        data_time = np.max([x.pop("data_time") for x in all_metrics_dict])
        storage.put_scalar("data_time", data_time, cur_iter=cur_iter)
        metrics_dict = {k: np.mean([x[k] for x in all_metrics_dict]) for k in all_metrics_dict[0].keys()}
        total_losses_reduced = sum(metrics_dict.values())
        if not np.isfinite(total_losses_reduced):
            raise FloatingPointError(f"Loss became infinite or NaN at iteration={cur_iter}!")
        storage.put_scalar("total_loss", total_losses_reduced, cur_iter=cur_iter)
        if len(metrics_dict) > 1:
            storage.put_scalars(cur_iter=cur_iter, **metrics_dict)


class TensorboardXWriter:
    """detectron2's ``TensorboardXWriter.write`` (scalars): the storage's smoothed read, then one
    ``torch.utils.tensorboard`` ``SummaryWriter.add_scalar`` per key not written yet."""

    def __init__(self, storage: Detectron2Storage, log_dir: str, window_size: int = 20) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self._storage = storage
        self._window_size = window_size
        self._writer = SummaryWriter(log_dir=log_dir)
        self._last_write = -1

    def write(self) -> None:
        new_last_write = self._last_write
        for k, (v, iter) in self._storage.latest_with_smoothing_hint(self._window_size).items():
            if iter > self._last_write:
                self._writer.add_scalar(k, v, iter)
                new_last_write = max(new_last_write, iter)
        self._last_write = new_last_write

    def close(self) -> None:
        self._writer.close()
