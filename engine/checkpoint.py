"""Crash-safe checkpoints: model, optimizer, scheduler and trainer state (iteration, storage).

Every file is written to a temporary name and moved into place with ``os.replace``, and the
``last_checkpoint`` pointer is updated the same way afterwards, so a SIGKILL at any moment leaves
either the previous or the new checkpoint, never a torn one. Checkpoints hold only tensors and
plain Python types and are read back with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import logging
import os
import re
from typing import Any, Dict, List, Optional

import torch

from engine import comm
from engine.hooks import HookBase
from events.durable_files import write_lines_durably

logger = logging.getLogger(__name__)

LAST_CHECKPOINT_FILE = "last_checkpoint"


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside DistributedDataParallel/DataParallel, whose keys have no ``module.``."""
    return model.module if hasattr(model, "module") and isinstance(model.module, torch.nn.Module) else model


class Checkpointer:
    """Save and load a model together with other objects that have ``state_dict()``.

    Args:
        model: the model (a DDP wrapper is unwrapped).
        save_dir: directory of the checkpoints and of the ``last_checkpoint`` pointer.
        keep_last: how many periodic checkpoints (``<prefix>_<iter>.pth``) to keep; the final
            checkpoint is always kept.
        checkpointables: e.g. ``optimizer=opt, scheduler=sched``.
    """

    def __init__(self, model: torch.nn.Module, save_dir: str, *, keep_last: int = 3, **checkpointables: Any):
        self.model = model
        self.save_dir = save_dir
        self.keep_last = keep_last
        self.checkpointables = checkpointables

    def save(self, name: str, **extra: Any) -> Optional[str]:
        """Write ``<save_dir>/<name>.pth`` (main process only) and point ``last_checkpoint`` at it."""
        if not comm.is_main_process():
            return None
        os.makedirs(self.save_dir, exist_ok=True)
        data = {"model": _unwrap(self.model).state_dict()}
        data.update({key: obj.state_dict() for key, obj in self.checkpointables.items()})
        data.update(extra)
        path = os.path.join(self.save_dir, f"{name}.pth")
        tmp = path + ".tmp"
        torch.save(data, tmp)
        os.replace(tmp, path)
        write_lines_durably(os.path.join(self.save_dir, LAST_CHECKPOINT_FILE), [os.path.basename(path)])
        logger.info("Saved checkpoint %s", path)
        self._prune(name_prefix=re.sub(r"_\d+$", "", name))
        return path

    def _periodic_files(self, name_prefix: str) -> List[str]:
        pattern = re.compile(rf"^{re.escape(name_prefix)}_(\d+)\.pth$")
        found = [(int(m.group(1)), f) for f in os.listdir(self.save_dir) if (m := pattern.match(f))]
        return [f for _, f in sorted(found)]

    def _prune(self, name_prefix: str) -> None:
        if self.keep_last <= 0:
            return
        for old in self._periodic_files(name_prefix)[: -self.keep_last]:
            os.remove(os.path.join(self.save_dir, old))

    def latest_checkpoint(self) -> Optional[str]:
        """Path named by ``last_checkpoint``, or None when there is no (existing) checkpoint."""
        return latest_checkpoint(self.save_dir)

    def load(self, path: str) -> Dict[str, Any]:
        """Load ``path`` into the model and checkpointables; return the remaining entries."""
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # a torn or foreign file: say which one, not where torch failed
            raise RuntimeError(f"cannot load checkpoint {path}: {type(e).__name__}: {e}") from e
        _unwrap(self.model).load_state_dict(data.pop("model"))
        for key, obj in self.checkpointables.items():
            if key in data:
                obj.load_state_dict(data.pop(key))
            else:
                logger.warning("Checkpoint %s has no '%s' state; it starts fresh", path, key)
        logger.info("Loaded checkpoint %s", path)
        return data


def latest_checkpoint(save_dir: str) -> Optional[str]:
    """Path named by ``<save_dir>/last_checkpoint``, or None when there is no (existing) checkpoint."""
    pointer = os.path.join(save_dir, LAST_CHECKPOINT_FILE)
    if not os.path.exists(pointer):
        return None
    with open(pointer, encoding="utf-8") as f:
        path = os.path.join(save_dir, f.read().strip())
    return path if os.path.exists(path) else None


def completed_run_notice(save_dir: str, max_iter: int) -> Optional[str]:
    """For ``--resume``: a line saying the run in ``save_dir`` is already complete (its latest
    checkpoint, of our trainer or of a loop that saved ``TrainingTelemetry.state_dict()`` under
    ``"telemetry"``, is at iteration ``max_iter - 1`` or later), or None when there is training left.

    Resuming a finished run must change nothing: no phantom iteration past ``max_iter``, no
    record moved aside, no second final evaluation. Only the trainer state is read, memory-mapped.
    """
    path = latest_checkpoint(save_dir)
    if path is None:
        return None
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        # Our trainer saves its state under "trainer"; a plain loop saves TrainingTelemetry's.
        if "trainer" in saved:
            iteration = int(saved["trainer"]["iteration"])
        else:
            iteration = int(saved["telemetry"]["next_iteration"]) - 1
    except Exception:  # unreadable: the resume proper reports it with the file's name
        return None
    if iteration + 1 < max_iter:
        return None
    return (
        f"the run in {save_dir} is complete: its checkpoint {os.path.basename(path)} is at iteration "
        f"{iteration} and SOLVER.MAX_ITER is {max_iter}; nothing to resume, nothing changed "
        "(to train further, resume with a larger SOLVER.MAX_ITER)"
    )


def announce_if_complete(save_dir: str, max_iter: int, resume: bool) -> bool:
    """For a trainer's ``--resume``: print :func:`completed_run_notice` (once, from rank 0 under
    torchrun) and return True when the run in ``save_dir`` is already complete; the caller then
    exits 0 without touching anything."""
    notice = completed_run_notice(save_dir, max_iter) if resume else None
    if notice and os.environ.get("RANK", "0") == "0":  # under torchrun, one line, not one per rank
        print(notice)
    return notice is not None


class PeriodicCheckpointer(HookBase):
    """Save ``<prefix>_<iter:07d>.pth`` every ``period`` iterations and ``<prefix>_final.pth`` at
    the end, each with the trainer's state (iteration, hook states, storage state); and, when
    training was interrupted (Ctrl-C / SIGTERM, ``trainer.interrupted``), a checkpoint of the
    last finished step, so that ``--resume`` loses nothing.

    Register it after ``PeriodicWriter``: a checkpoint is taken after its step's metrics are
    written.
    """

    def __init__(self, checkpointer: Checkpointer, period: int, file_prefix: str = "model"):
        self.checkpointer = checkpointer
        self.period = period
        self.file_prefix = file_prefix
        self._last_saved_iter: Optional[int] = None

    def _save(self, name: str) -> None:
        self.checkpointer.save(name, trainer=self.trainer.state_dict())
        self._last_saved_iter = self.trainer.iter

    def after_step(self) -> None:
        iteration = self.trainer.iter
        if self.period > 0 and (iteration + 1) % self.period == 0:
            self._save(f"{self.file_prefix}_{iteration:07d}")
        if iteration >= self.trainer.max_iter - 1:
            self._save(f"{self.file_prefix}_final")

    def after_train(self) -> None:
        if getattr(self.trainer, "interrupted", None) is not None and self._last_saved_iter != self.trainer.iter:
            self._save(f"{self.file_prefix}_{self.trainer.iter:07d}")
