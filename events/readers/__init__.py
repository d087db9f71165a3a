"""Read any training log into one ``LogTable`` per run, without importing torch.

Formats are recognised from content: detectron2 log.txt (file and console prefixes) and
metrics.json, DETR log.txt, MMDetection 2.x ``*.log.json``, MMEngine ``scalars.json``, JSONL and
CSV metric files, TensorBoard event files. Damaged lines are counted in ``LogTable.skipped``;
only a file that cannot be opened, is empty or holds no record at all raises ``LogReadError``.

    >>> table = read_log("outputs/demo/metrics.json")          # the last run in the file
    >>> table.train["total_loss"].values[-1], table.val.keys()
"""
from __future__ import annotations

import gc
import os
from contextlib import contextmanager
from typing import Iterator, List, Union

from .assemble import Collected, assemble_runs
from .csv_metrics import collect_csv
from .detect import FORMATS, sniff_format
from .detectron2_log import collect_detectron2_log
from .discover import LogFile, best_log_in, find_logs, log_label
from .json_formats import JSON_FORMATS, collect_json, stepped_key
from .json_lines import decode_json_lines
from .parallel import can_parallelize, collect_json_parallel
from .table import X_AXES, LogTable, RunInfo, Series, SkippedLines
from .tensorboard_events import TensorBoardMissing, read_tensorboard

__all__ = [
    "read_log",
    "read_runs",
    "select_run",
    "sniff_format",
    "find_logs",
    "best_log_in",
    "LogReadError",
    "LogTable",
    "Series",
    "RunInfo",
    "SkippedLines",
    "LogFile",
    "log_label",
    "FORMATS",
    "X_AXES",
]

_FORMAT_NAMES = {
    "detectron2-log": "a detectron2 log.txt",
    "detectron2-metrics": "a detectron2 metrics.json",
    "detr-log": "a DETR log.txt",
    "mmdet-json": "an MMDetection .log.json",
    "mmengine-scalars": "an MMEngine scalars.json",
    "jsonl": "a JSON-lines metric file",
    "csv": "a CSV metric file",
    "tensorboard": "a TensorBoard event file",
}


class LogReadError(Exception):
    """A log that cannot be read at all; the message is one line naming the file."""


def _resolve(path: str) -> str:
    if os.path.isdir(path):
        found = best_log_in(path)
        if found is None:
            raise LogReadError(f"{path}: no training log in this folder (looked for metrics.json, log.txt, *.log.json, scalars.json, *.jsonl, *.csv, TensorBoard events)")
        # Several TensorBoard files in one folder are one run written in pieces: read the folder.
        return path if os.path.basename(found).startswith("events.out.tfevents.") else found
    return path


def _read_bytes(path: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as error:
        raise LogReadError(f"{path}: cannot read: {error.strerror or error}") from None
    if not data or data.isspace():
        raise LogReadError(f"{path}: the file is empty")
    return data


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic GC while a big log becomes 100k dicts: none of them forms a cycle, and
    collections triggered by their allocation would walk all the others (~15% of decode time)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _collect(data: bytes, fmt: str, skipped: SkippedLines, jobs: int) -> Collected:
    if fmt in JSON_FORMATS:
        if can_parallelize(fmt, len(data), jobs):
            head = decode_json_lines(data[: 1 << 20], SkippedLines())[1]
            step_key = stepped_key(fmt, head)
            if step_key is not None:
                return collect_json_parallel(data, step_key, jobs, skipped)
        numbers, records = decode_json_lines(data, skipped)
        return collect_json(fmt, numbers, records, skipped)
    lines = data.decode("utf-8", errors="replace").split("\n")
    return collect_csv(lines, skipped) if fmt == "csv" else collect_detectron2_log(lines, skipped)


def read_runs(path: Union[str, "os.PathLike[str]"], jobs: int = 1) -> List[LogTable]:
    """Every run in the log at ``path`` (a file, or a folder holding one), in file order.

    ``jobs`` > 1 decodes big JSON-lines files (>= 32 MB) in that many forked processes.

    Raises:
        LogReadError: the file is missing, unreadable, empty, or holds no training record.
    """
    given = os.fspath(path)
    path = _resolve(given)
    skipped = SkippedLines()
    if os.path.isdir(path):
        fmt, data = "tensorboard", b""
    else:
        data = _read_bytes(path)
        fmt = sniff_format(data)
    try:
        if fmt == "tensorboard":
            tables = read_tensorboard(path, skipped)
        else:
            with _gc_paused():
                collected = _collect(data, fmt, skipped, jobs)
            tables = assemble_runs(collected, path, fmt, skipped)
    except TensorBoardMissing as error:
        raise LogReadError(f"{path}: {error}") from None
    if not tables:
        detail = f"; {skipped.summary(path)}" if skipped.summary(path) else ""
        raise LogReadError(f"{path}: no training records found (read as {_FORMAT_NAMES[fmt]}){detail}")
    for table in tables:
        table.label = log_label(given)
    return tables


def select_run(tables: List[LogTable], run: Union[int, str] = "last") -> LogTable:
    """The run ``run`` of ``tables``: ``"last"``, or its number (1 = first; -1 = last)."""
    if run == "last":
        return tables[-1]
    number = int(run)
    if number == 0 or abs(number) > len(tables):
        raise LogReadError(f"{tables[0].source}: there is no run {number}; the file holds {len(tables)} run(s)")
    return tables[number - 1] if number > 0 else tables[number]


def read_log(path: Union[str, "os.PathLike[str]"], run: Union[int, str] = "last", jobs: int = 1) -> LogTable:
    """The run ``run`` (default: the last) of the log at ``path``; see ``read_runs``."""
    return select_run(read_runs(path, jobs=jobs), run)
