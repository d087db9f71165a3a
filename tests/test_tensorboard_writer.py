"""TensorboardXWriter, read back with TensorBoard's own EventAccumulator and event-file loader."""
import errno
import glob
import json
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

from events import EventStorage
from events.tensorboard_writer import TensorboardXWriter, flatten_config, tensorboard_tag
from events.writer_guard import MissingExtraError

WINDOW = 20
PERIOD = 20


def load(log_dir):
    accumulator = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "tensors": 0})
    accumulator.Reload()
    return accumulator


def scalars(accumulator, tag):
    return [(e.step, e.value) for e in accumulator.Scalars(tag)]


def detr_keys():
    """66 keys shaped like a relation-DETR loss dict: aux layers, real/synthetic splits, timings."""
    bases = ["loss_ce", "loss_bbox", "loss_giou", "loss_rel", "loss_sub", "loss_obj"]
    keys = list(bases)
    keys += [f"{b}_{layer}" for b in bases for layer in range(5)]  # 30 aux-layer copies
    keys += [f"{b}_{split}" for b in bases for split in ("real", "synthetic")]  # 12 splits
    keys += ["cardinality_error"] + [f"cardinality_error_{layer}" for layer in range(5)]
    keys += ["class_error", "total_loss", "total_loss_weighted", "time", "data_time"]
    keys += ["rank_data_time", "bbox/AP", "bbox/AP50", "sampled_real_ratio", "eta_seconds", "lr", "grad_norm"]
    assert len(keys) == len(set(keys)) == 66
    return keys


def test_tags_keep_the_key_and_add_a_group():
    expected = {
        "loss_ce": "losses/loss_ce",
        "total_loss": "losses/total_loss",
        "class_error": "losses/class_error",
        "loss_ce_0": "aux_layers/loss_ce_0",
        "cardinality_error_3_unscaled": "aux_layers/cardinality_error_3_unscaled",
        "loss_ce_real_0": "aux_layers/loss_ce_real_0",
        "loss_relation_real": "real_synthetic/loss_relation_real",
        "loss_relation_synthetic": "real_synthetic/loss_relation_synthetic",
        "sampled_real_ratio": "real_synthetic/sampled_real_ratio",
        "lr": "optim/lr",
        "grad_norm": "optim/grad_norm",
        "time": "time/time",
        "data_time": "time/data_time",
        "eta_seconds": "time/eta_seconds",
        "AP50": "metrics/AP50",
        "mAP_50": "metrics/mAP_50",  # a number suffix outside losses is not an aux layer
        "bbox/AP": "bbox/AP",
        "params/backbone.0.weight": "params/backbone.0.weight",
    }
    assert {key: tensorboard_tag(key) for key in expected} == expected


def test_every_key_every_write_step_with_storage_values(tmp_path):
    keys = detr_keys()
    unsmoothed = {"lr", "eta_seconds", "bbox/AP", "bbox/AP50"}
    rng = np.random.default_rng(0)
    put = {key: [] for key in keys}  # the values the storage held, by iteration
    with EventStorage() as storage:
        writer = TensorboardXWriter(str(tmp_path))
        for it in range(100):
            storage.iter = it
            smoothed = [k for k in keys if k not in unsmoothed]
            values = rng.normal(size=len(smoothed)).tolist()
            storage.put_scalars_bulk(smoothed, values)
            for k, v in zip(smoothed, values):
                put[k].append(v)
            storage.put_scalar("lr", 1e-4 * (1 + it), smoothing_hint=False)
            storage.put_scalar("eta_seconds", 100.0 - it, smoothing_hint=False)
            if it % 50 == 49:  # evaluation at its own cadence
                storage.put_scalar("bbox/AP", 30.0 + it, smoothing_hint=False)
                storage.put_scalar("bbox/AP50", 50.0 + it, smoothing_hint=False)
            if (it + 1) % PERIOD == 0:
                writer.write()
        writer.close()

    accumulator = load(tmp_path)
    assert sorted(accumulator.Tags()["scalars"]) == sorted(tensorboard_tag(k) for k in keys)
    write_steps = [19, 39, 59, 79, 99]
    for key in keys:
        if key in unsmoothed:
            continue
        expected = [(s, np.float32(np.median(put[key][s - WINDOW + 1 : s + 1]))) for s in write_steps]
        assert scalars(accumulator, tensorboard_tag(key)) == expected, key
    assert scalars(accumulator, "optim/lr") == [(s, np.float32(1e-4 * (1 + s))) for s in write_steps]
    assert scalars(accumulator, "bbox/AP") == [(49, 79.0), (99, 129.0)]


def test_one_event_per_iteration_holds_all_values(tmp_path):
    with EventStorage() as storage:
        writer = TensorboardXWriter(str(tmp_path), group_tags=False)
        for it in range(40):
            storage.iter = it
            storage.put_scalars(loss_a=1.0, loss_b=2.0, loss_c=3.0)
            if (it + 1) % PERIOD == 0:
                writer.write()
        writer.close()
    (path,) = glob.glob(str(tmp_path / "events.out.tfevents.*"))
    summaries = [e for e in EventFileLoader(path).Load() if e.HasField("summary")]
    assert [e.step for e in summaries] == [19, 39]
    assert [sorted(v.tag for v in e.summary.value) for e in summaries] == [["loss_a", "loss_b", "loss_c"]] * 2


def test_nan_and_inf_round_trip(tmp_path):
    with EventStorage() as storage:
        writer = TensorboardXWriter(str(tmp_path))
        storage.put_scalar("loss_nan", float("nan"), smoothing_hint=False)
        storage.put_scalar("loss_inf", float("-inf"), smoothing_hint=False)
        writer.write()
        writer.close()
    accumulator = load(tmp_path)
    assert np.isnan(accumulator.Scalars("losses/loss_nan")[0].value)
    assert accumulator.Scalars("losses/loss_inf")[0].value == -np.inf


def test_images_and_histograms_are_written_and_cleared(tmp_path):
    values = np.arange(1000, dtype=np.float64) - 500.0
    with EventStorage() as storage:
        writer = TensorboardXWriter(str(tmp_path))
        storage.iter = 7
        storage.put_image("predictions", np.ones((3, 8, 4), dtype=np.float32) * 0.5)
        storage.put_histogram("params/w", values.reshape(10, 100), bins=50)
        storage.put_scalar("loss", 1.0)
        writer.write()
        assert storage._vis_data == [] and storage._histograms == []
        writer.close()
    accumulator = load(tmp_path)
    (image,) = accumulator.Images("predictions")
    assert (image.step, image.width, image.height) == (7, 4, 8)
    (histogram,) = accumulator.Histograms("params/w")
    assert histogram.step == 7
    h = histogram.histogram_value
    assert (h.min, h.max, h.num, h.sum) == (-500.0, 499.0, 1000, values.sum())
    assert sum(h.bucket) == 1000 and len(h.bucket) == 50


CONFIG = {"SOLVER": {"BASE_LR": 1e-4, "STEPS": [10, 20]}, "WANDB": {"PROJECT": "p", "TAGS": []}}


def hparams_of(accumulator):
    from tensorboard.plugins.hparams import plugin_data_pb2

    content = accumulator.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    data = plugin_data_pb2.HParamsPluginData.FromString(content)
    return {k: v.WhichOneof("kind") and getattr(v, v.WhichOneof("kind")) for k, v in data.session_start_info.hparams.items()}


def test_config_recorded_once_and_not_again_on_resume(tmp_path):
    for start, purge_step in [(0, None), (20, 20)]:
        with EventStorage(start) as storage:
            writer = TensorboardXWriter(str(tmp_path), config=CONFIG, purge_step=purge_step)
            for it in range(start, start + 40):
                storage.iter = it
                storage.put_scalars(total_loss=1.0, loss_ce=0.5)
                if (it + 1) % PERIOD == 0:
                    writer.write()
            writer.close()
    accumulator = load(tmp_path)
    assert hparams_of(accumulator) == {
        "SOLVER.BASE_LR": 1e-4,
        "SOLVER.STEPS": "[10, 20]",
        "WANDB.PROJECT": "p",
        "WANDB.TAGS": "[]",
    }
    (config_text,) = accumulator.Tensors("config/text_summary")
    assert "BASE_LR: 0.0001" in config_text.tensor_proto.string_val[0].decode()
    assert flatten_config({"A": {"B": None, "C": True}}) == {"A.C": True}


def test_resume_purges_the_crashed_steps(tmp_path):
    def train(start, stop, offset, **kwargs):
        with EventStorage(start) as storage:
            writer = TensorboardXWriter(str(tmp_path), **kwargs)
            for it in range(start, stop):
                storage.iter = it
                storage.put_scalar("loss", it + offset, smoothing_hint=False)
                if (it + 1) % PERIOD == 0:
                    writer.write()
            writer.close()  # the crashed run's events reached the disk before it died

    train(0, 101, offset=1000)  # crashed run, last write at 99
    train(60, 140, offset=0, purge_step=60)  # resumed from the checkpoint at 60
    accumulator = load(tmp_path)
    assert scalars(accumulator, "losses/loss") == [
        (19, 1019.0), (39, 1039.0), (59, 1059.0), (79, 79.0), (99, 99.0), (119, 119.0), (139, 139.0)
    ]


def test_missing_tensorboardx_is_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)
    with pytest.raises(MissingExtraError, match=r"pip install 'detr-telemetry\[tb\]'") as info:
        TensorboardXWriter(str(tmp_path))
    assert "\n" not in str(info.value)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_dead_event_thread_raises_instead_of_blocking(tmp_path, monkeypatch):
    from tensorboardX.event_file_writer import EventsWriter

    with EventStorage() as storage:
        writer = TensorboardXWriter(str(tmp_path))
        storage.put_scalar("loss", 1.0)
        writer.write()
        write_event = EventsWriter.write_event

        def disk_full(self, event):
            # The disk "fills up" after iteration 0, whenever the worker gets to that one's
            # events (flush() does not wait for the queue), so it dies on iteration 1's.
            if event.step < 1:
                return write_event(self, event)
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(EventsWriter, "write_event", disk_full)
        storage.iter = 1
        storage.put_scalar("loss", 2.0)
        writer.write()  # queued; the thread dies writing it
        writer._writer.file_writer.event_writer._worker.join(timeout=120)  # returns as soon as the thread died
        storage.iter = 2
        storage.put_scalar("loss", 3.0)
        with pytest.raises(RuntimeError, match="thread .* has died"):
            writer.write()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url, timeout=30.0):
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


@pytest.mark.slow
def test_real_tensorboard_server_lists_and_serves_scalars(tmp_path):
    with EventStorage() as storage:
        writer = TensorboardXWriter(str(tmp_path / "exp"))
        for it in range(40):
            storage.iter = it
            storage.put_scalars(loss_ce=float(it), loss_ce_0=2.0 * it, total_loss=3.0)
            storage.put_scalar("lr", 0.01, smoothing_hint=False)
            if (it + 1) % PERIOD == 0:
                writer.write()
        writer.close()

    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", str(tmp_path), "--host", "127.0.0.1",
         "--port", str(port), "--reload_interval", "1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    expected = {"losses/loss_ce", "aux_layers/loss_ce_0", "losses/total_loss", "optim/lr"}
    try:
        deadline, tags = time.monotonic() + 240, {}  # TensorBoard starts slowly on a busy machine
        while time.monotonic() < deadline and set(tags.get("exp", {})) != expected:
            assert server.poll() is None, "tensorboard exited"
            try:
                tags = get_json(f"{base}/data/plugin/scalars/tags")
            except OSError:
                pass
            time.sleep(0.5)
        assert set(tags["exp"]) == expected
        query = urllib.parse.urlencode({"run": "exp", "tag": "losses/loss_ce"})
        points = get_json(f"{base}/data/plugin/scalars/scalars?{query}")
        assert [(step, value) for _, step, value in points] == [(19, 9.5), (39, 29.5)]
    finally:
        server.terminate()
        server.wait(timeout=30)
