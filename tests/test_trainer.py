"""Trainer loop, hooks and checkpoints: detectron2's call order, and a resume that keeps the
storage (smoothing windows, global averages) and leaves metrics.json strictly increasing."""
import json
import math

import pytest
import torch

from engine.checkpoint import Checkpointer, PeriodicCheckpointer
from engine.hooks import EvalHook, HookBase, IterationTimer, LRScheduler, PeriodicWriter
from engine.train_loop import SimpleTrainer
from events import JSONWriter


class TinyLossModel(torch.nn.Module):
    """detectron2 style: model(batch) returns the loss dict."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.tensor([2.0]))

    def forward(self, batch):
        x, nan_at = batch
        loss = (self.weight * x).pow(2).mean()
        if nan_at:
            loss = loss * float("nan")
        return {"loss_main": loss, "loss_aux_0": 0.5 * loss, "k_log_layer0": torch.tensor(1.0)}


def batches(nan_at=None):
    step = 0
    while True:
        yield torch.full((4,), 1.0), step == nan_at
        step += 1


class Recorder(HookBase):
    def __init__(self, fail_at=None):
        self.calls = []
        self.fail_at = fail_at

    def before_train(self):
        self.calls.append("before_train")

    def before_step(self):
        self.calls.append(("before_step", self.trainer.iter))

    def after_backward(self):
        grad = self.trainer.model.weight.grad
        self.calls.append(("after_backward", grad is not None and bool(grad.abs().sum() > 0)))

    def after_step(self):
        self.calls.append(("after_step", self.trainer.iter))
        if self.trainer.iter == self.fail_at:
            raise RuntimeError("simulated crash")

    def after_train(self):
        self.calls.append("after_train")


def make_trainer(tmp_path, *, nan_at=None, fail_at=None, resume_from=None, period=10, max_keep=2):
    model = TinyLossModel()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[25], gamma=0.1)
    trainer = SimpleTrainer(model, batches(nan_at), optimizer)
    checkpointer = Checkpointer(model, str(tmp_path), keep_last=max_keep, optimizer=optimizer)
    recorder = Recorder(fail_at)
    evals = []

    def evaluate():
        evals.append(trainer.iter)
        return {"validation": {"loss": float(model.weight.detach().abs())}}

    trainer.register_hooks(
        [
            IterationTimer(),
            LRScheduler(scheduler=scheduler),
            recorder,
            PeriodicCheckpointer(checkpointer, period=period),
            EvalHook(15, evaluate),
            PeriodicWriter([JSONWriter(str(tmp_path / "metrics.json"), resume_from=resume_from)], period=5),
        ]
    )
    return trainer, checkpointer, recorder, evals


def records(tmp_path):
    return [json.loads(line) for line in open(tmp_path / "metrics.json")]


def test_hook_call_order_metrics_and_evaluation(tmp_path):
    trainer, _, recorder, evals = make_trainer(tmp_path)
    trainer.train(0, 32)
    assert recorder.calls[0] == "before_train" and recorder.calls[-1] == "after_train"
    assert recorder.calls[1:4] == [("before_step", 0), ("after_backward", True), ("after_step", 0)]
    assert evals == [14, 29, 32]  # every 15 iterations and once at the end
    recs = records(tmp_path)
    iterations = [r["iteration"] for r in recs]
    assert iterations == [4, 9, 14, 19, 24, 29, 31, 32]
    # The final evaluation runs after the loop, at iteration max_iter (as in detectron2).
    assert set(recs[-1]) == {"iteration", "validation/loss"}
    last = recs[-2]
    assert {"loss_main", "loss_aux_0", "total_loss", "k_log_layer0", "lr", "time", "data_time"} <= set(last)
    assert last["lr"] == pytest.approx(0.001)  # MultiStepLR milestone 25 passed
    assert "validation/loss" in recs[2]
    # total_loss sums the loss terms only, never k_log_*
    history = trainer.storage.history
    assert history("total_loss").latest() == pytest.approx(
        history("loss_main").latest() + history("loss_aux_0").latest()
    )


def test_crash_and_resume_restores_storage_and_keeps_metrics_increasing(tmp_path):
    trainer, checkpointer, _, _ = make_trainer(tmp_path, fail_at=26)
    with pytest.raises(RuntimeError, match="simulated crash"):
        trainer.train(0, 40)
    # The crash still flushed what iteration 26 had put (writers close in after_train).
    assert [r["iteration"] for r in records(tmp_path)][-2:] == [24, 26]
    reference_avg = trainer.storage.history("loss_main").global_avg()

    latest = checkpointer.latest_checkpoint()
    assert latest.endswith("model_0000019.pth")
    assert sorted(p.name for p in tmp_path.glob("model_*.pth")) == ["model_0000009.pth", "model_0000019.pth"]

    resumed, checkpointer2, recorder, _ = make_trainer(tmp_path, resume_from=20)
    extra = checkpointer2.load(latest)
    resumed.load_state_dict(extra["trainer"])
    assert resumed.iter == 19
    resumed.train(resumed.iter + 1, 40)

    assert recorder.calls[1] == ("before_step", 20)
    iterations = [r["iteration"] for r in records(tmp_path)]
    assert iterations == sorted(set(iterations)) and iterations[-2:] == [39, 40]  # 40: final eval
    assert 24 in iterations  # the resumed run's own record, written after the old one moved aside
    moved = (tmp_path / "metrics.json.superseded-at-20").read_text().splitlines()
    assert [json.loads(line)["iteration"] for line in moved] == [24, 26]
    # The storage continued from the checkpoint: 20 values before + 20 after.
    assert resumed.storage.history("loss_main").count == 40
    assert not math.isclose(resumed.storage.history("loss_main").global_avg(), reference_avg)
    # The scheduler state came back through the LRScheduler hook: lr decayed at 25 once.
    assert resumed.optimizer.param_groups[0]["lr"] == pytest.approx(0.001)


def test_nan_loss_stops_training_naming_key_and_iteration_and_keeps_written_metrics(tmp_path):
    trainer, _, recorder, _ = make_trainer(tmp_path, nan_at=12)
    with pytest.raises(FloatingPointError) as info:
        trainer.train(0, 30)
    message = str(info.value)
    assert "loss_main" in message and "12" in message
    assert recorder.calls[-1] == "after_train"
    assert [r["iteration"] for r in records(tmp_path)] == [4, 9, 11]


def test_checkpoint_is_loadable_with_weights_only_and_final_is_kept(tmp_path):
    trainer, checkpointer, _, _ = make_trainer(tmp_path, period=5, max_keep=1)
    trainer.train(0, 12)
    files = sorted(p.name for p in tmp_path.glob("model_*.pth"))
    assert files == ["model_0000009.pth", "model_final.pth"]
    data = torch.load(tmp_path / "model_final.pth", weights_only=True)
    assert data["trainer"]["iteration"] == 11
    assert data["trainer"]["storage"]["histories"]["loss_main"]["count"] == 12
    assert checkpointer.latest_checkpoint().endswith("model_final.pth")


def test_torn_checkpoint_gives_one_clear_error(tmp_path):
    model = TinyLossModel()
    bad = tmp_path / "model_0000001.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(RuntimeError, match=r"cannot load checkpoint .*model_0000001\.pth"):
        Checkpointer(model, str(tmp_path)).load(str(bad))


def test_fresh_start_archives_an_earlier_run_and_resume_does_not(tmp_path):
    from engine.defaults import archive_previous_run

    assert archive_previous_run(str(tmp_path / "missing")) is None
    (tmp_path / "notes.txt").write_text("not a run")
    assert archive_previous_run(str(tmp_path)) is None
    (tmp_path / "metrics.json").write_text('{"iteration": 1}\n')
    (tmp_path / "events.out.tfevents.1.host").write_bytes(b"x")
    archive = archive_previous_run(str(tmp_path))
    assert archive is not None and sorted(p.name for p in tmp_path.iterdir()) == [archive.rsplit("/", 1)[-1]]
    moved = {p.name: p.read_text() for p in (tmp_path / archive).iterdir() if p.suffix != ".host"}
    assert moved == {"metrics.json": '{"iteration": 1}\n', "notes.txt": "not a run"}
    (tmp_path / "log.txt").write_text("second run")
    second = archive_previous_run(str(tmp_path))
    assert second != archive and (tmp_path / archive / "metrics.json").exists()  # earlier archive kept


def test_deferred_metrics_reach_the_last_write_when_max_iter_is_not_a_period_multiple(tmp_path):
    model = TinyLossModel()
    trainer = SimpleTrainer(model, batches(), torch.optim.SGD(model.parameters(), lr=0.01), deferred_metrics=True, metrics_period=5)
    trainer.register_hooks([IterationTimer(), PeriodicWriter([JSONWriter(str(tmp_path / "metrics.json"))], period=5)])
    trainer.train(0, 12)
    rows = records(tmp_path)
    assert [r["iteration"] for r in rows] == [4, 9, 11]
    assert "loss_main" in rows[-1] and "time" in rows[-1]  # one record: the timer's and the losses
