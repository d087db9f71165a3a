"""``engine.integrations.detectron2.install()`` in one process, against the detectron2 stand-in
(tests/standins): the README's detectron2 snippet as written (train, resume), detectron2's hooks
and writers on our storage, writer isolation in detectron2's ``PeriodicWriter``, idempotence,
and the error without detectron2. ``install()`` patches detectron2 for the whole process, as it
does in a user's program; the distributed behaviour is in test_detectron2_bridge_distributed.py.
"""
import json
import logging
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

import d2_standin  # noqa: F401  (puts the stand-in on sys.path)
from d2_standin import ScriptedLossModel, batches
from engine.integrations.detectron2 import STORAGE_STATE_KEY, install
from readme_snippets import readme_snippet

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------- the README path
def demo_relation_project(output_dir: Path, max_iter: int):
    """What a SpeaQ-style project brings: a detectron2 config with ``cfg.MODEL.DETR.*``, a
    registered meta-architecture that returns the weighted loss dict of the relation criterion
    (``_i`` aux keys, ``*_real`` / ``*_synthetic`` keys), and a train loader."""
    from detectron2.modeling import META_ARCH_REGISTRY
    from fvcore.common.config import CfgNode

    from criterion import build_relation_criterion
    from engine.config import load_config
    from engine.demo import build_demo_model, build_train_loader

    small = ["MODEL.DETR.DEC_LAYERS", "2", "SOLVER.IMS_PER_BATCH", "4",
             "DATASETS.DEMO.REAL.NUM_SCENES", "32", "DATASETS.DEMO.SYNTHETIC.NUM_SCENES", "32"]
    demo = load_config(str(REPO / "configs" / "demo.yaml"), small)
    cfg = CfgNode(OmegaConf.to_container(demo, resolve=True), new_allowed=True)
    cfg.OUTPUT_DIR = str(output_dir)
    cfg.MODEL.META_ARCHITECTURE = "DemoRelationDETR"
    cfg.MODEL.WEIGHTS = ""
    cfg.SOLVER.MAX_ITER, cfg.SOLVER.CHECKPOINT_PERIOD = max_iter, 5
    cfg.SOLVER.AMP = CfgNode({"ENABLED": False})
    cfg.TEST.EVAL_PERIOD = 0

    if "DemoRelationDETR" not in META_ARCH_REGISTRY:

        @META_ARCH_REGISTRY.register()
        class DemoRelationDETR(torch.nn.Module):
            def __init__(self, cfg):
                super().__init__()
                self.model = build_demo_model(demo)
                self.criterion = build_relation_criterion(cfg.MODEL.DETR, multi_dataset=cfg.DATASETS.MULTI_DATASET)

            def forward(self, batch):
                images, targets = batch
                loss_dict = self.criterion(self.model(images), targets)
                weights = self.criterion.weight_dict
                return {k: v * weights[k] if k in weights else v for k, v in loss_dict.items()}

    def build_relation_train_loader(cfg):
        loader = build_train_loader(demo, 0, 1)
        loader.start_iter = 0
        return loader

    return cfg, build_relation_train_loader


@pytest.fixture(scope="module")
def readme_runs(tmp_path_factory, request):
    """The README snippet run twice: 10 iterations, then resumed to 20."""
    output_dir = tmp_path_factory.mktemp("speaq")
    snippet = readme_snippet("detectron2")
    runs = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: one thread is much faster on a busy machine
    request.addfinalizer(lambda: torch.set_num_threads(threads))
    for max_iter, resume in ((10, False), (20, True)):
        cfg, loader = demo_relation_project(output_dir, max_iter)
        namespace = {"cfg": cfg, "args": types.SimpleNamespace(resume=resume), "build_relation_train_loader": loader}
        exec(compile(snippet, "README.md:detectron2", "exec"), namespace)
        runs.append(namespace["trainer"])
    return output_dir, runs


@pytest.mark.slow
def test_readme_snippet_trains_on_our_storage_and_writers(readme_runs):
    output_dir, (first, resumed) = readme_runs
    from events import EventStorage

    assert isinstance(first.storage, EventStorage)
    records = [json.loads(line) for line in (output_dir / "metrics.json").read_text().splitlines()]
    assert [r["iteration"] for r in records] == [9, 19]
    for record in records:
        # The relation criterion's keys, reduced by engine.metrics: aux layers, split keys, totals.
        assert {"loss_relation", "loss_relation_0", "loss_ce_subject", "total_loss", "data_time", "lr", "time"} <= set(record)
        assert not any(key.endswith("__num_samples") for key in record)
    loss_terms = [k for k in first.storage.latest() if k.startswith("loss") and not k.endswith(("_real", "_synthetic"))]
    latest = first.storage.latest()
    assert latest["total_loss"][0] == pytest.approx(sum(latest[k][0] for k in loss_terms), rel=1e-6)

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = set()
    for events_file in output_dir.glob("events.out.tfevents.*"):
        accumulator = EventAccumulator(str(events_file), size_guidance={"scalars": 0})
        accumulator.Reload()
        tags |= set(accumulator.Tags()["scalars"])
    assert any(tag.endswith("/loss_relation_0") for tag in tags), sorted(tags)
    assert list(output_dir.glob("wandb/offline-run-*/run-*.wandb"))


@pytest.mark.slow
def test_readme_snippet_resumes_smoothing_windows_from_detectron2s_checkpoint(readme_runs):
    output_dir, (first, resumed) = readme_runs
    assert resumed.start_iter == 10
    state = torch.load(output_dir / "model_final.pth", weights_only=False)["trainer"]
    assert state[STORAGE_STATE_KEY]["histories"]["loss_ce_subject"]["count"] == 20
    history = resumed.storage.history("loss_ce_subject")
    assert history.count == 20  # 10 before the checkpoint + 10 after: the window continued
    assert [itr for _, itr in history.values()][:2] == [0, 1]
    assert resumed.storage.history("time").count > 10  # the ETA's history continued as well


# ---------------------------------------------------------------------------- hooks and writers
class BrokenWriter:
    """A user's writer, built the way detectron2 code builds writer lists, that fails."""

    def __init__(self):
        self.writes = 0

    def write(self):
        self.writes += 1
        raise OSError(28, "No space left on device")

    def close(self):
        pass


def test_detectron2_hooks_and_a_failing_writer(tmp_path, caplog):
    install()
    from detectron2.engine import SimpleTrainer, hooks
    from detectron2.utils.events import CommonMetricPrinter, JSONWriter

    from events import TensorboardXWriter

    model = ScriptedLossModel()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    trainer = SimpleTrainer(model, batches(0, 10), optimizer)
    trainer.scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 100)
    broken = BrokenWriter()
    writers = [CommonMetricPrinter(10), JSONWriter(str(tmp_path / "metrics.json")), TensorboardXWriter(str(tmp_path)), broken]
    eval_results = iter([{"bbox": {"AP": 30.0}}, {"bbox": {"AP": 20.0}}])
    checkpointer = types.SimpleNamespace(saved=[], save=lambda name, **extra: checkpointer.saved.append((name, extra)))
    trainer.register_hooks([
        hooks.IterationTimer(), hooks.LRScheduler(),
        hooks.EvalHook(5, lambda: next(eval_results)),
        hooks.BestCheckpointer(5, checkpointer, "bbox/AP"),
        hooks.PeriodicWriter(writers, period=5),
    ])
    with caplog.at_level(logging.INFO):
        trainer.train(0, 10)
    assert broken.writes == 1
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings == [
        "BrokenWriter failed in write() at iteration 4: OSError: [Errno 28] No space left on device; "
        "it is disabled for the rest of training, the other writers go on."
    ]
    records = [json.loads(line) for line in (tmp_path / "metrics.json").read_text().splitlines()]
    # The final evaluation is put at iteration 10 (detectron2's EvalHook.after_train).
    assert [r["iteration"] for r in records] == [4, 9, 10]
    assert (records[0]["bbox/AP"], records[2]["bbox/AP"]) == (30.0, 20.0)
    assert records[0]["bbox/AP"] == 30.0 and records[0]["lr"] == 0.0
    assert checkpointer.saved == [("model_best", {"iteration": 4})]
    console = [r.getMessage() for r in caplog.records if r.name == "detectron2.utils.events"]
    assert len(console) == 2 and "iter: 4" in console[0] and "total_loss: 9" in console[0]
    assert list(tmp_path.glob("events.out.tfevents.*"))


def test_amp_trainer_reduces_with_engine_metrics():
    install()
    from detectron2.engine import AMPTrainer

    model = ScriptedLossModel()
    trainer = AMPTrainer(model, batches(0, 3), torch.optim.SGD(model.parameters(), lr=0.0))
    trainer.train(0, 3)
    latest = trainer.storage.latest()
    # One rank: rank 0's values; total_loss = loss_ce + loss_ce_0 (the split keys are counted).
    assert latest["total_loss"] == (pytest.approx(3.0 * 3), 2)
    assert latest["loss_relation_synthetic"][0] == pytest.approx(0.5 * 3)
    assert "loss_relation_synthetic__num_samples" not in latest


def test_install_is_idempotent_and_reaches_names_imported_before_it():
    import detectron2.engine.hooks as d2_hooks
    import detectron2.engine.train_loop as d2_train_loop
    import detectron2.utils.events as d2_events

    import events
    from events import storage

    install()
    write_metrics = d2_train_loop.SimpleTrainer.write_metrics
    before_train = d2_train_loop.TrainerBase.before_train
    install()
    assert d2_train_loop.SimpleTrainer.write_metrics is write_metrics
    assert d2_train_loop.TrainerBase.before_train is before_train
    assert d2_train_loop.EventStorage is events.EventStorage
    assert d2_train_loop.get_event_storage is events.get_event_storage
    assert d2_hooks.EventStorage is events.EventStorage
    import detectron2.engine.defaults as d2_defaults  # default_writers() builds ours

    assert (d2_defaults.JSONWriter, d2_defaults.CommonMetricPrinter) == (events.JSONWriter, events.CommonMetricPrinter)
    assert d2_defaults.TensorboardXWriter is events.TensorboardXWriter
    assert d2_events._CURRENT_STORAGE_STACK is storage._CURRENT_STORAGE_STACK
    with events.EventStorage() as opened:
        assert d2_events.get_event_storage() is opened


def last_error_line(tmp_path, code, pythonpath):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, pythonpath))}
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 1, result.stderr
    return result.stderr.strip().splitlines()[-1]


def test_install_without_detectron2_says_so(tmp_path):
    code = "from engine.integrations.detectron2 import install\ninstall()"
    assert last_error_line(tmp_path, code, [REPO]) == (
        "ImportError: engine.integrations.detectron2 needs detectron2, which is not installed "
        "(it is not on PyPI: install it from github.com/facebookresearch/detectron2)"
    )


def test_install_refuses_once_detectron2_training_has_started(tmp_path):
    code = (
        "from detectron2.utils.events import EventStorage\n"
        "from engine.integrations.detectron2 import install\n"
        "with EventStorage():\n    install()"
    )
    assert last_error_line(tmp_path, code, [d2_standin.STANDINS, REPO]) == (
        "RuntimeError: engine.integrations.detectron2.install() must run before training starts: "
        "a detectron2 EventStorage is open"
    )
