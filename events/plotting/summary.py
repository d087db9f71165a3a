"""The numbers behind the curves: per-key statistics, convergence, spikes, slope, overfitting,
best validation metric; printed, and saved as summary.csv and summary.md.

Definitions (all on finite points; NaN/inf are counted in ``non_finite``):

* ``change`` = final - initial; ``change_pct`` = 100 * change / |initial|.
* last window = the last 10% of the points, at least 10; ``last_window_cv`` = std / |mean| there;
  ``converged`` when it is below 5%, None ("too few points") for a series of fewer than 50 points,
  where the window would be more than the last fifth of the run (a demo logging 20 points).
* spikes: points farther than ``k`` = 8 MADs from the running median of 9 points (MAD of the
  residuals per window of 5% of the points, at least 25, and at least 5% of the local level).
* ``slope``: least-squares slope of the smoothed curve over the last window, per step; 0 when the
  change it implies over the window is float noise (below 1e-9 of the values' size).
* validation keys: ``best`` is the max (min for names with loss/error) and ``best_step`` its step.
* overfitting: over the second half of the evaluations (>= 3 points), the validation loss trends
  up while the smoothed train loss trends down; the losses compared are the first like-with-like
  pair of ``train_val.train_val_pairs`` (a run mixing synthetic samples: its real-scene terms).
* bookkeeping that is no training metric (``eta_seconds``) is left out.
"""
from __future__ import annotations

import csv
import math
import os
import re
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from events.readers.table import LogTable, Series

from .presentation import is_bookkeeping
from .ranks import rank_headline
from .smoothing import SmoothSpec, smooth
from .train_val import train_val_pairs

__all__ = ["KeySummary", "OverfitCheck", "RunSummary", "summarize", "write_summary", "format_summary", "count_spikes",
           "convergence_text", "convergence_note"]

CONVERGED_CV = 0.05
WINDOW_POINTS = 10  # the fewest points a last-window CV is taken over
VERDICT_POINTS = 50  # the fewest points a convergence verdict is given for
TOO_FEW_POINTS = "too few points"
SPIKE_MADS = 8.0
MAD_FLOOR = 0.05  # of the local level: a smooth curve's wiggles and steps are not spikes
_CSV_COLUMNS = (
    "run", "split", "key", "points", "non_finite", "initial", "final", "min", "max", "mean", "std", "change",
    "change_pct", "last_window_cv", "converged", "spikes", "first_spike_step", "slope", "best", "best_step",
)
TABLE_COLUMNS = ("split", "key", "final", "min", "change_pct", "last_window_cv", "converged", "spikes", "slope", "best", "best_step")
# Validation metrics worth a headline line: the main AP / mAP, recalls, the validation loss.
_HEADLINE_METRIC = re.compile(r"(?:^|/)(?:AP|mAP|bbox_mAP|segm_mAP|SGMeanRecall@\d+|SGRecall@\d+|mIoU|PQ|total_loss|loss)$")


@dataclass
class KeySummary:
    """Statistics of one series (see the module docstring)."""

    split: str
    key: str
    points: int
    non_finite: int
    initial: float
    final: float
    min: float
    max: float
    mean: float
    std: float
    change: float
    change_pct: float
    last_window_cv: float
    converged: Optional[bool]
    spikes: int
    first_spike_step: Optional[float]
    slope: float
    best: Optional[float] = None
    best_step: Optional[float] = None


@dataclass
class OverfitCheck:
    """Whether validation loss ``key`` rose while train loss fell since ``since_step``."""

    key: str
    overfitting: bool
    since_step: float
    val_change_pct: float
    train_change_pct: float
    last_gap: float


@dataclass
class RunSummary:
    """Everything summarised about one run of one log."""

    label: str
    source: str
    format: str
    run_number: int
    runs_in_file: int
    step_unit: str
    last_step: float
    eval_records: int
    keys: List[KeySummary] = field(default_factory=list)
    overfit: Optional[OverfitCheck] = None
    skipped: Optional[str] = None
    straggler: Optional[str] = None  # the per-rank line (events/plotting/ranks.py)


# Paeth's median-of-9 exchange network (as in Devillard's opt_med9): after these 19
# compare-exchanges, slot 4 holds the median.
_MEDIAN_OF_9 = ((1, 2), (4, 5), (7, 8), (0, 1), (3, 4), (6, 7), (1, 2), (4, 5), (7, 8), (0, 3), (5, 8), (4, 7),
                (3, 6), (1, 4), (2, 5), (4, 7), (4, 2), (6, 4), (4, 2))


def rolling_median9(values: np.ndarray) -> np.ndarray:
    """``[n]`` centred running median of 9 points of finite ``values`` (edges repeat the end values).

    The exchange network runs on 9 shifted copies at once: ~5x faster than ``np.partition``
    over sliding windows, which made up half of the summary's time on 100k-point curves.
    """
    count = len(values)
    padded = np.pad(values, (4, 4), mode="edge")
    slots = [padded[shift: shift + count] for shift in range(9)]
    for a, b in _MEDIAN_OF_9:
        slots[a], slots[b] = np.minimum(slots[a], slots[b]), np.maximum(slots[a], slots[b])
    return slots[4]


def count_spikes(values: np.ndarray, k: float = SPIKE_MADS) -> Tuple[np.ndarray, int]:
    """``(spike mask [n], count)`` of finite ``values``: points farther than ``k`` MADs from the
    running median of 9 points. The MAD of the residuals is taken per window of 5% of the points
    (at least 25) and is at least 5% of the local level, so trends and smooth wiggles are no spikes."""
    n = len(values)
    if n < 10:
        return np.zeros(n, dtype=bool), 0
    level = rolling_median9(values)
    residual = values - level
    size = max(25, n // 20)
    deviation = np.abs(residual)
    whole = (n // size) * size
    scale = np.repeat(np.median(deviation[:whole].reshape(-1, size), axis=1), size)
    if whole < n:  # the last, partial window borrows points from the one before
        scale = np.concatenate([scale, np.full(n - whole, np.median(deviation[-size:]))])
    scale = np.maximum(scale, MAD_FLOOR * np.abs(level))
    mask = (np.abs(residual) > k * scale) & (scale > 0)
    return mask, int(mask.sum())


def _lower_is_better(name: str) -> bool:
    lowered = name.lower()
    return "loss" in lowered or "error" in lowered or lowered.endswith("_err")


def _slope(steps: np.ndarray, values: np.ndarray) -> float:
    finite = np.isfinite(values)
    if finite.sum() < 2 or np.ptp(steps[finite]) == 0:
        return math.nan
    x, y = steps[finite], values[finite]
    try:
        slope = float(np.polyfit(x, y, 1)[0])
    except np.linalg.LinAlgError:  # values near the float limit overflow inside the fit: no trend to tell
        return math.nan
    # A flat curve fits a slope of float noise (-8e-18), which would print as a trend.
    return 0.0 if abs(slope) * np.ptp(x) <= 1e-9 * float(np.abs(y).max()) else slope


def _key_summary(split: str, name: str, series: Series, spec: SmoothSpec) -> Optional[KeySummary]:
    values = series.values
    finite = np.isfinite(values)
    y, steps = values[finite], series.steps[finite]
    if len(y) == 0:
        return None
    initial, final = float(y[0]), float(y[-1])
    change = final - initial
    window = max(WINDOW_POINTS, math.ceil(0.1 * len(y)))
    tail = y[-window:]
    mean_tail = float(np.mean(tail))
    cv = float(np.std(tail) / abs(mean_tail)) if mean_tail != 0 else math.nan
    converged = bool(cv < CONVERGED_CV) if len(y) >= VERDICT_POINTS and math.isfinite(cv) else None
    spike_mask, spikes = count_spikes(y)
    smoothed = smooth(y, spec)
    summary = KeySummary(
        split=split,
        key=name,
        points=int(len(values)),
        non_finite=int((~finite).sum()),
        initial=initial,
        final=final,
        min=float(y.min()),
        max=float(y.max()),
        mean=float(y.mean()),
        std=float(y.std()),
        change=change,
        change_pct=100.0 * change / abs(initial) if initial != 0 else math.nan,
        last_window_cv=cv,
        converged=converged,
        spikes=spikes,
        first_spike_step=float(steps[spike_mask][0]) if spikes else None,
        slope=_slope(steps[-window:], smoothed[-window:]),
    )
    if split == "val":
        best = int(np.argmin(y) if _lower_is_better(name) else np.argmax(y))
        summary.best, summary.best_step = float(y[best]), float(steps[best])
    return summary


def _overfit_check(table: LogTable, spec: SmoothSpec) -> Optional[OverfitCheck]:
    pair = next((pair for pair in train_val_pairs([table]) if pair.gap), None)
    train, val = (pair.train(table), pair.val(table)) if pair else (None, None)
    if train is None or val is None:
        return None
    name = pair.name
    val_finite = np.isfinite(val.values)
    val_steps, val_values = val.steps[val_finite], val.values[val_finite]
    if len(val_values) < 3:
        return None
    half = max(3, len(val_values) // 2)
    since = float(val_steps[-half])
    val_steps, val_values = val_steps[-half:], val_values[-half:]
    train_smoothed = smooth(train.values, spec)
    train_finite = np.isfinite(train_smoothed)
    in_range = train_finite & (train.steps >= since) & (train.steps <= val_steps[-1])
    if in_range.sum() < 2:
        return None
    train_steps, train_values = train.steps[in_range], train_smoothed[in_range]
    rising = _slope(val_steps, val_values) > 0 and val_values[-1] > val_values[0]
    falling = _slope(train_steps, train_values) < 0
    last_train = float(np.interp(val_steps[-1], train.steps[train_finite], train_smoothed[train_finite]))
    return OverfitCheck(
        key=name,
        overfitting=bool(rising and falling),
        since_step=since,
        val_change_pct=100.0 * (val_values[-1] - val_values[0]) / abs(val_values[0]) if val_values[0] else math.nan,
        train_change_pct=100.0 * (train_values[-1] - train_values[0]) / abs(train_values[0]) if train_values[0] else math.nan,
        last_gap=float(val_values[-1] - last_train),
    )


def summarize(table: LogTable, spec: SmoothSpec = SmoothSpec()) -> RunSummary:
    """Statistics of every train and validation series of ``table`` (module docstring)."""
    run = table.run
    summary = RunSummary(
        label=table.label or os.path.basename(table.source),
        source=table.source,
        format=table.format,
        run_number=run.number if run else 1,
        runs_in_file=len(table.runs),
        step_unit=table.step_unit,
        last_step=run.last_step if run else math.nan,
        eval_records=table.eval_records,
        skipped=table.skipped.summary(table.source),
    )
    for split, group in (("train", table.train), ("val", table.val)):
        for name, series in group.items():
            if is_bookkeeping(name):
                continue
            key_summary = _key_summary(split, name, series, spec)
            if key_summary is not None:
                summary.keys.append(key_summary)
    summary.overfit = _overfit_check(table, spec)
    summary.straggler = rank_headline(table)
    return summary


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.6g}"
    return str(value)


def convergence_text(key: KeySummary) -> str:
    """The ``converged`` cell: yes, no, "too few points" (no verdict for a short series), or
    empty when the last window's CV is undefined (its mean is 0)."""
    if key.converged is not None:
        return _cell(key.converged)
    return TOO_FEW_POINTS if key.points - key.non_finite < VERDICT_POINTS else ""


_CONVERGENCE_RULE = (f"converged: CV of the last 10% of the points (at least {WINDOW_POINTS}) below {CONVERGED_CV:.0%}; "
                     f"a series of fewer than {VERDICT_POINTS} points gets no verdict ({TOO_FEW_POINTS})")


def convergence_note(keys: Sequence[KeySummary]) -> Optional[str]:
    """The sentence under a summary table (summary.md's, report.html's) that has a "too few
    points" cell, saying what the verdict needs; None when no cell says so."""
    return f"{_CONVERGENCE_RULE}." if any(convergence_text(key) == TOO_FEW_POINTS for key in keys) else None


def _fixed(value: float, digits: int) -> str:
    return f"{value:.{digits}f}" if math.isfinite(value) else "nan"


def _rows(summaries: Sequence[RunSummary]) -> List[Dict[str, str]]:
    rows = []
    for run in summaries:
        for key in run.keys:
            row = {"run": run.label, **asdict(key)}
            rows.append({column: _cell(row[column]) for column in _CSV_COLUMNS} | {"converged": convergence_text(key)})
    return rows


def _headline(run: RunSummary, max_best: int = 6, with_skipped: bool = True) -> List[str]:
    lines = [
        f"{run.label}: {run.format}, run {run.run_number} of {run.runs_in_file}, last {run.step_unit} "
        f"{run.last_step:g}, {run.eval_records} evaluation record(s)",
    ]
    if run.overfit:
        o = run.overfit
        verdict = "OVERFITTING" if o.overfitting else "no overfitting"
        lines.append(
            f"{verdict}: since {run.step_unit} {o.since_step:g} validation {o.key} changed {o.val_change_pct:+.1f}% "
            f"while train changed {o.train_change_pct:+.1f}%; last gap (val - train) {o.last_gap:.4g}"
        )
    best = [key for key in run.keys if key.split == "val" and key.best is not None]
    headline = [key for key in best if _HEADLINE_METRIC.search(key.key)] or best
    for key in headline[:max_best]:
        lines.append(f"best validation {key.key}: {key.best:.4g} at {run.step_unit} {key.best_step:g}")
    if len(best) > max_best:
        lines.append(f"best of {len(best)} validation metrics: see the best / best_step columns")
    if run.straggler:
        lines.append(run.straggler)
    if run.skipped and with_skipped:
        lines.append(run.skipped)
    return lines




def table_cells(key: KeySummary) -> List[str]:
    """The cells of ``key``'s row in summary.md's table (and report.html's), in ``TABLE_COLUMNS`` order."""
    return [convergence_text(key) if column == "converged" else _cell(getattr(key, column)) for column in TABLE_COLUMNS]


def _markdown_table(keys: Sequence[KeySummary]) -> List[str]:
    lines = ["| " + " | ".join(TABLE_COLUMNS) + " |", "|" + "---|" * len(TABLE_COLUMNS)]
    for key in keys:
        lines.append("| " + " | ".join(table_cells(key)) + " |")
    note = convergence_note(keys)
    if note:
        lines += ["", note]
    return lines


def write_summary(summaries: Sequence[RunSummary], out_dir: str) -> Tuple[str, str]:
    """Write ``summary.csv`` (every statistic, one row per run and key) and ``summary.md``."""
    os.makedirs(out_dir, exist_ok=True)
    csv_path = os.path.join(out_dir, "summary.csv")
    with open(csv_path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=_CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(_rows(summaries))
    md_path = os.path.join(out_dir, "summary.md")
    lines = ["# Training log summary", ""]
    for run in summaries:
        lines += [f"## {run.label}", "", f"Source: `{run.source}`", ""]
        lines += [f"- {line}" for line in _headline(run, max_best=len(run.keys))] + [""]
        lines += _markdown_table(run.keys) + [""]
    with open(md_path, "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines))
    return csv_path, md_path


def format_summary(run: RunSummary, max_rows: int = 30) -> str:
    """The console version: headline lines, then a fixed-width table of the losses and
    validation metrics (all keys when there are few). Skipped lines are left to the caller, who
    reports them once per file."""
    keys = run.keys
    if len(keys) > max_rows:
        keys = [k for k in keys if k.split == "val" or "loss" in k.key][:max_rows]
    names = [("val:" if k.split == "val" else "") + k.key for k in keys]
    width = max([len(name) for name in names] + [3])
    lines = _headline(run, with_skipped=False)
    lines.append(f"  {'key':<{width}}  {'final':>10} {'min':>10} {'change%':>8} {'CV':>7} {'conv':>4} {'spikes':>6}")
    for name, k in zip(names, keys):
        lines.append(
            f"  {name:<{width}}  {_cell(k.final):>10} {_cell(k.min):>10} {_fixed(k.change_pct, 1):>8} "
            f"{_fixed(k.last_window_cv, 3):>7} {convergence_text(k).replace(TOO_FEW_POINTS, 'few'):>4} {k.spikes:>6}"
        )
    if any(convergence_text(k) == TOO_FEW_POINTS for k in keys):
        lines.append(f"  conv few = {_CONVERGENCE_RULE.split('; ')[1]}")
    if len(keys) < len(run.keys):
        lines.append(f"  ... {len(run.keys) - len(keys)} more keys in summary.md / summary.csv")
    return "\n".join(lines)
