"""Turning the logged text of one value into a float, and cleaning one raw line of a log.

Real logs hold more than plain numbers: ``N/A`` (no value this time), ``11811M`` (memory),
``1 day, 16:43:35`` (an ETA), ``NaN``, ``4.762e-07``, ``12.5%``; lines may carry ANSI colour codes,
a trailing ``\\r`` or progress-bar carriage returns.
"""
from __future__ import annotations

import math
import re
from typing import Optional

__all__ = ["parse_number", "clean_line", "json_number", "is_usable_step", "MISSING_TOKENS", "MAX_STEP"]

# Beyond 2**53 a float no longer holds every integer: no real trainer counts that far, so a larger
# (or non-finite) step is damage, and a plot or a fit over it would be meaningless.
MAX_STEP = float(2 ** 53)

# Tokens meaning "no value logged this time": the key is left out of that record, it is not NaN.
MISSING_TOKENS = frozenset({"n/a", "na", "none", "null", "nil", "-", "--", "?", ""})

_DURATION = re.compile(r"^(?:(\d+) days?, )?(?:(\d+):)?(\d+):(\d\d(?:\.\d+)?)$")
_MEMORY = re.compile(r"^([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*([KMGT])(?:i?B)?$", re.IGNORECASE)
_MEMORY_TO_MB = {"k": 1.0 / 1024.0, "m": 1.0, "g": 1024.0, "t": 1024.0 * 1024.0}
# CSI sequences (colours, cursor moves) and two-byte escapes.
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[@-Z\\-_]")


def parse_number(text: str) -> Optional[float]:
    """The float that ``text`` stands for, or None when it holds no number.

    Accepts what Python's ``float`` accepts (``NaN``, ``inf``, ``1e-5``) plus durations
    (``0:14:11``, ``1 day, 16:43:35`` -> seconds), memory sizes (``11811M``, ``1.5GiB`` -> MB),
    percentages (``12.5%`` -> 12.5) and seconds (``0.25s``). ``N/A`` and friends give None.
    """
    try:
        return float(text)
    except (TypeError, ValueError):
        pass
    token = str(text).strip()
    if token.lower() in MISSING_TOKENS:
        return None
    duration = _DURATION.match(token)
    if duration:
        days, hours, minutes, seconds = duration.groups()
        return ((int(days or 0) * 24 + int(hours or 0)) * 60 + int(minutes)) * 60 + float(seconds)
    memory = _MEMORY.match(token)
    if memory:
        return float(memory.group(1)) * _MEMORY_TO_MB[memory.group(2).lower()]
    for unit in ("%", "s"):
        if token.endswith(unit):
            try:
                return float(token[: -len(unit)])
            except ValueError:
                return None
    return None


def json_number(value: object) -> Optional[float]:
    """A decoded JSON number as a float; an integer too large for one (``1`` and 400 zeros)
    becomes +-inf, as ``1e400`` does. None for anything else (text, lists, booleans, null)."""
    if type(value) is float:
        return value
    if type(value) is not int:
        return None
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def is_usable_step(step: Optional[float]) -> bool:
    """Whether ``step`` can place a record: finite and within +-``MAX_STEP``."""
    return step is not None and -MAX_STEP <= step <= MAX_STEP


def clean_line(line: str) -> str:
    """``line`` without ANSI escapes, trailing whitespace, or what a carriage return overwrote."""
    if "\r" in line:
        line = line.rstrip("\r")
        # A progress bar rewrites the line after each "\r": the last piece is what was shown.
        line = line.rsplit("\r", 1)[-1]
    if "\x1b" in line:
        line = _ANSI.sub("", line)
    return line.rstrip()
