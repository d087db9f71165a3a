"""Names of the per-rank scalars (written by engine/rank_stats.py, read by the plotting):
``rank_<field>/r<i>`` per rank, ``rank_<field>/max|median|argmax`` across ranks, and
``slowest_rank`` while one rank is consistently the slowest."""
from __future__ import annotations

import re
from typing import Optional, Tuple

__all__ = ["RANK_FIELDS", "PREFIX", "SLOWEST_RANK", "is_rank_key", "per_rank_key", "parse_per_rank_key"]

RANK_FIELDS = ("data_time", "step_time", "max_mem")
PREFIX = "rank_"
SLOWEST_RANK = "slowest_rank"
_PER_RANK = re.compile(r"^rank_(?P<field>[a-z_]+)/r(?P<rank>\d+)$")


def is_rank_key(name: str) -> bool:
    """Whether ``name`` is one of the per-rank scalars (not detectron2's own ``rank_data_time``)."""
    return name == SLOWEST_RANK or (name.startswith(PREFIX) and "/" in name)


def per_rank_key(field: str, rank: int) -> str:
    return f"{PREFIX}{field}/r{rank}"


def parse_per_rank_key(name: str) -> Optional[Tuple[str, int]]:
    """``(field, rank)`` of ``rank_<field>/r<i>``, else None."""
    match = _PER_RANK.match(name)
    return (match.group("field"), int(match.group("rank"))) if match else None
