"""TensorBoard event files, read with tensorboard's own ``EventAccumulator`` (imported lazily).

TensorBoard already resolves resumes (it purges steps past a restart), so one file or folder is
one run. ``size_guidance={"scalars": 0}`` keeps every point: by default the accumulator keeps a
random 10,000 per tag.
"""
from __future__ import annotations

from typing import Dict, List

import numpy as np

from .assemble import make_series
from .keys import AXIS, META, TRAIN, VAL, classify_key
from .table import LogTable, RunInfo, Series, SkippedLines

__all__ = ["read_tensorboard", "TensorBoardMissing"]


class TensorBoardMissing(ImportError):
    """tensorboard is not installed."""


def read_tensorboard(path: str, skipped: SkippedLines) -> List[LogTable]:
    """One LogTable from an event file (or a folder of them); every scalar tag becomes a series."""
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError as error:  # pragma: no cover - tensorboard is part of the [tb] extra
        raise TensorBoardMissing("reading TensorBoard event files needs tensorboard: pip install 'detr-telemetry[tb]'") from error
    accumulator = EventAccumulator(path, size_guidance={"scalars": 0})
    accumulator.Reload()
    groups: Dict[str, Dict[str, Series]] = {TRAIN: {}, VAL: {}, AXIS: {}}
    wall_times: Dict[str, Series] = {}
    for tag in accumulator.Tags().get("scalars", []):
        events = accumulator.Scalars(tag)
        steps = np.fromiter((e.step for e in events), dtype=np.float64, count=len(events))
        values = np.fromiter((e.value for e in events), dtype=np.float64, count=len(events))
        kind, name = classify_key(tag)
        if kind == META or not len(events):
            continue
        groups[kind][name] = make_series(steps, values)
        wall = np.fromiter((e.wall_time for e in events), dtype=np.float64, count=len(events))
        wall_times[name] = make_series(steps, wall)
    train, val = groups[TRAIN], groups[VAL]
    every = list(train.values()) + list(val.values())
    if not every:
        return []
    axes = groups[AXIS]
    if "time" not in axes and train:
        longest = max(train, key=lambda name: len(train[name]))
        wall = wall_times[longest]
        axes["time"] = Series(wall.steps, wall.values - wall.values[0])
    first = min(float(s.steps[0]) for s in every)
    last = max(float(s.steps[-1]) for s in every)
    run = RunInfo(1, first, last, len(np.unique(np.concatenate([s.steps for s in every]))), 0)
    val_steps = np.unique(np.concatenate([s.steps for s in val.values()])) if val else np.empty(0)
    return [LogTable(path, "tensorboard", "iteration", train, val, axes, int(len(val_steps)), [run], run, skipped)]
