"""The JSON-lines dialects: detectron2 metrics.json, DETR log.txt, MMDetection 2.x *.log.json,
MMEngine scalars.json and plain JSONL metric files; each turned into collector records.

| dialect | step | validation |
|---|---|---|
| detectron2-metrics | ``iteration`` | metric names (``bbox/AP``) or ``val/`` prefixes |
| detr-log | ``epoch``, else the line's index (one line per epoch) | ``test_`` prefix; ``test_coco_eval_bbox`` list -> ``coco_eval_bbox/AP``... |
| mmdet-json | ``(epoch - 1) * iters_per_epoch + iter`` | records with ``"mode": "val"`` (their ``iter`` is the val-set size) |
| mmengine-scalars | ``step`` | records without ``iter``; their ``step`` is an epoch when training logs epochs |
| jsonl | first of iteration/iter/step/global_step/epoch | ``val_``/``test_`` prefixes, or a ``mode``/``split`` field |
"""
from __future__ import annotations

from collections import Counter
from typing import Dict, Iterable, List, Optional, Tuple

from .assemble import Collected, RecordCollector
from .table import SkippedLines
from .values import is_usable_step, json_number

__all__ = ["detect_json_format", "collect_json", "collect_stepped", "step_key_of", "stepped_key", "JSON_FORMATS"]

JSON_FORMATS = ("detectron2-metrics", "detr-log", "mmdet-json", "mmengine-scalars", "jsonl")

_STEP_KEYS = ("iteration", "iter", "step", "global_step", "epoch")
_VAL_MODES = frozenset({"val", "valid", "validation", "test", "eval", "evaluation"})
_MODE_KEYS = ("mode", "split", "phase", "stage")
_MODE_KEY_SET = frozenset(_MODE_KEYS)
# COCOeval.stats order, as DETR logs it in test_coco_eval_bbox / test_coco_eval_masks.
_COCO_STATS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")

Record = Dict[str, object]


def detect_json_format(records: List[Record]) -> str:
    """Which dialect the first records of a JSON-lines file are written in."""
    if any("env_info" in r or (r.get("mode") in ("train", "val") and "epoch" in r and "iter" in r) for r in records):
        return "mmdet-json"
    if any("iteration" in r for r in records):
        return "detectron2-metrics"
    if any("step" in r and "iter" in r for r in records):
        return "mmengine-scalars"
    # DETR's main.py: train_* and test_* stats (and n_parameters) per epoch, no iteration field.
    prefixed = sum(1 for r in records if any(k.startswith(("train_", "test_")) for k in r))
    detr_marks = any(k.startswith("test_") or k == "n_parameters" for r in records for k in r)
    if detr_marks and prefixed >= len(records) / 2 and not any(k in r for r in records for k in _STEP_KEYS[:4]):
        return "detr-log"
    return "jsonl"


def step_key_of(records: Iterable[Record]) -> Optional[str]:
    """The field that counts steps in these records (iteration, iter, step, global_step, epoch)."""
    counts = Counter(k for r in records for k in _STEP_KEYS if k in r)
    for key in _STEP_KEYS:
        if counts[key]:
            return key
    return None


def stepped_key(fmt: str, head: List[Record]) -> Optional[str]:
    """The step field of a stepped dialect, judged from its first records."""
    return "iteration" if fmt == "detectron2-metrics" else step_key_of(head[:200])


def _mode_is_val(record: Record) -> bool:
    for key in _MODE_KEYS:
        mode = record.get(key)
        if isinstance(mode, str):
            return mode.lower() in _VAL_MODES
    return False


def _as_val(record: Record, drop: Tuple[str, ...] = ()) -> Record:
    return {("val/" + k if k != "epoch" else k): v for k, v in record.items() if k not in drop and k not in _MODE_KEYS}


def _route_mode(record: Record) -> Record:
    """A record marked ``mode``/``split`` = val becomes validation values; the marker is dropped."""
    if _mode_is_val(record):
        return _as_val(record)
    return {k: v for k, v in record.items() if k not in _MODE_KEYS}


def collect_stepped(numbers: List[int], records: List[Record], step_key: str, skipped: SkippedLines,
                    collector: RecordCollector) -> None:
    """Records whose step is field ``step_key``; a val ``mode``/``split`` field marks validation.

    Written for 100k-line files: list-at-a-time passes, per-record work only where needed.
    """
    steps = [record.pop(step_key, None) for record in records]
    if not all(type(step) in (int, float) for step in steps):  # bool is not a step
        numeric = [type(step) in (int, float) for step in steps]
        for number, ok in zip(numbers, numeric):
            if not ok:
                skipped.add_line(number, f"no numeric {step_key!r}")
        numbers = [n for n, ok in zip(numbers, numeric) if ok]
        records = [r for r, ok in zip(records, numeric) if ok]
        steps = [s for s, ok in zip(steps, numeric) if ok]
    if any(not record.keys().isdisjoint(_MODE_KEY_SET) for record in records):
        records = [_route_mode(record) if not record.keys().isdisjoint(_MODE_KEY_SET) else record for record in records]
    collector.add_many(steps, records, numbers)


def _collect_detr(records: List[Tuple[int, Record]], skipped: SkippedLines, collector: RecordCollector) -> None:
    for index, (line, record) in enumerate(records):
        epoch = json_number(record.pop("epoch", index))
        if epoch is None:
            skipped.add_line(line, "epoch is not a number")
            continue
        for name, value in list(record.items()):
            if name.endswith(("coco_eval_bbox", "coco_eval_masks")) and isinstance(value, list) and len(value) == len(_COCO_STATS):
                record[name] = dict(zip(_COCO_STATS, value))
        collector.add(epoch, record, line)


def _mmdet_records(records: List[Tuple[int, Record]], skipped: SkippedLines) -> List[Tuple[int, Record, float, float]]:
    """``(line, record, epoch, iter)`` of the train and val records; those whose epoch or iter
    is not a finite number (below ``MAX_STEP``) are skipped lines (the env/config metadata line has no mode: ignored)."""
    usable = []
    for line, record in records:
        if record.get("mode") not in ("train", "val"):
            continue
        epoch, inner = json_number(record.get("epoch")), json_number(record.get("iter", 0))
        if not (is_usable_step(epoch) and is_usable_step(inner)):  # one absurd iter would scale every step
            skipped.add_line(line, "'epoch' or 'iter' is not a usable number")
            continue
        usable.append((line, record, epoch, inner))
    return usable


def _collect_mmdet(records: List[Tuple[int, Record]], skipped: SkippedLines, collector: RecordCollector) -> None:
    usable = _mmdet_records(records, skipped)
    train = [(epoch, inner) for _, r, epoch, inner in usable if r["mode"] == "train" and "iter" in r]
    # Iterations restart each epoch (EpochBasedRunner) unless they grow across epochs (IterBasedRunner).
    iters_per_epoch = max((inner for _, inner in train), default=0.0)
    per_epoch = iters_per_epoch > 0 and any(b[1] < a[1] and b[0] > a[0] for a, b in zip(train, train[1:]))
    last_train_step = 0.0
    for line, record, epoch, inner in usable:
        if record["mode"] == "train":
            step = (epoch - 1) * iters_per_epoch + inner if per_epoch else inner
            values = {k: v for k, v in record.items() if k not in ("mode", "iter", "epoch")}
            values["epoch"] = (epoch - 1) + inner / iters_per_epoch if per_epoch else epoch
            last_train_step = step
        else:
            # A val record's "iter" is the size of the val set: place it at the end of its epoch.
            step = epoch * iters_per_epoch if per_epoch else last_train_step
            values = _as_val(record, drop=("iter", "lr"))
        collector.add(step, values, line)


def _collect_mmengine(records: List[Tuple[int, Record]], skipped: SkippedLines, collector: RecordCollector) -> None:
    steps = []
    for line, record in records:
        step = json_number(record.pop("step", record.get("iter")))
        if not is_usable_step(step):  # a validation record would otherwise land at the first epoch's end
            skipped.add_line(line, "no numeric 'step'" if step is None else f"step {step:g} is not a usable iteration")
            step = None
        steps.append(step)
    last_step_of_epoch: Dict[float, float] = {}
    for (_, record), step in zip(records, steps):
        epoch = json_number(record.get("epoch"))
        if "iter" in record and epoch is not None and step is not None:
            last_step_of_epoch[epoch] = max(step, last_step_of_epoch.get(epoch, step))
    epochs = sorted(last_step_of_epoch)
    for (line, record), step in zip(records, steps):
        if step is None:
            continue
        if "iter" in record:
            record.pop("iter")
            collector.add(step, record, line)
            continue
        # Validation: with epoch-based training its step is the epoch just finished.
        if epochs:
            finished = [e for e in epochs if e <= step]
            epoch = finished[-1] if finished else epochs[0]
            values = _as_val(record)
            values["epoch"] = step
            collector.add(last_step_of_epoch[epoch], values, line)
        else:
            collector.add(step, _as_val(record), line)


def collect_json(fmt: str, numbers: List[int], records: List[Record], skipped: SkippedLines,
                 step_key: Optional[str] = None) -> Collected:
    """Feed decoded records (and their line numbers) of dialect ``fmt`` to a collector (module table).

    ``step_key`` overrides the step field of stepped dialects (detectron2-metrics, jsonl).
    """
    collector = RecordCollector()
    pairs = list(zip(numbers, records)) if fmt in ("detr-log", "mmdet-json", "mmengine-scalars") else []
    if fmt == "detr-log":
        _collect_detr(pairs, skipped, collector)
        return collector.finish(step_unit="epoch")
    if fmt == "mmdet-json":
        _collect_mmdet(pairs, skipped, collector)
        return collector.finish()
    if fmt == "mmengine-scalars":
        _collect_mmengine(pairs, skipped, collector)
        return collector.finish()
    step_key = step_key or stepped_key(fmt, records)
    if step_key is None:
        for number in numbers:
            skipped.add_line(number, "no step field (iteration, iter, step, global_step or epoch)")
        return collector.finish()
    collect_stepped(numbers, records, step_key, skipped, collector)
    return collector.finish(step_unit="epoch" if step_key == "epoch" else "iteration")
