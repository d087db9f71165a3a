"""CSV metric files: a header row (``step,total_loss,recon_loss,...``) then one row per step.

Rows may be sparse, as PyTorch Lightning's ``CSVLogger`` writes them: one row per ``log`` call,
so a step's training loss, its learning rate (``lr-SGD``, from ``LearningRateMonitor``, with an
empty ``epoch``) and an epoch-level mean come as separate rows with the same ``step``. Such
neighbouring rows are merged into one record when they agree on every cell both fill; a row
repeating a step with different values (a resumed run) stays a record of its own.
"""
from __future__ import annotations

import csv
from typing import Dict, Iterator, List, Optional, Tuple

from .assemble import Collected, RecordCollector
from .json_formats import collect_stepped, step_key_of
from .table import SkippedLines
from .values import MISSING_TOKENS, clean_line, is_usable_step, parse_number

__all__ = ["collect_csv", "looks_like_csv_header"]

Record = Dict[str, object]


def looks_like_csv_header(line: str, next_line: Optional[str]) -> bool:
    """A comma-separated row of names followed by a row of (mostly) numbers; empty cells of
    sparse rows count as neither."""
    names = [name.strip() for name in line.split(",")]
    if len(names) < 2 or not all(names) or any(parse_number(name) is not None for name in names):
        return False
    if any(len(name) > 100 or name.startswith(("[", "{")) for name in names):
        return False
    if next_line is None:
        return True
    cells = [cell.strip() for cell in next_line.split(",")]
    filled = [cell for cell in cells if cell]
    numeric = sum(parse_number(cell) is not None for cell in filled)
    return len(cells) == len(names) and numeric >= 1 and numeric >= len(filled) / 2


def _rows(lines: List[str], skipped: SkippedLines) -> Iterator[Tuple[int, List[str]]]:
    """``(line number, cells)`` of each non-blank row; binary junk (the NUL bytes a crash leaves
    at the end of a file) and rows the csv module refuses are skipped lines."""
    for number, raw in enumerate(lines, start=1):
        line = clean_line(raw)
        if not line.strip():
            continue
        if "\x00" in line:
            skipped.add_line(number, "binary data")
            continue
        try:
            yield number, next(csv.reader((line,)))
        except csv.Error as error:
            skipped.add_line(number, f"not a CSV row ({error})")


def _agrees(record: Record, other: Record) -> bool:
    return all(record[name] == value for name, value in other.items() if name in record)


def _merge_sparse_rows(numbers: List[int], records: List[Record], step_key: str) -> Tuple[List[int], List[Record]]:
    """Neighbouring rows of one step that agree on every cell both fill become one record."""
    merged_numbers: List[int] = []
    merged: List[Record] = []
    for number, record in zip(numbers, records):
        previous = merged[-1] if merged else None
        step = record.get(step_key)
        if previous is not None and is_usable_step(step) and previous.get(step_key) == step and _agrees(previous, record):
            previous.update(record)
            continue
        merged_numbers.append(number)
        merged.append(record)
    return merged_numbers, merged


def collect_csv(lines: List[str], skipped: SkippedLines) -> Collected:
    """Read a CSV metric file; the step column is the first of iteration/iter/step/global_step/epoch
    (any case), else the row's index."""
    collector = RecordCollector()
    rows = _rows(lines, skipped)
    header_row = next(rows, None)
    if header_row is None:
        return collector.finish()
    header = [name.strip() for name in header_row[1]]
    step_key = step_key_of([{name.lower(): None for name in header}])
    header = [name.lower() if name.lower() == step_key else name for name in header]
    numbers: List[int] = []
    records: List[Record] = []
    for index, (number, cells) in enumerate(rows):
        if len(cells) != len(header):
            skipped.add_line(number, f"{len(cells)} fields where the header has {len(header)}")
            continue
        record: Record = {} if step_key else {"step": float(index)}
        for name, cell in zip(header, cells):
            value = parse_number(cell)
            if value is not None:
                record[name] = value
            elif name.lower() in ("mode", "split", "phase", "stage"):
                record[name.lower()] = cell.strip()
            elif cell.strip().lower() not in MISSING_TOKENS:
                skipped.add_value(number, f"{name}: {cell[:40]!r} is not a number")
        numbers.append(number)
        records.append(record)
    if step_key:
        numbers, records = _merge_sparse_rows(numbers, records, step_key)
    collect_stepped(numbers, records, step_key or "step", skipped, collector)
    return collector.finish(step_unit="epoch" if step_key == "epoch" else "iteration")
