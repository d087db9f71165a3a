"""Stop a training loop cleanly on Ctrl-C (SIGINT) or SIGTERM (a scheduler's or torchrun's stop).

Python's default turns Ctrl-C into a ``KeyboardInterrupt`` wherever the main thread happens to
be: inside ``backward()``, half-way through a writer's flush, between a checkpoint's temporary
file and its rename. ``GracefulStop`` instead records the signal; the loop asks
``should_stop()`` after each finished step and winds down from there (writers flushed and
closed, a checkpoint of that step saved), and the process exits with the shell's code for the
signal (``128 + signum``: 130 for SIGINT, 143 for SIGTERM). The same signal a second time
means "now": the default behaviour comes back and the signal is delivered again.

Usage in any loop (``TrainerBase.train(..., stop=stop)`` does this)::

    with GracefulStop() as stop:
        for iteration in range(start, max_iter):
            step(iteration)
            if stop.should_stop():
                save_checkpoint(iteration)
                break
    if stop.signal is not None:
        sys.exit(stop.exit_code)

On several ranks each process receives its own signal, maybe at a different step. So that all
ranks stop after the same step (a rank that stops alone leaves the others waiting in a
collective), ``should_stop()`` combines the ranks' flags with one all-reduce (MAX) of a single
integer, started asynchronously after step ``i`` and read after step ``i + 1``: no step waits
for it, and every rank stops one step after the first rank saw its signal.
"""
from __future__ import annotations

import signal
import sys
import threading
from types import FrameType
from typing import Any, Callable, Dict, Optional, Sequence

import torch
import torch.distributed as dist

from engine import comm

__all__ = ["GracefulStop", "TrainingInterrupted", "exit_code_of"]


class TrainingInterrupted(Exception):
    """Training stopped after ``iteration`` (its last finished step) because of ``signal_name``."""

    def __init__(self, signal_name: str, iteration: int, exit_code: int):
        super().__init__(f"{signal_name} after iteration {iteration}")
        self.signal_name = signal_name
        self.iteration = iteration
        self.exit_code = exit_code


class GracefulStop:
    """Record SIGINT / SIGTERM instead of dying, for a loop to honour between steps.

    A context manager: the handlers are installed on entry (main thread only; elsewhere Python
    cannot install them and this object just never requests a stop) and the previous ones are
    restored on exit.
    """

    def __init__(self, signals: Sequence[int] = (signal.SIGINT, signal.SIGTERM)):
        self._signals = tuple(signals)
        self._previous: Dict[int, Any] = {}
        self.signal: Optional[int] = None  # the first signal received, if any
        self._pending: Optional[Any] = None  # (work, tensor) of the all-reduce in flight

    # -- signal side --------------------------------------------------------------------------
    def __enter__(self) -> "GracefulStop":
        if threading.current_thread() is threading.main_thread():
            for signum in self._signals:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, exc_type: Any, *exc_info: Any) -> None:
        if exc_type is None or issubclass(exc_type, TrainingInterrupted):
            self._settle()  # every rank issued it; after a crash, a peer may never join it
        self._restore()

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def _handle(self, signum: int, frame: Optional[FrameType]) -> None:
        if self.signal is None:
            self.signal = signum
        elif signum == self.signal:
            # Asked twice: stop waiting for the step to end.
            self._restore()
            signal.raise_signal(signum)
        # A different second signal (torchrun answers Ctrl-C with SIGTERM to its workers) is
        # the same request.

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signal).name if self.signal is not None else ""

    @property
    def exit_code(self) -> int:
        """``128 + signum``, what a shell reports for a process the signal ended."""
        return 128 + self.signal if self.signal is not None else 0

    # -- loop side ----------------------------------------------------------------------------
    def should_stop(self) -> bool:
        """Whether the loop must stop now; call it once per step on every rank, at the same
        point of the step (it may join a collective)."""
        if not comm.is_distributed():
            return self.signal is not None
        agreed = self._settle()
        flag = torch.tensor([self.signal or 0], device=comm.collective_device())
        self._pending = (dist.all_reduce(flag, op=dist.ReduceOp.MAX, async_op=True), flag)
        if agreed and self.signal is None:
            self.signal = agreed  # another rank's signal: stop with it
        return bool(agreed)

    def _settle(self) -> int:
        """Wait for the all-reduce in flight, if any; the highest signal number any rank had
        received when it started (0: none)."""
        if self._pending is None:
            return 0
        work, flag = self._pending
        self._pending = None
        work.wait()
        return int(flag.item())

    def interrupted(self, iteration: int) -> TrainingInterrupted:
        """The exception a loop raises to stop after ``iteration``."""
        return TrainingInterrupted(self.signal_name, iteration, self.exit_code)


def exit_code_of(main: Callable[[], int]) -> int:
    """``main()``'s exit code, for a script whose ``main`` trains inside ``GracefulStop``: a
    second Ctrl-C while the first one is being honoured ends it at once with one line (no
    traceback) and the shell's 130."""
    try:
        return main()
    except KeyboardInterrupt:
        print("error: interrupted twice; stopped at once, without a checkpoint of the current step", file=sys.stderr)
        return 130
