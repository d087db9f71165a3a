"""WandbWriter, read back from the offline run file with wandb's own Record protos."""
import json
import logging
import os
import shutil
import sys

import numpy as np
import pytest

from events.secret_redaction import REDACTED, redact_secrets

from events import EventStorage
from events.wandb_records import BLOCK_SIZE, DamagedRunFile, iter_records
from events.wandb_writer import (
    STATE_FILE_NAME,
    WandbWriter,
    api_key_configured,
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


@pytest.mark.parametrize("resume", [True, None], ids=["told", "from-storage-start"])
def test_resume_continues_the_same_run_without_duplicates_or_gaps(tmp_path, resume):
    with EventStorage() as storage:
        crashed = make_writer(tmp_path)
        train(storage, crashed, 0, 101, offset=1000)  # writes 19 .. 99 and 100, then "crashes"
        crashed.close()  # (in one process the run must end before the next init)
    state = json.loads((tmp_path / STATE_FILE_NAME).read_text())
    assert state == {"run_id": crashed.run.id, "last_iteration": 100}

    with EventStorage(60) as storage:
        # resume=None: the writer learns at its first write that training started at 60.
        resumed = make_writer(tmp_path, resume=resume)
        train(storage, resumed, 60, 140, offset=0)
        resumed.close()

    first, second = (read_offline_run(p) for p in find_run_files(str(tmp_path)))
    assert first.run_id == second.run_id == crashed.run.id
    first_iters = [row["iteration"] for row in metric_rows(first)]
    second_rows = metric_rows(second)
    assert first_iters == [19, 39, 59, 79, 99, 100]
    # Iterations W&B already holds are not sent again: no zig-zag, nothing dropped by W&B.
    assert second_rows == [{"loss": 119, "iteration": 119}, {"loss": 139, "iteration": 139}]


LOSS_KEYS = [f"loss_{term}_{layer}" for term in ("ce", "bbox", "giou", "rel") for layer in range(10)]
KILLED_AT = 59  # the killed session handed rows 0..59 to run.log
RESUMED_END = 70


def marker(it):
    """A value only row ``it`` holds, written as the same plain digits by every float format."""
    return 5000.125 + it


def loss_values(it):
    return [it + k / 64 for k in range(len(LOSS_KEYS))]


def replay(storage, writer, start, stop):
    """Training that replays exactly after a resume (each value is a function of the iteration),
    one W&B row per iteration of ~40 keys: 60 rows span several 32 KiB blocks."""
    for it in range(start, stop):
        storage.iter = it
        storage.put_scalars_bulk(LOSS_KEYS, loss_values(it), smoothing_hint=False)
        storage.put_scalar("marker", marker(it), smoothing_hint=False)
        writer.write()


def expected_row(it):
    return {**dict(zip(LOSS_KEYS, loss_values(it))), "marker": marker(it), "iteration": it}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A run dir whose session logged rows 0..KILLED_AT and finished: its .wandb file is whole."""
    root = tmp_path_factory.mktemp("finished")
    with pytest.MonkeyPatch.context() as monkeypatch, EventStorage() as storage:
        isolate_wandb(monkeypatch, str(root / "wandb-home"))
        writer = make_writer(root / "run")
        replay(storage, writer, 0, KILLED_AT + 1)
        writer.close()
        (path,) = find_run_files(str(root / "run"))
        read_offline_run(path)  # waits until wandb-core has written the whole file
    return root / "run"


def killed_copy(finished_run, tmp_path, cut_row):
    """A copy of ``finished_run`` whose .wandb file ends inside row ``cut_row``'s history record,
    as a killed wandb-core leaves it: rows before ``cut_row`` whole, the rest lost.

    The cut is found in the raw bytes (the first place ``marker(cut_row)`` is written), not by
    the decoder under test."""
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    (path,) = find_run_files(str(run_dir))
    with open(path, "rb") as f:
        data = f.read()
    first_mention = data.find(f"{marker(cut_row)}".encode())
    assert first_mention > 0
    cut = first_mention + 3
    assert cut % BLOCK_SIZE > 7  # mid-block: a torn chunk, not a clean block boundary
    with open(path, "r+b") as f:
        f.truncate(cut)
    return run_dir, path


def history_iterations(path, **kwargs):
    return [
        json.loads(item.value_json)
        for record in iter_records(path, **kwargs)
        if record.WhichOneof("record_type") == "history"
        for item in record.history.item
        if list(item.nested_key) == ["iteration"]
    ]


def resume(run_dir, resume_at):
    """The resumed session: training restarts at ``resume_at`` (the checkpoint's next iteration)."""
    with EventStorage(resume_at) as storage:
        writer = make_writer(run_dir, resume=True, resume_iter=resume_at)
        replay(storage, writer, resume_at, RESUMED_END)
        writer.close()
    resumed_file = find_run_files(str(run_dir))[-1]
    return metric_rows(read_offline_run(resumed_file))


def writer_warnings(caplog):
    ours = [r for r in caplog.records if r.name == "events.wandb_writer"]
    return [r.getMessage() for r in ours if r.levelno >= logging.WARNING]


@pytest.mark.parametrize(
    "cut_row, resume_at, missing_for_good",
    [
        (40, 30, ""),  # the checkpoint is before the lost rows: training replays them all
        (40, 45, "those up to iteration 44 precede the checkpoint training resumes from (45)"),
        (0, 10, "those up to iteration 9 precede"),  # not one row reached the file
    ],
)
def test_resume_after_a_kill_relogs_the_rows_the_run_file_lost(
    finished_run, tmp_path, caplog, cut_row, resume_at, missing_for_good
):
    run_dir, killed_file = killed_copy(finished_run, tmp_path, cut_row)
    state = json.loads((run_dir / STATE_FILE_NAME).read_text())
    assert state["last_iteration"] == KILLED_AT  # what the killed writer believed W&B held

    # The torn file reads up to its last whole row; read strictly, the damage is an error.
    assert history_iterations(killed_file, stop_at_damage=True) == list(range(cut_row))
    with pytest.raises(DamagedRunFile, match=r"run-\w+\.wandb: (chunk cut short|checksum mismatch)"):
        history_iterations(killed_file)

    with caplog.at_level(logging.INFO, logger="events.wandb_writer"):
        resumed_rows = resume(run_dir, resume_at)
    first_relogged = max(cut_row, resume_at)
    assert [row["iteration"] for row in resumed_rows] == list(range(first_relogged, RESUMED_END))
    assert resumed_rows == [expected_row(it) for it in range(first_relogged, RESUMED_END)]
    (warning,) = writer_warnings(caplog)
    holds = f"iterations up to {cut_row - 1}" if cut_row else "no rows"
    assert f"offline run files hold {holds}, not {KILLED_AT}" in warning
    assert missing_for_good in warning and ("precede" in warning) == bool(missing_for_good)


def test_resume_of_a_whole_run_file_trusts_it_without_a_warning(finished_run, tmp_path, caplog):
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    resumed_rows = resume(run_dir, 50)
    assert [row["iteration"] for row in resumed_rows] == list(range(KILLED_AT + 1, RESUMED_END))
    assert writer_warnings(caplog) == []


@pytest.mark.parametrize("damage", ["header", "unreadable"])
def test_an_unreadable_run_file_falls_back_to_the_state_file_with_one_warning(
    finished_run, tmp_path, caplog, damage
):
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    (path,) = find_run_files(str(run_dir))
    if damage == "header":
        with open(path, "r+b") as f:
            f.write(b"garbage")
    else:  # a directory where the file was: open() fails with an OSError, even for root
        os.remove(path)
        os.mkdir(path)
    resumed_rows = resume(run_dir, 50)
    assert [row["iteration"] for row in resumed_rows] == list(range(KILLED_AT + 1, RESUMED_END))
    (warning,) = writer_warnings(caplog)
    assert "could not read its earlier offline run files" in warning
    assert f"logging continues after iteration {KILLED_AT}" in warning


def test_a_cut_inside_the_header_holds_no_records(finished_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    (path,) = find_run_files(str(run_dir))
    with open(path, "r+b") as f:
        f.truncate(3)
    assert list(iter_records(path, stop_at_damage=True)) == []
    with pytest.raises(DamagedRunFile, match="not a W&B transaction log"):
        list(iter_records(path))


def test_fresh_start_gets_a_new_run(tmp_path):
    writers = []
    for _ in range(2):  # the second training starts at 0 again: not a resume
        with EventStorage() as storage:
            writers.append(make_writer(tmp_path))
            train(storage, writers[-1], 0, 20, offset=0)
            writers[-1].close()
    first, second = writers
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
    assert redact_secrets(config)[0] == {
        "A": {"TOKEN": REDACTED, "EMPTY_TOKEN": "", "LR": 0.1, "LIST": [1, {"PASSWORD": REDACTED}]}
    }


def test_missing_wandb_is_one_clear_line(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(MissingExtraError, match=r"pip install 'detr-telemetry\[wandb\]'"):
        make_writer(tmp_path)
