"""Kill tools/train_net.py with a real SIGKILL after its first checkpoint, resume it with --resume,
and check that every tool shows one seamless run: metrics.json complete and strictly increasing
with the killed run's extra records moved aside, TensorBoard showing each step once, the same
W&B run continued with every iteration once, smoothing windows, global averages and ETA carried
over from the checkpoint.

Training is bit-for-bit repeatable here (seed 42, one thread, the data stream a pure function of
the iteration, model/optimizer/scheduler state in the checkpoint), so the resumed run must
reproduce the killed run's records after the checkpoint exactly -- including window medians
whose windows reach back before the checkpoint, which only the restored storage can give.
"""
import dataclasses
import json
import os
import re
import signal
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any, Dict, List

import pytest

from events.tensorboard_writer import tensorboard_tag
from train_net_outputs import (
    TIMING_KEYS,
    console_sessions,
    eta_seconds,
    logged_iterations,
    read_metrics,
    run_train_net,
    tensorboard_scalars,
    train_net_command,
    train_net_env,
    wandb_history_rows,
)
from wandb_reader import find_run_files, read_offline_run

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

MAX_ITER = 40
CHECKPOINT_PERIOD = 10
WINDOW_SIZE = 8  # > 1, so the first records after the resume need the pre-checkpoint values
KILL_AFTER = 14  # kill once this iteration is in metrics.json: past the checkpoint at 9
OVERRIDES = [
    "SOLVER.MAX_ITER", MAX_ITER,
    "SOLVER.CHECKPOINT_PERIOD", CHECKPOINT_PERIOD,
    "TEST.EVAL_PERIOD", 0,  # only the final evaluation, recorded at MAX_ITER
    "TELEMETRY.WRITE_PERIOD", 1,  # every iteration on disk: nothing can hide a gap
    "TELEMETRY.WINDOW_SIZE", WINDOW_SIZE,
]


@dataclasses.dataclass
class KilledAndResumed:
    output_dir: Path
    checkpoint_iter: int  # iteration of the checkpoint the resume starts from
    killed_records: List[Dict[str, Any]]  # metrics.json right after the kill
    killed_wandb_state: Dict[str, Any]  # wandb_run.json right after the kill
    records: List[Dict[str, Any]]  # metrics.json at the end


def kill_after_first_checkpoint(command, env, cwd, metrics_file: Path, deadline_s: float = 600) -> None:
    """Start ``command`` and SIGKILL it once metrics.json holds iteration KILL_AFTER."""
    with open(cwd / "killed-run.log", "wb") as log:
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + deadline_s
        while max(logged_iterations(metrics_file), default=-1) < KILL_AFTER:
            assert process.poll() is None, f"training ended (exit {process.returncode}) before the kill"
            assert time.monotonic() < deadline, f"iteration {KILL_AFTER} not logged within {deadline_s} s"
            time.sleep(0.02)
        os.kill(process.pid, signal.SIGKILL)  # a real kill -9: no handler, no flush, no atexit
    finally:
        if process.poll() is None:
            process.kill()  # the SIGKILL above, or a failed assertion: never leave it running
        process.wait()
    assert process.returncode == -signal.SIGKILL


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> KilledAndResumed:
    root = tmp_path_factory.mktemp("train_net_resume")
    output_dir = root / "out"
    env = train_net_env(root)
    kill_after_first_checkpoint(train_net_command(output_dir, OVERRIDES), env, root, output_dir / "metrics.json")
    checkpoint = (output_dir / "last_checkpoint").read_text().strip()
    killed_records = read_metrics(output_dir / "metrics.json")
    killed_wandb_state = json.loads((output_dir / "wandb_run.json").read_text())

    run_train_net(train_net_command(output_dir, OVERRIDES, resume=True), env, cwd=root)
    return KilledAndResumed(
        output_dir=output_dir,
        checkpoint_iter=int(re.fullmatch(r"model_(\d+)\.pth", checkpoint).group(1)),
        killed_records=killed_records,
        killed_wandb_state=killed_wandb_state,
        records=read_metrics(output_dir / "metrics.json"),
    )


def resumed_from(run: KilledAndResumed) -> int:
    return run.checkpoint_iter + 1


def test_the_kill_landed_after_a_checkpoint_with_records_past_it(run):
    assert run.checkpoint_iter % CHECKPOINT_PERIOD == CHECKPOINT_PERIOD - 1
    assert run.killed_records[-1]["iteration"] > run.checkpoint_iter  # something to supersede
    assert run.killed_records[-1]["iteration"] < MAX_ITER - 1  # and something left to train
    history = json.loads((run.output_dir / "train_history.json").read_text())["sessions"]
    assert [(s["resumed"], s["start_iter"], s["status"]) for s in history] == [
        (False, 0, "running"),  # SIGKILL: the session never got to record its end
        (True, resumed_from(run), "completed"),
    ]
    assert history[1]["last_iteration"] == MAX_ITER


def test_metrics_json_is_complete_and_strictly_increasing(run):
    # WRITE_PERIOD 1: every iteration once, then the final evaluation at MAX_ITER.
    assert [r["iteration"] for r in run.records] == list(range(MAX_ITER + 1))


def test_records_up_to_the_checkpoint_are_kept_untouched(run):
    kept = [r for r in run.killed_records if r["iteration"] <= run.checkpoint_iter]
    assert len(kept) == run.checkpoint_iter + 1
    assert run.records[: len(kept)] == kept


def test_killed_records_after_the_checkpoint_are_moved_aside(run):
    side_files = sorted(p.name for p in run.output_dir.glob("metrics.json.superseded-at-*"))
    assert side_files == [f"metrics.json.superseded-at-{resumed_from(run)}"]
    moved = read_metrics(run.output_dir / side_files[0])
    assert moved == [r for r in run.killed_records if r["iteration"] > run.checkpoint_iter]


def test_resumed_run_reproduces_the_killed_steps_with_restored_windows(run):
    """Window medians right after the resume cover steps from before the checkpoint: equal
    values mean the storage's windows came back with the checkpoint."""
    resumed = {r["iteration"]: r for r in run.records}
    moved = [r for r in run.killed_records if r["iteration"] > run.checkpoint_iter]
    assert moved
    for killed in moved:
        again = resumed[killed["iteration"]]
        assert set(again) == set(killed)
        differing = {k: (killed[k], again[k]) for k in killed if k not in TIMING_KEYS and killed[k] != again[k]}
        assert not differing, f"iteration {killed['iteration']}: {differing}"


def test_console_global_average_and_eta_continue_from_the_checkpoint(run):
    killed, resumed = console_sessions(run.output_dir / "log.txt")
    assert [int(line["iter"]) for line in resumed] == list(range(resumed_from(run), MAX_ITER))
    # Each console line's last_time is that iteration's own step time (4 decimals).
    step_times = [float(line["last_time"]) for line in killed if int(line["iter"]) <= run.checkpoint_iter]
    assert len(step_times) == run.checkpoint_iter + 1
    first = resumed[0]
    iteration = int(first["iter"])
    step_times.append(float(first["last_time"]))

    # "time:" is the running average over the whole run, not over the resumed steps only.
    assert float(first["time"]) == pytest.approx(statistics.fmean(step_times), abs=1.5e-4)

    # ETA: median step time over the run so far times the iterations left -- not from 0.
    remaining = MAX_ITER - iteration - 1
    expected_eta = statistics.median(step_times) * remaining
    logged_eta = {r["iteration"]: r for r in run.records}[iteration]["eta_seconds"]
    assert logged_eta == pytest.approx(expected_eta, abs=remaining * 5e-5 + 1e-6)
    assert eta_seconds(first["eta"]) == int(logged_eta)
    assert logged_eta < statistics.median(step_times) * (MAX_ITER - 1)


def test_tensorboard_shows_each_step_once_with_the_resumed_values(run):
    scalars = tensorboard_scalars(run.output_dir)
    for tag, points in scalars.items():
        steps = [step for step, _ in points]
        assert steps == sorted(set(steps)), f"{tag}: steps repeat or go back"
    assert [step for step, _ in scalars[tensorboard_tag("total_loss")]] == list(range(MAX_ITER))
    shown = {(tag, step): value for tag, points in scalars.items() for step, value in points}
    expected = {(tensorboard_tag(k), r["iteration"]): v for r in run.records for k, v in r.items() if k != "iteration"}
    assert set(shown) == set(expected)
    for point, value in expected.items():
        assert shown[point] == pytest.approx(value, rel=1e-6, abs=1e-12), point


def test_wandb_run_is_the_same_run_continued(run):
    state = json.loads((run.output_dir / "wandb_run.json").read_text())
    run_id = run.killed_wandb_state["run_id"]
    assert state == {"run_id": run_id, "last_iteration": MAX_ITER}
    run_files = find_run_files(str(run.output_dir))
    assert len(run_files) == 2  # the killed session's and the resumed session's
    for path in run_files:
        assert os.path.basename(path) == f"run-{run_id}.wandb"
        assert os.path.basename(os.path.dirname(path)).endswith(f"-{run_id}")
    assert read_offline_run(run_files[1]).run_id == run_id


def test_wandb_holds_every_iteration_once(run):
    """W&B never goes back: it keeps the killed session's rows and continues after the last
    one it holds; together the two sessions must still give every iteration exactly once."""
    killed_file, resumed_file = find_run_files(str(run.output_dir))
    killed_rows = wandb_history_rows(Path(killed_file))  # no exit record: the process was killed
    resumed_rows = [row for row in read_offline_run(resumed_file).history]
    iterations = [row["iteration"] for row in killed_rows + resumed_rows]
    assert iterations == list(range(MAX_ITER + 1)), (
        f"killed session holds {[r['iteration'] for r in killed_rows]}, "
        f"resumed session {[r['iteration'] for r in resumed_rows]}"
    )
    # Every value is the one metrics.json holds (the killed rows after the checkpoint equal the
    # resumed ones, training being repeatable), timings aside.
    by_iter = {r["iteration"]: r for r in run.records}
    for row in killed_rows + resumed_rows:
        record = by_iter[row["iteration"]]
        values = {k: v for k, v in row.items() if not k.startswith("_") and k not in TIMING_KEYS}
        assert values == {k: pytest.approx(record[k], rel=1e-12) for k in values}
