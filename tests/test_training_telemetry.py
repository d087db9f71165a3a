"""``engine.loop.TrainingTelemetry``: a hand-written loop (DETR ``main.py`` style) reaching every writer."""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from engine.config import get_cfg
from engine.loop import TrainingTelemetry
from engine.metrics import NonFiniteLossError
from engine.run_history import read_sessions
from events.readers import read_log
from logging_fixture import restore_root_logger  # noqa: F401  (a fixture)
from train_net_outputs import REPO, tensorboard_scalars, train_net_env
from wandb_reader import find_run_files, isolate_wandb, read_offline_run

WEIGHT_DICT = {"loss_ce": 1.0, "loss_bbox": 5.0, "loss_ce_0": 1.0, "loss_bbox_0": 5.0}


@pytest.fixture(autouse=True)
def offline_wandb(monkeypatch, tmp_path):
    isolate_wandb(monkeypatch, str(tmp_path / "wandb-home"))


def make_cfg(tmp_path, max_iter=12, period=5, **overrides):
    cfg = get_cfg()
    cfg.OUTPUT_DIR = str(tmp_path / "out")
    cfg.SOLVER.MAX_ITER = max_iter
    cfg.TELEMETRY.WRITE_PERIOD = period
    cfg.WANDB.MODE = "offline"
    for key, value in overrides.items():
        node, leaf = key.rsplit(".", 1)
        setattr(cfg[node], leaf, value)
    return cfg


def loss_dict(iteration):
    """A DETR-like loss dict that requires grad, with an aux layer and a metric."""
    w = torch.tensor(1.0 + 0.01 * iteration, requires_grad=True)
    return {"loss_ce": w * 2, "loss_bbox": w / 10, "loss_ce_0": w * 3, "loss_bbox_0": w / 5, "class_error": w * 40}


def records(cfg):
    with open(os.path.join(cfg.OUTPUT_DIR, "metrics.json")) as f:
        return [json.loads(line) for line in f]


def sessions(output_dir):
    """``(status, start_iter, last_iteration)`` of each session in train_history.json."""
    found = read_sessions(os.path.join(output_dir, "train_history.json"))
    return [(s["status"], s["start_iter"], s["last_iteration"]) for s in found]


def run_epochs(telemetry, epochs, iters_per_epoch, fail_at=None):
    for epoch in range(epochs):
        for _ in telemetry.timed(range(iters_per_epoch)):
            if telemetry.iter == fail_at:
                raise RuntimeError("simulated crash")
            telemetry.step(loss_dict(telemetry.iter), WEIGHT_DICT, lr=1e-4, epoch=epoch, grad_norm=0.5)


def test_every_step_reaches_all_four_writers_with_epoch(tmp_path):
    cfg = make_cfg(tmp_path)
    with TrainingTelemetry.from_config(cfg, prepare_output=False) as telemetry:
        run_epochs(telemetry, epochs=3, iters_per_epoch=4)
        assert telemetry.iter == 12

    rows = records(cfg)
    assert [r["iteration"] for r in rows] == [4, 9, 11]  # every period, and the last step
    assert sessions(cfg.OUTPUT_DIR) == [("completed", 0, 11)]  # tools/list_runs.py lists it
    last = rows[-1]
    w = 1.0 + 0.01 * 5.5  # losses are reported as the median of their window (iterations 0..11)
    assert last["epoch"] == 3.0 and last["lr"] == 1e-4 and last["grad_norm"] == 0.5  # 3 epochs done
    assert last["total_loss_weighted"] == pytest.approx(w * (2 + 5 * 0.1 + 3 + 5 * 0.2), rel=1e-5)
    assert last["class_error"] == pytest.approx(40 * w, rel=1e-5)
    assert "time" in last and "data_time" in last

    tb = tensorboard_scalars(Path(cfg.OUTPUT_DIR))
    tb_loss = next(values for tag, values in tb.items() if tag.endswith("/loss_ce_0"))
    assert [step for step, _ in tb_loss] == [4, 9, 11]
    assert any(tag.endswith("epoch") for tag in tb)

    (run_file,) = find_run_files(cfg.OUTPUT_DIR)
    history = read_offline_run(run_file).history
    assert [row["iteration"] for row in history] == [4, 9, 11]
    assert history[-1]["epoch"] == 3 and "total_loss_weighted" in history[-1]

    # The replot can put the epoch on the x axis: 4 steps per epoch, so iteration 4 ends 1.25 epochs.
    table = read_log(os.path.join(cfg.OUTPUT_DIR, "metrics.json"))
    assert list(table.x_of(table.train["loss_ce"], "epoch")) == [1.25, 2.5, 3.0]


def test_output_dir_alone_sets_up_console_and_log_txt(tmp_path, capsys, restore_root_logger):
    output_dir = tmp_path / "run"
    with TrainingTelemetry(str(output_dir), max_iter=3, run_config={"lr": 1e-4, "epochs": 1}) as telemetry:
        for _ in range(3):
            telemetry.step(loss_dict(telemetry.iter))
    console = capsys.readouterr().out
    assert "iter: 2" in console and "loss_ce_0:" in console
    assert "iter: 2" in (output_dir / "log.txt").read_text()
    (run_file,) = find_run_files(str(output_dir))
    config = read_offline_run(run_file).config
    assert {k: v for k, v in config.items() if k != "_wandb"} == {"lr": 1e-4, "epochs": 1}

    # A fresh start in the same directory moves the earlier run aside instead of appending.
    with TrainingTelemetry(str(output_dir), max_iter=1) as telemetry:
        telemetry.step(loss_dict(0))
    (archive,) = [p for p in output_dir.iterdir() if p.name.startswith("archived-")]
    assert (archive / "metrics.json").exists()
    assert [json.loads(line)["iteration"] for line in (output_dir / "metrics.json").open()] == [0]


def test_resume_from_state_dict_in_the_users_checkpoint(tmp_path):
    cfg = make_cfg(tmp_path)
    checkpoint = tmp_path / "checkpoint.pth"
    with pytest.raises(RuntimeError, match="simulated crash"):
        with TrainingTelemetry.from_config(cfg, prepare_output=False) as telemetry:
            for _ in range(6):
                telemetry.step(loss_dict(telemetry.iter))
            torch.save({"telemetry": telemetry.state_dict()}, checkpoint)  # at iteration 6
            run_epochs(telemetry, epochs=1, iters_per_epoch=10, fail_at=8)
    assert [r["iteration"] for r in records(cfg)] == [4, 7]  # 7: written when the crash closed it

    state = torch.load(checkpoint, weights_only=True)["telemetry"]
    with TrainingTelemetry.from_config(cfg, state=state, prepare_output=False) as telemetry:
        assert telemetry.iter == 6
        while telemetry.iter < cfg.SOLVER.MAX_ITER:
            telemetry.step(loss_dict(telemetry.iter))
        # The smoothing windows and global averages continue: 12 values of iterations 0..11.
        assert len(telemetry.storage.history("loss_ce")) == 12

    assert [r["iteration"] for r in records(cfg)] == [4, 9, 11]
    assert sessions(cfg.OUTPUT_DIR) == [("crashed", 0, 7), ("completed", 6, 11)]
    superseded = Path(cfg.OUTPUT_DIR) / "metrics.json.superseded-at-6"
    assert [json.loads(line)["iteration"] for line in superseded.open()] == [7]
    tb_steps = [s for tag, values in tensorboard_scalars(Path(cfg.OUTPUT_DIR)).items() if tag.endswith("/loss_ce") for s, _ in values]
    assert tb_steps == [4, 9, 11]


def test_non_finite_loss_raises_and_keeps_what_was_logged(tmp_path):
    cfg = make_cfg(tmp_path, **{"WANDB.ENABLED": False, "TENSORBOARD.ENABLED": False})
    with pytest.raises(NonFiniteLossError, match="iteration=7: loss_bbox"):
        with TrainingTelemetry.from_config(cfg, prepare_output=False) as telemetry:
            for iteration in range(12):
                values = loss_dict(iteration)
                if iteration == 7:
                    values["loss_bbox"] = torch.tensor(math.nan)
                telemetry.step(values, WEIGHT_DICT)
    assert [r["iteration"] for r in records(cfg)] == [4, 6]
    assert sessions(cfg.OUTPUT_DIR) == [("non-finite values", 0, 6)]


def test_misuse_is_named(tmp_path):
    with pytest.raises(ValueError, match="needs max_iter"):
        TrainingTelemetry(str(tmp_path))
    cfg = make_cfg(tmp_path, **{"WANDB.ENABLED": False, "TENSORBOARD.ENABLED": False})
    with pytest.raises(ValueError, match=r"state must be a TrainingTelemetry.state_dict\(\); got a mapping with keys \['epoch', 'model'\]"):
        TrainingTelemetry.from_config(cfg, state={"model": {}, "epoch": 3}, prepare_output=False)
    telemetry = TrainingTelemetry.from_config(cfg, prepare_output=False)
    with pytest.raises(ValueError, match=r"\['loss_ce'\] given both"):
        telemetry.step({"loss_ce": 1.0}, loss_ce=2.0)
    telemetry.close()
    with pytest.raises(RuntimeError, match="after close"):
        telemetry.step({"loss_ce": 1.0})



def test_command_line_in_train_history_hides_what_the_run_config_hides(tmp_path, monkeypatch):
    # "--pw" (argparse dest "password") is no secret-sounding name, so only the recorded run
    # config, where W&B hides "password", tells the command line to hide its value too.
    monkeypatch.setattr(sys, "argv", ["train.py", "--epochs", "1", "--pw", "hunter2-hunter2"])
    cfg = make_cfg(tmp_path, max_iter=2, **{"WANDB.ENABLED": False, "TENSORBOARD.ENABLED": False})
    with TrainingTelemetry(cfg.OUTPUT_DIR, cfg=cfg, run_config={"password": "hunter2-hunter2", "epochs": 1},
                           prepare_output=False) as telemetry:
        for _ in range(2):
            telemetry.step(loss_dict(telemetry.iter))
    (session,) = read_sessions(os.path.join(cfg.OUTPUT_DIR, "train_history.json"))
    assert "hunter2" not in session["command"] and "--epochs 1" in session["command"]
    assert "<redacted>" in session["command"]

LOOP_SCRIPT = """
import sys, time, torch
from engine.loop import TrainingTelemetry

telemetry = TrainingTelemetry(sys.argv[1], max_iter=10**6)
{body}
"""
WITH_BODY = """
with telemetry:
    while True:
        telemetry.step({"loss_ce": torch.tensor(1.0 + telemetry.iter)}, epoch=telemetry.iter // 4)
        if telemetry.iter == 8:  # iterations 0..7 done, all inside the first write period (20)
            print("stepping", flush=True)
        time.sleep(0.01)
"""
# No ``with`` and no close(): the interpreter's exit closes it.
BARE_BODY = WITH_BODY.replace("with telemetry:\n", "if True:\n")


@pytest.mark.slow
@pytest.mark.parametrize("body", [WITH_BODY, BARE_BODY], ids=["with", "no-with"])
def test_ctrl_c_flushes_and_closes_every_writer(tmp_path, body):
    output_dir = tmp_path / "out"
    script = tmp_path / "loop.py"
    script.write_text(LOOP_SCRIPT.format(body=textwrap.dedent(body)))
    env = train_net_env(tmp_path)
    env["PYTHONPATH"] = str(REPO)
    process = subprocess.Popen(
        [sys.executable, str(script), str(output_dir)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout.readline().strip() == "stepping"  # waits however long start-up takes
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode != 0 and "KeyboardInterrupt" in stderr

    rows = [json.loads(line) for line in (output_dir / "metrics.json").open()]
    last = rows[-1]["iteration"]
    assert last >= 7 and rows[-1]["epoch"] == last // 4  # the partial period was written
    assert f"iter: {last}" in (output_dir / "log.txt").read_text()
    tb_steps = [s for tag, values in tensorboard_scalars(output_dir).items() if tag.endswith("/loss_ce") for s, _ in values]
    assert tb_steps[-1] == last
    (run_file,) = find_run_files(str(output_dir))
    assert read_offline_run(run_file).history[-1]["iteration"] == last  # run finished (exit record)
    assert sessions(output_dir) == [("interrupted", 0, last)]


def test_deferred_reduction_writes_the_same_records(tmp_path):
    per_step, deferred = (
        make_cfg(tmp_path / name, **{"WANDB.ENABLED": False, "TENSORBOARD.ENABLED": False, "TELEMETRY.DEFERRED_REDUCTION": flag})
        for name, flag in (("per-step", False), ("deferred", True))
    )
    for cfg in (per_step, deferred):
        with TrainingTelemetry.from_config(cfg, prepare_output=False) as telemetry:
            for _ in range(cfg.SOLVER.MAX_ITER):
                telemetry.step(loss_dict(telemetry.iter), WEIGHT_DICT, data_time=0.0)
    timings = {"time", "eta_seconds"}
    strip = lambda rows: [{k: v for k, v in r.items() if k not in timings} for r in rows]  # noqa: E731
    assert strip(records(deferred)) == strip(records(per_step))
    assert [r["iteration"] for r in records(deferred)] == [4, 9, 11]


def two_rank_loop(rank, world_size, output_dir):
    """Each rank logs its own values; rank 1 alone has a synthetic split key."""
    from engine.loop import TrainingTelemetry

    cfg = get_cfg()
    cfg.TENSORBOARD.ENABLED = cfg.WANDB.ENABLED = False
    cfg.SOLVER.MAX_ITER, cfg.TELEMETRY.WRITE_PERIOD = 4, 2
    with TrainingTelemetry(output_dir, cfg=cfg) as telemetry:
        for _ in range(4):
            values = {"loss_ce": torch.tensor(1.0 + rank)}
            if rank == 1:
                values["loss_ce_synthetic"] = torch.tensor(5.0)
            telemetry.step(values, lr=0.1, grad_norm=float(rank))
        latest = {k: v for k, (v, _) in telemetry.storage.latest().items() if k not in ("time", "data_time", "rank_data_time")}
    return latest


@pytest.mark.distributed
def test_two_ranks_write_one_reduced_stream(tmp_path, restore_root_logger):
    from dist_utils import run_distributed

    output_dir = str(tmp_path / "out")
    rank0, rank1 = run_distributed(two_rank_loop, world_size=2, args=(output_dir,))
    assert rank0 == rank1  # every rank holds the same reduced values
    assert rank0["loss_ce"] == 1.5 and rank0["loss_ce_synthetic"] == 5.0 and rank0["grad_norm"] == 0.5
    with open(os.path.join(output_dir, "metrics.json")) as f:
        assert [json.loads(line)["iteration"] for line in f] == [1, 3]  # written once, by rank 0
