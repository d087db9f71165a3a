"""JSONWriter and CommonMetricPrinter keep detectron2's formats and fix its resume behaviour."""
import json
import logging
import re

import pytest

from events import CommonMetricPrinter, EventStorage, JSONWriter
from events.writers import METRICS_LOGGER_NAME, rewind_json_lines


def read_records(path):
    return [json.loads(line) for line in open(path)]


def test_json_writer_writes_only_new_iterations_smoothed(tmp_path):
    path = tmp_path / "metrics.json"
    with EventStorage() as storage:
        writer = JSONWriter(str(path), window_size=2)
        for i in range(6):
            storage.iter = i
            storage.put_scalar("loss", float(i))
            storage.put_scalar("lr", 0.5, smoothing_hint=False)
            if i % 3 == 2:
                writer.write()
        writer.write()  # nothing new: no duplicate line
        writer.close()
    records = read_records(path)
    assert [r["iteration"] for r in records] == [2, 5]
    assert records[0] == {"iteration": 2, "loss": 1.5, "lr": 0.5}  # median of the last 2
    assert records[1]["loss"] == 4.5


def test_json_writer_keys_put_at_different_periods(tmp_path):
    path = tmp_path / "metrics.json"
    with EventStorage() as storage:
        writer = JSONWriter(str(path))
        for i in range(10):
            storage.iter = i
            storage.put_scalar("loss", 1.0)
            if i % 4 == 0:
                storage.put_scalar("val_ap", 40.0 + i, smoothing_hint=False)
            if i % 5 == 4:
                writer.write()
        writer.close()
    records = read_records(path)
    assert [r["iteration"] for r in records] == [4, 8, 9]
    assert records[1] == {"iteration": 8, "val_ap": 48.0}
    iterations = [r["iteration"] for r in records]
    assert iterations == sorted(set(iterations))


def test_resume_moves_crashed_records_aside_and_keeps_file_increasing(tmp_path):
    path = tmp_path / "metrics.json"
    lines = [json.dumps({"iteration": i, "loss": 1.0}) + "\n" for i in range(9, 140, 10)]
    path.write_text("".join(lines) + '{"iteration": 140, "lo')  # cut by SIGKILL
    with EventStorage(100) as storage:
        writer = JSONWriter(str(path), resume_from=100)
        for i in range(100, 120):
            storage.iter = i
            storage.put_scalar("loss", 2.0)
            if i % 10 == 9:
                writer.write()
        writer.close()
    iterations = [r["iteration"] for r in read_records(path)]
    assert iterations == list(range(9, 100, 10)) + [109, 119]
    side = (tmp_path / "metrics.json.superseded-at-100").read_text().splitlines()
    assert [json.loads(line)["iteration"] for line in side[:-1]] == [109, 119, 129, 139]
    assert side[-1] == '{"iteration": 140, "lo'  # the torn line is kept, not lost


def test_rewind_without_file_or_without_later_records_changes_nothing(tmp_path):
    assert rewind_json_lines(str(tmp_path / "absent.json"), 5) == (-1, 0)
    path = tmp_path / "m.json"
    path.write_text('{"iteration": 1}\n{"iteration": 2}\n')
    assert rewind_json_lines(str(path), 5) == (2, 0)
    assert not list(tmp_path.glob("*.superseded-*"))


LINE = re.compile(
    r"^ eta: \d+:\d\d:\d\d  iter: 19  loss_ce: 0\.5  total_loss: 1\.5  "
    r"time: 0\.\d{4}  last_time: 0\.\d{4}  data_time: 0\.0010  last_data_time: 0\.0010  lr: 0\.01$"
)


def test_console_line_has_detectron2_fields_and_eta(caplog):
    with EventStorage() as storage, caplog.at_level(logging.INFO, logger=METRICS_LOGGER_NAME):
        printer = CommonMetricPrinter(max_iter=100, window_size=20)
        for i in range(20):
            storage.iter = i
            storage.put_scalars(loss_ce=0.5, total_loss=1.5, time=0.5, data_time=0.001)
            storage.put_scalar("k_log_layer0", 1.0)
            storage.put_scalar("lr", 0.01, smoothing_hint=False)
        printer.write()
    message = caplog.records[-1].getMessage()
    assert LINE.match(message), message
    assert "eta: 0:00:40" in message  # median time 0.5 s x 80 iterations left
    assert "k_log_layer0" not in message
    assert storage.latest()["eta_seconds"][0] == pytest.approx(40.0)


def test_console_eta_without_timer_and_silence_after_training(caplog):
    with EventStorage() as storage, caplog.at_level(logging.INFO, logger=METRICS_LOGGER_NAME):
        printer = CommonMetricPrinter(max_iter=10)
        storage.put_scalar("loss", 1.0)
        printer.write()
        assert "eta" not in caplog.records[-1].getMessage()  # nothing to estimate from yet
        assert "lr: N/A" in caplog.records[-1].getMessage()
        storage.iter = 10
        count = len(caplog.records)
        printer.write()
        assert len(caplog.records) == count
