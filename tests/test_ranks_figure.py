"""The ranks figure and the straggler line, from per-rank series as engine/rank_stats.py logs them."""
import numpy as np

from events.plotting import PlotOptions, plan_figures, summarize
from events.plotting.families import group_keys
from events.plotting.ranks import rank_headline, rank_view
from events.readers.table import LogTable, Series, SkippedLines


def table_with_ranks(slow_share: float = 1.0, world: int = 3, steps: int = 20) -> LogTable:
    """``world`` ranks logged every 20 iterations; rank 1 waits 50 ms for data in ``slow_share``
    of the periods, rank 2 in the others."""
    iters = np.arange(19, 20 * steps, 20, dtype=np.float64)
    slow_periods = np.arange(steps) < slow_share * steps
    train = {"total_loss": Series(iters, np.linspace(3, 1, steps))}
    for rank in range(world):
        data = np.full(steps, 0.002)
        data[slow_periods if rank == 1 else ~slow_periods if rank == 2 else np.zeros(steps, bool)] = 0.052
        train[f"rank_data_time/r{rank}"] = Series(iters, data)
        train[f"rank_step_time/r{rank}"] = Series(iters, np.full(steps, 0.2) + 0.001 * rank)
        train[f"rank_max_mem/r{rank}"] = Series(iters, np.full(steps, 400.0 + rank))
    for field in ("data_time", "step_time", "max_mem"):
        train[f"rank_{field}/max"] = train[f"rank_{field}/r1"]
    train["slowest_rank"] = Series(iters, np.ones(steps))
    return LogTable("run/metrics.json", "detectron2-metrics", "iteration", train, {}, {}, 0, [], None, SkippedLines(), "run")


def test_rank_keys_get_the_ranks_figure_and_no_other():
    table = table_with_ranks()
    names = [spec.name for spec in plan_figures([table], PlotOptions())]
    assert names[-1] == "ranks" and "metrics" not in names
    groups = group_keys(list(table.train))
    assert not groups.other_bases and not groups.loss_families


def test_summary_names_the_rank_slowest_in_most_periods():
    view = rank_view(table_with_ranks(0.8))
    assert (view.slowest, view.share) == (1, 0.8)
    assert view.excess > 0.04
    line = rank_headline(table_with_ranks(0.8))
    assert line.startswith("straggler: rank 1 of 3 was the slowest in 80% of the logged periods")
    assert line in summarize(table_with_ranks(0.8)).straggler
    assert rank_headline(table_with_ranks(0.5)).startswith("no straggler among 3 ranks")


def test_one_rank_has_no_ranks_figure():
    table = table_with_ranks()
    table.train = {"total_loss": table.train["total_loss"]}
    assert rank_view(table) is None and rank_headline(table) is None
    assert "ranks" not in [spec.name for spec in plan_figures([table], PlotOptions())]


def test_ranks_figure_highlights_the_slowest_rank(tmp_path):
    from events.plotting.ranks import ranks_figure

    figure = ranks_figure([table_with_ranks()], PlotOptions())
    titles = [ax.get_title() for ax in figure.axes]
    assert titles == ["step time per rank (s)", "data time per rank (s)", "peak memory per rank (MB)"]
    for ax in figure.axes:
        widths = {line.get_label(): line.get_linewidth() for line in ax.get_lines()}
        assert widths["rank 1 (slowest)"] > widths["rank 0"] == widths["rank 2"]
