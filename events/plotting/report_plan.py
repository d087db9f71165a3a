"""What the HTML report shows, as data: sections of panels of series, decided from the same key
groups, validation panels and train/validation pairs as the PNG figures (``figures``), so the two
renderers never disagree on what a figure holds. Nothing here draws; ``html_report`` does.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Dict, List, Optional, Sequence

import numpy as np

from events.readers.table import LogTable, Series

from .families import KeyParts, group_keys, layer_order
from .figures import (_PANELS_PER_FIGURE, _chunks, _main_train_loss, _train_val_pairs, _training_span,
                      _validation_panels, generalization_gap, validation_metrics)
from .options import PlotOptions
from .ranks import rank_panels, rank_styles
from .style import RUN_COLORS

__all__ = ["Trace", "Panel", "Section", "plan_report"]


@dataclass
class Trace:
    """One series of one run in a panel.

    ``kind``: ``curve`` (training scalar: smoothed line, min/max band of the raw points when
    ``band``), ``steps`` (drawn as logged, as steps: the learning rate), ``raw`` (drawn as
    logged: per-rank timings) or ``points`` (few points: validation, markers). ``group`` ties the traces a legend entry toggles together.
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
    """One figure of the report: ``name`` is the PNG's file stem, ``title`` its heading."""

    name: str
    title: str
    panels: List[Panel]
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
                kind = "steps" if name == "lr" else "curve"
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
    if part.layer is None:
        return replace(final, series=series)
    return Trace(f"layer {part.layer}", colors[part.layer], final.table, series, width=1.2)


def _family(tables: Sequence[LogTable], bases: Dict[str, List[KeyParts]], is_loss: bool) -> List[Panel]:
    """One panel per base: one run's aux layers light to dark and the final layer black (with
    the min/max band), or each run's final layer in its colour."""
    layers = sorted({p.layer for parts in bases.values() for p in parts if p.layer is not None})
    colors = dict(zip(layers, _layer_colors(len(layers)))) if layers else {}
    final_color, final_label = ("#000000", "final layer") if layers else (RUN_COLORS[0], "")
    panels = []
    for base, parts in bases.items():
        panel = Panel(base, loss=is_loss)
        ordered = layer_order(parts)
        if len(tables) == 1:
            table = tables[0]
            final = Trace(final_label or base, final_color, table, Series(np.zeros(0), np.zeros(0)), band=True, width=2.0)
            panel.traces = [_layer_trace(final, colors, p) for p in ordered if p.key in table.train]
        else:
            for index, table in enumerate(tables):
                series = table.train.get(ordered[-1].key)
                if series is not None:
                    panel.traces.append(Trace(_run(table, index), RUN_COLORS[index % len(RUN_COLORS)], table, series))
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


def _train_val(tables: Sequence[LogTable], options: PlotOptions) -> List[Panel]:
    """Train (band + smoothed) against validation (markers) per common loss, and below them the
    generalization gap ``val - smoothed train`` at each evaluation."""
    single = len(tables) == 1
    pairs = _train_val_pairs(tables)
    if not pairs:
        name = _main_train_loss(tables[0])
        panel = Panel(f"train {name or 'loss'} (no validation loss logged)", loss=True)
        for index, table in enumerate(tables):
            if name in table.train:
                panel.traces.append(Trace(f"train {name}" if single else _run(table, index),
                                          RUN_COLORS[index % len(RUN_COLORS)], table, table.train[name], band=single))
        return [panel]
    panels, gaps = [], []
    for name in pairs:
        panel = Panel(f"{name}: train vs validation", loss=True)
        gap_panel = Panel("generalization gap (val − smoothed train)", zero_line=True)
        for index, table in enumerate(tables):
            prefix = "" if single else f"{_run(table, index)}: "
            train, val = table.train.get(name), table.val.get(name)
            if train is not None:
                panel.traces.append(Trace(f"{prefix}train", RUN_COLORS[0 if single else index % len(RUN_COLORS)],
                                          table, train, band=single))
            if val is not None:
                panel.traces.append(Trace(f"{prefix}validation", RUN_COLORS[1 if single else index % len(RUN_COLORS)],
                                          table, val, "points", dash="dash"))
            gap = generalization_gap(train, val, options) if train is not None and val is not None else None
            if gap is not None:
                gap_panel.traces.append(Trace(f"{prefix}val − train", RUN_COLORS[1 if single else index % len(RUN_COLORS)],
                                              table, gap, "points"))
        panels.append(panel)
        gaps.append(gap_panel)
    return panels + gaps


def plan_report(tables: Sequence[LogTable], options: PlotOptions) -> List[Section]:
    """The report's sections, in the PNG figures' order and with their file stems as names."""
    train_names = list(dict.fromkeys(n for t in tables for n in t.train))
    groups = group_keys(train_names)
    head = f"{options.title} — " if options.title else ""
    sections: List[Section] = []
    if groups.total or "lr" in train_names or "time" in train_names:
        sections.append(Section("overview", f"{head}overview", _overview(tables, groups.total), columns=1,
                                panel_legends=True))
    for family, bases in groups.loss_families.items():
        for number, chunk in enumerate(_chunks(list(bases.items()), _PANELS_PER_FIGURE)):
            what = "losses" if family == "loss" else f"{family} losses"
            sections.append(Section(f"losses_{family}" + (f"_{number + 1}" if number else ""), f"{head}{what}",
                                    _family(tables, dict(chunk), True)))
    for number, chunk in enumerate(_chunks(list(groups.other_bases.items()), _PANELS_PER_FIGURE)):
        if chunk:
            sections.append(Section("metrics" + (f"_{number + 1}" if number else ""), f"{head}other training scalars",
                                    _family(tables, dict(chunk), False)))
    if groups.split_bases:
        sections.append(Section("real_vs_synthetic", f"{head}real vs synthetic", _splits(tables, groups.split_bases)))
    metrics = validation_metrics(tables)
    if len(tables) == 1:
        panel_chunks = [_validation_panels(tables, metrics)] if metrics else []
    else:
        panel_chunks = _chunks([(name, [name]) for name in metrics], _PANELS_PER_FIGURE) if metrics else []
    span = _training_span(tables, options)
    for number, chunk in enumerate(panel_chunks):
        sections.append(Section("validation" + (f"_{number + 1}" if number else ""), f"{head}validation",
                                _validation(tables, chunk), x_span=span,
                                columns=2 if len(tables) == 1 else 3, panel_legends=len(tables) == 1))
    ranked = next((t for t in tables if rank_panels(t)), None)
    if any(_main_train_loss(t) for t in tables):
        sections.append(Section("train_vs_val", f"{head}train vs validation loss", _train_val(tables, options),
                                columns=len(_train_val_pairs(tables)) or 1, panel_legends=True))
    if ranked is not None:
        sections.append(Section("ranks", f"{head}ranks", _ranks(ranked), columns=1))  # one legend: a rank toggles everywhere
    return sections


def _ranks(table: LogTable) -> List[Panel]:
    """Step time, data time and memory of every rank, drawn as logged, the slowest highlighted."""
    panels = []
    for _, title, by_rank, slowest in rank_panels(table):
        styles = rank_styles(sorted(by_rank), slowest)
        panels.append(Panel(title, [Trace(label, color, table, by_rank[rank], "raw", width=2 * width)
                                    for rank, (color, label, width) in styles.items()]))
    return panels
