"""Drawing helpers shared by the figures: panel grids, curves (raw band + smoothed line),
validation points, legends outside the panels, titles, colours."""
from __future__ import annotations

import math
import weakref
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from events.readers.table import LogTable, Series

from .options import PlotOptions
from .presentation import step_points
from .smoothing import envelope, smooth, thin
from .style import RUN_COLORS, matplotlib_figure

_PANEL_SIZE = (3.05, 1.8)  # inches of one panel's axes; at 300 DPI ~900 x 540 pixels
_MAX_MARKERS = 60
# Fixed margins in inches around and between panels, sized for the rcParams of style.base_rc
# (7 pt tick labels of at most ~6 characters, 9 pt panel titles, a 10 pt figure title). A fixed
# layout is computed, not searched for: matplotlib's constrained layout measures every tick
# label of every panel several times and cost more than half of the drawing time.
_LEFT, _RIGHT, _TOP, _BOTTOM = 0.55, 0.15, 0.6, 0.45
_COLUMN_GAP, _ROW_GAP = 0.6, 0.6
_LEGEND_GAP = 0.1
_TITLE_LINE = 0.2  # inches of one more line of the 10 pt figure title
_NOTE_LINE, _NOTE_CHAR = 0.125, 0.056  # inches per line and (about) per character of a 7 pt note


@dataclass
class _Layout:
    """A figure's panel grid in inches; the right margin grows to hold legends (``fit_legends``)."""

    rows: int
    cols: int
    panel: Tuple[float, float]
    right: float = _RIGHT
    column_gap: float = _COLUMN_GAP
    top: float = _TOP
    bottom: float = _BOTTOM

    def size(self) -> Tuple[float, float]:
        width = self.panels_right() + self.right
        height = self.top + self.rows * self.panel[1] + (self.rows - 1) * _ROW_GAP + self.bottom
        return width, height

    def apply(self, figure: Any) -> None:
        width, height = self.size()
        figure.set_size_inches(width, height)
        figure.subplots_adjust(left=_LEFT / width, right=1 - self.right / width, bottom=self.bottom / height,
                               top=1 - self.top / height, wspace=self.column_gap / self.panel[0], hspace=_ROW_GAP / self.panel[1])

    def panels_right(self) -> float:
        """Inches from the figure's left edge to the right edge of the last column."""
        return _LEFT + self.cols * self.panel[0] + (self.cols - 1) * self.column_gap


_LAYOUTS: "weakref.WeakKeyDictionary[Any, _Layout]" = weakref.WeakKeyDictionary()


def grid(rows: int, cols: int, panel_width: Optional[float] = None, panel_height: Optional[float] = None) -> Tuple[Any, np.ndarray]:
    """A figure of ``rows x cols`` panels (``panel_width x panel_height`` inches each, default
    ``_PANEL_SIZE``) in a fixed layout (see ``_LEFT``...); legends added later go to the right of
    the panels, where ``finish`` makes room for them."""
    Figure = matplotlib_figure()
    layout = _Layout(rows, cols, (panel_width or _PANEL_SIZE[0], panel_height or _PANEL_SIZE[1]))
    figure = Figure(figsize=layout.size())
    _LAYOUTS[figure] = layout
    layout.apply(figure)
    axes = np.atleast_1d(figure.subplots(rows, cols, squeeze=False)).reshape(rows, cols)
    from matplotlib.ticker import MaxNLocator

    for ax in axes.flat:
        # At most ~6 ticks per small panel: easier to read than 8-9, and ~20% less to draw.
        ax.xaxis.set_major_locator(MaxNLocator(nbins=6, steps=[1, 2, 2.5, 5, 10]))
        ax.yaxis.set_major_locator(MaxNLocator(nbins=6, steps=[1, 2, 2.5, 5, 10]))
    return figure, axes


def panel_grid(count: int) -> Tuple[Any, List[Any], List[Any]]:
    """``count`` panels in rows of 3: the figure, the panels, and the lowest panel of each column
    (which carries the x label)."""
    cols = min(3, count)
    rows = math.ceil(count / cols)
    figure, axes = grid(rows, cols)
    flat = list(axes.flat)
    for unused in flat[count:]:
        unused.set_visible(False)
    bottoms = []
    for column in range(cols):
        lowest = max(row for row in range(rows) if row * cols + column < count)
        bottoms.append(axes[lowest, column])
    return figure, flat[:count], bottoms


def curve(ax: Any, table: LogTable, series: Series, options: PlotOptions, *, color: Any, label: Optional[str],
           band: bool = False, width: float = 1.1, style: str = "-", smooth_it: bool = True, steps: bool = False) -> None:
    """Draw ``series``: a light min/max band of the raw points (if ``band``) under the smoothed
    line; with ``steps`` (a learning rate) its raw values as steps (``presentation.step_points``)."""
    if len(series) == 0:
        return
    x = table.x_of(series, options.x)
    y = series.values
    if steps:
        xt, yt = thin(*step_points(x, y), options.max_points)
        ax.plot(xt, yt, style, color=color, label=short(label), linewidth=width, drawstyle="steps-pre")
        return
    if band and len(y) > options.max_points:
        x_mid, low, high = envelope(x, y, options.max_points)
        ax.fill_between(x_mid, low, high, color=color, alpha=0.18, linewidth=0)
    elif band and len(y) > 1:
        ax.plot(x, y, color=color, alpha=0.3, linewidth=0.6)
    shown = smooth(y, options.smooth) if smooth_it else y
    xt, yt = thin(x, shown, options.max_points)
    ax.plot(xt, yt, style, color=color, label=short(label), linewidth=width)


def short(label: Optional[str], limit: int = 36) -> Optional[str]:
    """A legend entry cut in the middle when long, so legends do not squeeze the panels."""
    if label is None or len(label) <= limit:
        return label
    keep = (limit - 1) // 2
    return f"{label[:keep]}…{label[-keep:]}"


def points(ax: Any, table: LogTable, series: Series, options: PlotOptions, *, color: Any, label: Optional[str], style: str = "-") -> None:
    """Draw a short series (validation) as markers joined by lines, unsmoothed."""
    x = table.x_of(series, options.x)
    marker = "o" if len(series) <= _MAX_MARKERS else None  # hundreds of markers hide the line
    ax.plot(x, series.values, style, marker=marker, markersize=3, color=color, label=short(label), linewidth=1.0)


def readable_limits(ax: Any, x_span: Optional[Tuple[float, float]] = None) -> None:
    """Limits for a panel of a few points (evaluations): x over at least ``x_span`` (the whole
    training, so one evaluation at the end shows as such), and y over at least 2% of the values'
    magnitude, so that near-equal values get plain tick labels, not ``1e-5+6.51157e1``."""
    if x_span is not None:
        ax.update_datalim([(x_span[0], 0.0), (x_span[1], 0.0)], updatey=False)
        ax.autoscale_view(scaley=False)
    low, high = ax.get_ylim()
    need = 0.02 * max(abs(low), abs(high))
    if high - low < need:
        middle = (low + high) / 2
        ax.set_ylim(middle - need / 2, middle + need / 2)


def loss_axis(ax: Any, options: PlotOptions) -> None:
    if options.log_scale:
        ax.set_yscale("log")


def finish(figure: Any, bottoms: Sequence[Any], tables: Sequence[LogTable], options: PlotOptions, what: str,
           notes: Sequence[Optional[str]] = ()) -> Any:
    """Title the figure, put the x label under ``bottoms`` (the lowest panel of each column),
    widen the figure's right margin to hold its legends, and write ``notes`` (sentences; None
    ones are left out) under the panels."""
    label = short(tables[0].label or tables[0].source, 40) if len(tables) == 1 else f"{len(tables)} runs"
    head = f"{options.title} — " if options.title else ""
    for ax in bottoms:
        ax.set_xlabel(tables[0].x_label(options.x))
    for ax in figure.axes:
        _thousands(ax)
    _fit_legends(figure)
    _add_notes(figure, [note for note in notes if note])
    _fit_title(figure, f"{head}{what}", label)
    return figure


def _add_notes(figure: Any, notes: Sequence[str]) -> None:
    """``notes`` in small grey type below the x labels, wrapped to the figure's width (estimated
    from the font size: measuring text would draw it), the bottom margin grown to hold them."""
    if not notes:
        return
    import textwrap

    layout = _LAYOUTS[figure]
    chars = max(40, int((layout.size()[0] - _LEFT / 2 - _RIGHT) / _NOTE_CHAR))
    lines = [line for note in notes for line in textwrap.wrap(note, chars)]
    layout.bottom += len(lines) * _NOTE_LINE + 0.1
    layout.apply(figure)
    figure.text(_LEFT / 2, 0.1, "\n".join(lines), fontsize=7, color="0.3", va="bottom", ha="left",
                linespacing=1.25, transform=figure.dpi_scale_trans)


def _fit_title(figure: Any, what: str, label: str) -> None:
    """``what — label`` above the panels; on two lines (the top margin grown by one) when one
    line would be wider than the figure, e.g. with a ``--title`` on a narrow figure."""
    layout = _LAYOUTS[figure]
    title = figure.suptitle(f"{what} — {label}", fontsize=10, va="top")
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    if title.get_window_extent(FigureCanvasAgg(figure).get_renderer()).width / figure.dpi > figure.get_size_inches()[0] - 0.1:
        title.set_text(f"{what}\n{label}")
        layout.top += _TITLE_LINE
        layout.apply(figure)
    title.set_y(1 - 0.1 / figure.get_size_inches()[1])


def _fit_legends(figure: Any) -> None:
    """Widen the right margin to the widest legend there, and the gaps between columns to the
    widest panel legend beside a panel (each legend measured once, at the drawing DPI)."""
    figure_legends = list(figure.legends)
    panel_legends = [(ax, ax.get_legend()) for ax in figure.axes if ax.get_legend() is not None]
    if not figure_legends and not panel_legends:
        return
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    layout = _LAYOUTS[figure]
    renderer = FigureCanvasAgg(figure).get_renderer()
    width = figure.get_size_inches()[0]
    right_of_panels = [legend.get_window_extent(renderer).x1 / figure.dpi - layout.panels_right() for legend in figure_legends]
    beside_panel = [0.0]
    for ax, legend in panel_legends:
        overhang = legend.get_window_extent(renderer).x1 / figure.dpi - ax.get_position().x1 * width
        last_column = ax.get_subplotspec().colspan.stop == layout.cols
        (right_of_panels if last_column else beside_panel).append(overhang)
    # The next column's tick labels need their own room (_LEFT) after a legend between columns.
    layout.column_gap = max(_COLUMN_GAP, max(beside_panel) + _LEGEND_GAP + _LEFT)
    layout.right = max([_RIGHT] + [overhang + _LEGEND_GAP for overhang in right_of_panels])
    layout.apply(figure)
    for legend in figure_legends:  # anchored in inches at the old right edge of the panels
        legend.set_bbox_to_anchor((layout.panels_right() + _LEGEND_GAP, layout.size()[1] - layout.top), transform=figure.dpi_scale_trans)


def _thousands(ax: Any) -> None:
    """Iteration ticks as 20k, 40k... instead of a 1e5 offset."""
    from matplotlib.ticker import FuncFormatter

    if max(abs(v) for v in ax.get_xlim()) >= 10_000:
        ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value / 1000:g}k" if value else "0"))


def outside_legend(figure: Any, axes: Sequence[Any]) -> None:
    """One legend for the figure, right of the panels at the top, de-duplicated by label."""
    handles: Dict[str, Any] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    if handles:
        layout = _LAYOUTS[figure]
        # Anchored in inches from the bottom left: it stays put when the figure is widened.
        anchor = (layout.panels_right() + _LEGEND_GAP, layout.size()[1] - layout.top)
        figure.legend(list(handles.values()), list(handles), loc="upper left", bbox_to_anchor=anchor,
                      bbox_transform=figure.dpi_scale_trans, borderaxespad=0.0)


def axis_legend(ax: Any) -> None:
    """The panel's legend right of it (the figure's right margin is reserved for it)."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)


def layer_colors(count: int) -> List[Any]:
    """``count`` aux-layer colours from light (early layers) to dark (late layers)."""
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    return [cmap(0.85 - 0.75 * i / max(1, count - 1)) for i in range(count)]


def run_color(index: int) -> str:
    return RUN_COLORS[index % len(RUN_COLORS)]


def run_label(table: LogTable, index: int) -> str:
    return table.label or f"run {index + 1}"
