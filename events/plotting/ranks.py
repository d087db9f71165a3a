"""The per-rank view: which rank holds the others back? From the ``rank_<field>/r<i>`` series
the training reducer logs with several ranks (engine/rank_stats.py): step time, data time and
memory of every rank over iterations, the slowest rank highlighted, and the rank that was the
slowest in most logged periods for summary.md.

A rank's slowness at a logged step is its data time plus its step time (the time it needed to
bring the step to the reduction): a rank whose loader is slow has both large, a rank that
computes slowly has the larger step time.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from events.rank_keys import parse_per_rank_key
from events.readers.table import LogTable, Series

from .drawing import axis_legend, finish, grid
from .options import PlotOptions

__all__ = ["RankView", "rank_view", "ranks_figure", "rank_headline", "rank_panels", "rank_styles", "has_ranks", "PANELS"]

# (field logged, panel title), in the figure's order.
PANELS = (("step_time", "step time per rank (s)"), ("data_time", "data time per rank (s)"), ("max_mem", "peak memory per rank (MB)"))
SLOW_COLOR = "#D55E00"
OTHER_COLORS = ("#0072B2", "#56B4E9", "#009E73", "#999999", "#CC79A7", "#E69F00")


@dataclass
class RankView:
    """A table's per-rank series and its straggler.

    ``series[field][rank]`` are the logged curves; ``slowest`` the rank that was the slowest at
    the largest share of the logged steps, ``share`` that share (0..1), ``excess`` how much
    longer (seconds, median over the steps) its data + step time was than the median rank's.
    """

    series: Dict[str, Dict[int, Series]]
    slowest: Optional[int]
    share: float
    excess: float


def rank_view(table: LogTable) -> Optional[RankView]:
    """The per-rank view of ``table``; None when it logged no per-rank series (one rank)."""
    series: Dict[str, Dict[int, Series]] = {}
    for name, values in table.train.items():
        parsed = parse_per_rank_key(name)
        if parsed is not None:
            series.setdefault(parsed[0], {})[parsed[1]] = values
    if not series:
        return None
    slowest, share, excess = _straggler(series)
    return RankView(series, slowest, share, excess)


def _straggler(series: Dict[str, Dict[int, Series]]) -> Tuple[Optional[int], float, float]:
    """(rank slowest most often, its share of the steps, its median excess over the median rank)."""
    fields = [series[f] for f in ("data_time", "step_time") if f in series]
    if not fields:
        return None, 0.0, 0.0
    ranks = sorted(fields[0])
    steps = fields[0][ranks[0]].steps
    score = np.zeros((len(ranks), len(steps)))
    for by_rank in fields:
        for row, rank in enumerate(ranks):
            curve = by_rank.get(rank)
            if curve is not None:  # a rank logged at other steps is ignored where it has no value
                score[row] += np.interp(steps, curve.steps, curve.values) if len(curve) else 0.0
    finite = np.isfinite(score).all(axis=0)
    if not finite.any():
        return None, 0.0, 0.0
    score = score[:, finite]
    winners = np.bincount(score.argmax(axis=0), minlength=len(ranks))
    best = int(winners.argmax())
    excess = float(np.median(score[best] - np.median(score, axis=0)))
    return ranks[best], float(winners[best] / score.shape[1]), excess


def rank_headline(table: LogTable) -> Optional[str]:
    """summary.md's line naming the rank that was the slowest in most logged periods (None with
    no per-rank series, or when no rank was the slowest in more than half of them)."""
    view = rank_view(table)
    if view is None or view.slowest is None:
        return None
    ranks = len(next(iter(view.series.values())))
    if view.share <= 0.5:
        return f"no straggler among {ranks} ranks: no rank was the slowest in most logged periods"
    return (f"straggler: rank {view.slowest} of {ranks} was the slowest in {100 * view.share:.0f}% of the logged periods "
            f"(data + step time {view.excess:.3g} s above the median rank's)")


def rank_styles(ranks: Sequence[int], slowest: Optional[int]) -> Dict[int, Tuple[str, str, float]]:
    """``{rank: (colour, label, line width)}``: the slowest rank thick and orange, the others thin."""
    styles, others = {}, 0
    for rank in ranks:
        if rank == slowest:
            styles[rank] = (SLOW_COLOR, f"rank {rank} (slowest)", 1.8)
        else:
            styles[rank] = (OTHER_COLORS[others % len(OTHER_COLORS)], f"rank {rank}", 0.9)
            others += 1
    return styles


def ranks_figure(tables: Sequence[LogTable], options: PlotOptions) -> Any:
    """Step time, data time and memory of every rank of the first table with per-rank series,
    over iterations, the slowest rank highlighted."""
    table = next(t for t in tables if rank_view(t) is not None)
    panels = rank_panels(table)
    figure, axes = grid(len(panels), 1, panel_width=6.5, panel_height=1.6)
    flat = list(axes.flat)
    for ax, (_, title, by_rank, slowest) in zip(flat, panels):
        for rank, (color, label, width) in rank_styles(sorted(by_rank), slowest).items():
            curve = by_rank[rank]
            ax.plot(table.x_of(curve, options.x), curve.values, color=color, linewidth=width, label=label,
                    zorder=3 if rank == slowest else 2)
        ax.set_title(title)
        axis_legend(ax)
    return finish(figure, flat[-1:], [table], options, "ranks")


def has_ranks(tables: Sequence[LogTable]) -> bool:
    return any(rank_view(t) is not None for t in tables)


def rank_panels(table: LogTable) -> List[Tuple[str, str, Dict[int, Series], Optional[int]]]:
    """``[(field, title, {rank: series}, slowest rank)]`` of the figure's panels (for the HTML report)."""
    view = rank_view(table)
    if view is None:
        return []
    return [(field, title, view.series[field], view.slowest) for field, title in PANELS if field in view.series]
