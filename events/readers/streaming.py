"""Stepped JSON-lines files (detectron2 metrics.json, plain JSONL) read piece by piece, in one
process or several.

A 100k-line metrics.json is ~270 MB. Holding it and its 100k decoded dicts at once costs ~1 GB
and ~0.5 s of page faults; decoding it a few MB at a time into column blocks keeps ~750 records
as dicts at once and reuses their memory. Each record of these dialects stands alone, so big files
(>= ``PARALLEL_MIN_BYTES``) are also split into newline-aligned byte ranges decoded by forked
processes; only the numpy blocks travel back, and ``merge_collected`` puts them in file order.
"""
from __future__ import annotations

import multiprocessing
from typing import Iterator, List, Tuple

from .assemble import Collected, RecordCollector, merge_collected
from .json_formats import collect_stepped
from .json_lines import decode_json_lines
from .table import SkippedLines

__all__ = ["STREAMED_FORMATS", "PARALLEL_MIN_BYTES", "PIECE_BYTES", "collect_stepped_file", "line_pieces"]

STREAMED_FORMATS = ("detectron2-metrics", "jsonl")
PARALLEL_MIN_BYTES = 32 << 20
# Small enough that a piece's dicts stay in memory that is reused, big enough that per-piece
# costs (one block per piece) vanish: ~750 lines of a 66-key metrics.json.
PIECE_BYTES = 2 << 20
_ALIGN_READ = 1 << 16


def line_pieces(path: str, start: int, end: int, piece_bytes: int = 0) -> Iterator[bytes]:
    """Bytes ``[start, end)`` of the file at ``path`` in pieces of about ``piece_bytes`` that end
    at a newline (the last one at ``end``, with or without a newline).

    ``start`` must begin a line and ``end`` end one (or the file). A piece that stops inside a
    line is completed by ``readline``, so a line longer than a piece makes that piece longer.
    """
    piece_bytes = piece_bytes or PIECE_BYTES
    with open(path, "rb") as handle:
        handle.seek(start)
        remaining = end - start
        while remaining > 0:
            piece = handle.read(min(piece_bytes, remaining))
            if not piece:  # the file shrank while we read it
                return
            if len(piece) < remaining and not piece.endswith(b"\n"):
                piece += handle.readline(remaining - len(piece))
            remaining -= len(piece)
            yield piece


def _line_aligned_ranges(path: str, size: int, parts: int) -> List[Tuple[int, int]]:
    """``parts`` byte ranges covering ``[0, size)``, each starting at a line start."""
    starts = [0]
    with open(path, "rb") as handle:
        for part in range(1, parts):
            position = max(size * part // parts, starts[-1])
            handle.seek(position)
            while position < size:
                block = handle.read(_ALIGN_READ)
                newline = block.find(b"\n")
                if newline != -1:
                    position += newline + 1
                    break
                position += len(block)
                if not block:
                    break
            starts.append(min(position, size))
    bounds = list(zip(starts, starts[1:] + [size]))
    return [(a, b) for a, b in bounds if b > a]


def _collect_range(path: str, start: int, end: int, step_key: str, step_unit: str) -> Tuple[Collected, SkippedLines, int]:
    """``(collected, skipped, lines)`` of one byte range; line numbers count from the range's
    first line as 1 (``lines`` is how many lines the range holds, for the caller to shift)."""
    skipped = SkippedLines()
    collector = RecordCollector()
    first_line = 1
    for piece in line_pieces(path, start, end):
        decoded = decode_json_lines(piece, skipped, first_line, drop_nulls=False)
        collect_stepped(decoded.numbers, decoded.records, step_key, skipped, collector)
        first_line += decoded.lines
    return collector.finish(step_unit=step_unit), skipped, first_line - 1


# What the forked workers read: set in the parent just before forking.
_JOB: dict = {}


def _collect_range_job(bounds: Tuple[int, int]) -> Tuple[Collected, SkippedLines, int]:
    return _collect_range(_JOB["path"], bounds[0], bounds[1], _JOB["step_key"], _JOB["step_unit"])


def _ranges_in_workers(ranges: List[Tuple[int, int]]) -> List[Tuple[Collected, SkippedLines, int]]:
    # The parent decodes the first range itself while len(ranges) - 1 workers decode the others.
    with multiprocessing.get_context("fork").Pool(len(ranges) - 1) as pool:
        others = pool.map_async(_collect_range_job, ranges[1:], chunksize=1)
        return [_collect_range_job(ranges[0])] + others.get()


def collect_stepped_file(path: str, size: int, step_key: str, skipped: SkippedLines, jobs: int = 1) -> Collected:
    """The records of the first ``size`` bytes of a stepped JSON-lines file, as column blocks.

    ``step_key`` is the field holding each record's step. With ``jobs`` > 1, a file of at least
    ``PARALLEL_MIN_BYTES`` is decoded in that many forked processes (where fork exists).
    """
    step_unit = "epoch" if step_key == "epoch" else "iteration"
    parallel = jobs > 1 and size >= PARALLEL_MIN_BYTES and "fork" in multiprocessing.get_all_start_methods()
    ranges = _line_aligned_ranges(path, size, jobs if parallel else 1)
    _JOB.update(path=path, step_key=step_key, step_unit=step_unit)
    try:
        parts = _ranges_in_workers(ranges) if len(ranges) > 1 else [_collect_range_job(ranges[0])]
    finally:
        _JOB.clear()
    collected = []
    lines_before = 0
    for part, part_skipped, lines in parts:
        part.lines += lines_before
        skipped.merge(part_skipped, line_offset=lines_before)
        collected.append(part)
        lines_before += lines
    return merge_collected(collected)
