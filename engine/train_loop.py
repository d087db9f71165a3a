"""The training loop: ``TrainerBase`` (iterations + hooks) and ``SimpleTrainer`` (one SGD step).

Same structure and names as detectron2's ``engine/train_loop.py``. One step is::

    data -> model -> loss dict -> weighted total -> backward -> after_backward hooks
         -> metrics (one reduction across ranks) -> optimizer.step()
"""
from __future__ import annotations

import logging
import time
import weakref
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional

import torch

from engine import metrics
from engine.graceful_stop import GracefulStop, TrainingInterrupted
from engine.hooks import HookBase
from events.storage import EventStorage

logger = logging.getLogger(__name__)


class TrainerBase:
    """Runs ``run_step`` from ``start_iter`` to ``max_iter`` and calls the hooks around it.

    Attributes: ``iter`` (current iteration), ``start_iter``, ``max_iter``, ``storage`` (the
    ``EventStorage`` opened for the run), ``interrupted`` (the ``TrainingInterrupted`` that
    stopped the run early, for ``after_train`` hooks; else None). ``state_dict`` holds the
    iteration, hook states and the storage state, so a resumed run keeps its smoothing windows,
    global averages and ETA.
    """

    def __init__(self) -> None:
        self._hooks: List[HookBase] = []
        self.iter: int = 0
        self.start_iter: int = 0
        self.max_iter: int = 0
        self.storage: Optional[EventStorage] = None
        self.interrupted: Optional[TrainingInterrupted] = None
        self._pending_storage_state: Optional[Dict[str, Any]] = None

    def register_hooks(self, hooks: Iterable[Optional[HookBase]]) -> None:
        """Append hooks (None entries are skipped); they run in registration order."""
        hooks = [h for h in hooks if h is not None]
        for hook in hooks:
            # A proxy, not a reference: hooks must not keep the trainer alive (cycles).
            hook.trainer = weakref.proxy(self)
        self._hooks.extend(hooks)

    def train(self, start_iter: int, max_iter: int, stop: Optional[GracefulStop] = None) -> None:
        """Run iterations ``start_iter .. max_iter - 1``.

        ``stop``: after each step, when ``stop.should_stop()`` (Ctrl-C / SIGTERM), training ends
        there: ``after_train`` hooks run with ``self.interrupted`` set (writers flush, the
        checkpointer saves that step), then ``TrainingInterrupted`` is raised.
        """
        logger.info("Starting training from iteration %d", start_iter)
        self.iter = self.start_iter = start_iter
        self.max_iter = max_iter
        self.interrupted = None
        with EventStorage(start_iter) as self.storage:
            if self._pending_storage_state is not None:
                self.storage.load_state_dict(self._pending_storage_state)
                self.storage.iter = start_iter
                self._pending_storage_state = None
            try:
                self.before_train()
                for self.iter in range(start_iter, max_iter):
                    self.before_step()
                    self.run_step()
                    self.after_step()
                    if stop is not None and stop.should_stop():
                        self.interrupted = stop.interrupted(self.iter)
                        raise self.interrupted
                # The loop variable stops at max_iter - 1; after_train sees max_iter on success.
                self.iter += 1
            finally:
                self.after_train()

    def before_train(self) -> None:
        for h in self._hooks:
            h.before_train()

    def after_train(self) -> None:
        self.storage.iter = self.iter
        for h in self._hooks:
            h.after_train()

    def before_step(self) -> None:
        # Keep the storage's iteration in sync before any hook puts a scalar.
        self.storage.iter = self.iter
        for h in self._hooks:
            h.before_step()

    def after_backward(self) -> None:
        for h in self._hooks:
            h.after_backward()

    def after_step(self) -> None:
        for h in self._hooks:
            h.after_step()

    def run_step(self) -> None:
        raise NotImplementedError

    def state_dict(self) -> Dict[str, Any]:
        state: Dict[str, Any] = {"iteration": self.iter}
        hook_states = {type(h).__qualname__: h.state_dict() for h in self._hooks}
        state["hooks"] = {name: sd for name, sd in hook_states.items() if sd}
        if self.storage is not None:
            state["storage"] = self.storage.state_dict()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore iteration and hook states now, the storage state when ``train`` opens it."""
        self.iter = int(state["iteration"])
        hooks_by_name = {type(h).__qualname__: h for h in self._hooks}
        for name, hook_state in state.get("hooks", {}).items():
            if name in hooks_by_name:
                hooks_by_name[name].load_state_dict(hook_state)
            else:
                logger.warning("Checkpoint has state for hook %s, which is not registered", name)
        self._pending_storage_state = state.get("storage")


LossFunction = Callable[[Any, Any], Mapping[str, torch.Tensor]]


class SimpleTrainer(TrainerBase):
    """One optimizer step per iteration on a batch from ``data_loader``.

    Args:
        model: ``model(inputs)`` returns the outputs given to ``criterion``; without a
            criterion, ``model(batch)`` must itself return the loss dict (detectron2 style).
        data_loader: an iterable of batches; with a criterion each batch is ``(inputs, targets)``.
        optimizer: a torch optimizer.
        criterion: ``criterion(outputs, targets) -> {name: tensor}``.
        weight_dict: ``{loss name: weight}``; backward sees ``sum(weight * loss)`` over those keys.
            Without it, backward sees the sum of the loss terms (see ``metrics.is_loss_term``).
        deferred_metrics: reduce metrics once per ``metrics_period`` steps instead of each step
            (no host sync per step; a NaN is found at the flush, see ``engine.metrics``).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        data_loader: Iterable,
        optimizer: torch.optim.Optimizer,
        criterion: Optional[LossFunction] = None,
        weight_dict: Optional[Mapping[str, float]] = None,
        *,
        deferred_metrics: bool = False,
        metrics_period: int = 20,
    ):
        super().__init__()
        model.train()
        self.model = model
        self.data_loader = data_loader
        self._data_loader_iter_obj = None
        self.optimizer = optimizer
        self.criterion = criterion
        self.weight_dict = dict(weight_dict) if weight_dict is not None else None
        self.metrics_writer = metrics.MetricsWriter(
            weight_dict=self.weight_dict, deferred=deferred_metrics, period=metrics_period
        )

    @property
    def _data_loader_iter(self):
        # Created lazily so that a resumed trainer does not start a loader it never uses.
        if self._data_loader_iter_obj is None:
            self._data_loader_iter_obj = iter(self.data_loader)
        return self._data_loader_iter_obj

    def run_step(self) -> None:
        start = time.perf_counter()
        batch = next(self._data_loader_iter)
        data_time = time.perf_counter() - start

        if self.criterion is None:
            loss_dict = self.model(batch)
        else:
            inputs, targets = batch
            loss_dict = self.criterion(self.model(inputs), targets)
        losses = metrics.backward_total(loss_dict, self.weight_dict)

        self.optimizer.zero_grad(set_to_none=True)
        losses.backward()
        self.after_backward()
        self.metrics_writer.write(loss_dict, data_time, cur_iter=self.iter)
        if self.iter == self.max_iter - 1:
            self.metrics_writer.flush()  # deferred steps must be in the storage for the last write
        self.optimizer.step()

    def after_train(self) -> None:
        # Deferred metrics still buffered for the last partial period must reach the storage
        # before the writers' final write.
        self.metrics_writer.flush()
        super().after_train()

    @staticmethod
    def write_metrics(
        loss_dict: Mapping[str, torch.Tensor], data_time: float, cur_iter: Optional[int] = None, prefix: str = ""
    ) -> None:
        """detectron2's signature: reduce ``loss_dict`` across ranks (one collective) and put
        the results into the current storage (see ``engine.metrics.write_metrics``)."""
        metrics.write_metrics(loss_dict, data_time, cur_iter=cur_iter, prefix=prefix)
