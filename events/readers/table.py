"""The one table every reader produces: named series, validation series, run boundaries."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np

__all__ = ["Series", "RunInfo", "SkippedLines", "LogTable", "X_AXES"]

# What a plot can put on its x axis: the logged step, the epoch, or seconds since the run began.
X_AXES = ("iter", "epoch", "time")


@dataclass
class Series:
    """One scalar's curve: ``values[i]`` was logged at step ``steps[i]``.

    Both are ``[points]`` float64 arrays, ``steps`` strictly increasing. ``values`` may hold NaN
    (a NaN the trainer really logged); a step where nothing was logged is simply absent.
    """

    steps: np.ndarray
    values: np.ndarray

    def __len__(self) -> int:
        return int(self.steps.shape[0])

    def value_at(self, step: float) -> float:
        """The value logged at exactly ``step`` (KeyError if none was)."""
        index = int(np.searchsorted(self.steps, step))
        if index >= len(self) or self.steps[index] != step:
            raise KeyError(f"no value at step {step:g}")
        return float(self.values[index])


@dataclass
class RunInfo:
    """One training run found in a file: ``number`` counts from 1 in file order.

    ``resumed_at`` lists the steps at which the run was resumed inside the file (the earlier
    records at or after each of them were overwritten by the resumed ones).
    """

    number: int
    first_step: float
    last_step: float
    records: int
    first_line: int
    resumed_at: List[float] = field(default_factory=list)


@dataclass
class SkippedLines:
    """Lines (and values inside readable lines) that could not be read, with a few examples."""

    lines: int = 0
    values: int = 0
    examples: List[Tuple[int, str]] = field(default_factory=list)
    max_examples: int = 3

    def add_line(self, line_number: int, reason: str) -> None:
        self.lines += 1
        if len(self.examples) < self.max_examples:
            self.examples.append((line_number, reason))

    def add_value(self, line_number: int, reason: str) -> None:
        self.values += 1
        if len(self.examples) < self.max_examples:
            self.examples.append((line_number, reason))

    def merge(self, other: "SkippedLines", line_offset: int = 0) -> None:
        """Add what ``other`` skipped in another piece of the same file, whose line numbers are
        ``line_offset`` lower than the file's."""
        self.lines += other.lines
        self.values += other.values
        shifted = [(line + line_offset, reason) for line, reason in other.examples]
        self.examples = sorted(self.examples + shifted)[: self.max_examples]

    def summary(self, source: str) -> Optional[str]:
        """One line saying what was skipped in ``source``, or None when nothing was."""
        if not self.lines and not self.values:
            return None
        parts = []
        if self.lines:
            parts.append(f"{self.lines} unreadable line{'s' if self.lines != 1 else ''}")
        if self.values:
            parts.append(f"{self.values} unreadable value{'s' if self.values != 1 else ''}")
        shown = "; ".join(f"line {number}: {reason}" for number, reason in self.examples)
        return f"{source}: skipped {' and '.join(parts)} (e.g. {shown})"


@dataclass
class LogTable:
    """Everything read from one run of one log file.

    Attributes:
        source: the file read.
        format: what it was detected as (``detectron2-log``, ``detectron2-metrics``, ``detr-log``,
            ``mmdet-json``, ``mmengine-scalars``, ``mmengine-log``, ``jsonl``, ``csv``, ``tensorboard``).
        step_unit: what a step counts, ``"iteration"`` or ``"epoch"`` (DETR logs one line per epoch).
        train: training scalars by name (``total_loss``, ``loss_ce_0``, ``lr``...).
        val: validation scalars by name (``bbox/AP``, ``loss`` of the validation set...).
        axes: step -> other x axes: ``"epoch"`` and ``"time"`` (seconds since the run began),
            when the log says.
        eval_records: how many validation records this run holds.
        runs: every run found in the file; ``run`` is the one this table holds.
        skipped: what could not be read in the whole file.
        label: a short name for legends.
    """

    source: str
    format: str
    step_unit: str
    train: Dict[str, Series]
    val: Dict[str, Series]
    axes: Dict[str, Series]
    eval_records: int
    runs: List[RunInfo]
    run: Optional[RunInfo]
    skipped: SkippedLines
    label: str = ""

    def x_of(self, series: Series, axis: str = "iter") -> np.ndarray:
        """``[points]`` x coordinates of ``series`` on ``axis`` (one of ``X_AXES``).

        Raises ValueError naming the file when the log has no such information.
        """
        if axis == "iter":
            return series.steps
        if axis not in X_AXES:
            raise ValueError(f"unknown x axis {axis!r}; use one of {', '.join(X_AXES)}")
        mapping = self.axes.get(axis)
        if mapping is None or len(mapping) == 0:
            what = "epoch numbers" if axis == "epoch" else "timestamps or per-iteration times"
            raise ValueError(f"{self.source} has no {what}; use --x iter")
        x = np.interp(series.steps, mapping.steps, mapping.values)
        return x / 3600.0 if axis == "time" else x

    def x_label(self, axis: str = "iter") -> str:
        if axis == "epoch":
            return "epoch"
        if axis == "time":
            return "time since start (h)"
        return self.step_unit
