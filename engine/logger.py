"""Logging set-up that writes detectron2's log.txt format, so existing log parsers read ours.

File lines: ``[11/23 18:30:12] d2.utils.events INFO:  eta: 0:00:41  iter: 39  ...``: the metric
lines are logged under ``detectron2.utils.events`` and, as in detectron2's ``setup_logger``, the
root name ``detectron2`` is written as ``d2``.
"""
from __future__ import annotations

import logging
import os
import sys
from typing import Optional

FILE_FORMAT = "[%(asctime)s] %(name)s %(levelname)s: %(message)s"
DATE_FORMAT = "%m/%d %H:%M:%S"
ABBREVIATIONS = {"detectron2": "d2"}


class AbbreviatingFormatter(logging.Formatter):
    """Writes ``detectron2.utils.events`` as ``d2.utils.events``, the name detectron2's log.txt
    files carry (and existing parsers look for). Other handlers still see the full name."""

    def format(self, record: logging.LogRecord) -> str:
        full_name = record.name
        root, dot, rest = full_name.partition(".")
        if root in ABBREVIATIONS:
            record.name = ABBREVIATIONS[root] + dot + rest
        try:
            return super().format(record)
        finally:
            record.name = full_name


def setup_logger(
    output: Optional[str] = None, distributed_rank: int = 0, name: str = "", level: int = logging.INFO
) -> logging.Logger:
    """Log ``name`` (default: the root logger) to stdout and to ``output``.

    ``output`` is a directory (then ``<output>/log.txt``) or a file path ending in .txt/.log.
    Rank 0 logs to the console and to that file; other ranks log only to ``<file>.rank<r>``, so
    several processes never interleave lines in one file. Calling it again for the same file
    adds no duplicate handler.
    """
    logger = logging.getLogger(name)
    logger.setLevel(level)
    formatter = AbbreviatingFormatter(FILE_FORMAT, datefmt=DATE_FORMAT)
    existing = {getattr(h, "baseFilename", None) or getattr(h, "_telemetry_console", None) for h in logger.handlers}

    if distributed_rank == 0 and "console" not in existing:
        console = logging.StreamHandler(stream=sys.stdout)
        console.setFormatter(formatter)
        console._telemetry_console = "console"  # marks our handler so a second call adds none
        logger.addHandler(console)

    if output is not None:
        filename = output if output.endswith((".txt", ".log")) else os.path.join(output, "log.txt")
        if distributed_rank > 0:
            filename = f"{filename}.rank{distributed_rank}"
        os.makedirs(os.path.dirname(os.path.abspath(filename)), exist_ok=True)
        if os.path.abspath(filename) not in existing:
            file_handler = logging.FileHandler(filename, mode="a", encoding="utf-8")
            file_handler.setFormatter(formatter)
            logger.addHandler(file_handler)
    return logger
