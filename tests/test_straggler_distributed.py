"""The straggler demo: ``torchrun --nproc_per_node 3 tools/train_net.py ... DATASETS.DEMO.SLOW_RANK 2``
(rank 2's loader sleeps before each batch) names rank 2 in the console, in metrics.json's
per-rank series, in the ranks figure and in summary.md, all from the reducer's one collective."""
import shlex
import subprocess
import sys

import pytest

from train_net_outputs import REPO, console_sessions, read_metrics, run_train_net, train_net_env

pytestmark = [pytest.mark.slow, pytest.mark.distributed, pytest.mark.timeout(900)]

WORLD_SIZE = 3
SLOW_RANK = 2


def readme_command(prefix: str) -> list:
    """The README's command line that starts with ``prefix``, split as a shell would."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    return shlex.split(next(line for line in readme.splitlines() if line.startswith(prefix)))


@pytest.fixture(scope="module")
def straggler_run(tmp_path_factory):
    """The README's straggler command as written, with its output folder under tmp."""
    root = tmp_path_factory.mktemp("straggler")
    output_dir = root / "out"
    command = readme_command(".venv/bin/torchrun --nproc_per_node 3")
    assert command[command.index("DATASETS.DEMO.SLOW_RANK") + 1] == str(SLOW_RANK)
    command[command.index("OUTPUT_DIR") + 1] = str(output_dir)
    command[command.index("--config-file") + 1] = str(REPO / "configs" / "demo.yaml")
    command[command.index("tools/train_net.py")] = str(REPO / "tools" / "train_net.py")
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    run_train_net(launcher + command[1:], train_net_env(root), cwd=root)
    return output_dir


def test_console_names_the_slow_rank(straggler_run):
    (session,) = console_sessions(straggler_run / "log.txt")
    # The window needs WINDOW // 2 steps before it names anyone; from then on, rank 2 every time
    # (a line every 10 iterations, the first at iteration 9).
    assert [line.get("slowest_rank") for line in session] == ["2"] * len(session) and len(session) >= 5


def test_metrics_json_holds_every_rank_and_the_spread(straggler_run):
    records = [r for r in read_metrics(straggler_run / "metrics.json") if "total_loss" in r]
    assert records
    for record in records:
        data_times = [record[f"rank_data_time/r{rank}"] for rank in range(WORLD_SIZE)]
        assert max(range(WORLD_SIZE), key=data_times.__getitem__) == SLOW_RANK
        assert data_times[SLOW_RANK] >= 0.05 > 2 * max(data_times[:SLOW_RANK])
        assert record["rank_data_time/argmax"] == SLOW_RANK
        assert record["rank_data_time/max"] == pytest.approx(data_times[SLOW_RANK])
        assert all(record[f"rank_{field}/r{rank}"] > 0 for field in ("step_time", "max_mem") for rank in range(WORLD_SIZE))


def test_replot_draws_the_ranks_figure_and_summary_names_the_straggler(straggler_run, tmp_path):
    command = readme_command(".venv/bin/python tools/vis_train_log.py --log-file outputs/demo-straggler")
    assert command[3:] == ["outputs/demo-straggler", "--output-dir", "outputs/demo-straggler/plots"]
    replot = [sys.executable, str(REPO / "tools" / "vis_train_log.py"), "--log-file", str(straggler_run), "--output-dir", str(tmp_path)]
    result = subprocess.run(replot + ["--dpi", "60", "--html", str(tmp_path / "report.html")], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "ranks.png").stat().st_size > 0
    summary = (tmp_path / "summary.md").read_text()
    assert f"straggler: rank {SLOW_RANK} of {WORLD_SIZE} was the slowest in 100% of the logged periods" in summary
    page = (tmp_path / "report.html").read_text()
    assert "id='fig-ranks'" in page and f"rank {SLOW_RANK} (slowest)" in page
    # The trainer's own report has the ranks figure too.
    assert "id='fig-ranks'" in (straggler_run / "report.html").read_text()
