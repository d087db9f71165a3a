"""Training hooks with detectron2's names and behaviour. Each hook is tiny and runs at a fixed
point of the loop: ``before_train``, ``before_step``, ``after_backward``, ``after_step``,
``after_train``. Hooks reach the trainer through ``self.trainer`` (a weak proxy).
"""
from __future__ import annotations

import datetime
import logging
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

from events.writer_guard import GuardedWriter
from events.writers import EventWriter

logger = logging.getLogger(__name__)


class HookBase:
    """Base class for hooks registered with a ``TrainerBase``.

    Every method is a no-op here; override the ones you need. ``self.trainer`` is set when the
    hook is registered, and ``self.trainer.storage`` is the current ``EventStorage``.
    """

    trainer: Any = None

    def before_train(self) -> None:
        """Called once before the first iteration."""

    def after_train(self) -> None:
        """Called once after the last iteration, also when training stopped with an exception."""

    def before_step(self) -> None:
        """Called before each iteration."""

    def after_backward(self) -> None:
        """Called after ``backward()`` and before ``optimizer.step()`` (gradients are ready)."""

    def after_step(self) -> None:
        """Called after each iteration."""

    def state_dict(self) -> Dict[str, Any]:
        """Hook state saved in checkpoints; empty for stateless hooks."""
        return {}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        pass


class CallbackHook(HookBase):
    """Run plain functions at the hook points: ``CallbackHook(after_step=lambda trainer: ...)``."""

    def __init__(self, *, before_train=None, after_train=None, before_step=None, after_step=None):
        self._callbacks = dict(
            before_train=before_train, after_train=after_train, before_step=before_step, after_step=after_step
        )

    def _call(self, point: str) -> None:
        callback = self._callbacks[point]
        if callback is not None:
            callback(self.trainer)

    def before_train(self) -> None:
        self._call("before_train")

    def after_train(self) -> None:
        self._call("after_train")

    def before_step(self) -> None:
        self._call("before_step")

    def after_step(self) -> None:
        self._call("after_step")


class IterationTimer(HookBase):
    """Put each iteration's wall time into the storage as ``time`` and log the total at the end.

    The first ``warmup_iter`` iterations (slow: allocation, caching) are left out of the summary.
    Register it first: ``time`` then covers the other hooks' ``before_step`` and the step itself,
    but not what hooks do after it in ``after_step`` (writers, checkpoints), as in detectron2.
    """

    def __init__(self, warmup_iter: int = 3):
        self._warmup_iter = warmup_iter
        self._step_start = 0.0
        self._train_start = 0.0
        self._timed_time = 0.0
        self._timed_iters = 0

    def before_train(self) -> None:
        self._train_start = time.perf_counter()

    def after_train(self) -> None:
        total = time.perf_counter() - self._train_start
        if self._timed_iters > 0:
            logger.info(
                "Overall training speed: %d iterations in %s (%.4f s / it)",
                self._timed_iters,
                datetime.timedelta(seconds=int(self._timed_time)),
                self._timed_time / self._timed_iters,
            )
        logger.info("Total training time: %s", datetime.timedelta(seconds=int(total)))

    def before_step(self) -> None:
        self._step_start = time.perf_counter()

    def after_step(self) -> None:
        elapsed = time.perf_counter() - self._step_start
        if self.trainer.iter + 1 - self.trainer.start_iter > self._warmup_iter:
            self._timed_time += elapsed
            self._timed_iters += 1
        self.trainer.storage.put_scalars(time=elapsed)


def guard_writers(writers: Sequence[EventWriter], strict: bool = False) -> List[GuardedWriter]:
    """Each writer wrapped in a ``GuardedWriter`` (those already guarded, e.g. by
    ``build_writers``, keep their own ``strict``), so one failing writer never stops training."""
    return [w if isinstance(w, GuardedWriter) else GuardedWriter(w, strict=strict) for w in writers]


class PeriodicWriter(HookBase):
    """Call every writer's ``write()`` every ``period`` iterations and after the last one, then
    ``close()`` them when training ends (also on an exception, so what was logged is on disk).

    Every writer is isolated, whoever built the list: the first exception from one writer is
    reported once (its name, the iteration, the cause), that writer is disabled and the others go
    on. ``strict=True`` raises instead (writers that are already ``GuardedWriter``s keep their
    own setting, e.g. ``TELEMETRY.STRICT_WRITERS`` through ``build_writers``).

    Register it last, so that it sees what the other hooks (timer, lr, evaluation) put.
    """

    def __init__(self, writers: Sequence[EventWriter], period: int = 20, *, strict: bool = False):
        if period < 1:
            raise ValueError(f"PeriodicWriter period must be >= 1, got {period}")
        self._writers: List[GuardedWriter] = guard_writers(writers, strict=strict)
        self._period = period

    def after_step(self) -> None:
        if (self.trainer.iter + 1) % self._period == 0 or self.trainer.iter == self.trainer.max_iter - 1:
            for writer in self._writers:
                writer.write()

    def after_train(self) -> None:
        try:
            for writer in self._writers:
                # Flush what the last partial period put; writers skip iterations already written.
                writer.write()
        finally:
            for writer in self._writers:
                writer.close()


class LRScheduler(HookBase):
    """Put the learning rate into the storage as ``lr`` and step the scheduler after each iteration.

    With several parameter groups, ``lr`` is the group with the most parameters (the one a
    warmup/decay schedule is about), as in detectron2.
    """

    def __init__(self, optimizer=None, scheduler=None):
        self._optimizer = optimizer
        self._scheduler = scheduler
        self._group = 0

    def before_train(self) -> None:
        self._optimizer = self._optimizer or self.trainer.optimizer
        sizes = [sum(p.numel() for p in g["params"]) for g in self._optimizer.param_groups]
        self._group = max(range(len(sizes)), key=sizes.__getitem__)

    def after_step(self) -> None:
        lr = self._optimizer.param_groups[self._group]["lr"]
        self.trainer.storage.put_scalar("lr", lr, smoothing_hint=False)
        if self._scheduler is not None:
            self._scheduler.step()

    def state_dict(self) -> Dict[str, Any]:
        return self._scheduler.state_dict() if self._scheduler is not None else {}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if self._scheduler is not None and state:
            self._scheduler.load_state_dict(state)


def flatten_results(results: Mapping[str, Any], prefix: str = "") -> Dict[str, float]:
    """``{"val": {"loss": 1.0}}`` -> ``{"val/loss": 1.0}`` (detectron2's ``flatten_results_dict``)."""
    flat: Dict[str, float] = {}
    for key, value in results.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_results(value, prefix=name + "/"))
        else:
            flat[name] = value
    return flat


class EvalHook(HookBase):
    """Run ``eval_function()`` every ``eval_period`` iterations and after training, and put the
    scalars it returns (a possibly nested dict, e.g. ``{"validation": {"loss": 0.8}}``) into the
    storage unsmoothed, at the iteration just finished."""

    def __init__(self, eval_period: int, eval_function: Callable[[], Optional[Mapping[str, Any]]]):
        self._period = eval_period
        self._func = eval_function
        self._last_eval_iter: Optional[int] = None

    def _do_eval(self) -> None:
        results = self._func()
        self._last_eval_iter = self.trainer.iter
        if not results:
            return
        flat = flatten_results(results)
        try:
            scalars = {k: float(v) for k, v in flat.items()}
        except (TypeError, ValueError) as e:
            raise ValueError(f"EvalHook: eval_function must return numbers, got {flat!r}") from e
        self.trainer.storage.put_scalars(**scalars, smoothing_hint=False)

    def after_step(self) -> None:
        next_iter = self.trainer.iter + 1
        if self._period > 0 and next_iter % self._period == 0 and next_iter != self.trainer.max_iter:
            self._do_eval()

    def after_train(self) -> None:
        # Final evaluation only when training really reached its end (not after a crash).
        if self.trainer.iter + 1 >= self.trainer.max_iter and self._last_eval_iter != self.trainer.iter:
            self._do_eval()



class GradientClipper(HookBase):
    """Clip the gradients' global norm to ``max_norm`` after backward, before the optimizer step.

    Register it after ``ParameterMonitor`` so that the logged ``grad_norm`` is the norm before
    clipping (the one that tells whether clipping is active).
    """

    def __init__(self, max_norm: float, norm_type: float = 2.0):
        if max_norm <= 0:
            raise ValueError(f"GradientClipper max_norm must be > 0, got {max_norm}")
        self._max_norm = max_norm
        self._norm_type = norm_type

    def after_backward(self) -> None:
        import torch

        torch.nn.utils.clip_grad_norm_(self.trainer.model.parameters(), self._max_norm, self._norm_type)
