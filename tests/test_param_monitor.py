"""ParameterMonitor: grad norm per step (hand-computed), deferred without per-step host syncs,
weight/gradient histograms every N iterations."""
import math
from types import SimpleNamespace

import pytest
import torch

from engine.hooks import HookBase, PeriodicWriter
from engine.param_monitor import ParameterMonitor
from engine.train_loop import SimpleTrainer
from events import EventStorage
from events.writers import EventWriter


class TwoWeightModel(torch.nn.Module):
    """loss = (w . x)^2 with w = [1, 2], x = [1, 1]: d loss / d w = 2 (w . x) x = [6, 6]."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(2, 1, bias=False)
        with torch.no_grad():
            self.linear.weight.copy_(torch.tensor([[1.0, 2.0]]))

    def forward(self, batch):
        return {"loss": self.linear(batch).pow(2).sum()}


EXPECTED_NORM = math.sqrt(6.0**2 + 6.0**2)


def batches():
    while True:
        yield torch.ones(1, 2)


class HistogramCollector(EventWriter):
    """Stands in for the TensorBoard writer: takes the storage's histograms and clears them."""

    def __init__(self, trainer_storage):
        self.storage_of = trainer_storage
        self.histograms = []

    def write(self):
        storage = self.storage_of()
        self.histograms += storage._histograms
        storage.clear_histograms()


def train(monitor, max_iter=20):
    model = TwoWeightModel()
    # lr 0: the weights (and so the gradient) stay the same at every step.
    trainer = SimpleTrainer(model, batches(), torch.optim.SGD(model.parameters(), lr=0.0))
    collector = HistogramCollector(lambda: trainer.storage)
    trainer.register_hooks([monitor, PeriodicWriter([collector], period=10)])
    trainer.train(0, max_iter)
    return trainer, collector


def test_grad_norm_every_step_matches_the_hand_computed_value():
    trainer, _ = train(ParameterMonitor())
    values = trainer.storage.history("grad_norm").values()
    assert [itr for _, itr in values] == list(range(20))
    assert all(v == pytest.approx(EXPECTED_NORM) for v, _ in values)


def test_histograms_every_n_iterations():
    _, collector = train(ParameterMonitor(histogram_period=10, log_grad_norm=False, histogram_bins=4))
    assert [(h["tag"], h["global_step"]) for h in collector.histograms] == [
        ("params/linear.weight", 9), ("grads/linear.weight", 9),
        ("params/linear.weight", 19), ("grads/linear.weight", 19),
    ]
    weights, grads = collector.histograms[:2]
    assert (weights["min"], weights["max"], weights["num"], weights["sum"]) == (1.0, 2.0, 2, 3.0)
    assert (grads["min"], grads["max"], grads["num"], grads["sum"]) == (6.0, 6.0, 2, 12.0)


class StorageProbe(HookBase):
    """Records how many grad_norm values the storage holds after each step."""

    def __init__(self):
        self.counts = []

    def after_step(self):
        storage = self.trainer.storage
        has = "grad_norm" in storage.histories()
        self.counts.append(storage.history("grad_norm").count if has else 0)


def test_deferred_puts_a_whole_period_at_once_without_item(monkeypatch):
    def no_item(self):
        raise AssertionError("a per-step host sync (.item()) in deferred mode")

    model = TwoWeightModel()
    trainer = SimpleTrainer(model, batches(), torch.optim.SGD(model.parameters(), lr=0.0))
    monitor, probe = ParameterMonitor(deferred=True, period=5), StorageProbe()
    trainer.register_hooks([monitor, probe])
    monkeypatch.setattr(torch.Tensor, "item", no_item)
    # The trainer's own metrics path may use .item(); drive only the monitor's hook points.
    with EventStorage() as storage:
        trainer.storage = storage
        trainer.max_iter = 12
        for it in range(12):
            trainer.iter = storage.iter = it
            model.zero_grad()
            model(torch.ones(1, 2))["loss"].backward()
            monitor.after_backward()
            probe.after_step()
    assert probe.counts == [0, 0, 0, 0, 5, 5, 5, 5, 5, 10, 10, 12]  # flushed at 4, 9 and the last
    values = storage.history("grad_norm").values()
    assert [itr for _, itr in values] == list(range(12))
    assert all(v == pytest.approx(EXPECTED_NORM) for v, _ in values)


def test_after_train_flushes_an_interrupted_period():
    model = TwoWeightModel()
    model(torch.ones(1, 2))["loss"].backward()
    with EventStorage() as storage:
        monitor = ParameterMonitor(model, deferred=True, period=20)
        monitor.trainer = SimpleNamespace(iter=3, max_iter=100, storage=storage)
        monitor.after_backward()
        assert "grad_norm" not in storage.histories()
        monitor.after_train()
        assert storage.latest()["grad_norm"] == (pytest.approx(EXPECTED_NORM), 3)


def test_from_config_follows_the_telemetry_keys():
    from engine.config import get_cfg

    cfg = get_cfg()
    cfg.TELEMETRY.HISTOGRAM_PERIOD, cfg.TELEMETRY.DEFERRED_REDUCTION, cfg.TELEMETRY.WRITE_PERIOD = 50, True, 10
    monitor = ParameterMonitor.from_config(cfg)
    assert (monitor._log_grad_norm, monitor._histogram_period, monitor._deferred, monitor._period) == (
        True, 50, True, 10
    )
    cfg.TELEMETRY.LOG_GRAD_NORM, cfg.TELEMETRY.HISTOGRAM_PERIOD = False, 0
    assert ParameterMonitor.from_config(cfg) is None


def test_bad_periods_are_rejected():
    with pytest.raises(ValueError, match="histogram_period >= 0 and period >= 1"):
        ParameterMonitor(histogram_period=-1)
