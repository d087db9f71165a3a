"""engine.comm without a process group (free, no communication) and on 2 gloo ranks; and the
tests/dist_utils.py harness itself (errors and hangs surface as failures, never as a stall)."""

import time

import pytest
import torch
import torch.distributed as dist

from dist_utils import run_distributed
from engine import comm

COLLECTIVES = ("barrier", "all_gather_object", "gather_object", "all_gather", "all_reduce", "broadcast")


def test_without_process_group_every_helper_answers_locally(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("a collective was called without a process group")

    for name in COLLECTIVES:
        monkeypatch.setattr(dist, name, forbidden)
    monkeypatch.delenv("LOCAL_RANK", raising=False)

    assert not comm.is_distributed()
    assert comm.get_world_size() == 1
    assert comm.get_rank() == 0
    assert comm.get_local_rank() == 0
    assert comm.is_main_process()
    assert comm.synchronize() is None
    payload = {"loss": 1.5}
    assert comm.all_gather(payload) == [payload]
    assert comm.gather(payload) == [payload]
    assert comm.gather(payload, dst=0)[0] is payload
    assert comm.collective_device() == torch.device("cpu")


def test_local_rank_comes_from_the_launcher_environment(monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert comm.get_local_rank() == 3


def _comm_worker(rank, world_size):
    comm.synchronize()
    return {
        "world_size": comm.get_world_size(),
        "rank": comm.get_rank(),
        "local_rank": comm.get_local_rank(),
        "is_main": comm.is_main_process(),
        "all_gather": comm.all_gather({"rank": rank, "items": list(range(rank + 1))}),
        "gather_to_1": comm.gather(f"from {rank}", dst=1),
        "device": str(comm.collective_device()),
    }


@pytest.mark.distributed
def test_helpers_on_two_gloo_ranks():
    results = run_distributed(_comm_worker, world_size=2, timeout=90)
    for rank, result in enumerate(results):
        assert result["world_size"] == 2
        assert result["rank"] == rank
        assert result["local_rank"] == rank  # no LOCAL_RANK: one machine
        assert result["is_main"] == (rank == 0)
        assert result["all_gather"] == [{"rank": 0, "items": [0]}, {"rank": 1, "items": [0, 1]}]
        assert result["device"] == "cpu"
    assert results[0]["gather_to_1"] == []
    assert results[1]["gather_to_1"] == ["from 0", "from 1"]


def _fails_on_rank_1_while_rank_0_waits(rank, world_size):
    if rank == 1:
        raise ValueError("boom on purpose")
    comm.synchronize()  # the peer never arrives: must error out, not wait forever
    return "rank 0 passed the barrier"


@pytest.mark.distributed
def test_harness_reports_the_failing_rank_and_does_not_hang():
    # Had rank 0 stayed in its barrier, the harness would raise TimeoutError after 200 s
    # instead of reporting the failure: the failure's message is the proof it did not hang.
    with pytest.raises(AssertionError, match=r"(?s)failed on rank\(s\) \[.*1\].*boom on purpose"):
        run_distributed(_fails_on_rank_1_while_rank_0_waits, world_size=2, timeout=200)


HUNG_S = 3600


def _sleeps_on_rank_0(rank, world_size):
    if rank == 0:
        time.sleep(HUNG_S)
    return rank


@pytest.mark.distributed
@pytest.mark.slow
def test_harness_kills_a_hung_rank_after_the_timeout():
    """The 8 s are the worker function's: starting the processes and importing torch (slow on a
    saturated machine) is not counted, so only a real hang can exceed them."""
    start = time.monotonic()
    with pytest.raises(TimeoutError, match=r"rank\(s\) \[0\] of 2 did not finish within 8 s"):
        run_distributed(_sleeps_on_rank_0, world_size=2, timeout=8)
    # Killed, not waited for: far below the hung rank's sleep whatever the start-up cost.
    assert time.monotonic() - start < HUNG_S / 10

