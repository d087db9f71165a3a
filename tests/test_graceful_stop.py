"""engine.graceful_stop: a signal becomes a stop request honoured between steps, a repeated
signal acts at once, handlers are restored, and on several ranks every rank stops after the
same step even when only one rank was signalled."""
import os
import signal

import pytest

from dist_utils import run_distributed
from engine.graceful_stop import GracefulStop, TrainingInterrupted, exit_code_of


def test_a_signal_is_a_request_honoured_at_the_next_check():
    previous = signal.getsignal(signal.SIGINT)
    steps = []
    with GracefulStop() as stop:
        for iteration in range(10):
            steps.append(iteration)
            if iteration == 3:
                os.kill(os.getpid(), signal.SIGINT)  # arrives mid-step: no KeyboardInterrupt
            if stop.should_stop():
                break
    assert steps == [0, 1, 2, 3]
    assert (stop.signal_name, stop.exit_code) == ("SIGINT", 130)
    error = stop.interrupted(3)
    assert isinstance(error, TrainingInterrupted) and (error.iteration, error.exit_code) == (3, 130)
    assert signal.getsignal(signal.SIGINT) is previous


def test_sigterm_exit_code_and_a_different_second_signal_is_the_same_request():
    with GracefulStop() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGINT)  # torchrun answers Ctrl-C with SIGTERM: one request
        assert stop.should_stop()
    assert (stop.signal_name, stop.exit_code) == ("SIGTERM", 143)


def test_a_second_ctrl_c_ends_a_script_with_one_line_and_130(capsys):
    def main():
        with GracefulStop():
            os.kill(os.getpid(), signal.SIGINT)  # the request...
            os.kill(os.getpid(), signal.SIGINT)  # ... and "now", before the step ended
        return 0

    assert exit_code_of(main) == 130
    assert capsys.readouterr().err == "error: interrupted twice; stopped at once, without a checkpoint of the current step\n"
    assert exit_code_of(lambda: 3) == 3

def test_the_same_signal_twice_acts_at_once():
    previous = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        with GracefulStop():
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)  # the previous handler is back: KeyboardInterrupt
    assert signal.getsignal(signal.SIGINT) is previous


def _loop_signalled_on_rank_1(rank, world_size):
    with GracefulStop() as stop:
        for iteration in range(50):
            if rank == 1 and iteration == 5:
                os.kill(os.getpid(), signal.SIGTERM)
            if stop.should_stop():
                return iteration, stop.exit_code
    return None, stop.exit_code


@pytest.mark.distributed
def test_every_rank_stops_after_the_same_step_when_one_rank_is_signalled():
    # The ranks' flags travel in an all-reduce started after step i and read after step i + 1.
    assert run_distributed(_loop_signalled_on_rank_1, world_size=2, timeout=120) == [(6, 143), (6, 143)]
