"""MMEngine's text log (``<work_dir>/<timestamp>/<timestamp>.log``, and its console output)::

    2024/01/05 10:00:01 - mmengine - INFO - Epoch(train)  [1][ 5/21]  lr: 4.0000e-08  eta: 0:00:10  time: 0.1012  loss: 1.2
    2024/01/05 10:00:03 - mmengine - INFO - Epoch(val) [1][16/16]    coco/bbox_mAP: 0.3310  data_time: 0.0020  time: 0.0410
    2024/01/05 10:00:01 - mmengine - INFO - Iter(train) [ 50/1000]  lr: 1.0000e-02  eta: ...

Epoch-based training counts steps as MMEngine's scalars.json does, ``(epoch - 1) * iterations
per epoch + iteration``, and gives a fractional epoch axis (``epoch - 1 + iteration / per epoch``);
iteration-based training (``Iter(train) [i/n]``) steps by ``i``. A validation or test line whose
``[i/n]`` is complete is the evaluation's result: a validation record at the last training step
logged before it (where MMEngine's scalars.json puts it too). Val progress lines (``[5/16]``
with eta and batch times) hold no metric and are passed over; the config dump and other
messages are ignored. A loop line whose ``[i/n]`` cannot be read is a skipped line.
"""
from __future__ import annotations

import re
from typing import Iterable, Optional

from .assemble import Collected, RecordCollector
from .detectron2_log import numeric_fields, split_fields, timestamp_seconds
from .table import SkippedLines
from .values import clean_line

__all__ = ["collect_mmengine_log"]

_LOOP_MARKS = ("Epoch(", "Iter(")
# At most 18 digits: no loop counts further, so a longer number is damage (a skipped line).
_PROGRESS = re.compile(r"\b(Epoch|Iter)\((train|val|test)\)\s*(?:\[\s*(\d{1,18})\s*\])?\s*\[\s*(\d{1,18})\s*/\s*(\d{1,18})\s*\]")


class _Reader:
    def __init__(self, skipped: SkippedLines) -> None:
        self.skipped = skipped
        self.collector = RecordCollector()
        self.last_train_step = 0.0

    def line(self, number: int, line: str) -> None:
        match = _PROGRESS.search(line)
        if match is None:
            if "(train)" in line or "(val)" in line or "(test)" in line:
                self.skipped.add_line(number, "loop progress line without a readable [iteration/total]")
            return
        style, mode, epoch_text, inner_text, total_text = match.groups()
        epoch = float(epoch_text) if epoch_text else None
        inner, total = float(inner_text), float(total_text)
        if style == "Epoch" and (epoch is None or not total):
            self.skipped.add_line(number, "Epoch() line without an epoch or with 0 iterations")
            return
        if mode != "train" and inner < total:
            return  # a progress line of the val loop: batch times, no metric
        values = numeric_fields(split_fields(line, match.end()), number, self.skipped)
        if not values:
            self.skipped.add_line(number, "loop line without values")
            return
        if mode == "train":
            self.train(number, line, values, epoch, inner, total)
        else:
            self.evaluation(number, mode, values)

    def train(self, number: int, line: str, values: dict, epoch: Optional[float], inner: float, total: float) -> None:
        step = inner
        if epoch is not None:  # Epoch(train) [e][i/n]
            step = (epoch - 1) * total + inner
            values["epoch"] = (epoch - 1) + inner / total
        moment = timestamp_seconds(line)
        if moment is not None:
            values["wall_time"] = moment
        self.collector.add(step, values, number)
        self.last_train_step = step

    def evaluation(self, number: int, mode: str, values: dict) -> None:
        # No epoch of its own: the training line at the same step already places it on the
        # epoch axis (a whole epoch here would bend the axis where evaluation ran mid-epoch).
        self.collector.add(self.last_train_step, {f"{mode}/{name}": value for name, value in values.items()}, number)


def collect_mmengine_log(lines: Iterable[str], skipped: SkippedLines) -> Collected:
    """Read MMEngine text log lines (see the module docstring)."""
    reader = _Reader(skipped)
    for number, raw in enumerate(lines, start=1):
        if "(" not in raw:
            continue
        line = clean_line(raw)
        if "\x00" in line:
            skipped.add_line(number, "binary data")
        elif any(mark in line for mark in _LOOP_MARKS):
            reader.line(number, line)
    return reader.collector.finish()
