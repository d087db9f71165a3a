"""Finding training logs under an outputs folder (``--list``, ``--latest``, a folder as --log-file)."""
from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass
from typing import List, Optional

__all__ = ["LogFile", "find_logs", "best_log_in", "log_label", "LOG_PATTERNS"]

# Preference order inside one folder: metrics.json keeps full precision and every key;
# log.txt holds window medians rounded to 4 digits.
LOG_PATTERNS = (
    "metrics.json",
    "scalars.json",
    "*.log.json",
    "training_metrics.jsonl",
    "*.jsonl",
    "log.txt",
    "*.log",  # MMEngine: <work_dir>/<timestamp>/<timestamp>.log
    "*.csv",
    "events.out.tfevents.*",
)
_STANDARD_NAMES = ("metrics.json", "log.txt", "scalars.json", "training_metrics.jsonl")
_SKIP_DIRS = {".git", "__pycache__", ".venv", "node_modules", "wandb", "training_plots"}


@dataclass
class LogFile:
    """A log found on disk: its path, folder and last modification time (seconds since epoch)."""

    path: str
    folder: str
    modified: float
    size: int


def _rank(name: str) -> Optional[int]:
    for rank, pattern in enumerate(LOG_PATTERNS):
        if fnmatch.fnmatch(name, pattern):
            return rank
    return None


def best_log_in(folder: str) -> Optional[str]:
    """The most informative log directly inside ``folder`` (see LOG_PATTERNS), or None."""
    try:
        names = [n for n in os.listdir(folder) if os.path.isfile(os.path.join(folder, n))]
    except OSError:
        return None
    ranked = sorted((rank, name) for name in names for rank in [_rank(name)] if rank is not None)
    return os.path.join(folder, ranked[0][1]) if ranked else None


def find_logs(root: str, max_depth: int = 4) -> List[LogFile]:
    """One log per folder under ``root`` (its best, see ``best_log_in``), newest first."""
    found: List[LogFile] = []
    root = os.path.abspath(root)
    base_depth = root.rstrip(os.sep).count(os.sep)
    for folder, dirs, _ in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS and not d.startswith("."))
        if folder.count(os.sep) - base_depth >= max_depth:
            dirs[:] = []
        path = best_log_in(folder)
        if path:
            stat = os.stat(path)
            found.append(LogFile(path, folder, stat.st_mtime, stat.st_size))
    found.sort(key=lambda log: log.modified, reverse=True)
    return found


def log_label(path: str) -> str:
    """A short name for legends: the run folder of a standard log name or of a folder
    (outputs/exp1/metrics.json -> exp1), else the file name without extension."""
    absolute = os.path.abspath(path)
    if os.path.isdir(absolute):
        return os.path.basename(absolute.rstrip(os.sep)) or absolute
    name = os.path.basename(absolute)
    if name in _STANDARD_NAMES or name.startswith("events.out.tfevents."):
        return os.path.basename(os.path.dirname(absolute)) or name
    return os.path.splitext(name)[0]
