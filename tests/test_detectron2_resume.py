"""A detectron2 ``DefaultTrainer`` (the stand-in in tests/standins) after ``install()`` crashes
past a periodic checkpoint and is resumed with ``resume_or_load(resume=True)``, as a user would
rerun it with ``--resume``. Its writers are built in ``__init__``, before the checkpoint tells
the start iteration, and nobody passes it to them; yet metrics.json, TensorBoard (read with
tensorboard's own reader) and the W&B offline run each show every write step once.

detectron2's own writers here leave metrics.json reading 19, 39, 59, 69, 70, 59, 79, 99.
"""
import itertools
import json
import types

import pytest
import torch
from fvcore.common.config import CfgNode
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import d2_standin  # noqa: F401  (puts the stand-in on sys.path)
from d2_standin import ScriptedLossModel
from engine.integrations.detectron2 import install
from test_detectron2_bridge import readme_snippet
from wandb_reader import find_run_files, isolate_wandb, read_offline_run

MAX_ITER = 100
CHECKPOINT_PERIOD = 40  # checkpoint at iteration 39: training resumes at 40
CRASH_AT = 70  # fetching the batch of iteration 70 fails; 59 and 69 are written past the checkpoint
WRITE_STEPS = [19, 39, 59, 79, 99]  # DefaultTrainer's PeriodicWriter writes every 20 iterations
CRASHED_OFFSET = 1000.0  # the crashed run's losses are 1000 + k, the resumed run's k


class ScriptedLossArch(ScriptedLossModel):
    """A meta-architecture for detectron2's registry: ``model(batch)`` is the loss dict."""

    def __init__(self, cfg):
        super().__init__()


def scripted_loader(offset, crash_at=None):
    """``build_train_loader``: an endless stream of loss dicts (``offset + k`` for batch ``k``)
    that raises when batch ``crash_at`` is fetched."""

    def build(cfg):
        def stream():
            for k in itertools.count():
                if k == crash_at:
                    raise RuntimeError("simulated crash")
                yield {"loss_ce": offset + k, "loss_ce_0": 2 * (offset + k)}

        return stream()

    return build


def make_cfg(output_dir):
    from detectron2.modeling import META_ARCH_REGISTRY

    if "ScriptedLossArch" not in META_ARCH_REGISTRY:
        META_ARCH_REGISTRY.register(ScriptedLossArch)
    return CfgNode({
        "OUTPUT_DIR": str(output_dir),
        "MODEL": {"META_ARCHITECTURE": "ScriptedLossArch", "WEIGHTS": ""},
        "SOLVER": {"MAX_ITER": MAX_ITER, "CHECKPOINT_PERIOD": CHECKPOINT_PERIOD, "BASE_LR": 0.0,
                   "STEPS": [], "GAMMA": 0.1, "AMP": {"ENABLED": False}},
        "TEST": {"EVAL_PERIOD": 0},
    })


def crash_then_resume(run_training):
    """``run_training(loader, resume)`` once into a crash, once resumed to the end."""
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_training(scripted_loader(CRASHED_OFFSET, crash_at=CRASH_AT), resume=False)
    return run_training(scripted_loader(0.0), resume=True)


def read_records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def tensorboard_scalars(log_dir, tag):
    accumulator = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    accumulator.Reload()
    return [(event.step, event.value) for event in accumulator.Scalars(tag)]


def check_metrics_json_and_tensorboard(output_dir):
    records = read_records(output_dir / "metrics.json")
    assert [r["iteration"] for r in records] == WRITE_STEPS  # no duplicate, no gap, increasing
    # From the checkpoint on, the records are the resumed run's: a window median of its k's.
    assert [r["loss_ce"] for r in records] == [9.5 + CRASHED_OFFSET, 29.5 + CRASHED_OFFSET, 9.5, 29.5, 49.5]
    moved = read_records(output_dir / f"metrics.json.superseded-at-{CHECKPOINT_PERIOD}")
    assert [(r["iteration"], r["loss_ce"]) for r in moved] == [(59, 49.5 + CRASHED_OFFSET), (69, 59.5 + CRASHED_OFFSET)]

    loss_ce = tensorboard_scalars(output_dir, "losses/loss_ce")
    assert [step for step, _ in loss_ce] == WRITE_STEPS  # the crashed run's 59 and 69 purged
    assert [value for _, value in loss_ce] == [pytest.approx(r["loss_ce"]) for r in records]


@pytest.fixture
def one_thread(request):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: one thread is much faster on a busy machine
    request.addfinalizer(lambda: torch.set_num_threads(threads))


def stock_trainer_run(cfg):
    """``run_training`` for detectron2's ``DefaultTrainer`` with its own ``build_writers``."""
    install()
    from detectron2.engine import DefaultTrainer

    def run_training(loader, resume):
        trainer_class = type("Trainer", (DefaultTrainer,), {"build_train_loader": classmethod(lambda cls, cfg: loader(cfg))})
        trainer = trainer_class(cfg)  # writers built here, by detectron2's default_writers()
        trainer.resume_or_load(resume=resume)
        trainer.train()
        return trainer

    return run_training


def test_default_writers_resume_without_being_told_the_iteration(tmp_path, one_thread):
    resumed = crash_then_resume(stock_trainer_run(make_cfg(tmp_path)))
    assert resumed.start_iter == CHECKPOINT_PERIOD
    check_metrics_json_and_tensorboard(tmp_path)


def test_a_fresh_start_in_a_used_directory_supersedes_the_earlier_run(tmp_path, one_thread):
    run_training = stock_trainer_run(make_cfg(tmp_path))
    run_training(scripted_loader(CRASHED_OFFSET), resume=False)
    run_training(scripted_loader(0.0), resume=False)  # resume=False: starts at 0 again

    records = read_records(tmp_path / "metrics.json")
    assert [(r["iteration"], r["loss_ce"]) for r in records] == [(19, 9.5), (39, 29.5), (59, 49.5), (79, 69.5), (99, 89.5)]
    earlier = read_records(tmp_path / "metrics.json.superseded-at-0")
    assert [r["loss_ce"] for r in earlier] == [v + CRASHED_OFFSET for v in (9.5, 29.5, 49.5, 69.5, 89.5)]
    loss_ce = tensorboard_scalars(tmp_path, "losses/loss_ce")
    assert loss_ce == [(r["iteration"], pytest.approx(r["loss_ce"])) for r in records]


def test_readme_snippet_resumes_metrics_tensorboard_and_wandb(tmp_path, monkeypatch, one_thread):
    isolate_wandb(monkeypatch, str(tmp_path / "wandb-home"))
    output_dir = tmp_path / "out"
    cfg = make_cfg(output_dir)
    snippet = compile(readme_snippet("detectron2"), "README.md:detectron2", "exec")

    def run_training(loader, resume):
        namespace = {"cfg": cfg, "args": types.SimpleNamespace(resume=resume), "build_relation_train_loader": loader}
        exec(snippet, namespace)
        return namespace["trainer"]

    crash_then_resume(run_training)
    check_metrics_json_and_tensorboard(output_dir)

    crashed, resumed = (read_offline_run(path) for path in find_run_files(str(output_dir)))
    assert crashed.run_id == resumed.run_id  # the same W&B run, continued
    rows = [row for run in (crashed, resumed) for row in run.history if "iteration" in row]
    # W&B keeps what the crashed run logged (it cannot take rows back) and continues after it.
    assert [row["iteration"] for row in rows] == [19, 39, 59, 69, 79, 99]
    assert [row["loss_ce"] for row in rows[-2:]] == [29.5, 49.5]
