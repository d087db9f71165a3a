"""detectron2 log.txt (and console output): event lines, copypaste evaluation blocks, run starts.

An event line is recognised by its content, not its logger name or prefix, so these all read::

    [11/23 18:30:12] d2.utils.events INFO:  eta: 0:01:02  iter: 39  total_loss: 3.21  ...  lr: 0.0001  max_mem: 123M
    [11/23 18:30:12 d2.utils.events]:  eta: 1 day, 16:43:35  iter: 39  total_loss: 3.21  ...
    [11/23 18:30:12] engine.train_loop INFO:  iter: 39  loss_ce: 1.1  time: 0.0512  lr: N/A

Fields are ``name: value`` pairs; a value runs until the next ``name:`` (so ``1 day, 16:43:35``
and uneven spacing read fine). ``eta`` becomes ``eta_seconds`` as in metrics.json; the line's
timestamp gives the run's wall-clock axis. Validation values a console line repeats from the
previous line (the printer shows the latest ones at every period) are kept once, when they change.

Evaluation results are read from detectron2's ``copypaste:`` lines (``Task: bbox``, a header
``AP,AP50,...``, the values) as ``bbox/AP``...; scene-graph tasks give ``SG/SGMeanRecall@20``...
An evaluation is logged before the event line of the iteration it ran at, so it takes that line's
iteration (or the last one, when training ended or restarted after it).
"""
from __future__ import annotations

import datetime
import math
import re
from typing import Dict, Iterable, List, Optional, Tuple

from .assemble import Collected, RecordCollector
from .keys import VAL, classify_key
from .table import SkippedLines
from .values import MISSING_TOKENS, clean_line, parse_number

__all__ = ["collect_detectron2_log", "looks_like_event_line", "split_fields", "numeric_fields", "timestamp_seconds"]

_ITER = re.compile(r"(?<![\w/.\[\]-])iter: *(\S*)")
_ETA = re.compile(r"(?<!\S)eta: ")
_FIELD = re.compile(r"(?<!\S)([A-Za-z_\[][\w/.@\[\]-]*): ")
_TIMESTAMP = re.compile(r"^\[?(?:(\d{4})[-/])?(\d{1,2})[-/](\d{1,2})[ T](\d{1,2}):(\d\d):(\d\d)")
_RUN_START = re.compile(r"Starting training from iteration (\d+)")
_COPYPASTE = "copypaste: "
_EVENT_HINTS = ("eta:", "loss", "lr:", "time:")
_EPOCH = datetime.datetime(1970, 1, 1)


def looks_like_event_line(line: str) -> bool:
    """Whether ``line`` is a training event line (an ``iter:`` field among other fields)."""
    return "iter:" in line and any(hint in line for hint in _EVENT_HINTS) and _ITER.search(line) is not None


def split_fields(line: str, start: int = 0) -> List[Tuple[str, str]]:
    """``(name, text)`` of each ``name: value`` field of ``line`` from ``start`` on; a value runs
    until the next ``name:``, so ``eta: 1 day, 16:43:35`` and uneven spacing read whole."""
    fields = list(_FIELD.finditer(line, start))
    return [(field.group(1), line[field.end(): following.start() if following else len(line)].strip())
            for field, following in zip(fields, fields[1:] + [None])]


def numeric_fields(fields: Iterable[Tuple[str, str]], number: int, skipped: SkippedLines) -> Dict[str, float]:
    """The numbers of ``split_fields``' fields (``eta`` as ``eta_seconds``, as in metrics.json);
    a value that is neither a number nor a "nothing logged" token is a skipped value of line ``number``."""
    record: Dict[str, float] = {}
    for name, text in fields:
        value = parse_number(text)
        if value is not None:
            record["eta_seconds" if name == "eta" else name] = value
        elif text.lower() not in MISSING_TOKENS:
            skipped.add_value(number, f"{name}: {text[:40]!r} is not a number")
    return record


def timestamp_seconds(line: str) -> Optional[float]:
    """Seconds of the line's ``[MM/DD HH:MM:SS]`` prefix (year 2000 when absent: it only orders)."""
    match = _TIMESTAMP.match(line)
    if not match:
        return None
    year, month, day, hour, minute, second = match.groups()
    try:
        moment = datetime.datetime(int(year or 2000), int(month), int(day), int(hour), int(minute), int(second))
    except ValueError:
        return None
    return (moment - _EPOCH).total_seconds()


class _Reader:
    def __init__(self, skipped: SkippedLines) -> None:
        self.skipped = skipped
        self.collector = RecordCollector()
        self.last_step: Optional[float] = None
        self.last_time: Optional[float] = None
        self.year_offset = 0.0  # logs without a year that cross New Year
        self.pending_eval: Dict[str, float] = {}
        self.pending_line = 0
        self.task = ""
        self.header: Optional[List[str]] = None
        self.last_validation: Dict[str, float] = {}

    def flush_eval(self, step: Optional[float]) -> None:
        if self.pending_eval:
            self.collector.add(step if step is not None else (self.last_step or 0.0), self.pending_eval, self.pending_line)
            self.pending_eval, self.pending_line = {}, 0

    def wall_time(self, line: str) -> Optional[float]:
        moment = timestamp_seconds(line)
        if moment is None:
            return None
        moment += self.year_offset
        if self.last_time is not None and moment < self.last_time - 180 * 86400:
            self.year_offset += 366 * 86400
            moment += 366 * 86400
        self.last_time = moment
        return moment

    def event(self, number: int, line: str) -> None:
        iteration = _ITER.search(line)
        eta = _ETA.search(line)
        start = min(iteration.start(), eta.start()) if eta else iteration.start()
        fields = split_fields(line, start)
        iteration_text = next((text for name, text in fields if name == "iter"), "")
        record = numeric_fields((field for field in fields if field[0] != "iter"), number, self.skipped)
        step = parse_number(iteration_text)
        step = step if step is not None and step.is_integer() else None
        if step is None or not record:
            self.skipped.add_line(number, "event line without a readable iteration and values")
            return
        self.drop_repeated_validation(record)
        moment = self.wall_time(line)
        if moment is not None:
            record["wall_time"] = moment
        same_run = self.last_step is None or step >= self.last_step
        self.flush_eval(step if same_run else self.last_step)
        self.collector.add(step, record, number)
        self.last_step = step

    def drop_repeated_validation(self, record: Dict[str, float]) -> None:
        """A console line repeats the latest validation values until the next evaluation: keep
        them only when they changed, so each evaluation is one validation record."""
        shown = {name: value for name, value in record.items() if classify_key(name)[0] == VAL}
        if not shown:
            return
        if _same_values(shown, self.last_validation):
            for name in shown:
                del record[name]
        self.last_validation = shown

    def copypaste(self, number: int, line: str) -> None:
        payload = line.split(_COPYPASTE, 1)[1].strip()
        if payload.startswith("Task:"):
            self.task, self.header = payload[len("Task:"):].strip(), None
            return
        tokens = [token.strip() for token in payload.split(",")]
        numbers = [parse_number(token) for token in tokens]
        if all(n is None for n in numbers):
            self.header = tokens
        elif self.header is not None and len(self.header) == len(numbers) and None not in numbers:
            prefix = f"val/{self.task}/" if self.task else "val/"
            self.pending_eval.update({prefix + name: value for name, value in zip(self.header, numbers)})
            self.pending_line = self.pending_line or number
            self.header = None
        else:
            self.skipped.add_line(number, "copypaste values without a matching header")

    def run_start(self, start_iteration: int) -> None:
        self.flush_eval(self.last_step)
        self.collector.declare_start(start_iteration)
        self.last_step = None
        self.last_validation = {}


def _same_values(a: Dict[str, float], b: Dict[str, float]) -> bool:
    """Equal dicts of floats, NaN equal to NaN."""
    return a.keys() == b.keys() and all(a[k] == b[k] or (math.isnan(a[k]) and math.isnan(b[k])) for k in a)


def collect_detectron2_log(lines: Iterable[str], skipped: SkippedLines) -> Collected:
    """Read detectron2-style text log lines (see the module docstring)."""
    reader = _Reader(skipped)
    for number, raw in enumerate(lines, start=1):
        line = clean_line(raw)
        if "iter:" in line and looks_like_event_line(line):
            reader.event(number, line)
        elif _COPYPASTE in line:
            reader.copypaste(number, line)
        elif "Starting training from iteration" in line:
            match = _RUN_START.search(line)
            if match:
                reader.run_start(int(match.group(1)))
        elif "\x00" in line or "\ufffd" in line:
            skipped.add_line(number, "binary data")
    reader.flush_eval(reader.last_step)
    return reader.collector.finish()
