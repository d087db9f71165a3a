"""Stand-in for tests, NOT detectron2: ``detectron2/engine/hooks.py`` (commit 02b5c4e) reduced to
the hooks the bridge must leave working. Mirrored: ``EventStorage`` and ``EventWriter`` imported
by name; ``PeriodicWriter`` asserting that every writer is a detectron2 ``EventWriter`` and
calling ``write()`` every ``period`` steps and ``write(); close()`` at the end, unguarded;
``PeriodicCheckpointer`` on fvcore's; ``BestCheckpointer`` reading ``storage.latest()``;
``EvalHook`` putting flattened results unsmoothed; ``IterationTimer`` putting ``time`` after
warm-up; ``LRScheduler`` putting ``lr`` and stepping a torch scheduler.
"""
import math
import operator
import time

from fvcore.common.checkpoint import PeriodicCheckpointer as _PeriodicCheckpointer

from detectron2.utils.events import EventStorage, EventWriter  # noqa: F401 (PreciseBN's, upstream)

from .train_loop import HookBase

__all__ = ["IterationTimer", "PeriodicWriter", "PeriodicCheckpointer", "BestCheckpointer", "LRScheduler", "EvalHook"]


class IterationTimer(HookBase):
    def __init__(self, warmup_iter=3):
        self._warmup_iter = warmup_iter
        self._start = 0.0

    def before_step(self):
        self._start = time.perf_counter()

    def after_step(self):
        if self.trainer.storage.iter - self.trainer.start_iter + 1 >= self._warmup_iter:
            self.trainer.storage.put_scalars(time=time.perf_counter() - self._start)


class PeriodicWriter(HookBase):
    def __init__(self, writers, period=20):
        self._writers = writers
        for w in writers:
            assert isinstance(w, EventWriter), w
        self._period = period

    def after_step(self):
        if (self.trainer.iter + 1) % self._period == 0 or self.trainer.iter == self.trainer.max_iter - 1:
            for writer in self._writers:
                writer.write()

    def after_train(self):
        for writer in self._writers:
            writer.write()
            writer.close()


class PeriodicCheckpointer(_PeriodicCheckpointer, HookBase):
    def before_train(self):
        self.max_iter = self.trainer.max_iter

    def after_step(self):
        self.step(self.trainer.iter)


class BestCheckpointer(HookBase):
    def __init__(self, eval_period, checkpointer, val_metric, mode="max", file_prefix="model_best"):
        self._period = eval_period
        self._val_metric = val_metric
        self._compare = operator.gt if mode == "max" else operator.lt
        self._checkpointer = checkpointer
        self._file_prefix = file_prefix
        self.best_metric = None
        self.best_iter = None

    def _best_checking(self):
        metric_tuple = self.trainer.storage.latest().get(self._val_metric)
        if metric_tuple is None:
            return
        value, metric_iter = metric_tuple
        if math.isfinite(value) and (self.best_metric is None or self._compare(value, self.best_metric)):
            self._checkpointer.save(self._file_prefix, iteration=metric_iter)
            self.best_metric, self.best_iter = value, metric_iter

    def after_step(self):
        next_iter = self.trainer.iter + 1
        if self._period > 0 and next_iter % self._period == 0 and next_iter != self.trainer.max_iter:
            self._best_checking()

    def after_train(self):
        if self.trainer.iter + 1 >= self.trainer.max_iter:
            self._best_checking()


class LRScheduler(HookBase):
    def __init__(self, optimizer=None, scheduler=None):
        self._optimizer = optimizer
        self._scheduler = scheduler

    @property
    def scheduler(self):
        return self._scheduler or self.trainer.scheduler

    def before_train(self):
        self._optimizer = self._optimizer or self.trainer.optimizer

    def after_step(self):
        self.trainer.storage.put_scalar("lr", self._optimizer.param_groups[0]["lr"], smoothing_hint=False)
        self.scheduler.step()

    def state_dict(self):
        return self.scheduler.state_dict()

    def load_state_dict(self, state_dict):
        self.scheduler.load_state_dict(state_dict)


def _flatten(results, prefix=""):
    flat = {}
    for k, v in results.items():
        if isinstance(v, dict):
            flat.update(_flatten(v, prefix + k + "/"))
        else:
            flat[prefix + k] = v
    return flat


class EvalHook(HookBase):
    def __init__(self, eval_period, eval_function, eval_after_train=True):
        self._period = eval_period
        self._func = eval_function
        self._eval_after_train = eval_after_train

    def _do_eval(self):
        results = self._func()
        if results:
            self.trainer.storage.put_scalars(**{k: float(v) for k, v in _flatten(results).items()}, smoothing_hint=False)

    def after_step(self):
        next_iter = self.trainer.iter + 1
        if self._period > 0 and next_iter % self._period == 0 and next_iter != self.trainer.max_iter:
            self._do_eval()

    def after_train(self):
        if self._eval_after_train and self.trainer.iter + 1 >= self.trainer.max_iter:
            self._do_eval()
