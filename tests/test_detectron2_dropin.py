"""Drop-in details for detectron2 projects: the metric lines' logger name (``detectron2.utils.events``,
written ``d2.utils.events`` in log.txt), detectron2's console-line and TensorBoard-writer
behaviours, and ``PeriodicWriter`` isolating every writer however the list was built."""
import logging
import re

import pytest
import torch

from engine.hooks import IterationTimer, PeriodicWriter
from engine.logger import setup_logger
from engine.train_loop import SimpleTrainer
from events import CommonMetricPrinter, EventStorage, JSONWriter, TensorboardXWriter
from events.readers import read_log
from events.writers import EventWriter


@pytest.fixture
def detectron2_logger():
    """The ``detectron2`` logger as detectron2's ``setup_logger()`` leaves it: own handler, no
    propagation to the root."""
    logger = logging.getLogger("detectron2")
    saved = (logger.handlers[:], logger.propagate, logger.level)
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger.handlers, logger.propagate = [handler], False
    logger.setLevel(logging.DEBUG)
    yield records
    logger.handlers, logger.propagate, _ = saved
    logger.setLevel(saved[2])


def two_timed_steps(storage, **scalars):
    for _ in range(2):
        storage.put_scalars(time=1.0, **scalars)
        storage.step()


def test_metric_lines_reach_the_detectron2_loggers_handlers(detectron2_logger):
    with EventStorage() as storage:
        two_timed_steps(storage, loss_ce=0.5)
        CommonMetricPrinter(10).write()
    (record,) = detectron2_logger
    assert record.name == "detectron2.utils.events"
    assert record.getMessage().startswith(" eta: 0:00:07  iter: 2  loss_ce: 0.5")


def test_eta_needs_max_iter_and_non_losses_are_printed(detectron2_logger):
    with EventStorage() as storage:
        two_timed_steps(storage, **{"[metric]bn_stat": 1.0, "accuracy": 0.9})
        CommonMetricPrinter(10).write()
        CommonMetricPrinter().write()
    with_eta, without_eta = (r.getMessage() for r in detectron2_logger)
    assert "eta: " in with_eta and "eta" not in without_eta
    for line in (with_eta, without_eta):
        assert "[metric]bn_stat: 1" in line and "accuracy" not in line


def test_log_txt_names_the_metric_logger_d2_and_our_reader_reads_it(tmp_path):
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    try:
        setup_logger(str(tmp_path))
        with EventStorage() as storage:
            for it in range(20):
                storage.iter = it
                storage.put_scalars(time=0.1, total_loss=2.0 - it / 20, loss_ce=1.0)
            CommonMetricPrinter(100).write()
            logging.getLogger("detectron2.engine.hooks").info("Overall training speed")
    finally:
        for handler in root.handlers[len(saved[0]):]:
            handler.close()
        root.handlers, _ = saved
        root.setLevel(saved[1])
    lines = (tmp_path / "log.txt").read_text().splitlines()
    assert re.fullmatch(r"\[\d\d/\d\d \d\d:\d\d:\d\d\] d2\.utils\.events INFO:  eta: 0:00:0\d  iter: 19  .*", lines[0])
    assert " d2.engine.hooks INFO: Overall training speed" in lines[1]
    table = read_log(str(tmp_path / "log.txt"))
    assert table.train["total_loss"].steps.tolist() == [19]


def test_tensorboard_writer_creates_files_only_when_used(tmp_path):
    unused = TensorboardXWriter(str(tmp_path / "unused"))
    unused.close()
    assert not (tmp_path / "unused").exists() or not any((tmp_path / "unused").iterdir())
    used = TensorboardXWriter(str(tmp_path / "used"))
    used._writer.add_scalar("testing", 1, 1)  # detectron2's tests reach the SummaryWriter so
    used.close()
    assert any((tmp_path / "used").glob("events.out.tfevents.*"))


class FailingWriter(EventWriter):
    def __init__(self):
        self.writes = 0

    def write(self):
        self.writes += 1
        raise RuntimeError("W&B service went away")


class SquareLoss(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(()))

    def forward(self, batch):
        return {"loss": self.w**2}


def train_with(writers, period=2, **writer_options):
    model = SquareLoss()
    trainer = SimpleTrainer(model, iter([None] * 6), torch.optim.SGD(model.parameters(), lr=0.0))
    trainer.register_hooks([IterationTimer(), PeriodicWriter(writers, period=period, **writer_options)])
    trainer.train(0, 6)
    return trainer


def test_periodic_writer_isolates_a_failing_writer_in_a_hand_built_list(tmp_path, caplog):
    failing = FailingWriter()
    json_file = tmp_path / "metrics.json"
    with caplog.at_level(logging.WARNING):
        train_with([JSONWriter(str(json_file)), TensorboardXWriter(str(tmp_path)), failing])
    assert failing.writes == 1
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings == [
        "FailingWriter failed in write() at iteration 1: RuntimeError: W&B service went away; "
        "it is disabled for the rest of training, the other writers go on."
    ]
    assert len(json_file.read_text().splitlines()) == 3  # iterations 1, 3, 5
    assert any(tmp_path.glob("events.out.tfevents.*"))


def test_periodic_writer_strict_raises(tmp_path):
    with pytest.raises(RuntimeError, match="W&B service went away"):
        train_with([FailingWriter()], strict=True)
