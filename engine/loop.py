"""``TrainingTelemetry``: the telemetry for a hand-written training loop (DETR ``main.py`` style).

A loop that is not a trainer class calls one object once per step with its loss dict::

    with TrainingTelemetry("outputs/run", max_iter=epochs * len(data_loader)) as telemetry:
        for epoch in range(epochs):
            for samples, targets in telemetry.timed(data_loader):    # measures data_time
                loss_dict = criterion(model(samples), targets)
                ...backward, optimizer step...
                telemetry.step(loss_dict, criterion.weight_dict, lr=lr, epoch=epoch)

It is the same path as ``SimpleTrainer``'s, not a copy: ``engine.metrics.MetricsWriter`` reduces
the dict across ranks into an ``EventStorage``, ``engine.hooks.IterationTimer`` times the steps
and ``engine.hooks.PeriodicWriter`` drives the writers of ``build_writers`` (console line,
metrics.json, TensorBoard, W&B). The object plays the trainer for those two hooks: it has
``iter``, ``start_iter``, ``max_iter`` and ``storage``.
"""
from __future__ import annotations

import atexit
import itertools
import logging
import sys
import time
import weakref
from typing import Any, Dict, Iterable, Iterator, Mapping, Optional, Sized, TypeVar

from omegaconf import DictConfig

from engine import comm
from engine.config import get_cfg
from engine.defaults import command_line, prepare_output_dir
from engine.graceful_stop import TrainingInterrupted
from engine.hooks import IterationTimer, PeriodicWriter
from engine.metrics import MetricsWriter
from engine.run_history import RunHistory
from engine.writer_builder import build_writers
from events.storage import EventStorage

__all__ = ["TrainingTelemetry"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


class TrainingTelemetry:
    """Console line, metrics.json, TensorBoard and W&B for a loop that calls :meth:`step`.

    Each :meth:`step` records one iteration and advances the iteration itself: the loss dict is
    reduced across ranks (one collective; every rank must call it), its loss terms summed into
    ``total_loss`` (and ``total_loss_weighted``, what backward saw, when a ``weight_dict`` is
    given), and every ``TELEMETRY.WRITE_PERIOD`` steps and at the end the writers write.

    :meth:`close` writes what the last partial period put and closes the writers (files flushed,
    W&B run finished). Use the object as a context manager, which closes it on a normal exit, an
    exception and Ctrl-C (``KeyboardInterrupt``); an object never closed is closed when the
    interpreter exits. How each session ended goes to ``train_history.json`` (main process),
    which ``tools/list_runs.py`` reads.

    Resume: put :meth:`state_dict` into your checkpoint and pass it back as ``state`` when you
    resume. The iteration, smoothing windows and global averages continue, metrics.json moves
    a crashed run's later records aside, TensorBoard purges the steps from the resume point on,
    and W&B reopens the same run. Without ``state``, an earlier run in the output directory is
    moved to ``<output_dir>/archived-<time>/`` (nothing is overwritten).

    Args:
        output_dir: where log.txt, metrics.json, TensorBoard events and the W&B run go.
        max_iter: how many steps the whole run takes (e.g. ``epochs * len(data_loader)``); the
            console's ETA and the final write use it. Required without ``cfg``; default
            ``cfg.SOLVER.MAX_ITER``.
        cfg: a config of ``engine.config`` (``TELEMETRY.*``, ``TENSORBOARD.*``, ``WANDB.*``);
            default: every default, which turns all four writers on (W&B offline unless an
            API key is configured).
        run_config: the run's settings for TensorBoard's hparams and the W&B run's config
            (a nested dict, e.g. ``vars(args)``); default: ``cfg`` when given, else nothing.
        weight_dict: ``{loss name: weight}``, what backward weights; :meth:`step` may pass
            another one.
        state: a :meth:`state_dict` from the checkpoint being resumed, or None for a new run.
        prepare_output: create ``output_dir``, archive an earlier run there (unless resuming)
            and log to the console and ``<output_dir>/log.txt``, so the console lines appear.
            Pass False when your script has already set up its logging and directory.
    """

    def __init__(
        self,
        output_dir: Optional[str] = None,
        *,
        max_iter: Optional[int] = None,
        cfg: Optional[DictConfig] = None,
        weight_dict: Optional[Mapping[str, float]] = None,
        state: Optional[Mapping[str, Any]] = None,
        prepare_output: bool = True,
        run_config: Optional[Mapping[str, Any]] = None,
    ) -> None:
        if cfg is None:
            if max_iter is None:
                raise ValueError(
                    "TrainingTelemetry needs max_iter (the steps of the whole run, e.g. "
                    "epochs * len(data_loader)) or a cfg with SOLVER.MAX_ITER"
                )
            cfg, run_config = get_cfg(), run_config if run_config is not None else {}
        self.output_dir: str = output_dir if output_dir is not None else cfg.OUTPUT_DIR
        self.max_iter: int = int(cfg.SOLVER.MAX_ITER if max_iter is None else max_iter)
        if state is not None and not {"next_iteration", "storage"} <= set(state):
            raise ValueError(
                f"state must be a TrainingTelemetry.state_dict(); got a mapping with keys {sorted(state)[:8]}"
            )
        self.start_iter: int = int(state["next_iteration"]) if state is not None else 0
        self.iter: int = self.start_iter
        resuming = state is not None
        if prepare_output:
            prepare_output_dir(self.output_dir, resume=resuming)

        self.storage = EventStorage(self.start_iter)
        if state is not None:
            self.storage.load_state_dict(state["storage"])
            self.storage.iter = self.start_iter
        telemetry = cfg.TELEMETRY
        self._metrics = MetricsWriter(
            weight_dict, deferred=telemetry.DEFERRED_REDUCTION, period=telemetry.WRITE_PERIOD
        )
        writers = build_writers(
            cfg,
            self.output_dir,
            self.max_iter,
            resume_iter=self.start_iter if resuming else None,
            run_config=run_config,
        )
        self._timer = IterationTimer()
        self._hooks = [self._timer, PeriodicWriter(writers, period=telemetry.WRITE_PERIOD)]
        for hook in self._hooks:
            hook.trainer = weakref.proxy(self)
        self._data_time: Optional[float] = None
        self._epoch_progress: Optional[float] = None  # of the batch timed() gave last
        self._closed = False
        self._window_size = telemetry.WINDOW_SIZE
        # train_history.json: how each session ended, for tools/list_runs.py. Its command line
        # hides what the recorded config hides (as W&B's does).
        self._history = None
        if comm.is_main_process():
            command = command_line(cfg if run_config is None else run_config)
            self._history = RunHistory(self.output_dir, "", self.start_iter, resuming, command)
        # Closes (and so flushes) an object the loop never closed, when the interpreter exits.
        atexit.register(self._close_at_exit)
        with self.storage:
            self._timer.before_train()
            self._timer.before_step()
        if resuming:
            logger.info("Telemetry resumes at iteration %d in %s", self.start_iter, self.output_dir)

    @classmethod
    def from_config(
        cls,
        cfg: DictConfig,
        *,
        weight_dict: Optional[Mapping[str, float]] = None,
        state: Optional[Mapping[str, Any]] = None,
        prepare_output: bool = True,
    ) -> "TrainingTelemetry":
        """The telemetry of ``cfg``: ``OUTPUT_DIR``, ``SOLVER.MAX_ITER`` and the writers it configures."""
        return cls(
            cfg.OUTPUT_DIR, cfg=cfg, weight_dict=weight_dict, state=state, prepare_output=prepare_output
        )

    # ------------------------------------------------------------------ the loop's calls
    def timed(self, data_loader: Iterable[T]) -> Iterator[T]:
        """Yield ``data_loader``'s batches, measuring how long each took to arrive; the next
        :meth:`step` logs it as ``data_time`` (like DETR's ``MetricLogger.log_every``). With a
        loader that has a length, a whole-number ``epoch`` becomes a fraction (see :meth:`step`)."""
        length = len(data_loader) if isinstance(data_loader, Sized) else None
        iterator = iter(data_loader)
        for index in itertools.count():
            start = time.perf_counter()
            try:
                batch = next(iterator)
            except StopIteration:
                return
            self._data_time = time.perf_counter() - start
            self._epoch_progress = (index + 1) / length if length else None
            yield batch

    def step(
        self,
        loss_dict: Mapping[str, Any],
        weight_dict: Optional[Mapping[str, float]] = None,
        *,
        data_time: Optional[float] = None,
        lr: Optional[float] = None,
        epoch: Optional[float] = None,
        **scalars: float,
    ) -> None:
        """Record this iteration and move to the next one.

        Args:
            loss_dict: ``{name: 0-dim tensor or number}`` as the criterion returns it (aux
                layers ``_0``, ``_1``..., metrics such as ``class_error`` included); tensors
                may require grad and live on any device.
            weight_dict: ``{loss name: weight}`` of this step (default: the one given at
                construction); ``total_loss_weighted`` is ``sum(weight * loss)`` over it.
            data_time: seconds this rank waited for the batch (default: what :meth:`timed`
                measured, else 0).
            lr: the learning rate, logged as ``lr`` (unsmoothed).
            epoch: the epoch, logged as ``epoch`` (unsmoothed); ``vis_train_log.py --x epoch``
                plots against it. An ``int`` epoch with a batch from :meth:`timed` of a sized
                loader is logged as the epochs done so far, ``epoch + (i + 1) / len(loader)``
                after batch ``i`` (as Hugging Face's Trainer logs it), so the axis is smooth;
                a float is logged as given.
            scalars: other numbers (``grad_norm=...``), reduced with the loss dict (mean over
                the ranks, same collective) and logged under their names.
        Raises:
            engine.metrics.NonFiniteLossError: on every rank, when a value is NaN/Inf on any
                rank; the steps before it are written when the object closes.
        """
        if self._closed:
            raise RuntimeError("TrainingTelemetry.step() called after close()")
        clashes = sorted(set(scalars) & set(loss_dict))
        if clashes:
            raise ValueError(f"step(): {clashes} given both in the loss dict and as scalars")
        if data_time is None:
            data_time = self._data_time if self._data_time is not None else 0.0
        if isinstance(epoch, int) and self._epoch_progress is not None:
            epoch += self._epoch_progress
        self._data_time = self._epoch_progress = None
        if weight_dict is not None:
            self._metrics.reducer.weight_dict = weight_dict
        if self.iter == self.max_iter:
            logger.warning(
                "TrainingTelemetry.step() at iteration %d, past max_iter=%d: the console's ETA is "
                "wrong from here on; pass the run's real number of steps as max_iter",
                self.iter, self.max_iter,
            )
        with self.storage:
            self.storage.iter = self.iter
            self._metrics.write({**loss_dict, **scalars} if scalars else loss_dict, data_time, cur_iter=self.iter)
            if self.iter == self.max_iter - 1:
                self._metrics.flush()  # deferred steps must be in the storage for the last write
            if lr is not None:
                self.storage.put_scalar("lr", float(lr), smoothing_hint=False)
            if epoch is not None:
                self.storage.put_scalar("epoch", float(epoch), smoothing_hint=False)
            for hook in self._hooks:
                hook.after_step()
            self.iter += 1
            self.storage.iter = self.iter  # what the loop puts until the next step lands here
            for hook in self._hooks:
                hook.before_step()

    # ------------------------------------------------------------------ resume
    def state_dict(self) -> Dict[str, Any]:
        """``{"next_iteration", "storage"}``, plain Python types: put it into your checkpoint
        and pass it back as ``state`` to resume (``torch.load(weights_only=True)`` reads it)."""
        return {"next_iteration": self.iter, "storage": self.storage.state_dict()}

    # ------------------------------------------------------------------ the end
    def close(self, error: Optional[BaseException] = None) -> None:
        """Put steps still buffered (deferred reduction), write what the last partial period put
        and close every writer. Idempotent; called by ``with`` (with the exception that ended
        the block, if any, for train_history.json) and at interpreter exit."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self._close_at_exit)
        with self.storage:
            try:
                self._metrics.flush()
            except FloatingPointError as e:
                error = error or e
                raise
            finally:
                # The console's last line names the last iteration stepped; at the normal end
                # (max_iter) the console writer stays silent, as after our trainer's last step.
                finished = self.iter >= self.max_iter
                self.storage.iter = self.iter if finished else max(self.iter - 1, self.start_iter)
                try:
                    for hook in self._hooks:
                        hook.after_train()
                finally:
                    if self._history is not None:
                        self._record_session(error)

    def _close_at_exit(self) -> None:
        # An exception nobody caught ended the program: Python keeps it in sys.last_value.
        self.close(getattr(sys, "last_value", None))

    def _record_session(self, error: Optional[BaseException]) -> None:
        if error is None:
            status = "completed" if self.iter >= self.max_iter else "stopped"
        elif isinstance(error, (KeyboardInterrupt, TrainingInterrupted)):
            status = "interrupted"
        elif isinstance(error, FloatingPointError):
            status = "non-finite values"
        else:
            status = "crashed"
        message = f"{type(error).__name__}: {error}" if error is not None else None
        self._history.finish(status, self.storage.latest_with_smoothing_hint(self._window_size), error=message)

    def __enter__(self) -> "TrainingTelemetry":
        self.storage.__enter__()  # get_event_storage() works in the loop (put_image, ...)
        return self

    def __exit__(self, exc_type, exc_value, traceback) -> None:
        try:
            if exc_type is KeyboardInterrupt:
                logger.info("Interrupted at iteration %d: writing what was logged and closing", self.iter)
            self.close(exc_value)
        finally:
            self.storage.__exit__(exc_type, exc_value, traceback)
