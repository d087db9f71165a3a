"""What a figure is asked for: ``PlotOptions`` (shared by all figures) and ``FigureSpec``."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from .smoothing import SmoothSpec

__all__ = ["PlotOptions", "FigureSpec"]


@dataclass(frozen=True)
class PlotOptions:
    """What every figure shares: x axis (iter/epoch/time), smoothing, log y for losses, title
    prefix, output dpi and format, and how many points a curve may keep (longer ones are binned
    into a min/max band plus a thinned smoothed line)."""

    x: str = "iter"
    smooth: SmoothSpec = field(default_factory=SmoothSpec)
    log_scale: bool = False
    title: str = ""
    dpi: int = 300
    fmt: str = "png"
    max_points: int = 2000


@dataclass
class FigureSpec:
    """A figure to make: its file stem, a function building it, and roughly how many panels it
    draws (its cost: rendering processes take the heaviest figures first)."""

    name: str
    build: Callable[[], Any]
    panels: int = 1
