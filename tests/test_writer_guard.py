"""GuardedWriter: the first failure is reported once and disables that writer only."""
import errno
import logging

import pytest

from events import EventStorage
from events.writer_guard import GuardedWriter, build_guarded, describe_exception
from events.writers import EventWriter


class CountingWriter(EventWriter):
    def __init__(self, fail_write_at=None, fail_close=False, error=None):
        self.writes, self.closes = 0, 0
        self.fail_write_at, self.fail_close = fail_write_at, fail_close
        self.error = error or OSError(errno.ENOSPC, "No space left on device")

    def write(self):
        self.writes += 1
        if self.writes == self.fail_write_at:
            raise self.error

    def close(self):
        self.closes += 1
        if self.fail_close:
            raise self.error


def warnings_of(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_failing_writer_is_reported_once_and_the_others_go_on(caplog):
    broken, healthy = CountingWriter(fail_write_at=2), CountingWriter()
    writers = [GuardedWriter(broken, name="BrokenWriter"), GuardedWriter(healthy)]
    with EventStorage() as storage:
        for it in range(5):
            storage.iter = it
            for w in writers:
                w.write()
        for w in writers:
            w.close()
    assert (broken.writes, broken.closes) == (2, 1)  # disabled after the failure, still closed
    assert (healthy.writes, healthy.closes) == (5, 1)
    assert warnings_of(caplog) == [
        "BrokenWriter failed in write() at iteration 1: OSError: [Errno 28] No space left on device; "
        "it is disabled for the rest of training, the other writers go on."
    ]
    assert writers[0].disabled and not writers[1].disabled


def test_failure_in_close_is_reported_once(caplog):
    guarded = GuardedWriter(CountingWriter(fail_close=True))
    guarded.close()
    guarded.close()
    assert guarded.writer.closes == 1
    (message,) = warnings_of(caplog)
    assert message.startswith("CountingWriter failed in close(): OSError")


def test_close_after_a_write_failure_adds_no_second_warning(caplog):
    guarded = GuardedWriter(CountingWriter(fail_write_at=1, fail_close=True))
    guarded.write()
    guarded.close()
    assert len(warnings_of(caplog)) == 1


def test_strict_mode_raises():
    guarded = GuardedWriter(CountingWriter(fail_write_at=1), strict=True)
    with pytest.raises(OSError, match="No space left"):
        guarded.write()
    with pytest.raises(OSError):
        GuardedWriter(CountingWriter(fail_close=True), strict=True).close()


def test_keyboard_interrupt_is_not_swallowed():
    guarded = GuardedWriter(CountingWriter(fail_write_at=1, error=KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        guarded.write()


def test_build_guarded_leaves_out_a_writer_that_cannot_be_built(caplog):
    def factory():
        raise ConnectionError("wandb service\n  unreachable")

    assert build_guarded("WandbWriter", factory) is None
    assert warnings_of(caplog) == [
        "WandbWriter could not be created and is left out: ConnectionError: wandb service unreachable"
    ]
    with pytest.raises(ConnectionError):
        build_guarded("WandbWriter", factory, strict=True)
    built = build_guarded("CountingWriter", CountingWriter)
    assert isinstance(built, GuardedWriter) and built.name == "CountingWriter"


def test_describe_exception_is_one_line():
    assert describe_exception(ValueError("a\nb")) == "ValueError: a b"
    assert describe_exception(RuntimeError()) == "RuntimeError"
