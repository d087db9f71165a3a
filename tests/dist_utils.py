"""Run a test function on N local gloo ranks, with bounded waiting so a hang fails the test.

Usage (``worker`` must be a module-level function so ``spawn`` can import it)::

    def worker(rank, world_size, scale):
        ...                       # torch.distributed is initialized (gloo) here
        return {"rank": rank}     # anything picklable

    results = run_distributed(worker, world_size=2, args=(3,))   # [result_rank0, result_rank1]

Failures come back as an ``AssertionError`` in the parent naming the rank and carrying the
worker's traceback; a worker whose ``fn`` does not finish within ``timeout`` seconds is killed
and the call raises ``TimeoutError``. Collectives inside a worker also time out after
``timeout`` seconds (the process group's own timeout), so a missing peer is an error, not a stall.

``timeout`` counts from the moment every rank has joined the process group: starting the
processes and importing torch (seconds on an idle machine, many more on a saturated one) has
its own, generous ``startup_timeout``, so a tight ``timeout`` judges ``fn`` alone.
"""

from __future__ import annotations

import datetime
import queue
import socket
import time
import traceback
from typing import Any, Callable, Sequence

import torch.distributed as dist
import torch.multiprocessing as mp

DEFAULT_TIMEOUT_S = 60.0
# Spawning, importing torch and meeting in the process group, on a machine that may be saturated
# by other jobs (import torch alone took ~5 s at load 7 on 2 cores): a wide margin.
DEFAULT_STARTUP_TIMEOUT_S = 120.0
_READY = "ready"


def find_free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rank_entry(
    rank: int,
    world_size: int,
    port: int,
    timeout_s: float,
    startup_timeout_s: float,
    fn: Callable[..., Any],
    args: Sequence[Any],
    results: "mp.Queue",
) -> None:
    """Body of one spawned rank: join the gloo group, report (rank, "ready", None), run ``fn``,
    report (rank, ok, payload)."""
    try:
        # The rendezvous waits as long as start-up may take; collectives then use ``timeout_s``.
        store = dist.TCPStore(
            "127.0.0.1", port, world_size, is_master=rank == 0,
            timeout=datetime.timedelta(seconds=startup_timeout_s),
        )
        dist.init_process_group(
            backend="gloo",
            store=store,
            rank=rank,
            world_size=world_size,
            timeout=datetime.timedelta(seconds=timeout_s),
        )
        results.put((rank, _READY, None))
        try:
            outcome = (rank, True, fn(rank, world_size, *args))
        finally:
            dist.destroy_process_group()
    except BaseException:  # report everything, including assertion failures, to the parent
        outcome = (rank, False, traceback.format_exc())
    results.put(outcome)


def run_distributed(
    fn: Callable[..., Any],
    world_size: int,
    args: Sequence[Any] = (),
    timeout: float = DEFAULT_TIMEOUT_S,
    startup_timeout: float = DEFAULT_STARTUP_TIMEOUT_S,
) -> list[Any]:
    """Run ``fn(rank, world_size, *args)`` on ``world_size`` gloo ranks in fresh processes.

    Returns:
        The per-rank return values, ordered by rank.
    Raises:
        AssertionError: a rank raised (or died); the message names it and holds its traceback.
        TimeoutError: the ranks did not all join the process group within ``startup_timeout``
            seconds, or not every rank returned from ``fn`` within ``timeout`` seconds after that.
    """
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = find_free_port()
    processes = [
        ctx.Process(
            target=_rank_entry,
            args=(rank, world_size, port, timeout, startup_timeout, fn, tuple(args), results),
            daemon=True,
        )
        for rank in range(world_size)
    ]
    for process in processes:
        process.start()

    ready: set[int] = set()
    deadline = time.monotonic() + startup_timeout
    outcomes: dict[int, tuple[bool, Any]] = {}
    try:
        while len(outcomes) < world_size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                if any(not ok for ok, _ in outcomes.values()):
                    break  # a rank failed and its peers wait for it: report the failure
                if len(ready) < world_size:
                    missing = sorted(set(range(world_size)) - ready)
                    raise TimeoutError(
                        f"{fn.__name__}: rank(s) {missing} of {world_size} did not start within "
                        f"{startup_timeout:.0f} s"
                    )
                missing = sorted(set(range(world_size)) - set(outcomes))
                raise TimeoutError(
                    f"{fn.__name__}: rank(s) {missing} of {world_size} did not finish within "
                    f"{timeout:.0f} s"
                )
            try:
                rank, ok, payload = results.get(timeout=min(remaining, 1.0))
            except queue.Empty:
                dead = [r for r, p in enumerate(processes) if p.exitcode not in (None, 0)]
                dead = [r for r in dead if r not in outcomes]
                if dead:
                    raise AssertionError(
                        f"{fn.__name__}: rank(s) {dead} died without reporting "
                        f"(exit codes {[processes[r].exitcode for r in dead]})"
                    )
                continue
            if ok == _READY:
                ready.add(rank)
                if len(ready) == world_size:  # ``fn`` runs everywhere now: its clock starts
                    deadline = time.monotonic() + timeout
                continue
            outcomes[rank] = (ok, payload)
    finally:
        # Ranks that reported only have to tear down; ranks that did not are hung: kill them.
        grace_s = 10.0 if len(outcomes) == world_size else 0.0
        for process in processes:
            process.join(timeout=grace_s)
            if process.is_alive():
                process.kill()
                process.join()

    failures = {rank: payload for rank, (ok, payload) in outcomes.items() if not ok}
    if failures:
        details = "\n".join(f"--- rank {rank} ---\n{tb}" for rank, tb in sorted(failures.items()))
        raise AssertionError(f"{fn.__name__} failed on rank(s) {sorted(failures)}:\n{details}")
    return [outcomes[rank][1] for rank in range(world_size)]
