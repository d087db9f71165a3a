"""Run ``tools/train_net.py`` as a real process and read back everything it writes.

Shared by the end-to-end, distributed and kill-and-resume tests. Readers use the tools' own
parsers: tensorboard's ``EventAccumulator`` for event files and wandb's ``Record`` protos (through
``wandb_reader``) for the offline run; only the console line, whose format is detectron2's, is
parsed here.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from wandb_reader import iter_records

REPO = Path(__file__).resolve().parents[1]
TRAIN_NET = REPO / "tools" / "train_net.py"
DEMO_CONFIG = REPO / "configs" / "demo.yaml"

# Keys whose values are wall-clock measurements: they differ between two runs of the same steps.
TIMING_KEYS = frozenset({"time", "data_time", "rank_data_time", "eta_seconds"})

_SESSION_START = "engine.train_loop INFO: Starting training from iteration"
_CONSOLE_LINE = re.compile(r"\] d2\.utils\.events INFO:\s+(.*\biter: \d+.*)$")


def train_net_env(root: Path) -> Dict[str, str]:
    """The environment for a training subprocess: W&B offline with every directory it touches
    under ``root`` (no key, no network, nothing in $HOME), and one torch thread so runs are
    bit-for-bit repeatable and do not crowd the other processes on a small machine."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(
        WANDB_MODE="offline",
        WANDB_SILENT="true",
        NETRC=str(root / "no-netrc"),
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        PYTHONUNBUFFERED="1",
    )
    for name in ("WANDB_DIR", "WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        env[name] = str(root / name.lower())
    return env


def train_net_command(
    output_dir: Optional[Path],
    overrides: Sequence[Any] = (),
    *,
    resume: bool = False,
    launcher: Sequence[str] = (),
    config_file: Path = DEMO_CONFIG,
) -> List[str]:
    """``[launcher...] python tools/train_net.py --config-file <config_file> [--resume]
    KEY VALUE... [OUTPUT_DIR <output_dir>]``; ``launcher`` replaces ``python`` (e.g. torchrun)."""
    command = list(launcher) or [sys.executable]
    command += [str(TRAIN_NET), "--config-file", str(config_file)]
    if resume:
        command.append("--resume")
    command += [str(item) for item in overrides]
    return command + (["OUTPUT_DIR", str(output_dir)] if output_dir is not None else [])


def run_train_net(command: Sequence[str], env: Dict[str, str], cwd: Path, timeout: float = 540) -> subprocess.CompletedProcess:
    """Run a training command to its end; a non-zero exit fails with its stderr tail."""
    result = subprocess.run(list(command), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(command)}\nexit {result.returncode}\n{result.stderr[-4000:]}"
    return result


def read_metrics(path: Path) -> List[Dict[str, Any]]:
    """The records of a metrics.json (JSON lines), in file order."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def logged_iterations(path: Path) -> List[int]:
    """Iterations of the complete lines of a metrics.json being written right now (a line cut by
    a concurrent write is ignored); [] while the file does not exist."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.readlines()
    except FileNotFoundError:
        return []
    return [json.loads(line)["iteration"] for line in lines if line.endswith("\n") and line.strip()]


def parse_console_fields(text: str) -> Dict[str, str]:
    """``"eta: 0:00:02  iter: 9  loss_ce: 1.2"`` -> ``{"eta": "0:00:02", "iter": "9", "loss_ce": "1.2"}``."""
    fields = {}
    for field in text.split("  "):
        name, sep, value = field.strip().partition(": ")
        if sep:
            fields[name] = value
    return fields


def console_sessions(log_file: Path) -> List[List[Dict[str, str]]]:
    """The console metric lines of log.txt, one list per training session (fresh start or
    resume), each line as ``parse_console_fields`` gives it."""
    sessions: List[List[Dict[str, str]]] = []
    with open(log_file, encoding="utf-8") as f:
        for line in f:
            if _SESSION_START in line:
                sessions.append([])
                continue
            match = _CONSOLE_LINE.search(line)
            if match:
                assert sessions, f"console line before any session start in {log_file}: {line!r}"
                sessions[-1].append(parse_console_fields(match.group(1)))
    return sessions


def eta_seconds(eta: str) -> int:
    """``"1:02:03"`` -> 3723 (the console prints ``datetime.timedelta`` of whole seconds)."""
    hours, minutes, seconds = (int(part) for part in eta.split(":"))
    return 3600 * hours + 60 * minutes + seconds


def tensorboard_scalars(log_dir: Path) -> Dict[str, List[Tuple[int, float]]]:
    """``{tag: [(step, value), ...]}`` as TensorBoard shows them (all events kept, purges applied)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    accumulator.Reload()
    return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}


def wandb_history_rows(run_file: Path) -> List[Dict[str, Any]]:
    """The scalar history rows of a ``run-<id>.wandb`` file as far as it was written.

    Unlike ``wandb_reader.read_offline_run`` this does not wait for the run's exit record: a run
    whose process was killed with SIGKILL never gets one, and its file may end in a torn chunk,
    which ends the reading (as the W&B writer itself reads it on resume).
    """
    rows = []
    for record in iter_records(str(run_file), stop_at_damage=True):
        if record.WhichOneof("record_type") == "history":
            rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item})
    return rows


def png_size_and_dpi(path: Path) -> Tuple[Tuple[int, int], Optional[Tuple[float, float]]]:
    """Decode a PNG completely (a truncated or corrupt file raises) and return its pixel size
    and the DPI its pHYs chunk records."""
    from PIL import Image

    with Image.open(path) as image:
        assert image.format == "PNG", f"{path} is {image.format}, not PNG"
        image.load()
        return image.size, image.info.get("dpi")
