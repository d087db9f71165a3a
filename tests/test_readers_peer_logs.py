"""events.readers and the replot on logs written by other trainers: PyTorch Lightning's
``CSVLogger`` and MMEngine's ``Runner`` (text log and ``vis_data/scalars.json``). The fixtures in
tests/fixtures/peer-logs were written by the real packages (tests/fixtures/make_peer_logs.py);
expected values below were read off them with grep/awk."""
import csv
import json
import os

import numpy as np
import pytest

from events.plotting.cli import main
from events.readers import LogReadError, read_log, read_runs, sniff_format

PEER = os.path.join(os.path.dirname(__file__), "fixtures", "peer-logs")
LIGHTNING = os.path.join(PEER, "lightning-csvlogger-metrics.csv")
MMENGINE_EPOCH = os.path.join(PEER, "mmengine-epoch.log")
MMENGINE_SCALARS = os.path.join(PEER, "mmengine-epoch-scalars.json")
MMENGINE_ITER = os.path.join(PEER, "mmengine-iter.log")


@pytest.mark.parametrize("path, fmt", [(LIGHTNING, "csv"), (MMENGINE_EPOCH, "mmengine-log"), (MMENGINE_ITER, "mmengine-log"),
                                       (MMENGINE_SCALARS, "mmengine-scalars")])
def test_format_is_detected_from_content(path, fmt):
    with open(path, "rb") as handle:
        assert sniff_format(handle.read()) == fmt


def test_lightning_csvlogger_sparse_rows_merge_by_step():
    table = read_log(LIGHTNING)
    assert len(table.runs) == 1 and table.skipped.lines == 0 and table.skipped.values == 0
    # 15 rows with train_loss (every 5th step: 4, 9, ..., 74); the lr-SGD row of each step has an
    # empty epoch and comes first: merged, so the lr and the loss share steps. lr-SGD is the "lr".
    loss, lr = table.train["loss"], table.train["lr"]
    assert loss.steps.tolist() == [4.0 + 5 * k for k in range(15)]
    assert loss.value_at(4) == pytest.approx(4.678125381469727) and lr.value_at(4) == 0.05
    assert lr.steps.tolist() == loss.steps.tolist()
    # train_loss_epoch_mean: a second row at the last step of each epoch, with the same epoch.
    assert table.train["loss_epoch_mean"].steps.tolist() == [24.0, 49.0, 74.0]
    assert table.train["loss"].value_at(24) == pytest.approx(0.21749889850616455)
    # Validation twice an epoch, at steps off the training grid.
    val = table.val["loss"]
    assert val.steps.tolist() == [11.0, 23.0, 36.0, 48.0, 61.0, 73.0] and table.eval_records == 6
    assert val.value_at(73) == pytest.approx(0.07186377793550491)
    assert table.val["mae"].value_at(11) == pytest.approx(0.4870341718196869)
    assert table.x_of(loss, "epoch").tolist()[:6] == [0, 0, 0, 0, 0, 1]  # step 29 is in epoch 1


def _scalars(path):
    with open(path) as handle:
        return [json.loads(line) for line in handle if line.strip()]


def test_mmengine_text_log_agrees_with_its_scalars_json():
    """The .log and vis_data/scalars.json of one run: same steps, values rounded to 4 digits."""
    text, scalars = read_log(MMENGINE_EPOCH), read_log(MMENGINE_SCALARS)
    assert text.format == "mmengine-log" and text.skipped.lines == 0 and len(text.runs) == 1
    records = [r for r in _scalars(MMENGINE_SCALARS) if "iter" in r]
    assert text.train["loss"].steps.tolist() == [r["step"] for r in records] == scalars.train["loss"].steps.tolist()
    np.testing.assert_allclose(text.train["loss"].values, [r["loss"] for r in records], atol=5e-5)
    np.testing.assert_allclose(text.train["lr"].values, [r["lr"] for r in records], rtol=1e-4)
    # "Epoch(val) [1][16/16]    mae: 0.9817": one validation record per epoch; the progress lines
    # of the val loop ([ 5/16] with eta and batch times) hold no metric.
    assert text.eval_records == 3 and text.val["mae"].values.tolist() == [0.9817, 0.3597, 0.2615]
    assert text.val["mae"].steps.tolist() == scalars.val["mae"].steps.tolist() == [20.0, 41.0, 62.0]
    # Epoch(train) [2][ 5/21] is 1 + 5/21 epochs in.
    assert text.x_of(text.train["loss"], "epoch")[4] == pytest.approx(1 + 5 / 21)


def test_mmengine_iteration_based_text_log():
    table = read_log(MMENGINE_ITER)
    assert table.train["loss"].steps.tolist() == [5.0 * k for k in range(1, 13)]
    assert table.train["loss"].value_at(60) == 0.3653 and table.train["lr"].value_at(60) == 1e-3
    # "Iter(val) [16/16]    mae: 0.6624" after Iter(train) [20/60], and so on.
    assert table.val["mae"].steps.tolist() == [20.0, 40.0, 60.0]
    assert table.val["mae"].values.tolist() == [0.6624, 0.7257, 0.4227]
    assert "epoch" not in table.axes and table.skipped.lines == 0


@pytest.mark.parametrize("log", [LIGHTNING, MMENGINE_EPOCH])
def test_replot_draws_peer_logs(tmp_path, capsys, log):
    out = tmp_path / "plots"
    assert main(["--log-file", log, "--output-dir", str(out), "--quick", "--dpi", "40", "--jobs", "1"]) == 0
    assert (out / "overview.png").stat().st_size > 0 and (out / "train_vs_val.png").stat().st_size > 0
    with open(out / "summary.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert {row["split"] for row in rows} == {"train", "val"}
    assert "error" not in capsys.readouterr().err


def test_mmengine_log_without_training_lines_is_one_error(tmp_path):
    log = tmp_path / "20240105_100000.log"
    with open(MMENGINE_EPOCH, "rb") as handle:
        log.write_bytes(b"".join(line for line in handle if b"(train)" not in line and b"(val)" not in line))
    with pytest.raises(LogReadError) as raised:
        read_runs(str(log))
    assert str(raised.value) == f"{log}: no training records found (read as an MMEngine text log)"


def test_csv_rows_of_one_step_merge_only_when_they_agree(tmp_path):
    """Sparse rows of a step merge; a step written again with other values is a resume (the
    latest write wins), as in any other format."""
    log = tmp_path / "metrics.csv"
    log.write_text("step,epoch,loss,lr\n0,0,3.0,\n0,,,0.1\n10,0,2.0,\n10,,,0.1\n20,0,1.5,\n10,0,1.8,\n10,,,0.05\n20,0,1.2,\n")
    table = read_log(str(log))
    assert table.train["loss"].steps.tolist() == [0.0, 10.0, 20.0] and table.train["lr"].steps.tolist() == [0.0, 10.0]
    assert table.train["loss"].value_at(10) == 1.8 and table.train["lr"].value_at(10) == 0.05
    assert table.train["loss"].value_at(20) == 1.2 and table.runs[0].resumed_at == [10.0]


def test_a_damaged_epoch_does_not_spread_over_the_epoch_axis(tmp_path):
    log = tmp_path / "metrics.json"
    rows = [{"iteration": i, "epoch": 1 + i // 10, "total_loss": 1.0 / (i + 1)} for i in range(30)]
    lines = [json.dumps(row) for row in rows]
    lines[5] = lines[5].replace('"epoch": 1', '"epoch": ' + "1" + "0" * 400)
    log.write_text("\n".join(lines))
    table = read_log(str(log))
    epochs = table.x_of(table.train["total_loss"], "epoch")
    assert np.all(np.isfinite(epochs)) and epochs[5] == 1.0 and epochs[-1] == 3.0
