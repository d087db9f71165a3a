"""Run detectron2's own trainers on this project's telemetry: call ``install()`` once, before the
trainer is built.

After ``install()``, detectron2's ``SimpleTrainer``, ``AMPTrainer`` and ``DefaultTrainer``:

* open ``events.EventStorage`` (bounded histories, checkpointable) in ``TrainerBase.train``;
  every ``detectron2.*`` module that imported ``EventStorage`` / ``get_event_storage`` /
  ``has_event_storage`` by name gets ours, and detectron2's storage stack *is* ours, so code
  that kept detectron2's ``get_event_storage`` (criteria, ROI heads, your modules) still finds
  the storage the trainer opened;
* reduce the loss dict with ``engine.metrics`` (``SimpleTrainer.write_metrics``): one collective
  per step, keys absent on some ranks averaged over the ranks that hold them, ``K__num_samples``
  counts weighting ``K``, ``total_loss`` summing loss terms only, and a NaN / Inf raising
  ``NonFiniteLossError`` on every rank at the same iteration;
* with ``async_write_metrics=True``: the metric collectives run on a process group of their own
  (they cannot interleave with DDP's), ``PeriodicWriter`` waits for pending writes before it
  writes (iterations reach the writers complete and in order), and a NaN found by the background
  write raises in the training loop two iterations later, on every rank at the same iteration;
* ``PeriodicWriter`` guards every writer it is given (a failing writer is reported once and
  disabled; the others go on) and accepts this project's writers (``TensorboardXWriter``,
  ``WandbWriter``) beside detectron2's, e.g. from a ``DefaultTrainer.build_writers`` override;
* ``TrainerBase.state_dict()`` holds the storage's state (key ``"event_storage"``), so
  ``DefaultTrainer.resume_or_load(resume=True)`` restores smoothing windows, global averages and
  the ETA;
* ``CommonMetricPrinter``, ``JSONWriter`` and ``TensorboardXWriter`` are ours (same signatures) in
  every ``detectron2.*`` module that imported them by name, so ``default_writers()`` builds ours
  (detectron2's ``TensorboardXWriter`` stays when tensorboardX is not installed). They and our
  ``WandbWriter`` learn the start iteration from the storage at their first write (see
  ``events.writers.ResumableWriter``): ``DefaultTrainer`` builds its writers before
  ``resume_or_load`` knows it, yet after a resume metrics.json stays strictly increasing (the
  crashed run's later records moved to ``metrics.json.superseded-at-N``), TensorBoard purges the
  steps >= N and W&B continues the same run.

detectron2's hooks (``IterationTimer``, ``LRScheduler``, ``EvalHook``, ``PeriodicCheckpointer``,
``BestCheckpointer``, ``PreciseBN``) are left as they are; they read our storage through the
same API. Written against detectron2 commit 02b5c4e295e990042a714712c21dc79b731e8833 (main,
June 2026): ``engine/train_loop.py``, ``engine/hooks.py``, ``engine/defaults.py``,
``utils/events.py``, ``utils/comm.py``.
"""
from __future__ import annotations

import functools
import importlib
import importlib.util
import sys
import threading
from types import ModuleType
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch
import torch.distributed as dist

from engine import comm, metrics
from engine.hooks import guard_writers
from events import storage as our_storage
from events.writers import CommonMetricPrinter, JSONWriter

__all__ = ["install", "STORAGE_STATE_KEY"]

STORAGE_STATE_KEY = "event_storage"
_INSTALLED = "_detr_telemetry_installed"
_STORAGE_NAMES = ("EventStorage", "get_event_storage", "has_event_storage")
_WRITER_NAMES = ("CommonMetricPrinter", "JSONWriter", "TensorboardXWriter")
# What the bridge reaches into; a detectron2 without one of these is not the one it was written for.
_REQUIRED = {
    "detectron2.utils.events": ("_CURRENT_STORAGE_STACK",) + _STORAGE_NAMES + _WRITER_NAMES,
    "detectron2.engine.train_loop": ("TrainerBase", "SimpleTrainer", "AMPTrainer"),
    "detectron2.engine.hooks": ("PeriodicWriter",),
}


def install() -> None:
    """Route detectron2's trainers, storage and ``PeriodicWriter`` through this project.

    Call it once in a detectron2 project before the trainer is built (calling it again does
    nothing). Raises ``ImportError`` when detectron2 is not installed or cannot be imported,
    and ``RuntimeError`` when a detectron2 ``EventStorage`` is open (training already started).
    """
    modules = _import_detectron2()
    events_module = modules["detectron2.utils.events"]
    if getattr(events_module, _INSTALLED, False):
        return
    if events_module._CURRENT_STORAGE_STACK:
        raise RuntimeError(
            "engine.integrations.detectron2.install() must run before training starts: "
            "a detectron2 EventStorage is open"
        )
    train_loop = modules["detectron2.engine.train_loop"]
    _share_storage(events_module)
    _use_our_writers(events_module)
    _route_write_metrics(train_loop.SimpleTrainer)
    for trainer_class in (train_loop.SimpleTrainer, train_loop.AMPTrainer):
        _track_async_writes(trainer_class)
    _guard_periodic_writer(modules["detectron2.engine.hooks"].PeriodicWriter)
    _checkpoint_storage(train_loop.TrainerBase)
    setattr(events_module, _INSTALLED, True)


def _import_detectron2() -> Dict[str, ModuleType]:
    if importlib.util.find_spec("detectron2") is None:
        raise ImportError(
            "engine.integrations.detectron2 needs detectron2, which is not installed "
            "(it is not on PyPI: install it from github.com/facebookresearch/detectron2)"
        )
    modules = {}
    for name, attributes in _REQUIRED.items():
        try:
            module = importlib.import_module(name)
        except ImportError as e:
            raise ImportError(f"detectron2 is installed but {name} cannot be imported: {e}") from e
        missing = [a for a in attributes if not hasattr(module, a)]
        if missing:
            raise ImportError(
                f"this detectron2 has no {name}.{', '.join(missing)}; the bridge was written "
                "against detectron2 main (commit 02b5c4e)"
            )
        modules[name] = module
    return modules


# ---------------------------------------------------------------------------- storage
def _share_storage(events_module: ModuleType) -> None:
    """One storage stack for both, and our storage under detectron2's names everywhere.

    detectron2's modules imported ``EventStorage`` / ``get_event_storage`` by name, so replacing
    them in ``detectron2.utils.events`` alone would not reach ``train_loop`` or ``hooks``; every
    loaded ``detectron2.*`` module holding the original object gets ours. Code outside
    detectron2 that kept the originals still works: their stack is now ours.
    """
    events_module._CURRENT_STORAGE_STACK = our_storage._CURRENT_STORAGE_STACK
    _replace_names(events_module, {name: getattr(our_storage, name) for name in _STORAGE_NAMES})


def _use_our_writers(events_module: ModuleType) -> None:
    """detectron2's writer classes, wherever detectron2 imported them by name, are ours.

    ``default_writers()`` looks ``JSONWriter`` & co. up in ``detectron2.engine.defaults`` when it
    runs, so code holding detectron2's ``default_writers`` from before ``install()`` gets ours.
    """
    ours: Dict[str, type] = {"CommonMetricPrinter": CommonMetricPrinter, "JSONWriter": JSONWriter}
    # Ours needs tensorboardX (detectron2's, torch.utils.tensorboard): without it, detectron2's
    # writer stays rather than default_writers() failing.
    if importlib.util.find_spec("tensorboardX") is not None:
        from events.tensorboard_writer import TensorboardXWriter

        ours["TensorboardXWriter"] = TensorboardXWriter
    _replace_names(events_module, ours)


def _replace_names(events_module: ModuleType, ours: Mapping[str, Any]) -> None:
    """Every loaded ``detectron2.*`` module holding ``detectron2.utils.events``' object of one of
    these names gets ours under that name."""
    originals = {name: getattr(events_module, name) for name in ours}
    for module_name, module in list(sys.modules.items()):
        if module is None or not (module_name == "detectron2" or module_name.startswith("detectron2.")):
            continue
        for name, original in originals.items():
            if getattr(module, name, None) is original:
                setattr(module, name, ours[name])


def _checkpoint_storage(trainer_base: type) -> None:
    """The storage's state rides in ``TrainerBase.state_dict()`` and comes back at ``train()``.

    ``load_state_dict`` runs before ``train()`` opens the storage (``resume_or_load``), so the
    state waits on the trainer and is loaded when ``before_train`` runs inside the storage.
    """
    original_state_dict = trainer_base.state_dict
    original_load_state_dict = trainer_base.load_state_dict
    original_before_train = trainer_base.before_train

    @functools.wraps(original_state_dict)
    def state_dict(self) -> Dict[str, Any]:
        state = original_state_dict(self)
        storage = self.__dict__.get("storage")
        if isinstance(storage, our_storage.EventStorage):
            state[STORAGE_STATE_KEY] = storage.state_dict()
        return state

    @functools.wraps(original_load_state_dict)
    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        original_load_state_dict(self, state)
        self._telemetry_storage_state = state.get(STORAGE_STATE_KEY)

    @functools.wraps(original_before_train)
    def before_train(self) -> None:
        pending = self.__dict__.pop("_telemetry_storage_state", None)
        if pending is not None and isinstance(self.storage, our_storage.EventStorage):
            self.storage.load_state_dict(pending)
            self.storage.iter = self.start_iter
        original_before_train(self)

    trainer_base.state_dict = state_dict
    trainer_base.load_state_dict = load_state_dict
    trainer_base.before_train = before_train


# ---------------------------------------------------------------------------- loss dicts
_current_write = threading.local()  # the async bookkeeping of the write running in this thread


def write_metrics(loss_dict: Mapping[str, Any], data_time: float, cur_iter: int, prefix: str = "") -> None:
    """detectron2's static ``SimpleTrainer.write_metrics``, reduced with ``engine.metrics``.

    Every rank puts the same reduced values into the storage (detectron2 puts them on rank 0
    only); ``prefix`` prefixes every name put.
    """
    tracker: Optional[_AsyncWrites] = getattr(_current_write, "tracker", None)
    if tracker is None or tracker.group is None:
        metrics.write_metrics(loss_dict, data_time, cur_iter=cur_iter, prefix=prefix)
    else:
        tracker.metrics_writer(prefix).write(loss_dict, data_time, cur_iter=cur_iter)


def _route_write_metrics(simple_trainer: type) -> None:
    # detectron2's _write_metrics calls SimpleTrainer.write_metrics through the class: replacing
    # the class attribute reaches every trainer, AMPTrainer included.
    simple_trainer.write_metrics = staticmethod(write_metrics)
    original = simple_trainer._write_metrics

    @functools.wraps(original)
    def _write_metrics(self, loss_dict, data_time, prefix="", iter=None):
        tracker = self.__dict__.get("_telemetry_async_writes")
        if tracker is None or threading.current_thread() is tracker.training_thread:
            return original(self, loss_dict, data_time, prefix=prefix, iter=iter)
        _current_write.tracker = tracker
        if tracker.cuda_device is not None:
            torch.cuda.set_device(tracker.cuda_device)
        error = None
        try:
            return original(self, loss_dict, data_time, prefix=prefix, iter=iter)
        except Exception as e:
            error = e
            raise
        finally:
            _current_write.tracker = None
            tracker.finished(self.iter if iter is None else iter, error)

    simple_trainer._write_metrics = _write_metrics


class _AsyncWrites:
    """Bookkeeping of one trainer's background metric writes (``async_write_metrics=True``).

    The writes run one at a time in submission order. The training thread waits, before step
    ``j``, until the write of step ``j - 2`` has finished, and raises its error if it failed: the
    decision depends only on reduced (identical) values, so every rank raises at the same step.
    """

    def __init__(self, first_iter: int) -> None:
        self.training_thread = threading.current_thread()
        self.first_iter = first_iter
        # A group of its own: collectives from the writer thread must not interleave with DDP's
        # on the default group (ranks could order them differently and hang).
        self.group = dist.new_group() if comm.get_world_size() > 1 else None
        # The current CUDA device is per thread: the writer thread must use the training one's
        # (NCCL collectives and the loss tensors live there).
        self.cuda_device = torch.cuda.current_device() if torch.cuda.is_initialized() else None
        self._writers: Dict[str, metrics.MetricsWriter] = {}
        self._condition = threading.Condition()
        self._finished_through = first_iter - 1
        self._failure: Optional[Tuple[int, BaseException]] = None

    def metrics_writer(self, prefix: str) -> metrics.MetricsWriter:
        writer = self._writers.get(prefix)
        if writer is None:
            writer = self._writers[prefix] = metrics.MetricsWriter(prefix=prefix, group=self.group)
        return writer

    def finished(self, iteration: int, error: Optional[BaseException]) -> None:
        with self._condition:
            self._finished_through = max(self._finished_through, iteration)
            if error is not None and self._failure is None:
                self._failure = (iteration, error)
            self._condition.notify_all()

    def wait_through(self, iteration: int) -> None:
        """Block until the writes of every step up to ``iteration`` have finished."""
        if iteration < self.first_iter:
            return
        with self._condition:
            self._condition.wait_for(lambda: self._finished_through >= iteration)

    def raise_failure_through(self, iteration: int) -> None:
        """Re-raise (in the training thread) a write error of a step up to ``iteration``."""
        self.wait_through(iteration)
        if self._failure is not None and self._failure[0] <= iteration:
            raise self._failure[1]


def _track_async_writes(trainer_class: type) -> None:
    original = trainer_class.__dict__["run_step"]

    @functools.wraps(original)
    def run_step(self) -> None:
        if not self.async_write_metrics:
            return original(self)
        tracker = self.__dict__.get("_telemetry_async_writes")
        if tracker is None:
            tracker = self._telemetry_async_writes = _AsyncWrites(self.iter)
        tracker.raise_failure_through(self.iter - 2)
        original(self)

    trainer_class.run_step = run_step


def _wait_for_async_writes(trainer: Any, iteration: int) -> None:
    """Let the background metric writes up to ``iteration`` land in the storage (if any)."""
    inner = getattr(trainer, "_trainer", trainer)  # DefaultTrainer wraps a SimpleTrainer
    tracker = getattr(inner, "_telemetry_async_writes", None)
    if tracker is not None:
        tracker.wait_through(iteration)


# ---------------------------------------------------------------------------- writers
def _guard_periodic_writer(periodic_writer: type) -> None:
    """Patch detectron2's ``PeriodicWriter`` in place (so ``isinstance`` checks and names
    imported before ``install()`` keep working): guarded, duck-typed writers, and complete
    iterations when metrics are written in the background."""
    original_init = periodic_writer.__init__
    original_after_step = periodic_writer.after_step
    original_after_train = periodic_writer.after_train

    @functools.wraps(original_init)
    def __init__(self, writers: List[Any], period: int = 20) -> None:
        original_init(self, [], period)  # detectron2's type check would refuse our writers
        self._writers = guard_writers(writers)

    @functools.wraps(original_after_step)
    def after_step(self) -> None:
        trainer = self.trainer
        if (trainer.iter + 1) % self._period == 0 or trainer.iter == trainer.max_iter - 1:
            _wait_for_async_writes(trainer, trainer.iter)
        original_after_step(self)

    @functools.wraps(original_after_train)
    def after_train(self) -> None:
        _wait_for_async_writes(self.trainer, self.trainer.iter - 1)
        original_after_train(self)

    periodic_writer.__init__ = __init__
    periodic_writer.after_step = after_step
    periodic_writer.after_train = after_train
