"""Keep a failing writer from stopping training.

Logging is a side job: when W&B's service goes away, the disk fills up or the TensorBoard
directory cannot be written, training must go on with the writers that still work. A
``GuardedWriter`` wraps one ``EventWriter``; the first exception from its ``write()`` or
``close()`` is reported once (writer name, where, iteration, cause) and the writer is disabled.
``strict=True`` re-raises instead, for tests and for users who prefer a crash to a gap.

Optional packages get the same treatment at construction time: ``import_optional`` turns a
missing tensorboardX or wandb into one line naming the extra to install, and
``build_guarded`` reports a writer that cannot even be built and leaves it out.
"""
from __future__ import annotations

import importlib
import logging
from types import ModuleType
from typing import Callable, Optional

from events.storage import get_event_storage, has_event_storage
from events.writers import EventWriter

logger = logging.getLogger(__name__)

PACKAGE_NAME = "detr-telemetry"


class MissingExtraError(ImportError):
    """An optional package a writer needs is not installed; the message says what to install."""


def import_optional(module: str, extra: str, needed_by: str) -> ModuleType:
    """Import ``module`` or raise ``MissingExtraError`` naming ``pip install 'detr-telemetry[extra]'``."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingExtraError(
            f"{needed_by} needs the '{module}' package, which is not installed: "
            f"pip install '{PACKAGE_NAME}[{extra}]'"
        ) from e


def describe_exception(error: BaseException) -> str:
    """``"OSError: [Errno 28] No space left on device"`` -- one line, type and message."""
    message = " ".join(str(error).split())
    return f"{type(error).__name__}: {message}" if message else type(error).__name__


def _where() -> str:
    return f" at iteration {get_event_storage().iter}" if has_event_storage() else ""


class GuardedWriter(EventWriter):
    """An ``EventWriter`` that disables itself on its first exception instead of raising.

    Args:
        writer: the writer to protect.
        name: how reports call it (default: the writer's class name).
        strict: re-raise exceptions instead of disabling the writer.

    After a failure ``write()`` does nothing; ``close()`` still closes the wrapped writer once,
    so files are flushed and W&B runs finished, and a failure there is only logged.
    """

    def __init__(self, writer: EventWriter, name: Optional[str] = None, strict: bool = False):
        self.writer = writer
        self.name = name or type(writer).__name__
        self.strict = strict
        self.failure: Optional[str] = None
        self._closed = False

    @property
    def disabled(self) -> bool:
        return self.failure is not None

    def _report(self, method: str, error: Exception) -> None:
        self.failure = f"{method}(){_where()}: {describe_exception(error)}"
        logger.warning(
            "%s failed in %s; it is disabled for the rest of training, the other writers go on.",
            self.name,
            self.failure,
        )

    def write(self) -> None:
        if self.disabled or self._closed:
            return
        try:
            self.writer.write()
        except Exception as e:
            if self.strict:
                raise
            self._report("write", e)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self.writer.close()
        except Exception as e:
            if self.strict:
                raise
            if self.disabled:
                # Already reported; a second message about the same broken writer is noise.
                logger.debug("%s: close() after failure also failed: %s", self.name, describe_exception(e))
            else:
                self._report("close", e)


def build_guarded(
    name: str, factory: Callable[[], EventWriter], strict: bool = False
) -> Optional[GuardedWriter]:
    """``GuardedWriter(factory())``, or ``None`` (reported once) when building it raises.

    A writer whose package is missing or whose service refuses to start is left out; the
    training and the other writers go on. ``strict=True`` re-raises instead.
    """
    try:
        writer = factory()
    except Exception as e:
        if strict:
            raise
        logger.warning("%s could not be created and is left out: %s", name, describe_exception(e))
        return None
    return GuardedWriter(writer, name=name, strict=strict)
