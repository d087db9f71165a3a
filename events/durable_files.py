"""Writes that survive a SIGKILL: whole-file replacement and fsynced appends."""
from __future__ import annotations

import os
from typing import Iterable


def write_lines_durably(path: str, lines: Iterable[str], *, append: bool = False) -> None:
    """Write ``lines`` to ``path`` and fsync them.

    Without ``append`` the file is replaced atomically (written to ``<path>.tmp`` first and moved
    into place with ``os.replace``): a kill at any moment leaves the old or the new content.
    """
    target = path if append else path + ".tmp"
    with open(target, "a" if append else "w", encoding="utf-8") as f:
        f.writelines(lines)
        f.flush()
        os.fsync(f.fileno())
    if not append:
        os.replace(target, path)
