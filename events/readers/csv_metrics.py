"""CSV metric files: a header row (``step,total_loss,recon_loss,...``) then one row per step."""
from __future__ import annotations

import csv
from typing import Dict, Iterator, List, Optional, Tuple

from .assemble import Collected, RecordCollector
from .json_formats import collect_stepped, step_key_of
from .table import SkippedLines
from .values import MISSING_TOKENS, clean_line, parse_number

__all__ = ["collect_csv", "looks_like_csv_header"]


def looks_like_csv_header(line: str, next_line: Optional[str]) -> bool:
    """A comma-separated row of names followed by a row of (mostly) numbers."""
    names = [name.strip() for name in line.split(",")]
    if len(names) < 2 or not all(names) or any(parse_number(name) is not None for name in names):
        return False
    if any(len(name) > 100 or name.startswith(("[", "{")) for name in names):
        return False
    if next_line is None:
        return True
    cells = next_line.split(",")
    numeric = sum(parse_number(cell) is not None for cell in cells)
    return len(cells) == len(names) and numeric >= len(cells) / 2


def _rows(lines: List[str]) -> Iterator[Tuple[int, List[str]]]:
    numbered = [(number, clean_line(line)) for number, line in enumerate(lines, start=1)]
    numbered = [(number, line) for number, line in numbered if line.strip()]
    for (number, _), row in zip(numbered, csv.reader(line for _, line in numbered)):
        yield number, row


def collect_csv(lines: List[str], skipped: SkippedLines) -> Collected:
    """Read a CSV metric file; the step column is the first of iteration/iter/step/global_step/epoch
    (any case), else the row's index."""
    collector = RecordCollector()
    rows = _rows(lines)
    header_row = next(rows, None)
    if header_row is None:
        return collector.finish()
    header = [name.strip() for name in header_row[1]]
    step_key = step_key_of([{name.lower(): None for name in header}])
    header = [name.lower() if name.lower() == step_key else name for name in header]
    numbers: List[int] = []
    records: List[Dict[str, object]] = []
    for index, (number, cells) in enumerate(rows):
        if len(cells) != len(header):
            skipped.add_line(number, f"{len(cells)} fields where the header has {len(header)}")
            continue
        record: Dict[str, object] = {} if step_key else {"step": float(index)}
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
    collect_stepped(numbers, records, step_key or "step", skipped, collector)
    return collector.finish(step_unit="epoch" if step_key == "epoch" else "iteration")
