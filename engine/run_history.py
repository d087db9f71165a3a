"""Experiment bookkeeping: ``train_history.json`` in each run directory, and the list of runs.

Each session of a run directory (the first start, every ``--resume``) appends one entry: when it
started and ended, the command, the iteration it started from, how it ended (``completed``,
``crashed``, ``non-finite values``; ``running`` if the process was killed) and the final losses.
"""
from __future__ import annotations

import datetime
import json
import logging
import os
from typing import Any, Dict, List, Optional

from events.durable_files import write_lines_durably

logger = logging.getLogger(__name__)

HISTORY_FILE = "train_history.json"


class RunHistory:
    """The ``train_history.json`` of one run directory, with this session appended."""

    def __init__(
        self, output_dir: str, config_file: str, start_iter: int, resumed: bool, command: Optional[str] = None
    ):
        """``command``: the command line to record; default ``engine.defaults.command_line()``
        (pass ``command_line(cfg)`` so that what the config hides is hidden here too)."""
        if command is None:
            from engine.defaults import command_line  # here: tools/list_runs.py needs no torch

            command = command_line()
        self.path = os.path.join(output_dir, HISTORY_FILE)
        self.sessions: List[Dict[str, Any]] = []
        if os.path.exists(self.path):
            try:
                self.sessions = read_sessions(self.path)
            except ValueError as e:
                # Keep the unreadable file for inspection; start a fresh history beside it.
                logger.warning("%s; moved it to %s.unreadable", e, self.path)
                os.replace(self.path, self.path + ".unreadable")
        self.session: Dict[str, Any] = {
            "started": datetime.datetime.now().isoformat(timespec="seconds"),
            "command": command,
            "config_file": config_file,
            "resumed": resumed,
            "start_iter": start_iter,
            "status": "running",
        }
        self.sessions.append(self.session)
        self._save()

    def finish(self, status: str, latest: Dict[str, Any], error: Optional[str] = None) -> None:
        """Record how the session ended; ``latest`` maps names to ``(value, iteration)`` as
        ``EventStorage.latest_with_smoothing_hint()`` returns them."""
        self.session.update(
            ended=datetime.datetime.now().isoformat(timespec="seconds"),
            status=status,
            last_iteration=max((itr for _, itr in latest.values()), default=None),
            final={k: v for k, (v, _) in sorted(latest.items()) if "loss" in k},
        )
        if error:
            self.session["error"] = error
        self._save()

    def _save(self) -> None:
        write_lines_durably(self.path, [json.dumps({"sessions": self.sessions}, indent=2)])


def read_sessions(path: str) -> List[Dict[str, Any]]:
    """The sessions of a ``train_history.json``; ``ValueError`` naming the file if unreadable."""
    try:
        with open(path, encoding="utf-8") as f:
            sessions = json.load(f)["sessions"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"unreadable run history {path}: {type(e).__name__}: {e}") from None
    if not isinstance(sessions, list):
        raise ValueError(f"unreadable run history {path}: 'sessions' is not a list")
    return sessions


def list_runs(root: str) -> List[Dict[str, Any]]:
    """One summary per run directory under ``root`` (any depth), newest first: its path, status,
    last iteration, sessions, and the final ``total_loss`` / ``validation/total_loss``."""
    runs = []
    for folder, _, files in os.walk(root):
        if HISTORY_FILE not in files:
            continue
        path = os.path.join(folder, HISTORY_FILE)
        try:
            sessions = read_sessions(path)
        except ValueError as e:
            runs.append({"run": folder, "status": "unreadable", "error": str(e), "started": ""})
            continue
        last = sessions[-1] if sessions else {}
        final = last.get("final", {})
        runs.append(
            {
                "run": folder,
                "started": sessions[0].get("started", "") if sessions else "",
                "sessions": len(sessions),
                "status": last.get("status", "?"),
                "last_iteration": last.get("last_iteration"),
                "total_loss": final.get("total_loss"),
                "validation_loss": final.get("validation/total_loss"),
            }
        )
    return sorted(runs, key=lambda r: r["started"], reverse=True)


def format_runs(runs: List[Dict[str, Any]]) -> str:
    """A fixed-width table of ``list_runs`` for the terminal."""

    def number(value: Any) -> str:
        return "-" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)

    header = f"{'started':<19}  {'status':<15} {'last iter':>9} {'sessions':>8} {'total_loss':>10} {'val loss':>9}  run"
    rows = [
        f"{r['started']:<19}  {r['status']:<15} {number(r.get('last_iteration')):>9} "
        f"{number(r.get('sessions')):>8} {number(r.get('total_loss')):>10} {number(r.get('validation_loss')):>9}  {r['run']}"
        for r in runs
    ]
    return "\n".join([header, *rows])
