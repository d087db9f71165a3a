"""build_writers end to end: a real SimpleTrainer writes console, metrics.json, TensorBoard and
W&B; every file holds every key at every write step; a failing writer costs only itself;
a crash and resume leaves each tool with each step once."""
import json
import logging
import sys

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from engine import writer_builder
from engine.config import get_cfg
from engine.hooks import CallbackHook, HookBase, PeriodicWriter
from engine.train_loop import SimpleTrainer
from engine.writer_builder import build_writers
from events.tensorboard_writer import tensorboard_tag
from events.writer_guard import GuardedWriter
from wandb_reader import find_run_files, isolate_wandb, read_offline_run

PERIOD = 20
ALL_WRITERS = ["CommonMetricPrinter", "JSONWriter", "WandbWriter", "TensorboardXWriter"]


@pytest.fixture(autouse=True)
def offline_wandb(monkeypatch, tmp_path):
    isolate_wandb(monkeypatch, str(tmp_path / "wandb-home"))


class DetrLikeModel(torch.nn.Module):
    """model(batch) -> loss dict with aux layers and a real/synthetic split."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.tensor([1.5]))

    def forward(self, batch):
        loss = (self.weight * batch).pow(2).mean()
        return {"loss_ce": loss, "loss_ce_0": 1.5 * loss, "loss_rel_real": 0.5 * loss}


def batches():
    step = 0
    while True:
        yield torch.full((4,), 1.0 + 0.01 * step)
        step += 1


class CrashAt(HookBase):
    def __init__(self, iteration):
        self.iteration = iteration

    def after_step(self):
        if self.trainer.iter == self.iteration:
            raise RuntimeError("simulated crash")


def make_cfg(tmp_path, **overrides):
    cfg = get_cfg()
    cfg.OUTPUT_DIR = str(tmp_path / "out")
    cfg.SOLVER.MAX_ITER = 40
    cfg.WANDB.MODE = "offline"
    for key, value in overrides.items():
        node, leaf = key.rsplit(".", 1)
        setattr(cfg[node], leaf, value)
    return cfg


def train(cfg, start=0, max_iter=40, resume_iter=None, hooks=(), writers=None):
    model = DetrLikeModel()
    trainer = SimpleTrainer(model, batches(), torch.optim.SGD(model.parameters(), lr=0.01))
    writers = build_writers(cfg, max_iter=max_iter, resume_iter=resume_iter) if writers is None else writers
    trainer.register_hooks([*hooks, PeriodicWriter(writers, period=PERIOD)])
    trainer.train(start, max_iter)
    return trainer, writers


def json_records(cfg):
    with open(f"{cfg.OUTPUT_DIR}/metrics.json") as f:
        return [json.loads(line) for line in f]


def tb_scalars(log_dir):
    accumulator = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    accumulator.Reload()
    return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}


def wandb_rows(cfg):
    rows = []
    for path in find_run_files(cfg.OUTPUT_DIR):
        run = read_offline_run(path)
        rows += [(run.run_id, {k: v for k, v in row.items() if not k.startswith("_")}) for row in run.history]
    return rows


def warnings_of(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("events")]


def test_all_four_writers_show_every_key_at_every_write_step(tmp_path):
    cfg = make_cfg(tmp_path)
    trainer, writers = train(cfg)
    assert [w.name for w in writers] == ALL_WRITERS
    assert all(isinstance(w, GuardedWriter) and not w.disabled for w in writers)

    keys = set(trainer.storage.histories())
    assert {"loss_ce", "loss_ce_0", "loss_rel_real", "total_loss", "data_time"} <= keys
    records = json_records(cfg)
    assert [r["iteration"] for r in records] == [19, 39]
    assert all(set(r) == keys | {"iteration"} for r in records)

    scalars = tb_scalars(cfg.OUTPUT_DIR)
    assert set(scalars) == {tensorboard_tag(k) for k in keys}
    for record in records:
        for key in keys:
            assert (record["iteration"], pytest.approx(record[key], rel=1e-6)) in scalars[tensorboard_tag(key)]

    rows = wandb_rows(cfg)
    assert [row for _, row in rows] == records  # same keys, same values, same iterations


def test_other_ranks_get_the_console_only(tmp_path, monkeypatch):
    monkeypatch.setattr(writer_builder.comm, "is_main_process", lambda: False)
    writers = build_writers(make_cfg(tmp_path))
    assert [w.name for w in writers] == ["CommonMetricPrinter"]
    assert not (tmp_path / "out").exists()


def test_disabled_tools_are_not_built(tmp_path):
    cfg = make_cfg(tmp_path, **{"TENSORBOARD.ENABLED": False, "WANDB.ENABLED": False})
    assert [w.name for w in build_writers(cfg)] == ["CommonMetricPrinter", "JSONWriter"]


def assert_complete(cfg, tb=True, wandb=True):
    iterations = [19, 39]
    assert [r["iteration"] for r in json_records(cfg)] == iterations
    if tb:
        assert [s for s, _ in tb_scalars(cfg.OUTPUT_DIR)["losses/loss_ce"]] == iterations
    if wandb:
        assert [row["iteration"] for _, row in wandb_rows(cfg)] == iterations


def test_wandb_raising_in_log_disables_only_wandb(tmp_path, caplog):
    cfg = make_cfg(tmp_path)
    writers = build_writers(cfg, max_iter=40)
    wandb_writer = writers[ALL_WRITERS.index("WandbWriter")]

    def service_down(*args, **kwargs):
        raise ConnectionResetError("wandb service went away")

    # The run opens when training starts (build_writers was not told the start iteration).
    break_wandb = CallbackHook(before_train=lambda _: setattr(wandb_writer.writer.run, "log", service_down))
    train(cfg, writers=writers, hooks=[break_wandb])
    assert warnings_of(caplog) == [
        "WandbWriter failed in write() at iteration 19: ConnectionResetError: wandb service went away; "
        "it is disabled for the rest of training, the other writers go on."
    ]
    assert_complete(cfg, wandb=False)


def test_unwritable_tensorboard_dir_disables_only_tensorboard(tmp_path, caplog):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    cfg = make_cfg(tmp_path, **{"TENSORBOARD.LOG_DIR": str(blocker / "tb")})
    train(cfg)
    (message,) = warnings_of(caplog)
    assert message.startswith("TensorboardXWriter failed in write() at iteration 19: NotADirectoryError")
    assert_complete(cfg, tb=False)


def test_missing_tensorboardx_leaves_tensorboard_out(tmp_path, caplog, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)
    cfg = make_cfg(tmp_path)
    _, writers = train(cfg)
    assert [w.name for w in writers] == ["CommonMetricPrinter", "JSONWriter", "WandbWriter"]
    assert warnings_of(caplog) == [
        "TensorboardXWriter could not be created and is left out: MissingExtraError: TensorboardXWriter needs "
        "the 'tensorboardX' package, which is not installed: pip install 'detr-telemetry[tb]'"
    ]
    assert_complete(cfg, tb=False)


def test_strict_writers_raise(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    cfg = make_cfg(tmp_path, **{"TENSORBOARD.LOG_DIR": str(blocker / "tb"), "TELEMETRY.STRICT_WRITERS": True})
    with pytest.raises(NotADirectoryError):
        train(cfg)


@pytest.mark.parametrize("resume_iter", [60, None], ids=["told", "from-storage-start"])
def test_crash_at_100_and_resume_from_60_shows_each_step_once(tmp_path, resume_iter):
    cfg = make_cfg(tmp_path, **{"SOLVER.MAX_ITER": 140})
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(cfg, max_iter=140, hooks=[CrashAt(100)])
    # resume_iter=None: the writers learn at their first write that the trainer started at 60.
    train(cfg, start=60, max_iter=140, resume_iter=resume_iter)

    steps = [19, 39, 59, 79, 99, 119, 139]
    records = json_records(cfg)
    assert [r["iteration"] for r in records] == steps
    loss_ce = tb_scalars(cfg.OUTPUT_DIR)["losses/loss_ce"]
    assert [s for s, _ in loss_ce] == steps
    # 79 and 99 come from the resumed run, as in metrics.json
    assert [v for _, v in loss_ce] == [pytest.approx(r["loss_ce"], rel=1e-6) for r in records]

    rows = wandb_rows(cfg)
    assert len({run_id for run_id, _ in rows}) == 1  # the same W&B run, continued
    # W&B keeps what it already held up to the crash (the last write, at 100) and continues after it.
    assert [row["iteration"] for _, row in rows] == [19, 39, 59, 79, 99, 100, 119, 139]
