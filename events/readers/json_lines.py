"""Decode a JSON-lines file robustly: one dict per readable line, whatever the damage.

orjson is used when installed (several times faster on big metrics.json files); the standard
library's json decodes what orjson refuses (bare ``NaN``/``Infinity`` tokens, which detectron2
writes for missing COCO areas). A line that neither decodes is salvaged: ANSI codes or junk before
the ``{``, garbage after the ``}``, or two records glued together when a crash lost a newline.
A line nested too deeply for the decoders (``[`` repeated 100,000 times) is an unreadable line.
"""
from __future__ import annotations

import json
from typing import Callable, Dict, List, NamedTuple, Tuple

from .table import SkippedLines

__all__ = ["decode_json_lines", "DecodedLines", "fast_loads", "Record"]

try:  # optional speed-up, see the module docstring
    import orjson

    fast_loads: Callable[[bytes], object] = orjson.loads
    _FAST_ERRORS: Tuple[type, ...] = (orjson.JSONDecodeError,)
except ImportError:  # exercised where orjson is absent (a test stands in for that)
    fast_loads = json.loads
    _FAST_ERRORS = (ValueError, RecursionError)

_DECODER = json.JSONDecoder()
Record = Dict[str, object]


def _salvage(line: bytes) -> List[Record]:
    """Every JSON object that can be cut out of a damaged line."""
    text = line.decode("utf-8", errors="replace")
    found: List[Record] = []
    position = text.find("{")
    while position != -1:
        try:
            value, end = _DECODER.raw_decode(text, position)
        except ValueError:
            position = text.find("{", position + 1)
            continue
        except RecursionError:  # every later "{" of a deeply nested line would fail as slowly
            break
        if isinstance(value, dict):
            found.append(value)
        position = text.find("{", end)
    return found


def _without_nulls(record: Record) -> Record:
    # JSON null means "nothing logged": drop the key rather than turn it into NaN.
    return {name: value for name, value in record.items() if value is not None}


class DecodedLines(NamedTuple):
    """What ``decode_json_lines`` found in a piece of a file."""

    numbers: List[int]  # the line number of each record
    records: List[Record]
    lines: int  # lines in the piece (its newlines, plus one for an unterminated last line)


def decode_json_lines(data: bytes, skipped: SkippedLines, first_line: int = 1, drop_nulls: bool = True) -> DecodedLines:
    """Every JSON object in ``data``, with its line number; unreadable lines go to ``skipped``.

    Blank lines are ignored; a line holding a JSON value that is not an object counts as
    unreadable. ``first_line`` is the number of ``data``'s first line (for pieces of a file).
    JSON null means "nothing logged": with ``drop_nulls`` those keys are removed; a caller
    whose records go straight to a ``RecordCollector`` (which drops every non-number) passes
    False and saves a scan of the data.
    """
    numbers: List[int] = []
    records: List[Record] = []
    may_hold_nulls = drop_nulls and b"null" in data  # one scan of the whole piece, not one per line
    lines = data.split(b"\n")
    for number, line in enumerate(lines, start=first_line):
        try:
            record = fast_loads(line)
        except _FAST_ERRORS:
            line = line.strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except RecursionError:
                skipped.add_line(number, "JSON nested too deeply")
                continue
            except ValueError:  # includes UnicodeDecodeError
                salvaged = _salvage(line)
                if not salvaged:
                    skipped.add_line(number, "not a JSON object")
                for piece in salvaged:
                    numbers.append(number)
                    records.append(_without_nulls(piece) if drop_nulls and None in piece.values() else piece)
                continue
        if type(record) is not dict:
            skipped.add_line(number, "not a JSON object")
            continue
        if may_hold_nulls and b"null" in line:
            record = _without_nulls(record)
        numbers.append(number)
        records.append(record)
    return DecodedLines(numbers, records, len(lines) - (lines[-1] == b""))
