"""``report.html``: every figure of the replot as interactive plotly panels, the summary table and
the run's config, in one file that opens from disk with no network (plotly.js is embedded).

    from events.readers import read_log
    from events.plotting import PlotOptions, write_html_report
    write_html_report([read_log("outputs/demo/metrics.json")], "report.html", PlotOptions())

Long curves are binned like the PNGs: each bin of a series keeps its min and max (a band, so
spikes stay visible) and its mean; the line is the smoothed curve (computed on every point)
averaged per bin. The page re-smooths the bin means when another smoothing is picked, as
TensorBoard smooths its downsampled points. Arrays travel as base64 float32 and are decoded
once in the page; traces that share an x array share it in memory.

plotly is an optional extra (``pip install 'detr-telemetry[report]'``): only its JavaScript
bundle is used, the figures are plain plotly.js JSON built here.
"""
from __future__ import annotations

import base64
import datetime
import hashlib
import html
import json
import math
import os
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from events.readers.table import LogTable, Series

from .options import PlotOptions
from .presentation import step_points
from .report_page import PAGE_TEMPLATE
from .report_plan import Panel, Section, Trace, plan_report
from .smoothing import envelope, smooth, thin
from .style import PlottingUnavailable
from .summary import TABLE_COLUMNS, RunSummary, _headline, convergence_note, summarize, table_cells

__all__ = ["write_html_report", "render_html_report", "find_config"]

_PANEL_HEIGHT = 250  # pixels of one row of panels
_TOP, _BOTTOM, _ROW_GAP = 50, 45, 70
_COLUMN_GAP = 0.07  # of the figure's width
_LEGEND_ROOM = 0.22  # of a column, for a panel's own legend
_MAX_MARKERS = 60
_CONFIG_NAMES = ("config.yaml", "config.yml", "config.json", "config.py")


def _plotly_js() -> str:
    try:
        from plotly.offline import get_plotlyjs
    except ImportError as error:
        raise PlottingUnavailable("the HTML report needs plotly: pip install 'detr-telemetry[report]'") from error
    return get_plotlyjs()


class _Arrays:
    """The page's numeric arrays: each stored once as base64 float32, referred to by index."""

    def __init__(self) -> None:
        self.encoded: List[str] = []
        self._by_content: Dict[bytes, int] = {}

    def ref(self, values: np.ndarray) -> Dict[str, int]:
        """``{"ref": index}`` of ``values`` (``[n]``); equal arrays (the x of every key logged at the
        same steps) are stored once."""
        data = np.ascontiguousarray(values, dtype="<f4").tobytes()
        key = hashlib.blake2b(data, digest_size=16).digest()
        if key not in self._by_content:
            self._by_content[key] = len(self.encoded)
            self.encoded.append(base64.b64encode(data).decode("ascii"))
        return {"ref": self._by_content[key]}


def _bin_means(x: np.ndarray, y: np.ndarray, max_points: int) -> np.ndarray:
    """``[bins]`` mean of the finite ``y`` in each bin of ``envelope`` (NaN for an empty bin)."""
    size = max(1, math.ceil(len(y) / max(1, max_points)))
    if size == 1:
        return y
    bins = math.ceil(len(y) / size)
    padded = np.full(bins * size, np.nan)
    padded[: len(y)] = np.where(np.isfinite(y), y, np.nan)
    blocks = padded.reshape(bins, size)
    counts = np.isfinite(blocks).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.nansum(blocks, axis=1) / np.where(counts, counts, np.nan)


def _curve_traces(trace: Trace, options: PlotOptions, arrays: _Arrays, axes: Dict[str, str]) -> List[Dict[str, Any]]:
    """A training curve: min/max band (when asked and binned) under the smoothed line, whose
    unsmoothed bin means go along so the page can smooth it another way."""
    x = trace.table.x_of(trace.series, options.x)
    y = trace.series.values
    x_mid, low, high = envelope(x, y, options.max_points)
    means = _bin_means(x, y, options.max_points)
    shown = _bin_means(x, smooth(y, options.smooth), options.max_points)
    x_ref = arrays.ref(x_mid)
    out = []
    if trace.band and len(y) > 1:
        common = dict(axes, x=x_ref, mode="lines", line={"width": 0, "color": trace.color}, showlegend=False,
                      legendgroup=trace.group or trace.label, type="scatter")
        for edge, values in (("min", low), ("max", high)):
            # Binned, the band's edges tell each bin's extremes; unbinned they are the points.
            hover = ({"hovertemplate": f"{_esc(trace.label)} bin {edge} %{{y:.5g}}<extra></extra>"} if len(x_mid) < len(x)
                     else {"hoverinfo": "skip"})
            fill = {"fill": "tonexty", "fillcolor": _translucent(trace.color, 0.2)} if edge == "max" else {}
            out.append(dict(common, y=arrays.ref(values), **hover, **fill))
    out.append(dict(axes, type="scatter", mode="lines", x=x_ref, y=arrays.ref(shown), name=trace.label,
                    line={"color": trace.color, "width": trace.width, "dash": trace.dash},
                    legendgroup=trace.group or trace.label, meta={"raw": arrays.ref(means)["ref"], "auto": arrays.ref(shown)["ref"]},
                    hovertemplate=f"{_esc(trace.label)}<br>%{{x}}: %{{y:.5g}}<extra></extra>"))
    return out


def _plain_traces(trace: Trace, options: PlotOptions, arrays: _Arrays, axes: Dict[str, str]) -> List[Dict[str, Any]]:
    """Validation points (markers when few) or a curve drawn as logged (the learning rate as
    steps, per-rank timings)."""
    x = trace.table.x_of(trace.series, options.x)
    y = trace.series.values
    if trace.kind == "steps":
        x, y = thin(*step_points(x, y), options.max_points)
    elif trace.kind == "raw":
        x, y = thin(x, y, options.max_points)
    markers = trace.kind == "points" and len(y) <= _MAX_MARKERS
    return [dict(axes, type="scatter", mode="lines+markers" if markers else "lines", x=arrays.ref(x), y=arrays.ref(y),
                 name=trace.label, legendgroup=trace.group or trace.label, marker={"size": 6, "color": trace.color},
                 line={"color": trace.color, "width": trace.width, "dash": trace.dash, "shape": "vh" if trace.kind == "steps" else "linear"},
                 hovertemplate=f"{_esc(trace.label)}<br>%{{x}}: %{{y:.5g}}<extra></extra>")]


def _translucent(color: str, alpha: float) -> str:
    """``rgba(...)`` of a ``#rrggbb`` or ``rgb(r, g, b)`` colour with opacity ``alpha``."""
    if color.startswith("#"):
        red, green, blue = (int(color[i: i + 2], 16) for i in (1, 3, 5))
    else:
        red, green, blue = (float(part) for part in color[color.index("(") + 1: color.index(")")].split(",")[:3])
    return f"rgba({red:g}, {green:g}, {blue:g}, {alpha:g})"


def _esc(text: str) -> str:
    """Plotly hover templates read ``%{...}`` and HTML tags; logged names are shown literally."""
    return html.escape(text).replace("{", "&#123;")


def _section_figure(section: Section, tables: Sequence[LogTable], options: PlotOptions, arrays: _Arrays) -> Dict[str, Any]:
    """plotly.js ``{data, layout}`` of one section: its panels in rows, x axes linked."""
    count = len(section.panels)
    cols = max(1, min(section.columns, count))
    rows = math.ceil(count / cols)
    height = _TOP + rows * _PANEL_HEIGHT + (rows - 1) * _ROW_GAP + _BOTTOM
    width = (1.0 - (cols - 1) * _COLUMN_GAP) / cols
    layout: Dict[str, Any] = {
        "height": height, "margin": {"t": _TOP, "b": _BOTTOM, "l": 60, "r": 20}, "hovermode": "closest",
        "legend": {"x": 1.01, "y": 1, "xanchor": "left", "font": {"size": 11}}, "annotations": [], "shapes": [],
        "plot_bgcolor": "white", "paper_bgcolor": "white", "font": {"size": 11},
        "meta": {"lossAxes": []},
    }
    data: List[Dict[str, Any]] = []
    seen_labels = set()
    x_title = tables[0].x_label(options.x)
    for index, panel in enumerate(section.panels):
        row, col = divmod(index, cols)
        suffix = "" if index == 0 else str(index + 1)
        left = col * (width + _COLUMN_GAP)
        top_px = _TOP + row * (_PANEL_HEIGHT + _ROW_GAP)
        y_top = 1 - (top_px - _TOP) / (height - _TOP - _BOTTOM)
        y_bottom = 1 - (top_px - _TOP + _PANEL_HEIGHT) / (height - _TOP - _BOTTOM)
        # A panel's own legend goes right of it, in the last ~fifth of its column.
        plot_width = width * (1 - _LEGEND_ROOM) if section.panel_legends else width
        x_axis: Dict[str, Any] = {"domain": [left, left + plot_width], "anchor": f"y{suffix}", "showline": True, "linecolor": "#444",
                                  "gridcolor": "#eee", "zeroline": False, "exponentformat": "SI"}
        if index:
            x_axis["matches"] = "x"
        if options.x == "iter":
            x_axis["hoverformat"] = ",.0f"
        if index + cols >= count:  # the lowest panel of its column
            x_axis["title"] = {"text": x_title, "standoff": 4}
        if section.x_span:
            low, high = section.x_span
            pad = 0.02 * (high - low or 1.0)
            x_axis["range"] = [low - pad, high + pad]
        log = panel.log_y or (panel.loss and options.log_scale)
        y_axis = {"domain": [max(0.0, y_bottom), min(1.0, y_top)], "anchor": f"x{suffix}", "showline": True, "linecolor": "#444",
                  "gridcolor": "#eee", "zeroline": False, "type": "log" if log else "linear", "exponentformat": "power"}
        layout[f"xaxis{suffix}"], layout[f"yaxis{suffix}"] = x_axis, y_axis
        if panel.loss:
            layout["meta"]["lossAxes"].append(f"yaxis{suffix}")
        if panel.zero_line:
            layout["shapes"].append({"type": "line", "xref": f"x{suffix} domain", "yref": f"y{suffix}", "x0": 0, "x1": 1,
                                     "y0": 0, "y1": 0, "line": {"color": "#666", "width": 1}})
        layout["annotations"].append({"text": f"<b>{html.escape(panel.title)}</b>", "xref": "paper", "yref": "paper",
                                      "x": left + plot_width / 2, "y": min(1.0, y_top), "yanchor": "bottom", "xanchor": "center",
                                      "showarrow": False, "yshift": 4, "font": {"size": 12}})
        axes = {"xaxis": f"x{suffix}", "yaxis": f"y{suffix}"}
        if section.panel_legends:
            axes["legend"] = f"legend{suffix}"
            layout[f"legend{suffix}"] = {"x": left + plot_width + 0.01, "y": min(1.0, y_top), "xanchor": "left", "yanchor": "top",
                                         "font": {"size": 10}}
            seen_labels = set()
        for trace in panel.traces:
            build = _curve_traces if trace.kind == "curve" else _plain_traces
            for spec in build(trace, options, arrays, axes):
                if "name" in spec:
                    label = spec["legendgroup"]
                    spec["showlegend"] = label not in seen_labels
                    seen_labels.add(label)
                data.append(spec)
    return {"data": data, "layout": layout}


def _summary_html(summaries: Sequence[RunSummary]) -> str:
    """The numbers of summary.md: each run's headline lines and its table."""
    parts = []
    for run in summaries:
        rows = "".join("<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in table_cells(key)) + "</tr>" for key in run.keys)
        head = "".join(f"<th>{column}</th>" for column in TABLE_COLUMNS)
        lines = "".join(f"<li>{html.escape(line)}</li>" for line in _headline(run, max_best=len(run.keys)))
        parts.append(f"<h3>{html.escape(run.label)}</h3><p class='source'>Source: <code>{html.escape(run.source)}</code></p>"
                     f"<ul>{lines}</ul><table class='summary'><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        note = convergence_note(run.keys)  # as under summary.md's table
        if note:
            parts.append(f"<p class='note'>{html.escape(note)}</p>")
    return "\n".join(parts)


def find_config(log_path: str) -> Optional[str]:
    """The run's config file beside its log (config.yaml written by the trainer), if any."""
    folder = log_path if os.path.isdir(log_path) else os.path.dirname(os.path.abspath(log_path))
    for name in _CONFIG_NAMES:
        candidate = os.path.join(folder, name)
        if os.path.isfile(candidate):
            return candidate
    return None


def _config_html(tables: Sequence[LogTable]) -> str:
    parts = []
    for table in tables:
        path = find_config(table.source)
        if path is None:
            parts.append(f"<p>{html.escape(table.label or table.source)}: no config file beside the log.</p>")
            continue
        with open(path, encoding="utf-8", errors="replace") as handle:
            text = handle.read()
        parts.append(f"<details open><summary><code>{html.escape(path)}</code></summary><pre>{html.escape(text)}</pre></details>")
    return "\n".join(parts)


def render_html_report(tables: Sequence[LogTable], options: PlotOptions,
                       summaries: Optional[Sequence[RunSummary]] = None) -> str:
    """The report page of ``tables`` as one HTML string (module docstring)."""
    plotly_js = _plotly_js()
    sections = plan_report(tables, options)
    arrays = _Arrays()
    figures = [{"id": f"fig-{section.name}", "figure": _section_figure(section, tables, options, arrays)} for section in sections]
    if summaries is None:
        summaries = [summarize(table, options.smooth) for table in tables]
    label = tables[0].label or os.path.basename(tables[0].source) if len(tables) == 1 else f"{len(tables)} runs"
    title = f"{options.title} — {label}" if options.title else label
    payload = {"arrays": arrays.encoded, "figures": figures, "smoothing": options.smooth.describe()}
    nav = " · ".join(f"<a href='#sec-{s.name}'>{html.escape(s.name)}</a>" for s in sections)
    section_html = "\n".join(
        f"<section id='sec-{s.name}'><h2>{html.escape(s.title)}</h2><div class='figure' id='fig-{s.name}'></div>"
        + "".join(f"<p class='note'>{html.escape(note)}</p>" for note in s.notes) + "</section>" for s in sections)
    sources = "".join(f"<li><code>{html.escape(t.source)}</code> ({html.escape(t.format)})</li>" for t in tables)
    replacements = {
        "@@TITLE@@": html.escape(title),
        "@@SOURCES@@": sources,
        "@@GENERATED@@": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "@@NAV@@": nav,
        "@@SECTIONS@@": section_html,
        "@@SUMMARY@@": _summary_html(summaries),
        "@@CONFIG@@": _config_html(tables),
        "@@SMOOTHING@@": html.escape(options.smooth.describe()),
        "@@LOGCHECKED@@": " checked" if options.log_scale else "",
        # "</" would end the <script> element early; in JSON strings "<\/" reads back the same.
        "@@DATA@@": json.dumps(payload, separators=(",", ":"), allow_nan=False).replace("</", "<\\/"),
    }
    page = PAGE_TEMPLATE
    for key, value in replacements.items():
        page = page.replace(key, value)
    return page.replace("@@PLOTLY@@", plotly_js)


def write_html_report(tables: Sequence[LogTable], out_path: str, options: PlotOptions = PlotOptions(),
                      summaries: Optional[Sequence[RunSummary]] = None) -> str:
    """Write the report of ``tables`` to ``out_path`` (written whole, then renamed into place, so
    a reader never sees half a page); returns the path.

    Raises:
        PlottingUnavailable: plotly is not installed.
        OSError: the file cannot be written.
    """
    page = render_html_report(tables, options, summaries)
    folder = os.path.dirname(os.path.abspath(out_path))
    os.makedirs(folder, exist_ok=True)
    temporary = out_path + ".tmp"
    with open(temporary, "w", encoding="utf-8") as handle:
        handle.write(page)
    os.replace(temporary, out_path)
    return out_path
