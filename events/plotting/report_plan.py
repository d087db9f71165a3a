"""What the HTML report shows, as data: sections of panels of series, decided from the same key
groups, validation panels and train/validation pairs as the PNG figures (``figures``), so the two
renderers never disagree on what a figure holds. Nothing here draws; ``html_report`` does.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from events.readers.table import LogTable, Series

from .families import KeyParts, group_keys, layer_order
from .figures import (PANELS_PER_FIGURE, drop_constant, main_train_loss, training_span, validation_panels,
                      generalization_gap, numbered_figures, validation_metrics)
from .options import PlotOptions
from .presentation import SPLIT_FIGURE_NOTE, constant_note, is_step_series, split_constant, with_unit
from .ranks import rank_panels, rank_styles
from .style import RUN_COLORS
from .train_val import train_val_pairs

__all__ = ["Trace", "Panel", "Section", "plan_report"]


@dataclass
class Trace:
    """One series of one run in a panel.

    ``kind``: ``curve`` (training scalar: smoothed line, min/max band of the raw points when
    ``band``), ``steps`` (drawn as logged, as steps: a learning rate, ``presentation.step_points``),
    ``raw`` (drawn as logged: per-rank timings) or ``points`` (few points: validation, markers). ``group`` ties the traces a legend entry toggles together.
    """

    label: str
    color: str
    table: LogTable
    series: Series
    kind: str = "curve"
    band: bool = False
    dash: str = "solid"
    width: float = 1.6
    group: str = ""


@dataclass
class Panel:
    """One set of axes: a title, its traces, and whether its y axis is a loss (log-scale toggle)."""

    title: str
    traces: List[Trace] = field(default_factory=list)
    loss: bool = False
    log_y: bool = False
    zero_line: bool = False


@dataclass
class Section:
    """One figure of the report: ``name`` is the PNG's file stem, ``title`` its heading,
    ``notes`` the lines the PNG prints under its panels (constant series, what a curve is)."""

    name: str
    title: str
    panels: List[Panel]
    notes: List[str] = field(default_factory=list)
    x_span: Optional[tuple] = None
    columns: int = 3
    panel_legends: bool = False  # a legend in each panel (panels of different series), else one


def _layer_colors(count: int) -> List[str]:
    """Aux layers light (early) to dark (late) on viridis, as the PNGs."""
    from plotly.colors import sample_colorscale

    return sample_colorscale("Viridis", [0.85 - 0.75 * i / max(1, count - 1) for i in range(count)])


def _run(table: LogTable, index: int) -> str:
    return table.label or f"run {index + 1}"


def _overview(tables: Sequence[LogTable], total: Sequence[str]) -> List[Panel]:
    panels = []
    single = len(tables) == 1
    rows = [("total loss", list(total), True)] if total else []
    rows += [("learning rate", ["lr"], False)] if any("lr" in t.train for t in tables) else []
    timing = [n for n in ("time", "data_time") if any(n in t.train for t in tables)]
    rows += [("seconds per iteration", timing, False)] if timing else []
    for title, names, is_loss in rows:
        panel = Panel(title, loss=is_loss)
        for index, table in enumerate(tables):
            for position, name in enumerate(names):
                series = table.train.get(name)
                if series is None:
                    continue
                color = RUN_COLORS[position] if single else RUN_COLORS[index % len(RUN_COLORS)]
                label = name if single else f"{_run(table, index)}: {name}" if len(names) > 1 else _run(table, index)
                kind = "steps" if is_step_series(name) else "curve"
                panel.traces.append(Trace(label, color, table, series, kind, band=single and position == 0,
                                          dash="solid" if position == 0 or single else "dash"))
        if title == "learning rate":
            panel.log_y = _wide(panel)
        panels.append(panel)
    return panels


def _wide(panel: Panel) -> bool:
    """A learning rate spanning more than ~1.5 decades is drawn on a log axis, as in the PNGs."""
    values = np.concatenate([t.series.values for t in panel.traces]) if panel.traces else np.zeros(0)
    positive = values[np.isfinite(values) & (values > 0)]
    return bool(len(positive) and positive.max() / positive.min() > 30)


def _layer_trace(final: Trace, colors: Dict[int, str], part: KeyParts) -> Trace:
    """The trace of one decoder layer of a family panel: the final layer drawn as ``final``
    says (black, with the band), an aux layer thinner in its colour."""
    series = final.table.train[part.key]
    kind = "steps" if is_step_series(part.key) else "curve"
    if part.layer is None:
        return replace(final, series=series, kind=kind, band=kind == "curve")
    return Trace(f"layer {part.layer}", colors[part.layer], final.table, series, kind, width=1.2)


def _family(tables: Sequence[LogTable], bases: Dict[str, List[KeyParts]], is_loss: bool) -> List[Panel]:
    """One panel per base: one run's aux layers light to dark and the final layer black (with
    the min/max band), or each run's final layer in its colour."""
    layers = sorted({p.layer for parts in bases.values() for p in parts if p.layer is not None})
    colors = dict(zip(layers, _layer_colors(len(layers)))) if layers else {}
    final_color, final_label = ("#000000", "final layer") if layers else (RUN_COLORS[0], "")
    panels = []
    for base, parts in bases.items():
        panel = Panel(with_unit(base, [base]), loss=is_loss)
        ordered = layer_order(parts)
        if len(tables) == 1:
            table = tables[0]
            final = Trace(final_label or base, final_color, table, Series(np.zeros(0), np.zeros(0)), band=True, width=2.0)
            panel.traces = [_layer_trace(final, colors, p) for p in ordered if p.key in table.train]
        else:
            for index, table in enumerate(tables):
                series = table.train.get(ordered[-1].key)
                if series is not None:
                    panel.traces.append(Trace(_run(table, index), RUN_COLORS[index % len(RUN_COLORS)], table, series,
                                              "steps" if is_step_series(ordered[-1].key) else "curve"))
        panels.append(panel)
    return panels


def _splits(tables: Sequence[LogTable], splits: Dict[str, Dict[str, str]]) -> List[Panel]:
    """Real (solid) and synthetic (dashed) curves of each loss, the loss term as optimized in grey."""
    single = len(tables) == 1
    panels = []
    for base, names in splits.items():
        panel = Panel(base, loss=True)
        for index, table in enumerate(tables):
            if single and base in table.train:
                panel.traces.append(Trace("loss term (as optimized)", "#999999", table, table.train[base], width=1.2))
            for position, split in enumerate(("real", "synthetic")):
                series = table.train.get(names[split])
                if series is None:
                    continue
                color = RUN_COLORS[position] if single else RUN_COLORS[index % len(RUN_COLORS)]
                label = split if single else f"{_run(table, index)}: {split}"
                panel.traces.append(Trace(label, color, table, series, dash="solid" if split == "real" else "dash"))
        panels.append(panel)
    return panels


def _validation(tables: Sequence[LogTable], chunk: Sequence[tuple]) -> List[Panel]:
    single = len(tables) == 1
    panels = []
    for title, names in chunk:
        panel = Panel(title)
        for position, name in enumerate(names):
            for index, table in enumerate(tables):
                series = table.val.get(name)
                if series is None:
                    continue
                color = RUN_COLORS[(position if single else index) % len(RUN_COLORS)]
                label = name.rsplit("/", 1)[-1] if single else _run(table, index)
                panel.traces.append(Trace(label, color, table, series, "points"))
        panels.append(panel)
    return panels


def _train_val(tables: Sequence[LogTable], options: PlotOptions) -> Section:
    """Train (band + smoothed) against validation (markers) for each comparison of
    ``train_val_pairs``, and the generalization gap where they compare like with like; each
    comparison's note under the figure. Without validation loss: the train loss alone."""
    single = len(tables) == 1
    pairs = train_val_pairs(tables)
    if not pairs:
        name = main_train_loss(tables[0])
        panel = Panel(f"train {name or 'loss'} (no validation loss logged)", loss=True)
        for index, table in enumerate(tables):
            if name in table.train:
                panel.traces.append(Trace(f"train {name}" if single else _run(table, index),
                                          RUN_COLORS[index % len(RUN_COLORS)], table, table.train[name], band=single))
        return Section("train_vs_val", "train vs validation loss", [panel], columns=1, panel_legends=True)
    tops, gaps = [], []
    for pair in pairs:
        top = Panel(pair.title, loss=True)
        gap_panel = Panel("generalization gap (val − smoothed train)", zero_line=True)
        for index, table in enumerate(tables):
            prefix = "" if single else f"{_run(table, index)}: "
            train, val = pair.train(table), pair.val(table)
            color_val = RUN_COLORS[1 if single else index % len(RUN_COLORS)]
            if train is not None:
                top.traces.append(Trace(f"{prefix}train", RUN_COLORS[0 if single else index % len(RUN_COLORS)], table, train,
                                        band=single))
            if val is not None:
                top.traces.append(Trace(f"{prefix}validation", color_val, table, val, "points", dash="dash"))
            gap = generalization_gap(train, val, options) if pair.gap and train is not None and val is not None else None
            if gap is not None:
                gap_panel.traces.append(Trace(f"{prefix}val − train", color_val, table, gap, "points"))
        tops.append(top)
        if pair.gap:
            gaps.append(gap_panel)
    return Section("train_vs_val", "train vs validation loss", tops + gaps, columns=len(tops), panel_legends=True,
                   notes=[pair.note for pair in pairs if pair.note])


def plan_report(tables: Sequence[LogTable], options: PlotOptions) -> List[Section]:
    """The report's sections, in the PNG figures' order and with their file stems as names;
    series that never change get a note, not a panel, as in ``plan_figures`` (a note whose
    figure is left without panels goes on the first section)."""
    train_names = list(dict.fromkeys(n for t in tables for n in t.train))
    groups = group_keys(train_names)
    sections: List[Section] = []
    orphans: List[str] = []

    def add(stem: str, title: str, panels: List[Panel], note: Optional[str], per: int = PANELS_PER_FIGURE, **layout: Any) -> None:
        for name, chunk, notes in numbered_figures(stem, panels, note, orphans, per):
            sections.append(Section(name, title, chunk, notes=notes, **layout))

    if groups.total or "lr" in train_names or "time" in train_names:
        sections.append(Section("overview", "overview", _overview(tables, groups.total), columns=1, panel_legends=True))
    for family, family_bases in groups.loss_families.items():
        bases, note = drop_constant(tables, family_bases)
        add(f"losses_{family}", "losses" if family == "loss" else f"{family} losses", _family(tables, bases, True), note)
    bases, note = drop_constant(tables, groups.other_bases)
    add("metrics", "other training scalars", _family(tables, bases, False), note)
    if groups.split_bases:
        grey = len(tables) == 1 and any(base in tables[0].train for base in groups.split_bases)
        sections.append(Section("real_vs_synthetic", "real vs synthetic", _splits(tables, groups.split_bases),
                                notes=[SPLIT_FIGURE_NOTE] if grey else []))
    metrics, constant = split_constant({n: [t.val[n] for t in tables if n in t.val] for n in validation_metrics(tables)})
    note = constant_note(constant, "evaluation")
    span = training_span(tables, options)
    if len(tables) == 1:
        panels = validation_panels(tables, metrics)
        add("validation", "validation", _validation(tables, panels), note, per=len(panels) or 1, x_span=span, columns=2,
            panel_legends=True)
    else:  # runs compared: a panel per metric, so that the legend only names runs
        add("validation", "validation", _validation(tables, [(with_unit(n, [n]), [n]) for n in metrics]), note, x_span=span)
    if any(main_train_loss(t) for t in tables):
        sections.append(_train_val(tables, options))
    ranked = next((t for t in tables if rank_panels(t)), None)
    if ranked is not None:
        sections.append(Section("ranks", "ranks", _ranks(ranked), columns=1))  # one legend: a rank toggles everywhere
    if sections and orphans:
        sections[0].notes.extend(orphans)
    head = f"{options.title} — " if options.title else ""
    for section in sections:
        section.title = head + section.title
    return sections


def _ranks(table: LogTable) -> List[Panel]:
    """Step time, data time and memory of every rank, drawn as logged, the slowest highlighted."""
    panels = []
    for _, title, by_rank, slowest in rank_panels(table):
        styles = rank_styles(sorted(by_rank), slowest)
        panels.append(Panel(title, [Trace(label, color, table, by_rank[rank], "raw", width=2 * width)
                                    for rank, (color, label, width) in styles.items()]))
    return panels
