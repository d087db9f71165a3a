"""Hugging Face transformers' DETR through the plain-loop telemetry (``tools/train_hf_detr.py``)."""
from __future__ import annotations

import importlib.util
import signal
import subprocess
import sys

import pytest
import torch

from engine.config import load_config
from engine.demo.data import build_train_loader
from engine.demo.hf_detr import HfDetrTrainConfig, build_hf_detr, hf_detr_weight_dict, to_hf_labels
from engine.graceful_stop import GracefulStop, TrainingInterrupted
from engine.metrics import LossDictReducer
from engine.run_history import read_sessions
from events.plotting.families import parse_keys
from events.readers import read_log
from logging_fixture import restore_root_logger  # noqa: F401  (a fixture)
from train_net_outputs import REPO, read_metrics, tensorboard_scalars, train_net_env
from wandb_reader import find_run_files, read_offline_run

SCRIPT = REPO / "tools" / "train_hf_detr.py"
CONFIG = REPO / "configs" / "hf_detr.yaml"
HF_KEYS = ("loss_ce", "loss_bbox", "loss_giou", "cardinality_error")


def load_script():
    spec = importlib.util.spec_from_file_location("train_hf_detr", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_total_loss_weighted_is_the_models_own_loss():
    cfg = load_config(CONFIG, schema=HfDetrTrainConfig)
    torch.manual_seed(0)
    model = build_hf_detr(cfg)
    images, targets = next(iter(build_train_loader(cfg, seed=0)))
    outputs = model(pixel_values=images, labels=to_hf_labels(targets))
    assert set(outputs.loss_dict) == {f"{k}{s}" for k in HF_KEYS for s in ("", "_0", "_1")}

    reduced = LossDictReducer(hf_detr_weight_dict(cfg)).reduce(outputs.loss_dict, 0.0, iteration=0)
    assert reduced["total_loss_weighted"] == pytest.approx(outputs.loss.item(), rel=1e-6)
    # cardinality_error is a metric: logged, never part of a total.
    loss_terms = sum(v.item() for k, v in outputs.loss_dict.items() if k.startswith("loss"))
    assert reduced["total_loss"] == pytest.approx(loss_terms, rel=1e-6)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["MODEL.HF_DETR.NUM_QUERY", "5"], "unknown config key MODEL.HF_DETR.NUM_QUERY (did you mean MODEL.HF_DETR.NUM_QUERIES?)"),
        (["MODEL.DETR.CLASS_WEIGHT", "2.0"], "MODEL.DETR.CLASS_WEIGHT=2.0: transformers' DETR weights loss_ce by 1"),
        (["MODEL.DETR.NUM_REL_CLASSES", "7"], "MODEL.DETR.NUM_REL_CLASSES: transformers' DETR is a detection model"),
        (["MODEL.HF_DETR.BACKBONE_DEPTHS", "[1, 1]"], "BACKBONE_DEPTHS (2 stages) must have one entry per stage"),
        (["MODEL.HF_DETR.NUM_QUERIES", "0"], "MODEL.HF_DETR.NUM_QUERIES must be a finite number >= 1, got 0"),
    ],
)
def test_config_mistakes_are_one_line_before_anything_is_written(tmp_path, capsys, overrides, message):
    script = load_script()
    args = script.default_argument_parser(default_config=str(CONFIG)).parse_args(["OUTPUT_DIR", str(tmp_path / "out"), *overrides])
    assert script.main(args) == 2
    error = capsys.readouterr().err
    assert message in error and error.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_missing_transformers_names_the_extra(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers -> ImportError
    script = load_script()
    args = script.default_argument_parser(default_config=str(CONFIG)).parse_args(["OUTPUT_DIR", str(tmp_path / "out")])
    assert script.main(args) == 2
    assert "pip install 'detr-telemetry[hf]'" in capsys.readouterr().err


def test_a_stop_signal_ends_training_after_the_step_with_a_checkpoint(tmp_path, restore_root_logger):
    output_dir = tmp_path / "out"
    overrides = ["OUTPUT_DIR", str(output_dir), "WANDB.ENABLED", "False", "TENSORBOARD.ENABLED", "False"]
    cfg = load_config(CONFIG, overrides, schema=HfDetrTrainConfig)
    stop = GracefulStop()
    stop.signal = signal.SIGINT  # as if Ctrl-C came during the first step
    with pytest.raises(TrainingInterrupted, match="SIGINT after iteration 0"):
        load_script().train(cfg, resume=False, stop=stop)
    assert (output_dir / "last_checkpoint").read_text().strip() == "model_0000000.pth"
    assert [r["iteration"] for r in read_metrics(output_dir / "metrics.json")] == [0]
    assert read_sessions(str(output_dir / "train_history.json"))[-1]["status"] == "interrupted"


@pytest.mark.slow
def test_train_hf_detr_reaches_every_writer_resumes_and_replots(tmp_path):
    output_dir = tmp_path / "out"
    env = train_net_env(tmp_path)
    short = ["OUTPUT_DIR", str(output_dir), "TELEMETRY.WRITE_PERIOD", "5", "SOLVER.CHECKPOINT_PERIOD", "10"]

    def run(*args):
        result = subprocess.run([sys.executable, str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
        return result

    first = run(*short, "SOLVER.MAX_ITER", "15")
    every_key = {f"{k}{s}" for k in HF_KEYS for s in ("", "_0", "_1")} | {"total_loss", "total_loss_weighted", "lr", "grad_norm"}
    rows = read_metrics(output_dir / "metrics.json")
    assert [r["iteration"] for r in rows] == [4, 9, 14]
    assert every_key <= set(rows[-1])
    assert "loss_ce_1:" in first.stdout and "loss_ce_1:" in (output_dir / "log.txt").read_text()
    assert "loss_ce_1" in (output_dir / "report.html").read_text()  # the interactive report, as train_net writes

    run("--resume", *short, "SOLVER.MAX_ITER", "20")  # from the final checkpoint at iteration 14
    assert [r["iteration"] for r in read_metrics(output_dir / "metrics.json")] == [4, 9, 14, 19]
    history = read_sessions(str(output_dir / "train_history.json"))
    assert [(s["status"], s["start_iter"], s["resumed"]) for s in history] == [("completed", 0, False), ("completed", 15, True)]
    tb = tensorboard_scalars(output_dir)
    for key in every_key:
        (tag,) = [t for t in tb if t.split("/")[-1] == key]
        assert [step for step, _ in tb[tag]] == [4, 9, 14, 19], tag
    runs = [read_offline_run(path) for path in find_run_files(str(output_dir))]
    assert len({run.run_id for run in runs}) == 1  # the resumed session reopened the same run
    wandb_rows = [row for run in runs for row in run.history]
    assert [row["iteration"] for row in wandb_rows] == [4, 9, 14, 19]
    assert every_key <= set(wandb_rows[-1])

    # The replot reads the aux layers as layers of one loss and draws their panels.
    table = read_log(str(output_dir))
    layers = {parts.layer for parts in parse_keys(table.train).values() if parts.base == "loss_giou"}
    assert layers == {0, 1, None}
    plots = tmp_path / "plots"
    replot = subprocess.run(
        [sys.executable, str(REPO / "tools" / "vis_train_log.py"), "--log-file", str(output_dir), "--output-dir", str(plots), "--dpi", "50"],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert replot.returncode == 0, replot.stderr
    assert any(path.name.startswith("losses_") for path in plots.iterdir())
    assert (output_dir / "last_checkpoint").read_text().strip() == "model_final.pth"

    # Resuming the finished run says so and changes nothing (no session, no event file, no report).
    before = {p: p.read_bytes() for p in output_dir.rglob("*") if p.is_file()}
    again = run("--resume", *short, "SOLVER.MAX_ITER", "20")
    assert "is complete" in again.stdout and "iteration 19" in again.stdout
    assert {p: p.read_bytes() for p in output_dir.rglob("*") if p.is_file()} == before
