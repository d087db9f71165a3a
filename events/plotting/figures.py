"""The figures: overview, one per loss family, other scalars, real vs synthetic, validation, and
train vs validation loss. Each takes one table (layer-coloured families) or several (one colour
per run, final layers only) and returns a ``matplotlib.figure.Figure``; ``plan_figures`` decides
which figures a set of tables calls for.
"""
from __future__ import annotations

import fnmatch
import math
from collections import defaultdict
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from events.readers.table import LogTable, Series

from .drawing import (axis_legend, curve, finish, grid, layer_colors, loss_axis, outside_legend, panel_grid, points,
                      readable_limits, run_color, run_label)
from .families import SPLITS, TOTAL_LOSS_NAMES, KeyParts, group_keys, layer_order, parse_keys
from .options import FigureSpec, PlotOptions
from .presentation import (SPLIT_FIGURE_NOTE, constant_note, is_step_series, split_constant,
                           validation_panel_title, with_unit)
from .ranks import has_ranks, ranks_figure
from .smoothing import smooth
from .style import RUN_COLORS
from .train_val import train_val_pairs

__all__ = ["PlotOptions", "FigureSpec", "plan_figures", "train_val_figure", "family_figure", "filter_keys", "generalization_gap",
           "validation_metrics", "numbered_figures",
           # What a figure holds, decided once for both renderers (report_plan builds the HTML
           # report's sections from the same decisions).
           "PANELS_PER_FIGURE", "drop_constant", "main_train_loss", "training_span", "validation_panels"]

PANELS_PER_FIGURE = 9
_SERIES_PER_PANEL = 6


def filter_keys(tables: Sequence[LogTable], patterns: Sequence[str]) -> List[LogTable]:
    """Copies of ``tables`` keeping only the train/val series whose name matches a glob pattern."""
    if not patterns:
        return list(tables)

    def keep(names: Dict[str, Series]) -> Dict[str, Series]:
        return {n: s for n, s in names.items() if any(fnmatch.fnmatchcase(n, p) for p in patterns)}

    out = []
    for table in tables:
        copy = LogTable(**{**table.__dict__, "train": keep(table.train), "val": keep(table.val)})
        out.append(copy)
    return out


def _chunks(items: List[Any], size: int) -> List[List[Any]]:
    return [items[i: i + size] for i in range(0, len(items), size)] or [[]]


def overview_figure(tables: Sequence[LogTable], options: PlotOptions, total: Sequence[str], notes: Sequence[str] = ()) -> Any:
    """Total loss (raw band + smoothed), learning rate (as steps), and time / data_time per
    iteration; ``notes`` (e.g. constant series no other figure shows) go under the panels."""
    rows: List[Tuple[str, List[str]]] = []
    if total:
        rows.append(("total loss", list(total)))
    if any("lr" in t.train for t in tables):
        rows.append(("learning rate", ["lr"]))
    timing = [n for n in ("time", "data_time") if any(n in t.train for t in tables)]
    if timing:
        rows.append(("seconds per iteration", timing))
    figure, axes = grid(len(rows), 1, panel_height=1.6)
    flat = list(axes.flat)
    single = len(tables) == 1
    for ax, (title, names) in zip(flat, rows):
        for index, table in enumerate(tables):
            for position, name in enumerate(names):
                series = table.train.get(name)
                if series is None:
                    continue
                color = RUN_COLORS[position] if single else run_color(index)
                label = name if single else f"{run_label(table, index)}: {name}" if len(names) > 1 else run_label(table, index)
                if name == "lr":
                    curve(ax, table, series, options, color=color, label=label, steps=True)
                else:
                    curve(ax, table, series, options, color=color, label=label, band=single and position == 0,
                           style="-" if position == 0 or single else "--")
        ax.set_title(f"{title} ({options.smooth.describe()})" if title == "total loss" else title)
        if title == "total loss":
            loss_axis(ax, options)
        if title == "learning rate":
            _log_if_wide(ax, tables)
        axis_legend(ax)
    return finish(figure, flat[-1:], tables, options, "overview", notes)


def _log_if_wide(ax: Any, tables: Sequence[LogTable]) -> None:
    """Log y for a learning rate spanning more than ~1.5 decades (warm-up, step decay)."""
    values = np.concatenate([t.train["lr"].values for t in tables if "lr" in t.train])
    positive = values[np.isfinite(values) & (values > 0)]
    if len(positive) and positive.max() / positive.min() > 30:
        ax.set_yscale("log")


def family_figure(tables: Sequence[LogTable], options: PlotOptions, bases: Dict[str, List[KeyParts]], what: str,
                  is_loss: bool, notes: Sequence[Optional[str]] = ()) -> Any:
    """One panel per base name, titled with its unit if any; one table: its aux layers light to
    dark and the final layer in black; several tables: each run's final layer in its colour."""
    figure, axes, bottoms = panel_grid(len(bases))
    single = len(tables) == 1
    layers = sorted({p.layer for parts in bases.values() for p in parts if p.layer is not None})
    colors = dict(zip(layers, layer_colors(len(layers))))
    # Without decoder layers a panel holds one curve: no legend, the first run colour.
    final_color, final_label = ("black", "final layer") if layers else (RUN_COLORS[0], None)
    for ax, (base, parts) in zip(axes, bases.items()):
        ordered = layer_order(parts)
        if single:
            table = tables[0]
            for p in ordered:
                series = table.train.get(p.key)
                if series is None:
                    continue
                if p.layer is None:
                    curve(ax, table, series, options, color=final_color, label=final_label, width=1.4, steps=is_step_series(p.key))
                else:
                    curve(ax, table, series, options, color=colors[p.layer], label=f"layer {p.layer}", width=0.9,
                          steps=is_step_series(p.key))
        else:
            last = ordered[-1]
            for index, table in enumerate(tables):
                series = table.train.get(last.key)
                if series is not None:
                    curve(ax, table, series, options, color=run_color(index), label=run_label(table, index),
                          steps=is_step_series(last.key))
        ax.set_title(with_unit(base, [base]))
        if is_loss:
            loss_axis(ax, options)
    outside_legend(figure, axes)
    return finish(figure, bottoms, tables, options, what, notes)


def split_figure(tables: Sequence[LogTable], options: PlotOptions, splits: Dict[str, Dict[str, str]]) -> Any:
    """Real and synthetic curves of each loss on shared axes, with the loss term itself in grey.

    The grey curve is what the optimizer saw: per-sample weighted (synthetic samples count
    less) and, for classification, over every query including the unmatched (background) ones,
    so it can sit below both split curves, which are plain means over matched samples. The
    figure says so (``SPLIT_FIGURE_NOTE``) whenever it draws the grey curve."""
    figure, axes, bottoms = panel_grid(len(splits))
    single = len(tables) == 1
    styles = {"real": "-", "synthetic": "--"}
    for ax, (base, names) in zip(axes, splits.items()):
        for index, table in enumerate(tables):
            if single and base in table.train:
                curve(ax, table, table.train[base], options, color="0.6", label="loss term (as optimized)", width=0.9)
            for position, split in enumerate(SPLITS):
                series = table.train.get(names[split])
                if series is None:
                    continue
                color = RUN_COLORS[position] if single else run_color(index)
                label = split if single else f"{run_label(table, index)}: {split}"
                curve(ax, table, series, options, color=color, label=label, style=styles[split])
        ax.set_title(base)
        loss_axis(ax, options)
    outside_legend(figure, axes)
    grey = single and any(base in tables[0].train for base in splits)
    return finish(figure, bottoms, tables, options, "real vs synthetic", [SPLIT_FIGURE_NOTE if grey else None])


def _magnitude(tables: Sequence[LogTable], name: str) -> float:
    """log10 of the typical size of validation metric ``name`` (0 when it is all zeros/NaN)."""
    values = np.concatenate([t.val[name].values for t in tables if name in t.val])
    finite = np.abs(values[np.isfinite(values)])
    level = float(np.median(finite)) if len(finite) else 0.0
    return math.log10(level) if level > 0 else 0.0


def validation_panels(tables: Sequence[LogTable], names: Sequence[str]) -> List[Tuple[str, List[str]]]:
    """Validation metrics grouped by task (``bbox/AP`` -> ``bbox``); a panel holds at most 6, of
    magnitudes within a factor of ~30 of each other (AP in % and recall in [0, 1] do not share),
    and its title names them (``validation_panel_title``)."""
    tasks: Dict[str, List[str]] = defaultdict(list)
    for name in names:
        tasks[name.rsplit("/", 1)[0] if "/" in name else ""].append(name)
    panels = []
    for task, members in tasks.items():
        chunks: List[List[str]] = []
        scale: List[float] = []
        for name in members:
            magnitude = _magnitude(tables, name)
            home = next((i for i, chunk in enumerate(chunks) if len(chunk) < _SERIES_PER_PANEL and abs(scale[i] - magnitude) <= 1.5), None)
            if home is None:
                chunks.append([name])
                scale.append(magnitude)
            else:
                chunks[home].append(name)
        panels.extend((validation_panel_title(task, chunk), chunk) for chunk in chunks)
    return panels


def validation_figure(tables: Sequence[LogTable], options: PlotOptions, panels: List[Tuple[str, List[str]]],
                      notes: Sequence[Optional[str]] = ()) -> Any:
    """Validation metrics over training, a marker at each evaluation. One table: a panel per
    task, a colour per metric. Several: a panel per metric, a colour per run, one legend."""
    figure, axes, bottoms = panel_grid(len(panels))
    single = len(tables) == 1
    training = training_span(tables, options)
    for ax, (title, names) in zip(axes, panels):
        for position, name in enumerate(names):
            for index, table in enumerate(tables):
                series = table.val.get(name)
                if series is None:
                    continue
                if single:
                    points(ax, table, series, options, color=RUN_COLORS[position % len(RUN_COLORS)], label=name.rsplit("/", 1)[-1])
                else:
                    points(ax, table, series, options, color=run_color(index), label=run_label(table, index))
        ax.set_title(title)
        readable_limits(ax, training)
        if single:
            axis_legend(ax)
    if not single:
        outside_legend(figure, axes)
    return finish(figure, bottoms, tables, options, "validation", notes)


def training_span(tables: Sequence[LogTable], options: PlotOptions) -> Optional[Tuple[float, float]]:
    """The x range the training records of ``tables`` cover (None when they hold none)."""
    ends = []
    for table in tables:
        steps = [s.steps[[0, -1]] for s in table.train.values() if len(s)]
        if steps:
            first_last = np.array([min(s[0] for s in steps), max(s[1] for s in steps)])
            ends.extend(table.x_of(Series(first_last, first_last), options.x).tolist())
    return (min(ends), max(ends)) if ends else None


def main_train_loss(table: LogTable) -> Optional[str]:
    return next((n for n in TOTAL_LOSS_NAMES if n in table.train), next((n for n in table.train if "loss" in n), None))


def train_val_figure(tables: Sequence[LogTable], options: PlotOptions, notes: Sequence[Optional[str]] = ()) -> Any:
    """Train loss (band + smoothed) against validation loss (markers) for each comparison of
    ``train_val_pairs``, and below it the generalization gap ``val - smoothed train`` at each
    evaluation where the two compare like with like; each comparison's note goes under the
    panels. Without validation loss: the train loss alone, with a note saying so."""
    pairs = train_val_pairs(tables)
    single = len(tables) == 1
    if not pairs:
        main = main_train_loss(tables[0])
        figure, axes = grid(1, 1, panel_width=4.2, panel_height=2.4)
        ax = axes[0, 0]
        for index, table in enumerate(tables):
            name = main_train_loss(table) if main is None else main
            if name and name in table.train:
                curve(ax, table, table.train[name], options, color=run_color(index), band=single,
                       label=f"train {name}" if single else run_label(table, index))
        ax.set_title(f"train {main or 'loss'} (no validation loss logged)")
        loss_axis(ax, options)
        axis_legend(ax)
        return finish(figure, [ax], tables, options, "train vs validation loss", notes)
    rows = 2 if any(pair.gap for pair in pairs) else 1
    figure, axes = grid(rows, len(pairs), panel_width=4.2 if len(pairs) == 1 else None, panel_height=1.7)
    lowest, gap_axes = [], []
    for column, pair in enumerate(pairs):
        top = axes[0, column]
        bottom = axes[1, column] if pair.gap else None
        for index, table in enumerate(tables):
            train, val = pair.train(table), pair.val(table)
            color_train = RUN_COLORS[0] if single else run_color(index)
            color_val = RUN_COLORS[1] if single else run_color(index)
            prefix = "" if single else f"{run_label(table, index)}: "
            if train is not None:
                curve(top, table, train, options, color=color_train, label=f"{prefix}train", band=single)
            if val is not None:
                points(top, table, val, options, color=color_val, label=f"{prefix}validation", style="--")
            gap = generalization_gap(train, val, options) if bottom is not None and train is not None and val is not None else None
            if gap is not None:
                points(bottom, table, gap, options, color=color_val, label=f"{prefix}val − train")
        top.set_title(pair.title)
        loss_axis(top, options)
        if bottom is None:
            if rows == 2:
                axes[1, column].set_visible(False)
            lowest.append(top)
            continue
        bottom.axhline(0.0, color="0.4", linewidth=0.7)
        bottom.set_title("generalization gap (val − smoothed train)")
        lowest.append(bottom)
        gap_axes.append(bottom)
    axis_legend(axes[0, -1])
    if gap_axes and gap_axes[-1] is axes[-1, -1]:  # a legend between columns would push them apart
        axis_legend(gap_axes[-1])
    return finish(figure, lowest, tables, options, "train vs validation loss", [pair.note for pair in pairs] + list(notes))


def _train_groups(tables: Sequence[LogTable], bases: Dict[str, List[KeyParts]]) -> Dict[str, List[Series]]:
    """Every series each base's panel would draw (all its layers, every table)."""
    return {base: [t.train[p.key] for p in parts for t in tables if p.key in t.train] for base, parts in bases.items()}


def drop_constant(tables: Sequence[LogTable], bases: Dict[str, List[KeyParts]]) -> Tuple[Dict[str, List[KeyParts]], Optional[str]]:
    """``bases`` without the ones whose series never change, and a note naming those."""
    varying, constant = split_constant(_train_groups(tables, bases))
    return {base: bases[base] for base in varying}, constant_note(constant, f"logged {tables[0].step_unit}")


def generalization_gap(train: Series, val: Series, options: PlotOptions) -> Optional[Series]:
    """``val - smoothed train`` at each evaluation step (None when train has no finite point)."""
    smoothed = smooth(train.values, options.smooth)
    finite = np.isfinite(smoothed)
    if not len(train) or not finite.any():
        return None
    return Series(val.steps, val.values - np.interp(val.steps, train.steps[finite], smoothed[finite]))


def validation_metrics(tables: Sequence[LogTable]) -> List[str]:
    """Validation metrics worth a panel: not losses, not aux layers, not a DETR ``_unscaled``
    copy of a logged metric, and finite somewhere."""
    val_names = list(dict.fromkeys(n for t in tables for n in t.val))
    val_parts = parse_keys(val_names)
    metrics = [n for n in val_names if "loss" not in n and val_parts[n].layer is None
               and not (val_parts[n].unscaled and n[: -len("_unscaled")] in val_names)]
    return [n for n in metrics if any(n in t.val and np.isfinite(t.val[n].values).any() for t in tables)]


def plan_figures(tables: Sequence[LogTable], options: PlotOptions) -> List[FigureSpec]:
    """The figures ``tables`` call for, in a fixed order; each built only when asked.

    Series that never change (``presentation.constant_value``) get no panel: a note on the
    figure they belong to names them and their value; when that leaves the figure without
    panels, the note goes on the overview (else on the train-vs-validation figure)."""
    train_names = list(dict.fromkeys(n for t in tables for n in t.train))
    groups = group_keys(train_names)
    specs: List[FigureSpec] = []
    orphans: List[str] = []  # notes of figures left without panels; filled before any figure is built
    if groups.total or "lr" in train_names or "time" in train_names:
        specs.append(FigureSpec("overview", lambda: overview_figure(tables, options, groups.total, orphans), panels=3))
    for family, family_bases in groups.loss_families.items():
        bases, note = drop_constant(tables, family_bases)
        what = "losses" if family == "loss" else f"{family} losses"
        _add_panel_figures(specs, orphans, f"losses_{family}", list(bases.items()), note,
                           lambda chunk, notes, what=what: family_figure(tables, options, dict(chunk), what, True, notes))
    bases, note = drop_constant(tables, groups.other_bases)
    _add_panel_figures(specs, orphans, "metrics", list(bases.items()), note,
                       lambda chunk, notes: family_figure(tables, options, dict(chunk), "other training scalars", False, notes))
    if groups.split_bases:
        specs.append(FigureSpec("real_vs_synthetic", lambda: split_figure(tables, options, groups.split_bases), len(groups.split_bases)))
    metrics, constant = split_constant({n: [t.val[n] for t in tables if n in t.val] for n in validation_metrics(tables)})
    note = constant_note(constant, "evaluation")
    if len(tables) == 1:
        panels = validation_panels(tables, metrics)
        _add_panel_figures(specs, orphans, "validation", panels, note,
                           lambda chunk, notes: validation_figure(tables, options, chunk, notes), per_figure=len(panels) or 1)
    else:  # runs compared: a panel per metric, so that the legend only names runs
        _add_panel_figures(specs, orphans, "validation", [(with_unit(n, [n]), [n]) for n in metrics], note,
                           lambda chunk, notes: validation_figure(tables, options, chunk, notes))
    if any(main_train_loss(t) for t in tables):
        homeless = orphans if not specs or specs[0].name != "overview" else []
        specs.append(FigureSpec("train_vs_val", lambda: train_val_figure(tables, options, homeless), panels=2))
    if has_ranks(tables):
        specs.append(FigureSpec("ranks", lambda: ranks_figure(tables, options), panels=3))
    return specs


def numbered_figures(stem: str, panels: List[Any], note: Optional[str], orphans: List[str],
                     per_figure: int = PANELS_PER_FIGURE) -> List[Tuple[str, List[Any], List[str]]]:
    """``(name, panels, notes)`` of the figures ``stem``, ``stem_2``... of ``per_figure`` panels
    each, ``note`` on the last one; without panels there is no figure and ``note`` joins
    ``orphans``. The PNGs and report.html split their figures with it alike."""
    if not panels:
        if note:
            orphans.append(note)
        return []
    chunks = _chunks(panels, per_figure)
    return [(stem + (f"_{number + 1}" if number else ""), chunk, [note] if note and number == len(chunks) - 1 else [])
            for number, chunk in enumerate(chunks)]


def _add_panel_figures(specs: List[FigureSpec], orphans: List[str], stem: str, panels: List[Any], note: Optional[str],
                       build: Callable[[List[Any], List[str]], Any], per_figure: int = PANELS_PER_FIGURE) -> None:
    """The ``numbered_figures`` of ``panels``, each built by ``build(panels, notes)`` when asked."""
    for name, chunk, notes in numbered_figures(stem, panels, note, orphans, per_figure):
        specs.append(FigureSpec(name, _bind(build, chunk, notes), len(chunk)))


def _bind(function: Callable[..., Any], *args: Any) -> Callable[[], Any]:
    return lambda: function(*args)
