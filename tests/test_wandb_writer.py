"""WandbWriter, read back from the offline run file with wandb's own Record protos."""
import json
import os
import sys

import numpy as np
import pytest

from events import EventStorage
from events.wandb_writer import (
    REDACTED,
    STATE_FILE_NAME,
    WandbWriter,
    api_key_configured,
    redact_secrets,
    resolve_mode,
)
from events.writer_guard import MissingExtraError
from wandb_reader import find_run_files, isolate_wandb, read_offline_run

PERIOD = 20
CONFIG = {"SOLVER": {"BASE_LR": 1e-4, "STEPS": [10, 20]}, "WANDB": {"PROJECT": "p", "TAGS": ["a"]}}


@pytest.fixture(autouse=True)
def offline_wandb(monkeypatch, tmp_path):
    isolate_wandb(monkeypatch, str(tmp_path / "wandb-home"))


def make_writer(run_dir, **kwargs):
    kwargs.setdefault("mode", "offline")
    return WandbWriter("telemetry-tests", run_dir=str(run_dir), system_metrics=False, **kwargs)


def metric_rows(run):
    """History rows without wandb's own bookkeeping keys (_step, _runtime, _timestamp)."""
    return [{k: v for k, v in row.items() if not k.startswith("_")} for row in run.history]


def test_keys_steps_values_and_config_read_back(tmp_path):
    rng = np.random.default_rng(1)
    keys = [f"loss_{i}" for i in range(60)] + ["total_loss", "class_error", "time", "data_time"]
    expected_rows = []
    with EventStorage() as storage:
        writer = make_writer(tmp_path, config=CONFIG, name="n1", group="g", tags=["x", "y"], window_size=1)
        for it in range(60):
            storage.iter = it
            values = rng.normal(size=len(keys)).tolist()
            storage.put_scalars_bulk(keys, values)  # window 1: the written value is the put one
            storage.put_scalar("lr", 0.1 / (it + 1), smoothing_hint=False)
            if (it + 1) % PERIOD == 0:
                writer.write()
                expected_rows.append({**dict(zip(keys, values)), "lr": 0.1 / (it + 1), "iteration": it})
        writer.close()

    (path,) = find_run_files(str(tmp_path))
    run = read_offline_run(path)
    assert metric_rows(run) == expected_rows
    assert (run.project, run.display_name, run.group, run.tags) == ("telemetry-tests", "n1", "g", ["x", "y"])
    assert {k: v for k, v in run.config.items() if k != "_wandb"} == CONFIG
    # Everything is plotted against the training iteration, not W&B's row counter.
    assert {"name": "*", "step_metric": "iteration"} in run.metrics


def test_rows_logged_elsewhere_at_other_iterations_are_kept(tmp_path):
    with EventStorage() as storage:
        writer = make_writer(tmp_path)
        for it in range(60):
            storage.iter = it
            storage.put_scalar("loss", float(it), smoothing_hint=False)
            if (it + 1) % PERIOD == 0:
                writer.write()
            if it == 45:  # e.g. an evaluation logged by user code for iteration 30
                writer.run.log({"eval/AP": 0.5, "iteration": 30})
        writer.close()
    run = read_offline_run(find_run_files(str(tmp_path))[0])
    assert metric_rows(run) == [
        {"loss": 19, "iteration": 19},
        {"loss": 39, "iteration": 39},
        {"eval/AP": 0.5, "iteration": 30},
        {"loss": 59, "iteration": 59},
    ]


def test_histograms_are_logged_at_their_iteration_with_at_most_512_bins(tmp_path):
    weights = np.linspace(-1.0, 1.0, 3000)
    with EventStorage() as storage:
        writer = make_writer(tmp_path)
        storage.iter = 9
        storage.put_histogram("params/w", weights, bins=1000)
        storage.put_scalar("loss", 1.0)
        writer.write()
        assert storage._histograms == []  # no TensorBoard writer after it: this one clears
        writer.write()  # nothing new: the histogram is not logged twice
        writer.close()
    run = read_offline_run(find_run_files(str(tmp_path))[0])
    (row,) = metric_rows(run)
    histogram = row["params/w"]
    assert row["iteration"] == 9 and histogram["_type"] == "histogram"
    assert len(histogram["values"]) == 500 and len(histogram["bins"]) == 501
    assert sum(histogram["values"]) == 3000
    assert histogram["bins"][0] == pytest.approx(-1.0) and histogram["bins"][-1] == pytest.approx(1.0)


def test_histogram_of_a_constant_tensor_has_increasing_edges(tmp_path):
    with EventStorage() as storage:
        writer = make_writer(tmp_path)
        storage.put_histogram("params/bias", np.zeros(7), bins=4)
        writer.write()
        writer.close()
    (row,) = metric_rows(read_offline_run(find_run_files(str(tmp_path))[0]))
    bins, values = row["params/bias"]["bins"], row["params/bias"]["values"]
    assert bins == sorted(bins) and len(set(bins)) == 5
    (full_bin,) = [i for i, count in enumerate(values) if count]
    assert values[full_bin] == 7 and bins[full_bin] <= 0.0 <= bins[full_bin + 1]


def train(storage, writer, start, stop, offset):
    for it in range(start, stop):
        storage.iter = it
        storage.put_scalar("loss", it + offset, smoothing_hint=False)
        if (it + 1) % PERIOD == 0 or it == stop - 1:
            writer.write()


def test_resume_continues_the_same_run_without_duplicates_or_gaps(tmp_path):
    with EventStorage() as storage:
        crashed = make_writer(tmp_path)
        train(storage, crashed, 0, 101, offset=1000)  # writes 19 .. 99 and 100, then "crashes"
        crashed.close()  # (in one process the run must end before the next init)
    state = json.loads((tmp_path / STATE_FILE_NAME).read_text())
    assert state == {"run_id": crashed.run.id, "last_iteration": 100}

    with EventStorage(60) as storage:
        resumed = make_writer(tmp_path, resume=True)
        train(storage, resumed, 60, 140, offset=0)
        resumed.close()

    first, second = (read_offline_run(p) for p in find_run_files(str(tmp_path)))
    assert first.run_id == second.run_id == crashed.run.id
    first_iters = [row["iteration"] for row in metric_rows(first)]
    second_rows = metric_rows(second)
    assert first_iters == [19, 39, 59, 79, 99, 100]
    # Iterations W&B already holds are not sent again: no zig-zag, nothing dropped by W&B.
    assert second_rows == [{"loss": 119, "iteration": 119}, {"loss": 139, "iteration": 139}]


def test_fresh_start_gets_a_new_run(tmp_path):
    with EventStorage() as storage:
        first = make_writer(tmp_path)
        train(storage, first, 0, 20, offset=0)
        first.close()
        second = make_writer(tmp_path)  # not a resume
        second.close()
    assert first.run.id != second.run.id
    assert json.loads((tmp_path / STATE_FILE_NAME).read_text())["run_id"] == second.run.id


def test_disabled_mode_writes_nothing(tmp_path):
    with EventStorage() as storage:
        writer = make_writer(tmp_path, mode="disabled")
        train(storage, writer, 0, 40, offset=0)
        writer.close()
    assert find_run_files(str(tmp_path)) == []
    assert not (tmp_path / STATE_FILE_NAME).exists()


def test_auto_mode(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_MODE")
    assert not api_key_configured() and resolve_mode("auto") == "offline"
    netrc = tmp_path / "netrc"
    netrc.write_text("machine api.wandb.ai\n  login user\n  password abc\n")
    monkeypatch.setenv("NETRC", str(netrc))
    assert resolve_mode("auto") == "online"
    monkeypatch.setenv("WANDB_MODE", "dryrun")  # the user's explicit environment wins
    assert resolve_mode("auto") == "offline"
    assert resolve_mode("disabled") == "disabled"
    with pytest.raises(ValueError, match="WANDB.MODE must be one of auto, online, offline, disabled"):
        resolve_mode("sometimes")


def test_api_key_is_never_written(monkeypatch, tmp_path):
    secret = "0123456789abcdef0123456789abcdef01234567"
    monkeypatch.setenv("WANDB_API_KEY", secret)
    config = {"WANDB": {"API_KEY": "something", "NOTE": f"key={secret}", "PROJECT": "p"}}
    with EventStorage() as storage:
        writer = make_writer(tmp_path, config=config)  # explicit offline: no network
        train(storage, writer, 0, 20, offset=0)
        writer.close()
    run = read_offline_run(find_run_files(str(tmp_path))[0])
    assert run.config["WANDB"] == {"API_KEY": REDACTED, "NOTE": REDACTED, "PROJECT": "p"}
    for folder, _, files in os.walk(tmp_path):
        for name in files:
            with open(os.path.join(folder, name), "rb") as f:
                assert secret.encode() not in f.read(), name


def test_redact_secrets_keeps_everything_else():
    config = {"A": {"TOKEN": "t", "EMPTY_TOKEN": "", "LR": 0.1, "LIST": [1, {"PASSWORD": "p"}]}}
    assert redact_secrets(config) == {
        "A": {"TOKEN": REDACTED, "EMPTY_TOKEN": "", "LR": 0.1, "LIST": [1, {"PASSWORD": REDACTED}]}
    }


def test_missing_wandb_is_one_clear_line(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(MissingExtraError, match=r"pip install 'detr-telemetry\[wandb\]'"):
        make_writer(tmp_path)
