"""Figures and summary numbers that say what they show: train vs validation like with like, the
grey optimized term explained, constant series as a note, named validation panels, class_error in
%, the learning rate as steps, "too few points" for a convergence verdict, no eta_seconds, and
float-noise slopes printed as 0."""
import math

import numpy as np
import pytest

from events.plotting import PlotOptions, SmoothSpec, plan_figures, summarize, write_summary
from events.plotting.figures import split_figure, train_val_figure
from events.plotting.presentation import (constant_note, constant_value, is_bookkeeping, is_step_series, step_points,
                                          unit_of, validation_panel_title)
from events.plotting.summary import convergence_text, format_summary
from events.plotting.train_val import train_val_pairs
from events.readers import LogTable, RunInfo, Series, SkippedLines

DEMO_STEPS = np.arange(20.0, 420.0, 20.0)  # the demo: 400 iterations, a record every 20
VAL_STEPS = np.array([100.0, 200.0, 300.0, 400.0])


def table_of(train, val=None, source="run/metrics.json"):
    """A LogTable from {name: (steps, values)}; ``source`` decides where config.yaml is looked for."""
    to_series = lambda group: {k: Series(np.asarray(s, float), np.asarray(v, float)) for k, (s, v) in (group or {}).items()}
    train, val = to_series(train), to_series(val)
    steps = np.concatenate([s.steps for s in list(train.values()) + list(val.values())])
    run = RunInfo(1, float(steps.min()), float(steps.max()), len(np.unique(steps)), 1)
    return LogTable(str(source), "detectron2-metrics", "iteration", train, val, {}, len(VAL_STEPS) if val else 0,
                    [run], run, SkippedLines(), "run")


def mixed_run(source="run/metrics.json"):
    """A run like the demo's: training mixes synthetic samples weighted 0.5 (so its total is ~15%
    lower than the plain real-scene mean), validation holds real scenes; on real scenes the
    validation loss is the training one + 0.1."""
    real = {"loss_bbox": lambda s: 0.8 - s / 1000, "loss_ce": lambda s: 2.0 - s / 500}
    train, val = {}, {}
    for name, f in real.items():
        train[name] = (DEMO_STEPS, 0.85 * f(DEMO_STEPS))
        train[f"{name}_real"] = (DEMO_STEPS, f(DEMO_STEPS))
        train[f"{name}_synthetic"] = (DEMO_STEPS, 1.1 * f(DEMO_STEPS))
        val[name] = (VAL_STEPS, f(VAL_STEPS) + 0.05)
        val[f"{name}_real"] = (VAL_STEPS, f(VAL_STEPS) + 0.05)
    train["total_loss"] = (DEMO_STEPS, sum(v for k, (_, v) in train.items() if k in real))
    val["total_loss"] = (VAL_STEPS, sum(v for k, (_, v) in val.items() if k in real))
    return table_of(train, val, source)


def note_of(figure):
    """Every text written on ``figure`` itself (its title and notes), as one line."""
    return " ".join(text.get_text() for text in figure.texts).replace("\n", " ")


# ----------------------------------------------------------------------------- train vs validation


def test_a_run_mixing_synthetic_samples_compares_its_real_scene_losses():
    table = mixed_run()
    real_scene, total = train_val_pairs([table])
    assert real_scene.terms == ("loss_bbox_real", "loss_ce_real") and real_scene.gap
    assert real_scene.name == "real-scene loss (Σ of 2 loss_*_real)"
    expected = (0.8 - DEMO_STEPS / 1000) + (2.0 - DEMO_STEPS / 500)
    assert real_scene.train(table).values == pytest.approx(expected)
    assert total.name == "total_loss" and not total.gap and "Not like with like" in total.note


def test_train_vs_val_figure_draws_the_like_with_like_gap_only_and_says_how_the_totals_differ(tmp_path):
    (tmp_path / "config.yaml").write_text("DATASETS:\n  MULTI_DATASET: {REAL_LOSS_WEIGHT: 1.0, SYNTHETIC_LOSS_WEIGHT: 0.5}\n")
    table = mixed_run(tmp_path / "metrics.json")
    figure = train_val_figure([table], PlotOptions(smooth=SmoothSpec("none")))
    panels = {ax.get_title(): ax for ax in figure.axes if ax.get_visible()}
    assert list(panels) == ["real-scene loss (Σ of 2 loss_*_real)", "total_loss: not like with like (see below)",
                            "generalization gap (val − smoothed train)"]
    gap = panels["generalization gap (val − smoothed train)"].get_lines()[0].get_ydata()
    assert gap == pytest.approx([0.1] * 4)  # the real-scene gap, not the total's ~0.5 of weighting
    note = note_of(figure)
    assert "weighs real samples 1 and synthetic ones 0.5 (config.yaml)" in note and "no gap drawn" in note


def test_without_a_config_the_note_still_says_how_the_sides_differ():
    note = train_val_pairs([mixed_run("no/such/dir/metrics.json")])[1].note
    assert "scales each sample by its loss weight" in note and "real scenes only, at weight 1" in note


def test_a_run_without_synthetic_samples_compares_totals_with_a_gap():
    steps = np.arange(0.0, 100.0)
    table = table_of({"total_loss": (steps, 10 - steps / 10), "total_loss_weighted": (steps, 20 - steps / 10)},
                     {"total_loss": ([49, 99], [6.0, 2.0]), "total_loss_weighted": ([49, 99], [16.0, 12.0])})
    pairs = train_val_pairs([table])
    assert [(p.name, p.gap, p.note) for p in pairs] == [("total_loss", True, None), ("total_loss_weighted", True, None)]


def test_overfitting_check_and_its_gap_use_the_like_with_like_losses():
    overfit = summarize(mixed_run(), SmoothSpec("none")).overfit
    assert overfit.key == "real-scene loss (Σ of 2 loss_*_real)"
    assert overfit.last_gap == pytest.approx(0.1)


# ----------------------------------------------------------------------------- real vs synthetic


def test_real_vs_synthetic_says_why_the_optimized_term_lies_below_both():
    table = mixed_run()
    splits = {"loss_ce": {"real": "loss_ce_real", "synthetic": "loss_ce_synthetic"}}
    note = note_of(split_figure([table], PlotOptions(), splits))
    assert "grey = the loss term as optimized" in note and "can lie below both" in note
    compared = split_figure([table, mixed_run()], PlotOptions(), splits)  # no grey curve: no note
    assert "grey" not in note_of(compared)


# ----------------------------------------------------------------------------- constant series, titles, units


def run_with_constant_scalars():
    rng = np.random.default_rng(0)
    varying = lambda scale: scale * (1 + 0.1 * rng.standard_normal(len(DEMO_STEPS)))
    train = {"total_loss": (DEMO_STEPS, varying(20.0)), "lr": (DEMO_STEPS, np.full(len(DEMO_STEPS), 1e-3)),
             "grad_norm": (DEMO_STEPS, varying(5.0)), "class_error_subject": (DEMO_STEPS, varying(80.0)),
             "class_error_object": (DEMO_STEPS, varying(70.0))}
    val = {"total_loss": (VAL_STEPS, [26.0, 25.0, 24.0, 23.0]), "class_error_subject": (VAL_STEPS, [97.0, 86.0, 78.0, 72.0]),
           "class_error_object": (VAL_STEPS, [96.0, 74.0, 59.0, 47.0])}
    for layer in (1, 2, 3):
        train[f"k_log_layer{layer}"] = (DEMO_STEPS, np.ones(len(DEMO_STEPS)))
        val[f"k_log_layer{layer}"] = (VAL_STEPS, np.ones(len(VAL_STEPS)))
    return table_of(train, val)


def built(table):
    return {spec.name: spec.build() for spec in plan_figures([table], PlotOptions())}


def test_constant_series_become_a_note_and_panels_name_what_they_show_with_units():
    figures = built(run_with_constant_scalars())
    metrics, validation = figures["metrics"], figures["validation"]
    assert [ax.get_title() for ax in metrics.axes if ax.get_visible()] == [
        "grad_norm", "class_error_subject (%)", "class_error_object (%)"]
    assert "constant, not drawn: k_log_layer1–3 = 1 at every logged iteration" in note_of(metrics)
    assert [ax.get_title() for ax in validation.axes] == ["class_error_subject, class_error_object (%)"]
    assert "k_log_layer1–3 = 1 at every evaluation" in note_of(validation)


def test_a_figure_left_without_panels_hands_its_note_to_the_overview():
    table = run_with_constant_scalars()
    for name in ("grad_norm", "class_error_subject", "class_error_object"):
        del table.train[name]
    figures = built(table)
    assert "metrics" not in figures
    assert "k_log_layer1–3 = 1 at every logged iteration" in note_of(figures["overview"])


@pytest.mark.parametrize("values, expected", [
    ([[1.0, 1.0], [1.0, 1.0, 1.0]], 1.0),
    ([[0.1 + 0.2, 0.3]], 0.3),            # float noise of an average is still constant
    ([[1.0, 1.0], [2.0, 2.0]], None),     # two runs at different values
    ([[65.1]], None),                     # one evaluation is not "constant"
    ([[1.0, np.nan, 1.0]], None),         # a NaN is news, not a constant
    ([[1.0, 1.001]], None),
])
def test_constant_value(values, expected):
    series = [Series(np.arange(len(v), dtype=float), np.asarray(v, float)) for v in values]
    assert constant_value(series) == (pytest.approx(expected) if expected is not None else None)


def test_constant_note_groups_numbered_names_and_values():
    note = constant_note({"k_log_layer1": 1.0, "k_log_layer2": 1.0, "k_log_layer4": 1.0, "max_mem": 11811.0})
    assert note == "constant, not drawn: k_log_layer{1,2,4} = 1; max_mem = 11811 at every logged point"


@pytest.mark.parametrize("task, names, title", [
    ("", ["class_error_object", "class_error_relation", "class_error_subject"], "class_error_{object,relation,subject} (%)"),
    ("bbox", ["bbox/AP", "bbox/AP50", "bbox/AP75"], "bbox: AP, AP50, AP75"),
    ("coco_eval_bbox", [f"coco_eval_bbox/AR{s}" for s in ("1", "10", "100", "s", "m", "l")], "coco_eval_bbox: AR{1,10,100,s,m,l}"),
    ("", ["class_error", "cardinality_error_unscaled"], "class_error, cardinality_error_unscaled"),
    ("", ["mAP"], "mAP"),
])
def test_validation_panel_titles_name_their_metrics(task, names, title):
    assert validation_panel_title(task, names) == title


def test_units_steps_and_bookkeeping_by_name():
    assert unit_of("class_error_subject") == unit_of("validation/class_error") == "%"
    assert unit_of("cardinality_error") is None and unit_of("loss_ce") is None
    assert all(is_step_series(n) for n in ("lr", "train_lr", "lr_backbone", "optim/lr", "learning_rate"))
    assert not any(is_step_series(n) for n in ("loss_clr", "lrelu_loss", "total_loss"))
    assert is_bookkeeping("eta_seconds") and not is_bookkeeping("time")


def test_learning_rate_is_drawn_as_steps_through_its_change_points():
    x = np.arange(1.0, 100_001.0)
    lr = np.where(x <= 60_000, 1e-3, np.where(x <= 80_000, 1e-4, 1e-5))
    kept_x, kept_y = step_points(x, lr)
    assert kept_x.tolist() == [1.0, 60_000.0, 80_000.0, 100_000.0] and kept_y.tolist() == [1e-3, 1e-3, 1e-4, 1e-5]
    overview = built(run_with_constant_scalars())["overview"]
    lr_line = next(line for ax in overview.axes for line in ax.get_lines() if line.get_label() == "lr")
    assert lr_line.get_drawstyle() == "steps-pre"


# ----------------------------------------------------------------------------- summary


def test_summary_says_too_few_points_leaves_out_eta_and_prints_flat_slopes_as_zero(tmp_path):
    steps = np.arange(20.0, 420.0, 20.0)
    flat_long = np.arange(0.0, 60.0)
    table = table_of({"total_loss": (steps, np.linspace(5, 4, len(steps))), "eta_seconds": (steps, steps[::-1]),
                      "k_log_layer1": (steps, np.full(len(steps), 1.0 / 3 * 3)),
                      "time": (flat_long, 0.07 + 1e-4 * np.sin(flat_long))})
    summary = summarize(table)
    keys = {key.key: key for key in summary.keys}
    assert "eta_seconds" not in keys
    assert keys["total_loss"].converged is None and convergence_text(keys["total_loss"]) == "too few points"
    assert keys["time"].converged is True and convergence_text(keys["time"]) == "yes"  # 60 points: a verdict
    assert keys["k_log_layer1"].slope == 0.0 and math.copysign(1, keys["k_log_layer1"].slope) == 1
    _, md_path = write_summary([summary], str(tmp_path))
    text = open(md_path).read()
    assert "| train | k_log_layer1 | 1 | 1 | 0 | 0 | too few points | 0 | 0 |" in text
    assert "fewer than 50 points gets no verdict" in text and "eta_seconds" not in text
    assert "e-1" not in text  # no -8e-18 slopes
    console = format_summary(summary)
    assert " few " in console and "fewer than 50 points" in console


def test_a_real_trend_keeps_its_slope():
    steps = np.arange(0.0, 200.0)
    table = table_of({"lr": (steps, 1e-4 - 1e-7 * steps)})
    assert summarize(table, SmoothSpec("none")).keys[0].slope == pytest.approx(-1e-7)
