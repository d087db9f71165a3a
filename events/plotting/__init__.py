"""Figures and numbers from training logs (matplotlib imported lazily, rendered headless by Agg).

The trainer's end-of-training loss graph::

    from events.plotting import plot_train_val_loss
    plot_train_val_loss("outputs/demo/metrics.json", "outputs/demo/loss.png")   # or a LogTable

Everything the command-line tool draws (tools/vis_train_log.py)::

    from events.readers import read_log
    from events.plotting import PlotOptions, plan_figures, render_figures, summarize
    table = read_log("outputs/demo/log.txt")
    render_figures(plan_figures([table], PlotOptions()), [table], "training_plots", PlotOptions())
    write_html_report([table], "training_plots/report.html", PlotOptions())   # needs plotly
"""
from __future__ import annotations

import os
from typing import Union

from events.readers import LogTable, read_log

from .figures import filter_keys, plan_figures, train_val_figure
from .html_report import render_html_report, write_html_report
from .options import FigureSpec, PlotOptions
from .render import FIGURE_FORMATS, render_figures
from .smoothing import SmoothSpec, parse_smooth
from .style import PlottingUnavailable
from .summary import RunSummary, format_summary, summarize, write_summary

__all__ = [
    "plot_train_val_loss",
    "plan_figures",
    "render_figures",
    "filter_keys",
    "summarize",
    "write_summary",
    "format_summary",
    "parse_smooth",
    "PlotOptions",
    "SmoothSpec",
    "FigureSpec",
    "RunSummary",
    "PlottingUnavailable",
    "FIGURE_FORMATS",
    "write_html_report",
    "render_html_report",
]


def plot_train_val_loss(
    table: Union[LogTable, str, "os.PathLike[str]"],
    out_path: Union[str, "os.PathLike[str]"],
    dpi: int = 300,
    *,
    smooth: str = "auto",
    x: str = "iter",
    log_scale: bool = False,
    title: str = "",
) -> str:
    """Save the train-vs-validation loss figure of ``table`` to ``out_path``; returns the path.

    Args:
        table: a ``LogTable`` or the path of a log (metrics.json, log.txt, ...; its last run).
        out_path: file to write; its extension (.png, .svg, .pdf) picks the format.
        dpi: resolution of raster output.
        smooth: ``auto`` | ``none`` | a rolling window (``"20"``) | ``ema:0.9``.
        x: ``iter`` | ``epoch`` | ``time``.
        log_scale: log y axis for the losses.
        title: text put before the figure's title.

    The top panel shows the total train loss (raw min/max band, smoothed line) and the
    validation loss at each evaluation; the bottom one the generalization gap (validation minus
    smoothed train). For a run that trains on synthetic samples too, the gap is that of the
    real-scene losses, which both sides compute alike, and the total is shown without a gap,
    with a note saying how the two differ (``train_val.train_val_pairs``). Without validation
    loss it shows the train loss and says so.

    Raises:
        events.readers.LogReadError: ``table`` is a path that cannot be read.
        PlottingUnavailable: matplotlib is not installed.
    """
    if not isinstance(table, LogTable):
        table = read_log(table)
    out_path = os.fspath(out_path)
    extension = os.path.splitext(out_path)[1].lstrip(".").lower() or "png"
    if extension not in FIGURE_FORMATS:
        raise ValueError(f"{out_path}: unknown figure format {extension!r}; use .png, .svg or .pdf")
    options = PlotOptions(x=x, smooth=parse_smooth(smooth), log_scale=log_scale, title=title, dpi=dpi, fmt=extension)
    folder = os.path.dirname(os.path.abspath(out_path))
    stem = os.path.splitext(os.path.basename(out_path))[0]
    spec = FigureSpec(stem, lambda: train_val_figure([table], options))
    return render_figures([spec], [table], folder, options)[0]
