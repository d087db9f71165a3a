"""The README's "Using it in your own trainer" snippets, executed exactly as written."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from readme_snippets import readme_snippet
from train_net_outputs import REPO, read_metrics, train_net_env


def run_snippet(code: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """Run ``code`` as a user would from a clone: in a directory holding the repo's configs."""
    workdir = tmp_path / "clone"
    workdir.mkdir()
    (workdir / "configs").symlink_to(REPO / "configs")
    script = workdir / "snippet.py"
    script.write_text(code)
    env = train_net_env(tmp_path)
    env["PYTHONPATH"] = str(REPO)
    result = subprocess.run([sys.executable, str(script)], cwd=workdir, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.mark.slow
def test_plain_loop_snippet(tmp_path):
    result = run_snippet(readme_snippet("plain-loop"), tmp_path)
    output_dir = tmp_path / "clone" / "outputs" / "plain-loop"
    rows = read_metrics(output_dir / "metrics.json")
    # 3 epochs of 25 steps, then 2 more after the resume: every period once, in order.
    assert [r["iteration"] for r in rows] == [19, 39, 59, 74, 79, 99, 119, 124]
    assert rows[-1]["epoch"] == 5.0 and {"loss_bbox_0", "class_error", "grad_norm", "total_loss_weighted"} <= set(rows[-1])
    assert "iter: 119" in result.stdout and "iter: 119" in (output_dir / "log.txt").read_text()
    assert "Telemetry resumes at iteration 75" in result.stdout


@pytest.mark.slow
def test_our_trainer_snippet(tmp_path):
    result = run_snippet(readme_snippet("our-trainer"), tmp_path)
    output_dir = tmp_path / "clone" / "outputs" / "my-trainer"
    rows = read_metrics(output_dir / "metrics.json")
    assert [r["iteration"] for r in rows if "total_loss" in r] == [19, 39]
    assert "iter: 19" in result.stdout and "loss_relation_0" in rows[-1]
    assert json.loads((output_dir / "wandb_run.json").read_text())
    assert (output_dir / "model_final.pth").exists()


def test_storage_snippet(tmp_path):
    result = run_snippet(readme_snippet("storage"), tmp_path)
    output_dir = tmp_path / "clone" / "outputs" / "storage-tour"
    rows = read_metrics(output_dir / "metrics.json")
    # storage.step() advances the iteration: two periods written, each at its own iteration.
    assert [r["iteration"] for r in rows] == [19, 39]
    assert rows[-1]["lr"] == 1e-4 and rows[-1]["loss_ce"] == 0.5
    assert "iter: 39" in result.stdout and "iter: 39" in (output_dir / "log.txt").read_text()
    assert "d2.utils.events INFO:" in (output_dir / "log.txt").read_text()
