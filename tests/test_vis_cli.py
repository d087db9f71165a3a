"""tools/vis_train_log.py (events.plotting.cli): figures, summary files, options, clean errors."""
import csv
import json
import os
import shutil
import subprocess
import sys

import pytest

from events.plotting.cli import main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REAL = os.path.join(REPO, "tests", "fixtures", "real-logs")
NYU = os.path.join(REAL, "d2-log__HaowenGuan__NYU-Semi-Supervise-Object-Detection.txt")
MGM_LOG = os.path.join(REAL, "d2-log__BUAAZhangHaonan__mgm_mask2former.txt")
WASTE = os.path.join(REAL, "d2-metrics__Elbhnasy__Medical_Waste_Detection_Detectron2.json")
DETR = os.path.join(REAL, "detr-log__FarjadAhmed__detr_custom_dcmha.txt")
FAST = ["--dpi", "40", "--jobs", "1"]


def run_cli(capsys, *args):
    code = main([*args, *FAST])
    out, err = capsys.readouterr()
    return code, out, err


def summary_rows(folder):
    with open(os.path.join(folder, "summary.csv"), newline="") as handle:
        return list(csv.DictReader(handle))


def test_detectron2_log_gives_figures_and_summary(tmp_path, capsys):
    code, out, err = run_cli(capsys, "--log-file", NYU, "--output-dir", str(tmp_path))
    assert code == 0 and err == ""
    assert sorted(os.listdir(tmp_path)) == ["losses_loss.png", "overview.png", "summary.csv", "summary.md",
                                            "train_vs_val.png", "validation.png"]
    assert "best validation bbox/AP: 14.97 at iteration 10999" in out
    assert "detectron2-log, run 1 of 1, last iteration 16009, 16 evaluation record(s)" in out
    total = next(r for r in summary_rows(tmp_path) if r["key"] == "total_loss")
    assert (total["initial"], total["final"]) == ("0.1409", "0.1668")


def test_keys_filter_and_svg_format(tmp_path, capsys):
    code, _, _ = run_cli(capsys, "--log-file", NYU, "--output-dir", str(tmp_path), "--keys", "loss_c*", "bbox/AP?", "--format", "svg")
    assert code == 0
    assert sorted(os.listdir(tmp_path)) == ["losses_loss.svg", "summary.csv", "summary.md", "train_vs_val.svg", "validation.svg"]
    assert sorted(r["key"] for r in summary_rows(tmp_path)) == ["bbox/APl", "bbox/APm", "bbox/APs", "loss_cls"]


@pytest.mark.parametrize("log, axis", [(DETR, "epoch"), (NYU, "time"), (WASTE, "time")])
def test_x_axis_epoch_and_time(tmp_path, capsys, log, axis):
    code, _, err = run_cli(capsys, "--log-file", log, "--output-dir", str(tmp_path), "--x", axis, "--quick")
    assert code == 0, err
    assert sorted(f for f in os.listdir(tmp_path) if f.endswith(".png")) == ["overview.png", "train_vs_val.png"]


def test_x_epoch_without_epochs_is_one_error_line(tmp_path, capsys):
    code, _, err = run_cli(capsys, "--log-file", NYU, "--output-dir", str(tmp_path), "--x", "epoch")
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("error: ") and "has no epoch numbers; use --x iter" in err


def test_run_selection(tmp_path, capsys):
    code, out, _ = run_cli(capsys, "--log-file", MGM_LOG, "--output-dir", str(tmp_path), "--run", "2", "--quick")
    assert code == 0 and "run 2 of 3, last iteration 493" in out
    code, _, err = run_cli(capsys, "--log-file", MGM_LOG, "--output-dir", str(tmp_path), "--run", "7")
    assert code == 2 and "there is no run 7; the file holds 3 run(s)" in err
    code, _, err = run_cli(capsys, "--log-file", MGM_LOG, "--output-dir", str(tmp_path), "--run", "first")
    assert code == 2 and "--run 'first'" in err


def test_run_all_and_compare_label_each_run(tmp_path, capsys):
    code, _, _ = run_cli(capsys, "--log-file", MGM_LOG, "--output-dir", str(tmp_path / "all"), "--run", "all", "--quick")
    assert code == 0
    labels = {r["run"] for r in summary_rows(tmp_path / "all")}
    assert labels == {f"d2-log__BUAAZhangHaonan__mgm_mask2former run {n}" for n in (1, 2, 3)}
    code, _, _ = run_cli(capsys, "--log-file", NYU, "--compare", WASTE, "--output-dir", str(tmp_path / "cmp"), "--quick")
    assert code == 0
    assert {r["run"] for r in summary_rows(tmp_path / "cmp")} == {
        "d2-log__HaowenGuan__NYU-Semi-Supervise-Object-Detection", "d2-metrics__Elbhnasy__Medical_Waste_Detection_Detectron2"}


def test_list_and_latest_quick(tmp_path, capsys):
    outputs = tmp_path / "outputs"
    for name, source, stamp in (("old_run", WASTE, 1_000_000), ("new_run", NYU, 2_000_000)):
        (outputs / name).mkdir(parents=True)
        target = outputs / name / ("metrics.json" if source.endswith(".json") else "log.txt")
        shutil.copy(source, target)
        os.utime(target, (stamp, stamp))
    code, out, _ = run_cli(capsys, "--list", str(outputs))
    assert code == 0
    lines = out.strip().splitlines()
    assert "new_run/log.txt" in lines[1] and "detectron2-log" in lines[1]
    assert "old_run/metrics.json" in lines[2] and "detectron2-metrics" in lines[2]
    code, out, _ = run_cli(capsys, "--latest", str(outputs), "--quick", "--output-dir", str(tmp_path / "plots"))
    assert code == 0 and out.startswith("new_run: detectron2-log")
    assert sorted(os.listdir(tmp_path / "plots")) == ["overview.png", "summary.csv", "summary.md", "train_vs_val.png"]


def test_list_names_the_format_of_a_log_whose_first_record_exceeds_a_mebibyte(tmp_path, capsys):
    run = tmp_path / "outputs" / "big_eval"
    run.mkdir(parents=True)
    per_class = {f"bbox/AP-class{i}": 1.0 for i in range(60_000)}  # a large label set's evaluation
    first = json.dumps({"iteration": 0, "total_loss": 1.0, **per_class})
    assert len(first) > 1 << 20
    (run / "metrics.json").write_text(first + "\n" + json.dumps({"iteration": 19, "total_loss": 0.5}) + "\n")
    code, out, _ = run_cli(capsys, "--list", str(tmp_path / "outputs"))
    assert code == 0
    assert "detectron2-metrics" in out.splitlines()[1], out


def test_skipped_lines_are_reported_in_one_line(tmp_path, capsys):
    log = tmp_path / "metrics.json"
    log.write_bytes(open(WASTE, "rb").read() + b"\x00\x01garbage\n{\"iteration\": 4019, \"total_lo")
    code, out, _ = run_cli(capsys, "--log-file", str(log), "--output-dir", str(tmp_path / "p"), "--quick")
    assert code == 0
    reports = [line for line in out.splitlines() if ": skipped " in line]
    assert reports == [f"{log}: skipped 2 unreadable lines (e.g. line 201: not a JSON object; line 202: not a JSON object)"]


@pytest.mark.parametrize(
    "content, message",
    [(None, "cannot read: No such file or directory"), (b"", "the file is empty"),
     (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" * 50, "no training records found")],
)
def test_unreadable_logs_exit_2_with_one_error_line(tmp_path, capsys, content, message):
    log = tmp_path / "log.txt"
    if content is not None:
        log.write_bytes(content)
    code, _, err = run_cli(capsys, "--log-file", str(log), "--output-dir", str(tmp_path / "p"))
    assert code == 2
    assert err.count("\n") == 1 and err.startswith(f"error: {log}: ") and message in err
    assert not os.path.exists(tmp_path / "p" / "overview.png")


def test_no_log_given(capsys):
    code, _, err = run_cli(capsys)
    assert code == 2 and err.startswith("error: give --log-file LOG")


def test_the_script_runs_without_torch_and_renders_in_worker_processes(tmp_path):
    code = (
        "import runpy, sys\n"
        f"sys.argv = ['vis_train_log.py', '--log-file', {DETR!r}, '--output-dir', {str(tmp_path)!r}, '--dpi', '40', '--jobs', '2', '--quick']\n"
        "try:\n    runpy.run_path('tools/vis_train_log.py', run_name='__main__')\n"
        "except SystemExit as done:\n    status = done.code\n"
        "assert status == 0, status\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "wrote 2 figure(s)" in result.stdout
    assert sorted(f for f in os.listdir(tmp_path) if f.endswith(".png")) == ["overview.png", "train_vs_val.png"]


def test_worker_processes_render_every_figure_as_one_process_does(tmp_path):
    """Figures are handed out heaviest first to whichever worker is free; the paths come back in
    the planned order and the pictures are the same as drawn by one process."""
    from PIL import Image, ImageChops

    from events.plotting import PlotOptions, plan_figures, render_figures
    from events.readers import read_log

    table = read_log(os.path.join(REAL, "d2-metrics__BUAAZhangHaonan__mgm_mask2former.json"))
    options = PlotOptions(dpi=40)
    specs = plan_figures([table], options)
    assert len(specs) >= 4 and len({spec.panels for spec in specs}) > 1
    one = render_figures(specs, [table], str(tmp_path / "one"), options, jobs=1)
    three = render_figures(specs, [table], str(tmp_path / "three"), options, jobs=3)
    assert [os.path.basename(p) for p in one] == [os.path.basename(p) for p in three] == [f"{s.name}.png" for s in specs]
    for a, b in zip(one, three):
        with Image.open(a) as left, Image.open(b) as right:
            assert ImageChops.difference(left.convert("RGB"), right.convert("RGB")).getbbox() is None, b


def test_default_jobs_counts_idle_cpus_now(monkeypatch):
    from events.plotting import render

    cpus = len(os.sched_getaffinity(0))
    samples = iter([3, 1, 2, 1])  # a short-lived task in one sample is no CPU hog
    monkeypatch.setattr(render, "_runnable_now", lambda: next(samples))
    assert render.default_jobs() == max(1, min(4, cpus))
    monkeypatch.setattr(render, "_runnable_now", lambda: cpus + 5)  # every CPU busy elsewhere
    assert render.default_jobs() == 1
    monkeypatch.setattr(render, "_runnable_now", lambda: None)  # no /proc/stat: the load average
    monkeypatch.setattr(os, "getloadavg", lambda: (cpus - 1.0, 0.0, 0.0))
    assert render.default_jobs() == 1


def _spinning(pid: int) -> bool:
    """Whether process ``pid`` is runnable and has run a while (``/proc/<pid>/stat`` state R,
    user time > 0): it counts in procs_running from then on."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return fields[0] == "R" and int(fields[11]) > 0


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="procs_running is read from Linux's /proc/stat")
def test_a_cpu_bound_process_elsewhere_is_seen_at_once():
    from events.plotting import render

    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        import time

        # Wait for the event, not a fixed time: the spinner has used CPU and is runnable.
        deadline = time.monotonic() + 120
        while not _spinning(spinner.pid):
            assert time.monotonic() < deadline, "the spinner never ran"
            time.sleep(0.05)
        assert render._busy_elsewhere() >= 1
    finally:
        spinner.kill()
        spinner.wait()
