"""events.plotting: smoothing, key families, summary numbers (hand-computed) and the figures."""
import math
import os

import numpy as np
import pytest

from events.plotting import PlotOptions, SmoothSpec, parse_smooth, plan_figures, plot_train_val_loss, render_figures, summarize
from events.plotting.families import loss_family, parse_keys
from events.plotting.figures import family_figure, train_val_figure
from events.plotting.smoothing import ema_debiased, envelope, rolling_mean, smooth, thin
from events.plotting.style import font_settings
from events.plotting.summary import count_spikes, rolling_median9, write_summary
from events.readers import LogTable, RunInfo, Series, SkippedLines, read_log

REAL = os.path.join(os.path.dirname(__file__), "fixtures", "real-logs")


def table_of(train, val=None, step_unit="iteration", label="synthetic"):
    """A LogTable from {name: (steps, values)}."""
    to_series = lambda group: {k: Series(np.asarray(s, float), np.asarray(v, float)) for k, (s, v) in (group or {}).items()}
    train, val = to_series(train), to_series(val)
    steps = np.concatenate([s.steps for s in list(train.values()) + list(val.values())])
    run = RunInfo(1, float(steps.min()), float(steps.max()), len(np.unique(steps)), 1)
    return LogTable("synthetic.json", "jsonl", step_unit, train, val, {}, len(next(iter(val.values())).steps) if val else 0,
                    [run], run, SkippedLines(), label)


# ----------------------------------------------------------------------------- smoothing


def test_ema_debiased_matches_tensorboard_by_hand():
    # w = 0.5: last = 0.5, 1.25, 2.125; debias 1 - 0.5^k = 0.5, 0.75, 0.875.
    assert ema_debiased(np.array([1.0, 2.0, 3.0]), 0.5) == pytest.approx([1.0, 1.25 / 0.75, 2.125 / 0.875])
    # A NaN point stays NaN and does not enter the average.
    out = ema_debiased(np.array([1.0, np.nan, 2.0]), 0.5)
    assert out[0] == 1.0 and math.isnan(out[1]) and out[2] == pytest.approx(1.25 / 0.75)


def test_ema_debiased_long_series_equals_the_recurrence():
    values = np.random.default_rng(0).normal(size=3000)
    last, expected = 0.0, []
    for k, v in enumerate(values, start=1):
        last = last * 0.95 + 0.05 * v
        expected.append(last / (1 - 0.95 ** k))
    assert np.allclose(ema_debiased(values, 0.95), expected, atol=1e-12)


def test_rolling_mean_skips_nan():
    assert rolling_mean(np.array([1.0, 2.0, 3.0, np.nan, 5.0]), 2).tolist()[:3] == [1.0, 1.5, 2.5]
    out = rolling_mean(np.array([1.0, 2.0, 3.0, np.nan, 5.0]), 2)
    assert math.isnan(out[3]) and out[4] == 5.0


@pytest.mark.parametrize("text, spec", [("auto", SmoothSpec("rolling", 0)), ("none", SmoothSpec("none")), ("20", SmoothSpec("rolling", 20)),
                                        ("ema:0.9", SmoothSpec("ema", weight=0.9)), ("0.6", SmoothSpec("ema", weight=0.6))])
def test_parse_smooth(text, spec):
    assert parse_smooth(text) == spec


@pytest.mark.parametrize("text", ["ema:1.5", "2.5", "fast"])
def test_parse_smooth_rejects_nonsense(text):
    with pytest.raises(ValueError, match="--smooth"):
        parse_smooth(text)


def test_auto_smoothing_window_is_two_percent():
    values = np.arange(1000.0)
    assert smooth(values, SmoothSpec("rolling", 0))[-1] == np.mean(values[-20:])


def test_envelope_keeps_spikes_and_thin_keeps_the_last_point():
    y = np.zeros(10_000)
    y[5_003] = 100.0
    x_mid, low, high = envelope(np.arange(10_000.0), y, 100)
    assert len(x_mid) == 100 and high.max() == 100.0 and low.min() == 0.0
    xt, yt = thin(np.arange(10_001.0), np.arange(10_001.0), 100)
    assert len(xt) <= 102 and xt[-1] == 10_000.0


# ----------------------------------------------------------------------------- key families


def test_layer_suffixes_are_not_confused_with_ap50_or_map_50():
    keys = ["loss_ce", "loss_ce_0", "loss_ce_1", "AP50", "bbox/AP75", "mAP_50", "mAP_75", "bbox_mAP_50",
            "cardinality_error_0_unscaled", "cardinality_error_1_unscaled", "cardinality_error_unscaled",
            "loss_relation_real", "loss_relation_synthetic", "loss_relation", "loss_x_0", "k_log_layer1"]
    parts = parse_keys(keys)
    assert (parts["loss_ce_1"].base, parts["loss_ce_1"].layer) == ("loss_ce", 1)
    assert parts["loss_ce"].layer is None
    assert parts["AP50"].layer is None and parts["AP50"].base == "AP50"
    assert (parts["mAP_50"].base, parts["mAP_50"].layer) == ("mAP_50", None)
    assert (parts["bbox_mAP_50"].base, parts["bbox_mAP_50"].layer) == ("bbox_mAP_50", None)
    assert (parts["cardinality_error_1_unscaled"].layer, parts["cardinality_error_1_unscaled"].unscaled) == (1, True)
    assert parts["loss_relation_real"].split == "real" and parts["loss_relation_real"].base == "loss_relation"
    assert parts["loss_x_0"].layer is None  # a lone _0 with no loss_x beside it is no layer family
    assert parts["k_log_layer1"].layer is None


def test_loss_family():
    assert loss_family("loss_ce_subject") == "subject"
    assert loss_family("loss_bbox_object") == "object"
    assert loss_family("loss_relation") == "relation"
    assert loss_family("loss_dice") == "loss"


# ----------------------------------------------------------------------------- summary numbers


def test_summary_numbers_by_hand():
    steps = np.arange(0, 200, 10.0)  # 20 points
    loss = np.linspace(4.0, 2.1, 20)
    table = table_of({"total_loss": (steps, loss)}, {"bbox/AP": ([50, 100, 150], [10.0, 30.0, 20.0]),
                                                     "total_loss": ([50, 100, 150], [3.0, 2.0, 2.5])})
    summary = summarize(table, SmoothSpec("none"))
    train = next(k for k in summary.keys if k.split == "train" and k.key == "total_loss")
    assert (train.initial, train.final, train.min, train.max) == (4.0, 2.1, 2.1, 4.0)
    assert train.change == pytest.approx(-1.9) and train.change_pct == pytest.approx(-47.5)
    assert train.mean == pytest.approx(3.05) and train.points == 20
    # Last window: 10 points 3.0, 2.9, ..., 2.1 -> std 0.1 * sqrt(99 / 12) / mean 2.55 = 11.3%; 20 points
    # are too few for a convergence verdict (the window would be half the run).
    assert train.last_window_cv == pytest.approx(0.1 * math.sqrt(99 / 12) / 2.55)
    assert train.converged is None
    assert train.slope == pytest.approx(-0.01)  # 0.1 per 10 iterations
    ap = next(k for k in summary.keys if k.key == "bbox/AP")
    assert (ap.best, ap.best_step) == (30.0, 100.0)
    val_loss = next(k for k in summary.keys if k.split == "val" and k.key == "total_loss")
    assert (val_loss.best, val_loss.best_step) == (2.0, 100.0)  # lower is better for losses


def test_converged_when_the_last_window_is_flat():
    steps = np.arange(100.0)
    table = table_of({"loss": (steps, 1.0 + 0.001 * np.sin(steps))})
    assert summarize(table).keys[0].converged is True


@pytest.mark.parametrize("count, distinct", [(1, 5), (7, 3), (9, 2), (50, 4), (1000, 1000)])
def test_rolling_median9_is_the_median_of_each_edge_padded_window(count, distinct):
    values = np.random.default_rng(count).integers(0, distinct, size=count).astype(float)  # ties too
    padded = np.concatenate([np.repeat(values[0], 4), values, np.repeat(values[-1], 4)])
    expected = [float(np.median(padded[i: i + 9])) for i in range(count)]
    assert rolling_median9(values).tolist() == expected


def test_spikes_beyond_k_mads_of_the_running_median():
    rng = np.random.default_rng(1)
    y = 1.0 + np.exp(-np.arange(3000) / 800) + 0.02 * rng.standard_normal(3000)
    y[[100, 1500, 2900]] += 1.0
    mask, count = count_spikes(y)
    assert count == 3 and np.flatnonzero(mask).tolist() == [100, 1500, 2900]
    assert count_spikes(np.linspace(5.0, 1.0, 3000))[1] == 0  # a steep trend is no spike


def test_overfitting_flag():
    steps = np.arange(0, 1000, 10.0)
    falling = 2.0 - steps / 1000
    rising = {"total_loss": ([200, 400, 600, 800, 990], [1.8, 1.7, 1.75, 1.85, 1.95])}
    flagged = summarize(table_of({"total_loss": (steps, falling)}, rising), SmoothSpec("none")).overfit
    assert flagged.overfitting is True and flagged.key == "total_loss" and flagged.since_step == 600
    assert flagged.last_gap == pytest.approx(1.95 - (2.0 - 0.99))
    healthy = {"total_loss": ([200, 400, 600, 800, 990], [1.9, 1.7, 1.5, 1.4, 1.3])}
    assert summarize(table_of({"total_loss": (steps, falling)}, healthy)).overfit.overfitting is False


def test_write_summary_files(tmp_path):
    table = read_log(os.path.join(REAL, "d2-log__HaowenGuan__NYU-Semi-Supervise-Object-Detection.txt"))
    csv_path, md_path = write_summary([summarize(table)], str(tmp_path))
    import csv

    rows = list(csv.DictReader(open(csv_path)))
    total = next(r for r in rows if r["key"] == "total_loss" and r["split"] == "train")
    assert (total["initial"], total["final"], total["points"]) == ("0.1409", "0.1668", "801")
    ap = next(r for r in rows if r["key"] == "bbox/AP")
    # The 11th of the 16 copypaste blocks holds the highest AP (grep "copypaste: 1[0-9]\.").
    assert (ap["best"], ap["best_step"], ap["final"]) == ("14.9744", "10999", "14.2124")
    text = open(md_path).read()
    assert "best validation bbox/AP: 14.97 at iteration 10999" in text and "| train | total_loss |" in text


# ----------------------------------------------------------------------------- figures


def relation_table():
    steps = np.arange(0, 3000, 10.0)
    rng = np.random.default_rng(0)
    curve = lambda scale: scale * (1 + np.exp(-steps / 800)) * (1 + 0.05 * rng.standard_normal(len(steps)))
    train = {"total_loss": (steps, curve(5.0)), "lr": (steps, np.full(len(steps), 1e-4)), "time": (steps, curve(0.1))}
    for branch in ("subject", "object"):
        for term in ("ce", "bbox"):
            base = f"loss_{term}_{branch}"
            train[base] = (steps, curve(1.0))
            train.update({f"{base}_{i}": (steps, curve(1.0 + 0.3 * (3 - i))) for i in range(3)})
    train["loss_relation"] = (steps, curve(1.0))
    train["loss_relation_real"] = (steps, curve(0.8))
    train["loss_relation_synthetic"] = (steps, curve(1.2))
    train["class_error_subject"] = (steps, curve(30.0))
    val = {"bbox/AP": ([999, 1999, 2999], [10.0, 20.0, 25.0]), "SG/SGMeanRecall@50": ([999, 1999, 2999], [0.1, 0.2, 0.22]),
           "total_loss": ([999, 1999, 2999], [9.0, 8.0, 7.5])}
    return table_of(train, val)


def test_plan_figures_for_a_relation_model():
    names = [spec.name for spec in plan_figures([relation_table()], PlotOptions())]
    assert names == ["overview", "losses_subject", "losses_object", "losses_relation", "metrics", "real_vs_synthetic",
                     "validation", "train_vs_val"]


def test_layer_family_panel_has_one_distinct_colour_per_layer():
    table = relation_table()
    parts = parse_keys(table.train)
    bases = {"loss_ce_subject": [parts[k] for k in table.train if parts[k].base == "loss_ce_subject" and parts[k].split is None]}
    figure = family_figure([table], PlotOptions(), bases, "subject losses", True)
    lines = figure.axes[0].get_lines()
    labels = [line.get_label() for line in lines]
    assert labels == ["layer 0", "layer 1", "layer 2", "final layer"]
    assert len({line.get_color() for line in lines}) == 4
    assert lines[-1].get_color() == "black" and lines[-1].get_linewidth() > lines[0].get_linewidth()
    assert len(figure.legends) == 1  # one legend, outside the panels


def test_train_val_figure_gap_is_validation_minus_smoothed_train():
    steps = np.arange(0, 100.0)
    table = table_of({"total_loss": (steps, 10.0 - steps / 10)}, {"total_loss": ([49, 99], [6.0, 2.0])})
    figure = train_val_figure([table], PlotOptions(smooth=SmoothSpec("none")))
    gap_axis = figure.axes[1]
    gap = gap_axis.get_lines()[0].get_ydata()
    assert gap.tolist() == pytest.approx([6.0 - 5.1, 2.0 - 0.1])


def test_train_val_figure_without_validation_says_so():
    table = table_of({"total_loss": (np.arange(10.0), np.arange(10.0))})
    figure = train_val_figure([table], PlotOptions())
    assert "no validation loss logged" in figure.axes[0].get_title()


@pytest.mark.slow
def test_render_all_figures_as_png(tmp_path):
    table = relation_table()
    options = PlotOptions(dpi=40)
    paths = render_figures(plan_figures([table], options), [table], str(tmp_path), options)
    from PIL import Image

    assert len(paths) == 8
    for path in paths:
        with Image.open(path) as image:
            assert image.format == "PNG" and image.mode == "RGB" and image.size[0] > 100


@pytest.mark.parametrize("extension", ["svg", "pdf"])
def test_plot_train_val_loss_from_a_path_in_other_formats(tmp_path, extension):
    out = tmp_path / f"loss.{extension}"
    path = plot_train_val_loss(os.path.join(REAL, "detr-log__FarjadAhmed__detr_custom_dcmha.txt"), out, dpi=50)
    head = open(path, "rb").read(5)
    assert head == (b"<?xml" if extension == "svg" else b"%PDF-")


def test_plot_train_val_loss_png_is_300_dpi(tmp_path):
    table = read_log(os.path.join(REAL, "d2-metrics__Elbhnasy__Medical_Waste_Detection_Detectron2.json"))
    path = plot_train_val_loss(table, tmp_path / "loss_graph.png")
    from PIL import Image

    with Image.open(path) as image:
        assert image.info["dpi"] == pytest.approx((300, 300), abs=0.01)
        assert image.size[0] >= 1500


def test_plot_train_val_loss_rejects_unknown_extension(tmp_path):
    with pytest.raises(ValueError, match="unknown figure format"):
        plot_train_val_loss(relation_table(), tmp_path / "loss.jpg")


# ----------------------------------------------------------------------------- CJK labels


def test_cjk_labels_pick_an_installed_cjk_font(monkeypatch):
    from events.plotting import style

    monkeypatch.setattr(style, "find_cjk_font", lambda: "NanumGothic")
    rc, note = font_settings(["학습 손실", "total_loss"])
    assert rc["font.family"][0] == "NanumGothic" and note is None
    assert font_settings(["total_loss"]) == ({}, None)  # no CJK text: nothing changes


def test_cjk_labels_without_a_font_give_a_note(monkeypatch):
    from events.plotting import style

    monkeypatch.setattr(style, "find_cjk_font", lambda: None)
    rc, note = font_settings(["損失"])
    assert rc == {} and "no CJK font is installed" in note


@pytest.mark.skipif(__import__("events.plotting.style", fromlist=["x"]).find_cjk_font() is None,
                    reason="needs a CJK system font (e.g. apt install fonts-nanum); the selection logic is tested above")
def test_korean_title_renders_with_the_cjk_font(tmp_path):
    from matplotlib import font_manager
    from matplotlib.ft2font import FT2Font

    from events.plotting.render import figure_context

    table = table_of({"total_loss": (np.arange(10.0), np.arange(10.0))})
    options = PlotOptions(title="학습 곡선", dpi=40)
    spec = plan_figures([table], options)[0]
    with figure_context([table], options):
        title = spec.build()._suptitle
        font = FT2Font(font_manager.findfont(title.get_fontproperties()))
    assert "학습 곡선" in title.get_text()
    assert all(font.get_char_index(ord(char)) != 0 for char in "학습곡선"), font.fname
    assert render_figures([spec], [table], str(tmp_path), options) == [str(tmp_path / "overview.png")]


def _title_box(figure):
    """The figure title's extent in pixels, and the figure's width, once drawn."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return figure._suptitle.get_window_extent(canvas.get_renderer()), canvas.get_width_height()[0]


def test_a_figure_title_too_long_for_one_line_wraps_inside_the_figure():
    table = table_of({"total_loss": (np.arange(50.0), np.linspace(3, 1, 50))},
                     val={"total_loss": (np.arange(9.0, 50, 10), np.linspace(3.2, 1.5, 5))}, label="a_run_folder_with_a_long_name_2026")
    short_title = train_val_figure([table], PlotOptions())
    long_title = train_val_figure([table], PlotOptions(title="ablation: one-to-many matching, k=3, synthetic weight 0.5"))
    assert "\n" not in short_title._suptitle.get_text() and "\n" in long_title._suptitle.get_text()
    box, width = _title_box(long_title)
    assert 0 <= box.x0 and box.x1 <= width
    # The wrapped title sits above the panels, not on them.
    panels_top = max(ax.get_window_extent().y1 for ax in long_title.axes)
    title_bottom = box.y0
    assert title_bottom > panels_top + 12  # the panel title's line lies between


def test_compared_runs_get_one_validation_panel_per_metric_and_a_legend_of_runs():
    first, second = relation_table(), relation_table()
    first.label, second.label = "baseline", "speaq"
    second.val["bbox/APs"] = Series(np.array([999.0]), np.array([np.nan]))  # never a number: no panel
    specs = {spec.name: spec for spec in plan_figures([first, second], PlotOptions())}
    figure = specs["validation"].build()
    assert [ax.get_title() for ax in figure.axes] == ["bbox/AP", "SG/SGMeanRecall@50"]
    assert [text.get_text() for text in figure.legends[0].get_texts()] == ["baseline", "speaq"]


def test_one_evaluation_at_the_end_shows_over_the_whole_training_with_plain_ticks():
    """Two compared runs evaluated once at the end with near-equal AP (65.11574 vs 65.11570):
    the panel spans the training and its tick labels need no offset like 1e-5+6.51157e1."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from events.plotting.figures import validation_figure
    from events.plotting.render import figure_context

    steps = np.arange(0.0, 4000.0, 20.0)
    first = table_of({"total_loss": (steps, np.linspace(3, 1, len(steps)))}, val={"segm/AP": (np.array([3999.0]), np.array([65.11574]))})
    second = table_of({"total_loss": (steps, np.linspace(3, 1, len(steps)))}, val={"segm/AP": (np.array([4000.0]), np.array([65.11570]))})
    options = PlotOptions()
    with figure_context([first, second], options):
        figure = validation_figure([first, second], options, [("segm/AP", ["segm/AP"])])
        FigureCanvasAgg(figure).draw()
    ax = figure.axes[0]
    assert ax.get_xlim()[0] <= 0.0 and ax.get_xlim()[1] >= 4000.0
    low, high = ax.get_ylim()
    assert high - low >= 0.02 * 65.1 and low < 65.1157 < high
    for axis in (ax.xaxis, ax.yaxis):
        assert axis.get_major_formatter().get_offset() == ""
        labels = [tick.get_text() for tick in axis.get_ticklabels() if tick.get_text()]
        assert labels and all(len(label) <= 6 for label in labels), labels
