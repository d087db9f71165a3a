"""tools/train_net.py at the edges of a run's life, as real processes: ``--resume`` on a run that
already finished (anywhere on the command line), Ctrl-C and SIGTERM during training, the W&B
service dying mid-run, and secrets on the command line staying out of every output.

Nothing here waits a fixed time: each signal or kill is sent once metrics.json shows the run got
far enough, and every wait has a generous deadline (a busy CI machine is slow, never wrong).
"""
import hashlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict

import pytest
import torch

from train_net_outputs import (
    logged_iterations,
    png_size_and_dpi,
    read_metrics,
    run_train_net,
    tensorboard_scalars,
    train_net_command,
    train_net_env,
)
from events.tensorboard_writer import tensorboard_tag
from wandb_reader import find_run_files, iter_records, read_offline_run

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[1]
DEADLINE_S = 600
SMALL = ["SOLVER.CHECKPOINT_PERIOD", 1000, "TEST.EVAL_PERIOD", 0, "TELEMETRY.WRITE_PERIOD", 1]

# Pasted by mistake: an OpenAI-style key as the W&B group, a 40-character W&B-key-shaped name.
GROUP_SECRET = "sk-proj" + "Ab3dE5gH7jK9mN1pQ3sT5vX7zA9cE1gI3kM5"
NAME_SECRET = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c"


def start(command, cwd: Path, env) -> subprocess.Popen:
    """A training process in its own process group (as a terminal's foreground job is), with
    stdout/stderr in files next to it."""
    return subprocess.Popen(
        command, cwd=cwd, env=env, start_new_session=True,
        stdout=open(cwd / "stdout.txt", "w"), stderr=open(cwd / "stderr.txt", "w"),
    )


def wait_for_iteration(process: subprocess.Popen, metrics_file: Path, iteration: int) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while max(logged_iterations(metrics_file), default=-1) < iteration:
        assert process.poll() is None, f"training ended (exit {process.returncode}) before iteration {iteration}"
        assert time.monotonic() < deadline, f"iteration {iteration} not logged within {DEADLINE_S} s"
        time.sleep(0.05)


def finish(process: subprocess.Popen, cwd: Path):
    """(exit code, stdout, non-empty stderr lines) once the process ended by itself."""
    try:
        process.wait(timeout=DEADLINE_S)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    stderr = [line for line in (cwd / "stderr.txt").read_text().splitlines() if line.strip()]
    return process.returncode, (cwd / "stdout.txt").read_text(), stderr


def snapshot(directory: Path) -> Dict[str, str]:
    """Every file under ``directory`` with a hash of its bytes."""
    return {
        str(path.relative_to(directory)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(directory.rglob("*")) if path.is_file()
    }


# --------------------------------------------------------------------------------------------
# A finished run (with secrets on its command line)
# --------------------------------------------------------------------------------------------
FINISHED_MAX_ITER = 6


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("finished")
    output_dir = root / "out"
    overrides = [*SMALL, "SOLVER.MAX_ITER", FINISHED_MAX_ITER, "WANDB.GROUP", GROUP_SECRET, "WANDB.NAME", NAME_SECRET]
    run_train_net(train_net_command(output_dir, overrides), train_net_env(root), cwd=root)
    return root, output_dir, overrides


def test_resume_of_a_finished_run_says_so_and_changes_nothing(finished_run):
    root, output_dir, overrides = finished_run
    before = snapshot(output_dir)
    # --resume after the KEY VALUE overrides, where a user appends it to the previous command.
    command = train_net_command(output_dir, overrides) + ["--resume"]
    result = subprocess.run(
        command, cwd=root, env=train_net_env(root), capture_output=True, text=True, timeout=DEADLINE_S
    )
    assert result.returncode == 0, result.stderr
    [line] = [line for line in result.stdout.splitlines() if line.strip()]
    assert "is complete" in line and f"iteration {FINISHED_MAX_ITER - 1}" in line and str(output_dir) in line
    assert result.stderr.strip() == ""
    assert snapshot(output_dir) == before  # no phantom iteration, nothing moved aside or appended

    listed = subprocess.run(
        [sys.executable, str(REPO / "tools" / "list_runs.py"), str(root)], capture_output=True, text=True, timeout=120
    )
    row = [line for line in listed.stdout.splitlines() if str(output_dir) in line]
    assert row and row[0].split()[1:4] == ["completed", str(FINISHED_MAX_ITER), "1"], listed.stdout


def test_secrets_on_the_command_line_reach_no_output(finished_run):
    _, output_dir, _ = finished_run
    for path in output_dir.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert GROUP_SECRET.encode() not in data and NAME_SECRET.encode() not in data, path
    # ... and each output shows where it was: the same redaction everywhere.
    assert "WANDB.GROUP '<redacted>' WANDB.NAME '<redacted>'" in (output_dir / "log.txt").read_text()
    [session] = json.loads((output_dir / "train_history.json").read_text())["sessions"]
    assert "WANDB.GROUP '<redacted>' WANDB.NAME '<redacted>'" in session["command"]
    [run_file] = find_run_files(str(output_dir))
    run = read_offline_run(run_file)
    assert run.group == "<redacted>" and run.display_name == "<redacted>"
    assert run.config["WANDB"]["GROUP"] == "<redacted>" and run.config["WANDB"]["NAME"] == "<redacted>"
    # wandb's run metadata: the command line it records (and uploads online) as ``args``.
    [args] = [list(r.environment.args) for r in iter_records(run_file)
              if r.WhichOneof("record_type") == "environment" and r.environment.args]
    assert args[args.index("WANDB.GROUP") + 1] == "<redacted>" and args[args.index("WANDB.NAME") + 1] == "<redacted>"


# --------------------------------------------------------------------------------------------
# Ctrl-C and SIGTERM
# --------------------------------------------------------------------------------------------
INTERRUPT_MAX_ITER = 16
INTERRUPT_AFTER = 3  # signal once this iteration is on disk


def interrupt(tmp_path, signum):
    """Start a run, send ``signum`` mid-training, wait for it to end by itself."""
    output_dir = tmp_path / "out"
    env = train_net_env(tmp_path)
    process = start(train_net_command(output_dir, [*SMALL, "SOLVER.MAX_ITER", INTERRUPT_MAX_ITER]), tmp_path, env)
    wait_for_iteration(process, output_dir / "metrics.json", INTERRUPT_AFTER)
    if signum == signal.SIGINT:
        os.killpg(process.pid, signum)  # Ctrl-C: the terminal signals the whole foreground group
    else:
        os.kill(process.pid, signum)  # a scheduler's stop: the process itself
    code, _, stderr = finish(process, tmp_path)
    return output_dir, env, code, stderr


@pytest.mark.parametrize("signum, exit_code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_a_signal_stops_after_the_step_with_a_checkpoint_and_every_writer_flushed(tmp_path, signum, exit_code):
    output_dir, env, code, stderr = interrupt(tmp_path, signum)

    assert code == exit_code
    assert len(stderr) == 1, stderr  # no traceback: one line saying what happened and what to do
    name = signal.Signals(signum).name
    assert stderr[0].startswith(f"{name}: training stopped after iteration ")
    stopped = int(stderr[0].split("after iteration ")[1].split(";")[0])
    assert INTERRUPT_AFTER <= stopped < INTERRUPT_MAX_ITER - 1

    checkpoint = output_dir / f"model_{stopped:07d}.pth"
    assert f"checkpoint saved to {checkpoint};" in stderr[0] and "resume with: " in stderr[0]
    assert (output_dir / "last_checkpoint").read_text().strip() == checkpoint.name
    assert torch.load(checkpoint, weights_only=True)["trainer"]["iteration"] == stopped

    # Every writer holds the last step: metrics.json, TensorBoard, and a finished W&B run.
    assert [r["iteration"] for r in read_metrics(output_dir / "metrics.json")] == list(range(stopped + 1))
    assert [s for s, _ in tensorboard_scalars(output_dir)[tensorboard_tag("total_loss")]] == list(range(stopped + 1))
    [run_file] = find_run_files(str(output_dir))
    assert [row["iteration"] for row in read_offline_run(run_file).history] == list(range(stopped + 1))

    [session] = json.loads((output_dir / "train_history.json").read_text())["sessions"]
    assert session["status"] == "interrupted" and session["last_iteration"] == stopped

    if signum == signal.SIGINT:
        # The printed command continues the run seamlessly.
        command = shlex.split(stderr[0].split("resume with: ")[1])
        assert command[0] == "python" and "--resume" in command
        run_train_net([sys.executable, *command[1:]], env, cwd=tmp_path)
        iterations = [r["iteration"] for r in read_metrics(output_dir / "metrics.json")]
        assert iterations == list(range(INTERRUPT_MAX_ITER + 1))  # + the final evaluation
        assert not list(output_dir.glob("metrics.json.superseded-at-*"))  # nothing to supersede


# --------------------------------------------------------------------------------------------
# The W&B service dies mid-run
# --------------------------------------------------------------------------------------------
def wandb_core_of(pid: int) -> int:
    """The pid of the wandb-core process serving ``pid`` (it is started with ``--pid <pid>``)."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv[0].endswith(b"wandb-core") and b"--pid" in argv:
            if argv[argv.index(b"--pid") + 1] == str(pid).encode():
                return int(entry)
    raise AssertionError(f"no wandb-core process serves pid {pid}")


def test_killed_wandb_service_disables_only_the_wandb_writer(tmp_path):
    output_dir = tmp_path / "out"
    max_iter = 12
    command = train_net_command(output_dir, [*SMALL, "SOLVER.MAX_ITER", max_iter])
    process = start(command, tmp_path, train_net_env(tmp_path))
    wait_for_iteration(process, output_dir / "metrics.json", 2)
    os.kill(wandb_core_of(process.pid), signal.SIGKILL)
    code, _, stderr = finish(process, tmp_path)

    assert code == 0, stderr
    assert not [line for line in stderr if "Traceback" in line or "Error" in line], stderr
    log = (output_dir / "log.txt").read_text()
    assert log.count("WandbWriter failed") == 1 and "disabled for the rest of training" in log
    assert [r["iteration"] for r in read_metrics(output_dir / "metrics.json")] == list(range(max_iter + 1))
    (width, height), _ = png_size_and_dpi(output_dir / "loss_graph.png")
    assert width > 1000 and height > 300
    [session] = json.loads((output_dir / "train_history.json").read_text())["sessions"]
    assert session["status"] == "completed"
