import json
import subprocess
import sys
from pathlib import Path

from engine.run_history import RunHistory, format_runs, list_runs

ROOT = Path(__file__).resolve().parents[1]


def test_sessions_accumulate_and_runs_are_listed_newest_first(tmp_path):
    first = tmp_path / "outputs" / "a"
    first.mkdir(parents=True)
    history = RunHistory(str(first), "configs/demo.yaml", 0, resumed=False, command="train")
    assert json.loads((first / "train_history.json").read_text())["sessions"][0]["status"] == "running"
    history.finish("crashed", {"total_loss": (3.0, 57), "lr": (0.1, 57)}, error="RuntimeError: boom")
    resumed = RunHistory(str(first), "configs/demo.yaml", 50, resumed=True, command="train --resume")
    resumed.finish("completed", {"total_loss": (1.5, 99), "validation/total_loss": (2.5, 100)})
    sessions = json.loads((first / "train_history.json").read_text())["sessions"]
    assert [s["status"] for s in sessions] == ["crashed", "completed"]
    assert sessions[0]["final"] == {"total_loss": 3.0} and sessions[0]["error"] == "RuntimeError: boom"

    second = tmp_path / "outputs" / "b"
    second.mkdir()
    (second / "train_history.json").write_text("{not json")
    runs = list_runs(str(tmp_path / "outputs"))
    by_run = {Path(r["run"]).name: r for r in runs}
    assert by_run["a"]["last_iteration"] == 100 and by_run["a"]["sessions"] == 2
    assert by_run["a"]["total_loss"] == 1.5 and by_run["a"]["validation_loss"] == 2.5
    assert by_run["b"]["status"] == "unreadable" and "train_history.json" in by_run["b"]["error"]
    table = format_runs(runs)
    assert "completed" in table and "1.5" in table


def test_unreadable_history_is_kept_aside_not_overwritten(tmp_path):
    (tmp_path / "train_history.json").write_text("garbage")
    RunHistory(str(tmp_path), "c.yaml", 0, resumed=False, command="train")
    assert (tmp_path / "train_history.json.unreadable").read_text() == "garbage"


def test_list_runs_cli(tmp_path):
    (tmp_path / "r1").mkdir()
    RunHistory(str(tmp_path / "r1"), "c.yaml", 0, resumed=False, command="train")
    out = subprocess.run([sys.executable, str(ROOT / "tools/list_runs.py"), str(tmp_path)], capture_output=True, text=True)
    assert out.returncode == 0 and "running" in out.stdout and "r1" in out.stdout
    missing = subprocess.run([sys.executable, str(ROOT / "tools/list_runs.py"), str(tmp_path / "nope")], capture_output=True, text=True)
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1 and "no such directory" in missing.stderr
