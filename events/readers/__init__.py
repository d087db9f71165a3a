"""Read any training log into one ``LogTable`` per run, without importing torch.

Formats are recognised from content: detectron2 log.txt (file and console prefixes) and
metrics.json, DETR log.txt, MMDetection 2.x ``*.log.json``, MMEngine ``scalars.json`` and text
log (``Epoch(train) [1][5/21]``), JSONL and CSV metric files (PyTorch Lightning's ``CSVLogger``
included), TensorBoard event files. Damaged lines (and records whose step is not a
finite number below 2**53) are counted in ``LogTable.skipped``; only a file that cannot be
opened, is empty or holds no record at all raises ``LogReadError``.

    >>> table = read_log("outputs/demo/metrics.json")          # the last run in the file
    >>> table.train["total_loss"].values[-1], table.val.keys()
"""
from __future__ import annotations

import gc
import os
from contextlib import contextmanager
from typing import Iterator, List, Tuple, Union

from .assemble import Collected, assemble_runs
from .csv_metrics import collect_csv
from .detect import FORMATS, HEAD_BYTES, sniff_format
from .detectron2_log import collect_detectron2_log
from .discover import LogFile, best_log_in, find_logs, log_label
from .json_formats import JSON_FORMATS, collect_json, stepped_key
from .json_lines import decode_json_lines
from .mmengine_log import collect_mmengine_log
from .streaming import STREAMED_FORMATS, collect_stepped_file
from .table import X_AXES, LogTable, RunInfo, Series, SkippedLines
from .tensorboard_events import TensorBoardMissing, read_tensorboard

__all__ = [
    "read_log",
    "read_runs",
    "select_run",
    "sniff_format",
    "sniff_file",
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
    "mmengine-log": "an MMEngine text log",
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
            raise LogReadError(f"{path}: no training log in this folder (looked for metrics.json, log.txt, *.log.json, scalars.json, *.jsonl, *.log, *.csv, TensorBoard events)")
        # Several TensorBoard files in one folder are one run written in pieces: read the folder.
        return path if os.path.basename(found).startswith("events.out.tfevents.") else found
    return path


def _read_head(path: str) -> Tuple[bytes, int]:
    """``(the first MiB and a byte, the file's size)``: enough to tell the format. When that
    holds no newline, the head runs on to the end of the first line (a metrics.json record
    can be longer than a MiB: one with per-class metrics of a large label set)."""
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            head = handle.read(HEAD_BYTES + 1)
            if len(head) > HEAD_BYTES and b"\n" not in head:
                head += handle.readline()
    except OSError as error:
        raise LogReadError(f"{path}: cannot read: {error.strerror or error}") from None
    if not head or (len(head) <= HEAD_BYTES and head.isspace()):
        raise LogReadError(f"{path}: the file is empty")
    return head, max(size, len(head))


def sniff_file(path: str) -> str:
    """The format ``read_runs`` reads ``path`` as (one of ``FORMATS``; ``"tensorboard"`` for an
    event file or a folder of them), from the same head it would read.

    Raises:
        LogReadError: the file is missing, unreadable or empty.
    """
    if os.path.isdir(path) or os.path.basename(path).startswith("events.out.tfevents."):
        return "tensorboard"
    return sniff_format(_read_head(path)[0])


def _read_bytes(path: str) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic GC while a log becomes dicts: none of them forms a cycle, and
    collections triggered by their allocation would walk all the others (~15% of decode time)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _collect(path: str, head: bytes, size: int, fmt: str, skipped: SkippedLines, jobs: int) -> Collected:
    if fmt in STREAMED_FORMATS:
        step_key = stepped_key(fmt, decode_json_lines(head, SkippedLines()).records)
        if step_key is not None:
            return collect_stepped_file(path, size, step_key, skipped, jobs=jobs)
    data = head if len(head) <= HEAD_BYTES else _read_bytes(path)  # a short head is the whole file
    if fmt in JSON_FORMATS:
        numbers, records, _ = decode_json_lines(data, skipped)
        return collect_json(fmt, numbers, records, skipped)
    lines = data.decode("utf-8", errors="replace").split("\n")
    if fmt == "csv":
        return collect_csv(lines, skipped)
    return collect_mmengine_log(lines, skipped) if fmt == "mmengine-log" else collect_detectron2_log(lines, skipped)


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
        fmt, head, size = "tensorboard", b"", 0
    else:
        head, size = _read_head(path)
        fmt = sniff_format(head)
    try:
        if fmt == "tensorboard":
            tables = read_tensorboard(path, skipped)
        else:
            with _gc_paused():
                collected = _collect(path, head, size, fmt, skipped, jobs)
            tables = assemble_runs(collected, path, fmt, skipped)
    except TensorBoardMissing as error:
        raise LogReadError(f"{path}: {error}") from None
    except OSError as error:  # e.g. the file was removed while being read
        raise LogReadError(f"{path}: cannot read: {error.strerror or error}") from None
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
