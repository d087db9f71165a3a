"""Which format a log is in, decided from its content (never from its file name)."""
from __future__ import annotations

from typing import List

from .csv_metrics import looks_like_csv_header
from .json_formats import detect_json_format
from .json_lines import decode_json_lines
from .table import SkippedLines
from .values import clean_line

__all__ = ["sniff_format", "TEXT_FORMAT", "FORMATS", "HEAD_BYTES"]

TEXT_FORMAT = "detectron2-log"
FORMATS = ("tensorboard", "detectron2-metrics", "detr-log", "mmdet-json", "mmengine-scalars", "jsonl", "csv",
           "mmengine-log", TEXT_FORMAT)
# Every line MMEngine's logger writes to its .log file (and console) carries its name.
_MMENGINE_MARK = b" - mmengine - "

# How much of a file's start the format is told from (read_runs reads one byte more, so that
# sniff_format knows whether the file goes on).
HEAD_BYTES = 1 << 20
_HEAD_LINES = 200


def _is_tensorboard(data: bytes) -> bool:
    # An event file is TFRecord-framed protos; its first event names the file version.
    return b"brain.Event:" in data[:256]


def sniff_format(data: bytes) -> str:
    """One of ``FORMATS`` for a file whose content starts with ``data``.

    JSON lines win when at least half of the first non-empty lines start with ``{``; a header of
    names over a row of numbers is CSV; a text log written by MMEngine's logger is an MMEngine log;
    anything else is read as a detectron2-style text log.
    """
    if _is_tensorboard(data):
        return "tensorboard"
    head = data[:HEAD_BYTES]
    if len(data) > HEAD_BYTES:  # whole lines only, at least the first one however long
        cut = head.rfind(b"\n")
        cut = data.find(b"\n") if cut == -1 else cut
        head = data[: cut + 1] if cut != -1 else head
    lines: List[str] = []
    for raw in head.decode("utf-8", errors="replace").split("\n"):
        line = clean_line(raw).lstrip("\ufeff").strip()
        if line:
            lines.append(line)
        if len(lines) >= _HEAD_LINES:
            break
    if not lines:
        return TEXT_FORMAT
    json_like = sum(line.startswith("{") for line in lines)
    if json_like and json_like >= len(lines) / 2:
        records = decode_json_lines(head, SkippedLines()).records[:50]
        if records:
            return detect_json_format(records)
    if looks_like_csv_header(lines[0], lines[1] if len(lines) > 1 else None):
        return "csv"
    return "mmengine-log" if _MMENGINE_MARK in head else TEXT_FORMAT
