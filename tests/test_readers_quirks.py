"""events.readers on synthetic logs, one quirk of real logs per test."""
import json
import math

import pytest

from events.readers import LogReadError, read_log, read_runs, sniff_format
from events.readers.keys import classify_key
from events.readers.values import clean_line, parse_number

D2 = "[11/23 18:30:{s:02d}] d2.utils.events INFO:  eta: 0:01:02  iter: {it}  total_loss: {loss}  loss_ce: 1.1  time: 0.0512  data_time: 0.0012  lr: 0.0001  max_mem: 123M"


def write(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return str(path)


def jsonl(records):
    return "".join(json.dumps(r) + "\n" for r in records)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("0.5", 0.5), ("4.762e-07", 4.762e-07), ("11811M", 11811.0), ("1.5G", 1536.0), ("512KiB", 0.5),
        ("0:14:11", 851.0), ("1 day, 16:43:35", 146615.0), ("2 days, 0:00:01", 172801.0), ("12.5%", 12.5),
        ("0.25s", 0.25), ("N/A", None), ("", None), ("abc", None), ("1.2.3", None),
    ],
)
def test_parse_number(text, expected):
    assert parse_number(text) == expected


def test_parse_number_nan_and_inf():
    assert math.isnan(parse_number("NaN")) and math.isnan(parse_number("nan"))
    assert parse_number("-inf") == -math.inf


def test_clean_line_strips_ansi_crlf_and_progress_bars():
    assert clean_line("\x1b[36m| a |\x1b[0m\r") == "| a |"
    assert clean_line("10%|#   \r50%|#####   \rdone") == "done"


@pytest.mark.parametrize(
    "name, expected",
    [
        ("test_loss_ce_0", ("val", "loss_ce_0")), ("train_loss", ("train", "loss")), ("bbox/AP50", ("val", "bbox/AP50")),
        ("SG/SGMeanRecall@20", ("val", "SG/SGMeanRecall@20")), ("validation/total_loss", ("val", "total_loss")),
        ("val_loss", ("val", "loss")), ("fast_rcnn/cls_accuracy", ("train", "fast_rcnn/cls_accuracy")),
        ("loss_ce_subject_real", ("train", "loss_ce_subject_real")), ("epoch", ("axis", "epoch")),
        ("n_parameters", ("meta", "n_parameters")), ("coco/bbox_mAP_50", ("val", "coco/bbox_mAP_50")),
    ],
)
def test_classify_key(name, expected):
    assert classify_key(name) == expected


def test_console_prefix_our_logger_name_and_missing_eta(tmp_path):
    lines = [
        "[11/23 18:30:12 d2.utils.events]:  eta: 1 day, 16:43:35  iter: 19  total_loss: 3.21  lr: 0.0001",
        "[11/23 18:30:13] engine.train_loop INFO:  iter: 39  total_loss: 3.0  loss_ce: 1.1  time: 0.05  lr: N/A",
        "[11/23 18:30:14] events.writers INFO:  eta: 0:00:41  iter: 59  total_loss: 2.5  [metric]acc: 0.5  lr: 1e-4",
    ]
    table = read_log(write(tmp_path, "log.txt", "\n".join(lines)))
    assert table.train["total_loss"].steps.tolist() == [19.0, 39.0, 59.0]
    assert table.train["total_loss"].values.tolist() == [3.21, 3.0, 2.5]
    assert table.train["eta_seconds"].value_at(19) == 146615.0
    assert table.train["lr"].steps.tolist() == [19.0, 59.0]  # "N/A" is no value, not NaN
    assert table.train["[metric]acc"].value_at(59) == 0.5
    assert table.skipped.lines == 0 and table.skipped.values == 0


def test_old_and_new_detectron2_field_sets_mix(tmp_path):
    old = "[01/02 10:00:00] d2.utils.events INFO:  eta: 0:10:00  iter: 19  total_loss: 2.0  loss_cls: 1.0  time: 0.5000  data_time: 0.0100  lr: 0.000100  max_mem: 900M"
    new = "[01/02 10:00:10] d2.utils.events INFO:  eta: 0:09:50  iter: 39  total_loss: 1.9  loss_cls: 0.9    time: 0.5100  last_time: 0.4900  data_time: 0.0110  last_data_time: 0.0090   lr: 0.0001  max_mem: 901M"
    table = read_log(write(tmp_path, "log.txt", old + "\n" + new + "\n"))
    assert table.train["time"].values.tolist() == [0.5, 0.51]
    assert table.train["last_time"].steps.tolist() == [39.0]
    assert table.train["max_mem"].values.tolist() == [900.0, 901.0]


def test_crlf_no_final_newline_ansi_long_line_and_binary_junk(tmp_path):
    long_line = D2.format(s=3, it=59, loss=2.0) + "  " + "  ".join(f"loss_aux_{i}: 0.{i + 1}" for i in range(3000))
    content = (
        D2.format(s=1, it=19, loss=3.0).encode() + b"\r\n"
        + b"\x1b[32m" + D2.format(s=2, it=39, loss=2.5).encode() + b"\x1b[0m\r\n"
        + b"\x00\xff\xfe garbage \x89PNG\r\n"
        + long_line.encode() + b"\r\n"
        + D2.format(s=4, it=79, loss=1.5).encode()  # no final newline
    )
    table = read_log(write(tmp_path, "log.txt", content))
    assert table.train["total_loss"].values.tolist() == [3.0, 2.5, 2.0, 1.5]
    assert table.train["loss_aux_2999"].value_at(59) == 0.3000
    assert table.skipped.lines == 1  # the binary line, counted
    assert "binary data" in table.skipped.summary("log.txt")


def test_truncated_event_line_keeps_what_is_readable(tmp_path):
    lines = [D2.format(s=1, it=19, loss=3.0), "[11/23 18:30:02] d2.utils.events INFO:  eta: 0:01:02  iter: 39  total_loss: 2.9  loss_ce: 1.\x00\x00"]
    table = read_log(write(tmp_path, "log.txt", "\n".join(lines)))
    assert table.train["total_loss"].value_at(39) == 2.9
    assert table.train["loss_ce"].steps.tolist() == [19.0]  # "1.\x00\x00" is no number
    assert table.skipped.values == 1


def test_event_line_without_a_readable_iteration_is_counted(tmp_path):
    lines = [D2.format(s=1, it=19, loss=3.0), "[11/23 18:30:02] d2.utils.events INFO:  eta: 0:01:02  iter: ??  total_loss: 2.9"]
    table = read_log(write(tmp_path, "log.txt", "\n".join(lines)))
    assert len(table.train["total_loss"]) == 1
    assert table.skipped.lines == 1 and table.skipped.examples[0][0] == 2


def test_copypaste_blocks_with_scene_graph_task(tmp_path):
    lines = [
        D2.format(s=1, it=19, loss=3.0),
        "[11/23 18:31:00] d2.evaluation.testing INFO: copypaste: Task: bbox",
        "[11/23 18:31:00] d2.evaluation.testing INFO: copypaste: AP,AP50,AP75,APs,APm,APl",
        "[11/23 18:31:00] d2.evaluation.testing INFO: copypaste: 10.0,20.0,9.0,nan,4.0,13.0",
        "[11/23 18:31:00] d2.evaluation.testing INFO: copypaste: Task: SG",
        "[11/23 18:31:00] d2.evaluation.testing INFO: copypaste: SGMeanRecall@20,SGMeanRecall@50,SGRecall@20,SGRecall@50",
        "[11/23 18:31:00] d2.evaluation.testing INFO: copypaste: 0.05,0.07,0.10,0.13",
        D2.format(s=2, it=39, loss=2.0),
    ]
    table = read_log(write(tmp_path, "log.txt", "\n".join(lines)))
    assert table.eval_records == 1
    assert table.val["bbox/AP50"].steps.tolist() == [39.0]  # the event line that follows the evaluation
    assert table.val["SG/SGRecall@50"].value_at(39) == 0.13
    assert math.isnan(table.val["bbox/APs"].value_at(39))


def test_runs_and_resumes_in_detectron2_log(tmp_path):
    lines = ["[11/23 18:00:00] d2.engine.train_loop INFO: Starting training from iteration 0"]
    lines += [D2.format(s=i, it=it, loss=10 - i) for i, it in enumerate([19, 39, 59, 79])]
    lines += ["[11/23 18:10:00] d2.engine.train_loop INFO: Starting training from iteration 40"]  # resume
    lines += [D2.format(s=10 + i, it=it, loss=20 + i) for i, it in enumerate([59, 79, 99])]
    lines += ["[11/23 19:00:00] d2.engine.train_loop INFO: Starting training from iteration 0"]  # new run
    lines += [D2.format(s=20 + i, it=it, loss=30 + i) for i, it in enumerate([19, 39])]
    runs = read_runs(write(tmp_path, "log.txt", "\n".join(lines)))
    assert len(runs) == 2
    resumed = runs[0]
    assert resumed.run.resumed_at == [40.0]
    # Iterations >= 40 of the first attempt were overwritten by the resumed run.
    assert resumed.train["total_loss"].steps.tolist() == [19.0, 39.0, 59.0, 79.0, 99.0]
    assert resumed.train["total_loss"].values.tolist() == [10.0, 9.0, 20.0, 21.0, 22.0]
    assert runs[1].train["total_loss"].values.tolist() == [30.0, 31.0]


def test_resume_without_marker_in_metrics_json_latest_write_wins(tmp_path):
    records = [{"iteration": it, "total_loss": float(it)} for it in (19, 39, 59, 79, 99)]
    records += [{"iteration": it, "total_loss": -float(it)} for it in (59, 79, 99, 119)]  # resumed from 40
    records += [{"iteration": 99, "bbox/AP": 30.0}]  # an evaluation may repeat an iteration
    tables = read_runs(write(tmp_path, "metrics.json", jsonl(records)))
    assert len(tables) == 1
    loss = tables[0].train["total_loss"]
    assert loss.steps.tolist() == [19.0, 39.0, 59.0, 79.0, 99.0, 119.0]
    assert loss.values.tolist() == [19.0, 39.0, -59.0, -79.0, -99.0, -119.0]
    assert tables[0].run.resumed_at == [59.0]
    assert tables[0].eval_records == 1


def test_run_selection(tmp_path):
    records = [{"iteration": it, "total_loss": 1.0} for it in (19, 39)] + [{"iteration": it, "total_loss": 2.0} for it in (19, 39, 59)]
    path = write(tmp_path, "metrics.json", jsonl(records))
    assert read_log(path).run.number == 2
    assert read_log(path, run=1).train["total_loss"].values.tolist() == [1.0, 1.0]
    assert read_log(path, run=-1).run.last_step == 59.0
    with pytest.raises(LogReadError, match="there is no run 3"):
        read_log(path, run=3)


def test_records_with_only_some_keys_and_mixed_value_types(tmp_path):
    records = [
        {"iteration": 19, "total_loss": 1.0, "lr": 0.1},
        {"iteration": 39, "total_loss": "NaN", "note": "warm-up done", "eta": "0:01:00"},
        {"iteration": 59, "lr": None, "total_loss": 0.5, "hist": [1, 2]},
        {"iteration": 79, "total_loss": 0.25, "stats": {"AP": 3.0}},
    ]
    table = read_log(write(tmp_path, "metrics.json", jsonl(records)))
    total = table.train["total_loss"]
    assert total.steps.tolist() == [19.0, 39.0, 59.0, 79.0]
    assert math.isnan(total.value_at(39))
    assert table.train["lr"].steps.tolist() == [19.0]  # null is "not logged", not NaN
    assert table.train["eta"].value_at(39) == 60.0
    assert table.train["hist[1]"].value_at(59) == 2.0  # list index in brackets, not a layer suffix
    assert table.val["stats/AP"].value_at(79) == 3.0
    assert "note" not in table.train


def test_glued_records_junk_lines_and_a_truncated_last_line(tmp_path):
    content = (
        b'{"iteration": 19, "total_loss": 3.0}\n'
        b'\x1b[0m{"iteration": 39, "total_loss": 2.0}\n'  # ANSI before the record
        b'{"iteration": 59, "total_loss": 1.0}{"iteration": 79, "total_loss": 0.5}\n'  # newline lost
        b'\xff\xfe\x00\x01 random bytes\n'
        b'[1, 2, 3]\n'
        b'{"iteration": 99, "total_lo'
    )
    table = read_log(write(tmp_path, "metrics.json", content))
    assert table.train["total_loss"].values.tolist() == [3.0, 2.0, 1.0, 0.5]
    assert table.skipped.lines == 3
    summary = table.skipped.summary("metrics.json")
    assert summary.startswith("metrics.json: skipped 3 unreadable lines") and "line 4" in summary


def test_training_metrics_jsonl_with_train_and_val_loss_per_epoch(tmp_path):
    records = [{"epoch": e, "train_loss": 1.0 / e, "val_loss": 1.2 / e, "lr": 0.01} for e in range(1, 6)]
    table = read_log(write(tmp_path, "training_metrics.jsonl", jsonl(records)))
    assert table.format == "jsonl" and table.step_unit == "epoch"
    assert table.train["loss"].value_at(2) == 0.5
    assert table.val["loss"].value_at(5) == pytest.approx(0.24)
    assert table.eval_records == 5
    assert table.axes["epoch"].values.tolist() == [1.0, 2.0, 3.0, 4.0, 5.0]


def test_jsonl_with_split_field(tmp_path):
    records = [{"step": 10, "split": "train", "loss": 2.0}, {"step": 10, "split": "val", "loss": 2.5},
               {"step": 20, "split": "train", "loss": 1.0}, {"step": 20, "split": "val", "loss": 2.0}]
    tables = read_runs(write(tmp_path, "metrics.jsonl", jsonl(records)))
    assert len(tables) == 1  # a val record at the same step is not a restart
    assert tables[0].train["loss"].values.tolist() == [2.0, 1.0]
    assert tables[0].val["loss"].values.tolist() == [2.5, 2.0]


def test_csv_metrics_with_bad_rows(tmp_path):
    content = "step,total_loss,recon_loss,kl_loss\r\n0,3.0,2.0,1.0\r\n10,2.5,N/A,0.9\r\n20,oops,1.5,0.8\r\n30,1.0\r\n40,1e-1,1.0,0.7"
    path = write(tmp_path, "metrics.csv", content)
    assert sniff_format(open(path, "rb").read()) == "csv"
    table = read_log(path)
    assert table.train["total_loss"].steps.tolist() == [0.0, 10.0, 40.0]
    assert table.train["total_loss"].value_at(40) == 0.1
    assert table.train["recon_loss"].steps.tolist() == [0.0, 20.0, 40.0]  # N/A is no value
    assert table.skipped.lines == 1 and table.skipped.values == 1  # the short row; "oops"


def test_mmengine_scalars_json_maps_validation_epochs_to_iterations(tmp_path):
    records = []
    for epoch in (1, 2):
        for inner in (50, 100):
            step = (epoch - 1) * 100 + inner
            records.append({"lr": 0.01, "data_time": 0.01, "loss": 2.0 / step, "time": 0.2, "epoch": epoch, "iter": step, "memory": 900, "step": step})
        records.append({"coco/bbox_mAP": 0.1 * epoch, "coco/bbox_mAP_50": 0.2 * epoch, "data_time": 0.01, "time": 0.1, "step": epoch})
    table = read_log(write(tmp_path, "scalars.json", jsonl(records)))
    assert table.format == "mmengine-scalars"
    assert table.train["loss"].steps.tolist() == [50.0, 100.0, 150.0, 200.0]
    assert table.val["coco/bbox_mAP"].steps.tolist() == [100.0, 200.0]  # end of epochs 1 and 2
    assert table.val["coco/bbox_mAP"].value_at(200) == 0.2
    assert "time" in table.val and table.eval_records == 2


def test_tensorboard_event_file(tmp_path):
    from tensorboard.compat.proto import event_pb2, summary_pb2
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    writer = EventFileWriter(str(tmp_path))
    for step in (0, 10, 20):
        values = [summary_pb2.Summary.Value(tag="total_loss", simple_value=3.0 - step / 10),
                  summary_pb2.Summary.Value(tag="lr", simple_value=0.5)]
        if step == 20:
            values.append(summary_pb2.Summary.Value(tag="bbox/AP", simple_value=12.5))
        writer.add_event(event_pb2.Event(wall_time=1000.0 + step, step=step, summary=summary_pb2.Summary(value=values)))
    writer.close()
    path = str(next(tmp_path.glob("events.out.tfevents.*")))
    for source in (path, str(tmp_path)):  # the file, or its folder
        table = read_log(source)
        assert table.format == "tensorboard"
        assert table.train["total_loss"].values.tolist() == [3.0, 2.0, 1.0]
        assert table.val["bbox/AP"].value_at(20) == 12.5
        assert table.eval_records == 1
        assert table.axes["time"].values.tolist() == [0.0, 10.0, 20.0]


def test_folder_resolves_to_its_best_log(tmp_path):
    write(tmp_path, "log.txt", D2.format(s=1, it=19, loss=9.0))
    write(tmp_path, "metrics.json", jsonl([{"iteration": 19, "total_loss": 1.0}]))
    assert read_log(str(tmp_path)).format == "detectron2-metrics"


@pytest.mark.parametrize(
    "content, message",
    [(b"", "the file is empty"), (b"\n \r\n\t", "the file is empty"),
     (b"\x00\x01\x02\xff" * 100, "no training records found"),
     (b"just some text\nwith no metrics at all\n", "no training records found (read as a detectron2 log.txt)")],
)
def test_unreadable_files_raise_one_line_errors(tmp_path, content, message):
    path = write(tmp_path, "x.log", content)
    with pytest.raises(LogReadError, match=message.replace("(", r"\(").replace(")", r"\)")) as error:
        read_log(path)
    assert "\n" not in str(error.value) and path in str(error.value)


def test_missing_file_and_folder_without_logs(tmp_path):
    with pytest.raises(LogReadError, match="cannot read"):
        read_log(str(tmp_path / "nope.json"))
    with pytest.raises(LogReadError, match="no training log in this folder"):
        read_log(str(tmp_path))


def _same_tables(a_runs, b_runs):
    assert [t.run for t in a_runs] == [t.run for t in b_runs]
    for a, b in zip(a_runs, b_runs):
        assert a.train.keys() == b.train.keys() and a.val.keys() == b.val.keys()
        assert a.eval_records == b.eval_records
        for name in a.train:
            assert a.train[name].steps.tolist() == b.train[name].steps.tolist()
            assert a.train[name].values.tobytes() == b.train[name].values.tobytes()
        for name in a.val:
            assert a.val[name].values.tobytes() == b.val[name].values.tobytes()


REAL_METRICS = "d2-metrics__BUAAZhangHaonan__mgm_mask2former.json"


@pytest.mark.parametrize("piece_bytes, jobs", [(700, 1), (1 << 20, 3), (333, 3)])
def test_pieces_and_processes_give_the_same_table(monkeypatch, piece_bytes, jobs):
    """A metrics.json is decoded a few MB at a time, and by several processes when big: pieces
    smaller than a line (333 bytes) and ranges cut anywhere must not change the table."""
    import os

    from events.readers import streaming

    path = os.path.join(os.path.dirname(__file__), "fixtures", "real-logs", REAL_METRICS)
    whole = read_runs(path)
    monkeypatch.setattr(streaming, "PIECE_BYTES", piece_bytes)
    monkeypatch.setattr(streaming, "PARALLEL_MIN_BYTES", 0)
    _same_tables(whole, read_runs(path, jobs=jobs))


@pytest.mark.parametrize("jobs", [1, 2, 4])
def test_skipped_lines_keep_their_line_numbers_across_pieces_and_processes(tmp_path, monkeypatch, jobs):
    from events.readers import streaming

    lines = [json.dumps({"iteration": i, "total_loss": 1.0 / (i + 1)}) for i in range(400)]
    for number in (57, 203, 388):  # 1-based line numbers of the damage
        lines[number - 1] = "garbage that is no JSON at all"
    path = write(tmp_path, "metrics.json", "\r\n".join(lines))  # CRLF, no final newline
    monkeypatch.setattr(streaming, "PIECE_BYTES", 1000)
    monkeypatch.setattr(streaming, "PARALLEL_MIN_BYTES", 0)
    table = read_log(path, jobs=jobs)
    assert table.skipped.lines == 3
    assert [line for line, _ in table.skipped.examples] == [57, 203, 388]
    loss = table.train["total_loss"]
    assert len(loss) == 397 and loss.steps[-1] == 399 and loss.value_at(399) == 1.0 / 400
    assert table.run.first_line == 1


def test_standard_library_json_decodes_the_same_as_orjson(monkeypatch):
    import os

    from events.readers import json_lines

    path = os.path.join(os.path.dirname(__file__), "fixtures", "real-logs", "d2-metrics__BUAAZhangHaonan__mgm_mask2former.json")
    fast = read_runs(path)
    monkeypatch.setattr(json_lines, "fast_loads", json.loads)
    monkeypatch.setattr(json_lines, "_FAST_ERRORS", (ValueError,))
    slow = read_runs(path)
    assert [t.run for t in slow] == [t.run for t in fast]
    for a, b in zip(fast, slow):
        assert a.train.keys() == b.train.keys() and a.val.keys() == b.val.keys()
        assert all(a.train[k].values.tobytes() == b.train[k].values.tobytes() for k in a.train)
        assert all(a.val[k].values.tobytes() == b.val[k].values.tobytes() for k in a.val)
