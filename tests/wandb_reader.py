"""Read a W&B offline run file (``run-<id>.wandb``) back into run metadata, config and history.

The framing is decoded by ``events.wandb_records.iter_records`` (the one decoder in the project;
the writer uses it on resume) and each payload by wandb's own ``Record`` proto class.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import re
import time
from typing import Any

from wandb.proto import wandb_internal_pb2

from events.wandb_records import iter_records

__all__ = ["OfflineRun", "find_run_files", "isolate_wandb", "iter_records", "read_offline_run"]


@dataclasses.dataclass
class OfflineRun:
    """What one ``.wandb`` file says about a run.

    history: one dict per logged step, ``{"_step": int, key: value, ...}``, in write order.
    config: the run's config, nested keys as wandb stores them (``{"key": {"value": v}}`` is
    unwrapped to ``{"key": v}``).
    """

    run_id: str
    project: str
    display_name: str
    group: str
    tags: list[str]
    resumed: bool
    config: dict[str, Any]
    history: list[dict[str, Any]]
    metrics: list[dict[str, Any]]


def _set_item(target: dict[str, Any], item: Any, value: Any) -> None:
    """``key`` sets ``target[key]``; ``nested_key`` [a, b] sets ``target[a][b]`` (a logged
    ``wandb.Histogram`` arrives as ``[tag, "_type"]``, ``[tag, "values"]``, ``[tag, "bins"]``)."""
    path = list(item.nested_key) or [item.key]
    for part in path[:-1]:
        target = target.setdefault(part, {})
    target[path[-1]] = value


def _finished_records(path: str, timeout: float) -> list[wandb_internal_pb2.Record]:
    """The file's records once its ``exit`` record is on disk.

    wandb-core writes the file in its own process and may still be flushing it when
    ``run.finish()`` has returned, so a reader polls until the run's last record is there.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            records = list(iter_records(path))
        except (OSError, ValueError):  # not created yet, or a chunk still being written
            records = []
        if any(r.WhichOneof("record_type") == "exit" for r in records):
            return records
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path}: no exit record after {timeout} s (run not finished?)")
        time.sleep(0.05)


def read_offline_run(path: str, timeout: float = 120.0) -> OfflineRun:
    """Decode one finished ``run-<id>.wandb`` file into run metadata, config and history."""
    run_record = None
    config: dict[str, Any] = {}
    history: list[dict[str, Any]] = []
    metrics: list[dict[str, Any]] = []
    for record in _finished_records(path, timeout):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run_record = record.run
            _apply_config(config, record.run.config)
        elif kind == "config":
            _apply_config(config, record.config)
        elif kind == "history":
            row: dict[str, Any] = {}
            for item in record.history.item:
                _set_item(row, item, json.loads(item.value_json))
            if record.history.HasField("step"):
                row.setdefault("_step", record.history.step.num)
            history.append(row)
        elif kind == "metric":
            m = record.metric
            metrics.append({"name": m.name or m.glob_name, "step_metric": m.step_metric})
    if run_record is None:
        raise ValueError(f"{path}: no run record")
    return OfflineRun(
        run_id=run_record.run_id,
        project=run_record.project,
        display_name=run_record.display_name,
        group=run_record.run_group,
        tags=list(run_record.tags),
        resumed=run_record.resumed,
        config=config,
        history=history,
        metrics=metrics,
    )


def _apply_config(config: dict[str, Any], record: Any) -> None:
    for item in record.update:
        value = json.loads(item.value_json)
        if isinstance(value, dict) and set(value) == {"value"}:
            value = value["value"]
        _set_item(config, item, value)
    for item in record.remove:
        config.pop(item.key, None)


_RUN_DIR = re.compile(r"run-(\d{8}_\d{6})-(.+?)(?:-(\d+))?$")


def find_run_files(wandb_dir: str) -> list[str]:
    """All ``run-*.wandb`` files under ``<wandb_dir>/wandb/``, oldest first.

    Order: the start second in the folder name (``offline-run-20250101_120000-<id>``), then
    the ``-1``, ``-2`` suffix wandb adds when a run with the same id starts in the same second.
    """

    def start_order(path: str) -> tuple[str, int, str]:
        folder = os.path.basename(os.path.dirname(path))
        match = _RUN_DIR.search(folder)
        if match is None:
            raise ValueError(f"unexpected W&B run folder name: {folder}")
        return match.group(1), int(match.group(3) or 0), match.group(2)

    files = glob.glob(os.path.join(wandb_dir, "wandb", "*run-*", "run-*.wandb"))
    return sorted(files, key=start_order)


def isolate_wandb(monkeypatch: Any, root: str) -> None:
    """Keep a test's wandb offline and inside ``root``: no API key, no network, nothing in $HOME."""
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("NETRC", os.path.join(root, "no-netrc"))
    for name in ("WANDB_DIR", "WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(name, os.path.join(root, name.lower()))
    monkeypatch.setenv("WANDB_SILENT", "true")
