"""Decoding a big JSON-lines file (a 100k-line metrics.json is ~270 MB) in forked processes.

Each worker decodes a newline-aligned slice of the file into column blocks; only those numpy
blocks travel back, and ``merge_collected`` puts them in file order. Used for the dialects whose
records are independent of each other (detectron2 metrics.json, plain JSONL); the others need a
second look at the whole file and are small anyway.
"""
from __future__ import annotations

import multiprocessing
from typing import Dict, List, Optional, Tuple

from .assemble import Collected, RecordCollector, merge_collected
from .json_formats import collect_stepped
from .json_lines import decode_json_lines
from .table import SkippedLines

__all__ = ["PARALLEL_MIN_BYTES", "can_parallelize", "collect_json_parallel"]

PARALLEL_MIN_BYTES = 32 << 20
PARALLEL_FORMATS = ("detectron2-metrics", "jsonl")

# The file's bytes, set in the parent just before forking (the workers share them copy-on-write).
_SHARED: Dict[str, object] = {}


def can_parallelize(fmt: str, size: int, jobs: int) -> bool:
    return jobs > 1 and fmt in PARALLEL_FORMATS and size >= PARALLEL_MIN_BYTES and "fork" in multiprocessing.get_all_start_methods()


def _chunks(data: bytes, parts: int) -> List[Tuple[int, int, int]]:
    """``(start, end, first line number)`` of ``parts`` slices that end at newlines."""
    bounds: List[Tuple[int, int, int]] = []
    start, line = 0, 1
    for part in range(1, parts + 1):
        end = len(data) if part == parts else data.find(b"\n", len(data) * part // parts)
        end = len(data) if end == -1 else end + 1
        if end > start:
            bounds.append((start, end, line))
            line += data.count(b"\n", start, end)
            start = end
    return bounds


def _collect_chunk(bounds: Tuple[int, int, int]) -> Tuple[Collected, SkippedLines]:
    data, step_key, step_unit = _SHARED["data"], _SHARED["step_key"], _SHARED["step_unit"]
    start, end, first_line = bounds
    skipped = SkippedLines()
    numbers, records = decode_json_lines(data[start:end], skipped, first_line)
    collector = RecordCollector()
    collect_stepped(numbers, records, step_key, skipped, collector)
    return collector.finish(step_unit=step_unit), skipped


def collect_json_parallel(data: bytes, step_key: str, jobs: int, skipped: SkippedLines,
                          step_unit: Optional[str] = None) -> Collected:
    """Like ``collect_json`` for a stepped dialect, over ``jobs`` forked processes."""
    _SHARED.update(data=data, step_key=step_key, step_unit=step_unit or ("epoch" if step_key == "epoch" else "iteration"))
    chunks = _chunks(data, jobs)
    try:
        # The parent decodes the first slice itself while jobs - 1 workers decode the others.
        with multiprocessing.get_context("fork").Pool(max(1, len(chunks) - 1)) as pool:
            others = pool.map_async(_collect_chunk, chunks[1:], chunksize=1)
            parts = [_collect_chunk(chunks[0])] + others.get()
    finally:
        _SHARED.clear()
    for _, part_skipped in parts:
        skipped.merge(part_skipped)
    return merge_collected([collected for collected, _ in parts])
