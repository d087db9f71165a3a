"""From records in file order to one ``LogTable`` per run.

Readers hand records ``(step, {name: value}, line)`` to a ``RecordCollector``, which stores runs
of records with the same names as one ``[records, names]`` float64 block (a 100k-line
metrics.json becomes one array, not 100k dicts). ``assemble_runs`` then finds the runs:

* a training record whose step is not above the previous training record's step starts a new
  segment (validation-only records never do: they may share the step of a training record);
* a segment starting at or below the current run's first step is a new run; one starting
  later is a resume of the current run, and the run's earlier records at or after that step
  are dropped (the latest write wins, as TensorBoard's purge on resume does);
* a reader may declare a boundary the log states (detectron2's "Starting training from
  iteration N": N = 0 is a new run, N > 0 a resume at N).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from .keys import AXIS, META, TRAIN, VAL, classify_key
from .table import LogTable, RunInfo, Series, SkippedLines
from .values import MAX_STEP, json_number, parse_number

__all__ = ["RecordCollector", "Collected", "assemble_runs", "coerce_record", "make_series", "merge_collected"]


@dataclass
class _Block:
    names: Tuple[str, ...]
    values: np.ndarray  # [records, names] float64
    first: int  # index of its first record in file order


@dataclass
class Collected:
    """What a reader found: column blocks plus per-record steps and line numbers."""

    blocks: List[_Block]
    steps: np.ndarray  # [records] float64
    lines: np.ndarray  # [records] int64, 1-based line of each record
    declared_starts: Dict[int, float]  # record index -> start step the log declared there
    step_unit: str = "iteration"


# Lists and dicts nested deeper than this are no metric anyone logs (COCO stats nest 2 deep):
# they are dropped rather than flattened, which also bounds the recursion on hostile input.
_MAX_NESTING = 8


def coerce_record(record: Mapping[str, object], prefix: str = "", depth: int = 0) -> Dict[str, float]:
    """``record`` with only numbers: text parsed (``N/A`` dropped), lists and dicts flattened.

    A list ``x = [a, b]`` becomes ``x[0]``, ``x[1]`` (brackets, not ``_0``: those would read as
    decoder layers); a dict ``x = {"AP": a}`` becomes ``x/AP``. Booleans count as 0/1; an
    integer too large for a float counts as +-inf.
    """
    out: Dict[str, float] = {}
    for name, value in record.items():
        key = prefix + str(name)
        if isinstance(value, (int, float)):
            out[key] = json_number(int(value) if isinstance(value, bool) else value)
        elif isinstance(value, str):
            number = parse_number(value)
            if number is not None:
                out[key] = number
        elif depth >= _MAX_NESTING:
            continue
        elif isinstance(value, Mapping):
            out.update(coerce_record(value, prefix=key + "/", depth=depth + 1))
        elif isinstance(value, (list, tuple)):
            out.update(coerce_record({f"[{i}]": v for i, v in enumerate(value)}, prefix=key, depth=depth + 1))
    return out


class RecordCollector:
    """Accumulates records in file order into column blocks (see the module docstring)."""

    def __init__(self) -> None:
        self._blocks: List[_Block] = []
        self._steps: List[float] = []
        self._lines: List[int] = []
        self._declared: Dict[int, float] = {}
        self._pending: List[Mapping[str, object]] = []
        self._pending_names: Optional[Tuple[str, ...]] = None
        self._pending_first = 0

    @property
    def count(self) -> int:
        return len(self._steps)

    def add(self, step: float, values: Mapping[str, object], line: int) -> None:
        """One record: ``values`` maps names to numbers (or text/lists, coerced if needed)."""
        names = tuple(values)
        if names != self._pending_names:
            self._flush()
            self._pending_names = names
            self._pending_first = len(self._steps)
        self._pending.append(values)
        self._steps.append(step)
        self._lines.append(line)

    def add_many(self, steps: Sequence[float], records: Sequence[Mapping[str, object]], lines: Sequence[int]) -> None:
        """Many records at once: the same as ``add`` on each, in list-at-a-time passes."""
        self._flush()
        self._pending_names = None
        first = len(self._steps)
        self._steps.extend(steps)
        self._lines.extend(lines)
        names = list(map(tuple, records))
        start = 0
        for index in range(1, len(records) + 1):
            if index == len(records) or names[index] != names[start]:
                self._store(records[start:index], names[start], first + start)
                start = index

    def declare_start(self, start_step: float) -> None:
        """The log says the next record begins a run (``start_step`` 0) or a resume at it."""
        self._declared[len(self._steps)] = float(start_step)

    def _flush(self) -> None:
        records, names = self._pending, self._pending_names
        self._pending = []
        if records and names is not None:
            self._store(records, names, self._pending_first)

    def _store(self, records: Sequence[Mapping[str, object]], names: Tuple[str, ...], first: int) -> None:
        """Records sharing ``names`` (in that order) as one block; text, lists, dicts coerced."""
        if not names:
            return
        try:
            flat = itertools.chain.from_iterable(map(dict.values, records))
            values = np.fromiter(flat, dtype=np.float64, count=len(records) * len(names))
            self._blocks.append(_Block(names, values.reshape(len(records), len(names)), first))
        except (TypeError, ValueError, OverflowError):  # OverflowError: an int too large for a float
            self._add_coerced(records, first)

    def _add_coerced(self, records: Sequence[Mapping[str, object]], first: int) -> None:
        """Slow path for records holding text, lists or dicts: regroup them once coerced."""
        group: List[Dict[str, float]] = []
        group_names: Optional[Tuple[str, ...]] = None
        group_first = first
        for offset, record in enumerate(records):
            clean = coerce_record(record)
            names = tuple(clean)
            if names != group_names:
                self._append_numeric(group, group_names, group_first)
                group, group_names, group_first = [], names, first + offset
            group.append(clean)
        self._append_numeric(group, group_names, group_first)

    def _append_numeric(self, group: List[Dict[str, float]], names: Optional[Tuple[str, ...]], first: int) -> None:
        if not group or not names:
            return
        values = np.array([list(r.values()) for r in group], dtype=np.float64).reshape(len(group), len(names))
        self._blocks.append(_Block(names, values, first))

    def finish(self, step_unit: str = "iteration") -> Collected:
        self._flush()
        self._pending_names = None
        try:
            steps = np.asarray(self._steps, dtype=np.float64)
        except OverflowError:  # an integer step too large for a float: +-inf, dropped by assemble_runs
            steps = np.asarray([json_number(step) for step in self._steps], dtype=np.float64)
        return Collected(
            blocks=self._blocks,
            steps=steps,
            lines=np.asarray(self._lines, dtype=np.int64),
            declared_starts=dict(self._declared),
            step_unit=step_unit,
        )


def merge_collected(parts: Sequence[Collected]) -> Collected:
    """Consecutive pieces of one file (e.g. decoded by several processes) as one, in order."""
    blocks: List[_Block] = []
    declared: Dict[int, float] = {}
    offset = 0
    for part in parts:
        blocks += [_Block(block.names, block.values, block.first + offset) for block in part.blocks]
        declared.update({index + offset: step for index, step in part.declared_starts.items()})
        offset += len(part.steps)
    return Collected(
        blocks=blocks,
        steps=np.concatenate([part.steps for part in parts]) if parts else np.empty(0),
        lines=np.concatenate([part.lines for part in parts]) if parts else np.empty(0, dtype=np.int64),
        declared_starts=declared,
        step_unit=parts[0].step_unit if parts else "iteration",
    )


@dataclass
class _Segment:
    start: int  # first record index
    first_step: float
    declared: Optional[float]


def _display_names(blocks: Iterable[_Block]) -> Dict[str, Tuple[str, str]]:
    """raw name -> (kind, display name); a display name two raw names would share keeps the raw name."""
    raw_names = list(dict.fromkeys(name for block in blocks for name in block.names))
    mapping = {name: classify_key(name) for name in raw_names}
    taken: Dict[Tuple[str, str], str] = {}
    for name in raw_names:
        kind, display = mapping[name]
        owner = taken.setdefault((kind, display), name)
        if owner != name:
            mapping[name] = (kind, name)
    return mapping


def _segments(collected: Collected, is_train: np.ndarray) -> List[_Segment]:
    steps = collected.steps
    train_index = np.flatnonzero(is_train)
    train_steps = steps[train_index]
    breaks = set((train_index[1:][train_steps[1:] <= train_steps[:-1]]).tolist())
    breaks.update(collected.declared_starts)
    breaks.discard(0)
    starts = [0] + sorted(b for b in breaks if b < len(steps))
    segments = []
    for start in starts:
        declared = collected.declared_starts.get(start)
        # A segment's first step is that of its first training record (validation records may
        # come first, e.g. an evaluation before training).
        later_train = train_index[train_index >= start]
        first_step = float(steps[later_train[0]]) if len(later_train) else float(steps[start])
        segments.append(_Segment(start, first_step, declared))
    return segments


def _runs(collected: Collected, is_train: np.ndarray) -> Tuple[np.ndarray, np.ndarray, List[RunInfo]]:
    """Per record: run number (1-based) and whether it survives resumes; plus the runs found."""
    count = len(collected.steps)
    run_of = np.zeros(count, dtype=np.int64)
    keep = np.ones(count, dtype=bool)
    runs: List[RunInfo] = []
    segments = _segments(collected, is_train)
    bounds = [s.start for s in segments[1:]] + [count]
    run_start_step = None
    for segment, end in zip(segments, bounds):
        if segment.declared is not None:
            new_run = segment.declared <= 0 or not runs
            resume_step = segment.declared
        else:
            new_run = run_start_step is None or segment.first_step <= run_start_step
            resume_step = segment.first_step
        if new_run:
            run_start_step = segment.first_step
            runs.append(RunInfo(len(runs) + 1, segment.first_step, segment.first_step, 0, 0))
        else:
            runs[-1].resumed_at.append(resume_step)
            earlier = (run_of[: segment.start] == runs[-1].number) & (collected.steps[: segment.start] >= resume_step)
            keep[: segment.start][earlier] = False
        run_of[segment.start:end] = runs[-1].number
    for run in runs:
        members = np.flatnonzero((run_of == run.number) & keep)
        if len(members):
            run.first_step = float(collected.steps[members].min())
            run.last_step = float(collected.steps[members].max())
            run.records = int(len(members))
            run.first_line = int(collected.lines[members[0]])
    return run_of, keep, [run for run in runs if run.records]


def make_series(steps: np.ndarray, values: np.ndarray) -> Series:
    """A Series sorted by step; of several values at one step the last written wins."""
    if len(steps) > 1 and not np.all(steps[1:] > steps[:-1]):
        order = np.argsort(steps, kind="stable")
        steps, values = steps[order], values[order]
        last_of_step = np.append(steps[1:] != steps[:-1], True)
        steps, values = steps[last_of_step], values[last_of_step]
    return Series(np.ascontiguousarray(steps), np.ascontiguousarray(values))


def _finite_points(series: Series) -> Series:
    keep = np.isfinite(series.values)
    return Series(series.steps[keep], series.values[keep])


def _time_axis(train: Dict[str, Series], axes: Dict[str, Series]) -> None:
    """Seconds since the run began: from wall time, else from the per-iteration ``time``."""
    if "time" in axes:
        wall = axes["time"]
        axes["time"] = Series(wall.steps, wall.values - wall.values[0])
        return
    per_step = train.get("time")
    if per_step is None or len(per_step) == 0:
        return
    seconds = np.nan_to_num(per_step.values, nan=0.0, posinf=0.0, neginf=0.0)
    step_gaps = np.diff(per_step.steps, prepend=per_step.steps[0])
    axes["time"] = Series(per_step.steps, np.cumsum(seconds * step_gaps))


def _drop_records(collected: Collected, drop: np.ndarray) -> Collected:
    """``collected`` without the records where ``drop`` [records] is True. A declared run
    start on a dropped record moves to the next record kept."""
    kept_before = np.concatenate([[0], np.cumsum(~drop)])  # [records + 1]: kept records before each index
    blocks = []
    for block in collected.blocks:
        rows = ~drop[block.first: block.first + block.values.shape[0]]
        if rows.any():
            blocks.append(_Block(block.names, block.values[rows], int(kept_before[block.first])))
    return Collected(
        blocks=blocks,
        steps=collected.steps[~drop],
        lines=collected.lines[~drop],
        declared_starts={int(kept_before[index]): step for index, step in collected.declared_starts.items()},
        step_unit=collected.step_unit,
    )


def _without_unusable_steps(collected: Collected, skipped: SkippedLines) -> Collected:
    """Records whose step is NaN, infinite or beyond ``MAX_STEP`` are skipped lines, not points."""
    steps = collected.steps
    if np.all(np.abs(steps) <= MAX_STEP):  # one vectorised pass; NaN fails it too
        return collected
    bad = ~(np.abs(steps) <= MAX_STEP)
    for line, step in zip(collected.lines[bad].tolist(), steps[bad].tolist()):
        skipped.add_line(line, f"step {step:g} is not a usable {collected.step_unit}")
    return _drop_records(collected, bad)


def assemble_runs(collected: Collected, source: str, fmt: str, skipped: SkippedLines) -> List[LogTable]:
    """One LogTable per run found in ``collected`` (see the module docstring for the rules).

    Records whose step is not finite or beyond ``MAX_STEP`` are counted in ``skipped`` and left out.
    """
    collected = _without_unusable_steps(collected, skipped)
    names = _display_names(collected.blocks)
    count = len(collected.steps)
    if count == 0:
        return []
    is_train = np.zeros(count, dtype=bool)
    has_val = np.zeros(count, dtype=bool)
    for block in collected.blocks:
        kinds = {names[name][0] for name in block.names}
        rows = slice(block.first, block.first + block.values.shape[0])
        is_train[rows] |= TRAIN in kinds
        has_val[rows] |= VAL in kinds
    run_of, keep, runs = _runs(collected, is_train)

    tables = []
    for run in runs:
        selected = (run_of == run.number) & keep
        parts: Dict[Tuple[str, str], List[Tuple[np.ndarray, np.ndarray]]] = {}
        for block in collected.blocks:
            rows = selected[block.first: block.first + block.values.shape[0]]
            if not rows.any():
                continue
            block_steps = collected.steps[block.first: block.first + block.values.shape[0]][rows]
            # Select the rows once per block (usually all of them: a view), not once per column.
            block_values = block.values if rows.all() else block.values[rows]
            for column, name in enumerate(block.names):
                kind, display = names[name]
                if kind == META:
                    continue
                parts.setdefault((kind, display), []).append((block_steps, block_values[:, column]))
        groups: Dict[str, Dict[str, Series]] = {TRAIN: {}, VAL: {}, AXIS: {}}
        for (kind, display), pieces in parts.items():
            steps = np.concatenate([p[0] for p in pieces])
            values = np.concatenate([p[1] for p in pieces])
            groups[kind][display] = make_series(steps, values)
        # An x axis maps steps to epochs or seconds by interpolation: a NaN or inf in it (a damaged
        # record) would spread to every point drawn against it.
        axes = {name: series if np.all(np.isfinite(series.values)) else _finite_points(series)
                for name, series in groups[AXIS].items()}
        if collected.step_unit == "epoch":
            epochs = np.unique(collected.steps[selected])
            axes["epoch"] = Series(epochs, epochs.copy())
        _time_axis(groups[TRAIN], axes)
        tables.append(
            LogTable(
                source=source,
                format=fmt,
                step_unit=collected.step_unit,
                train=groups[TRAIN],
                val=groups[VAL],
                axes=axes,
                eval_records=int((has_val & selected).sum()),
                runs=runs,
                run=run,
                skipped=skipped,
            )
        )
    return tables
