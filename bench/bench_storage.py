"""Per-step cost and memory of logging a DETR relation loss dict, ours against peers.

The loss dict is what ``criterion.RelationCriterion`` yields for 6 decoder layers: 9 losses per
layer (ce/bbox/giou of subject, object and relation; aux layers suffixed ``_0``..``_4``), 6
real/synthetic split statistics with their ``__num_samples`` counts, and 6 ``k_log_layer*``:
66 scalars (72 entries with the counts), 0-dim CPU float32 tensors.

Contenders, one CPU process:
  limits          ``torch.stack`` of the tensors + ``.numpy()``; ``Tensor.item`` of each tensor (the
                  read both of our modes start from); one row write into an array
  ours put        ``EventStorage.put_scalars_bulk`` of the reduced row (names tuple, float64 array),
                  as ``MetricsWriter`` hands it over (the storage put path)
  ours per step   ``MetricsWriter.write``: reduce (one host transfer) + put
  ours deferred   ``MetricsWriter(deferred=True, period=20).write``, flush amortized
  detectron2      its ``SimpleTrainer.write_metrics`` (per-key ``.detach().cpu().item()``,
                  ``comm.gather``, per-key ``np.mean``, ``EventStorage.put_scalar``), re-implemented
                  in ``bench/detectron2_reference.py`` on fvcore's ``HistoryBuffer``
  mmengine        ``MessageHub.update_scalars`` of the tensor dict (per-key ``.item()``)

One writer period's read: ``latest_with_smoothing_hint(20)`` over 80 keys, computed afresh, ours
against detectron2's (fvcore) on the same values and against one ``np.median(axis=1)``.

Memory after 1M steps: ours is bounded (one ring of rows per key set): tracemalloc at 10k steps and at
``--memory-steps`` (default 100k; 1M takes ~6 min under tracemalloc) shows it flat. The peers keep
every value up to 1M per key, so theirs is measured with tracemalloc at two step counts and
extrapolated linearly to 1M (each step adds the same bytes).

Two gloo ranks (``--world-size``, spawned), timed twice: the communication alone (detectron2's
per-step ``gather_object`` of the dict; ``all_reduce`` / ``all_gather`` of our packed vector; our
deferred mode's one ``all_gather`` of a period's vectors, amortized) and the whole logging step
(pack/reduce + collective + put into storage).

    .venv/bin/pip install -e '.[bench]'
    .venv/bin/python bench/bench_storage.py [--steps 2000] [--memory-steps 100000] [--dist-steps 400]

It ends with the goal lines of each figure (this run's numbers next to the goal).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import os
import socket
import sys
import time
import tracemalloc
from typing import Callable, Dict, List, Optional

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import detectron2_reference as d2  # noqa: E402
from engine import comm  # noqa: E402
from engine.metrics import NUM_SAMPLES_SUFFIX, LossDictReducer, MetricsWriter  # noqa: E402
from events.storage import EventStorage  # noqa: E402

DEC_LAYERS = 6
PERIOD = 20
COMM_TITLE = "communication only"
TOTAL_TITLE = "whole logging step"
BRANCH_LOSSES = [
    f"loss_{kind}_{branch}" for branch in ("subject", "object") for kind in ("ce", "bbox", "giou")
]
BRANCH_LOSSES += ["loss_relation", "loss_bbox_relation", "loss_giou_relation"]
SPLIT_LOSSES = ["loss_relation", "loss_ce_subject", "loss_ce_object"]


def detr_relation_loss_dict(seed: int = 0) -> Dict[str, torch.Tensor]:
    """66 scalars (+6 counts) named as the relation criterion names them."""
    generator = torch.Generator().manual_seed(seed)
    names = [
        name if layer == DEC_LAYERS - 1 else f"{name}_{layer}"
        for layer in range(DEC_LAYERS)
        for name in BRANCH_LOSSES
    ]
    names += [f"{name}_{group}" for name in SPLIT_LOSSES for group in ("real", "synthetic")]
    names += [f"k_log_layer{layer}" for layer in range(1, DEC_LAYERS + 1)]
    values = torch.rand(len(names), generator=generator)
    loss_dict = {name: value.clone() for name, value in zip(names, values)}
    for name in SPLIT_LOSSES:
        for group in ("real", "synthetic"):
            loss_dict[f"{name}_{group}{NUM_SAMPLES_SUFFIX}"] = torch.tensor(float(2 + len(group)))
    assert len(names) == 66
    return loss_dict


# ---------------------------------------------------------------------------- single process
def per_step_us(make_step: Callable[[], Callable[[int], None]], steps: int, repeats: int) -> float:
    """Best mean µs per step over ``repeats`` runs of ``steps`` steps (fresh state each run)."""
    best = float("inf")
    for _ in range(repeats):
        step = make_step()
        for warm in range(PERIOD):  # registration (deferred: at the end of its first period), buffers
            step(warm - PERIOD)
        gc.collect()
        start = time.perf_counter()
        for iteration in range(steps):
            step(iteration)
        best = min(best, (time.perf_counter() - start) / steps * 1e6)
    return best


STACK_LIMIT = "limit: torch.stack of the values + .numpy()"
READ_LIMIT = "limit: Tensor.item of each value (what both of our modes read)"
RING_LIMIT = "limit: one row write into a [window x keys] array"
OURS_PUT = "ours: storage put (put_scalars_bulk of the reduced row)"
OURS_STEP = "ours per step (MetricsWriter.write: reduce + put)"
OURS_DEFERRED = f"ours deferred, period {PERIOD} (amortized)"
D2_STEP = "detectron2 write_metrics + fvcore"
MMENGINE = "mmengine MessageHub.update_scalars"


def single_process_contenders(
    loss_dict: Dict[str, torch.Tensor],
) -> Dict[str, Callable[[], Callable[[int], None]]]:
    from mmengine.logging import MessageHub

    # What MetricsWriter hands the storage each step: the same names tuple, a float64 row.
    _, names, row = LossDictReducer().reduce_row(loss_dict, 0.01, 0)
    values = list(loss_dict.values())

    def stack_limit():
        return lambda it: torch.stack(values).numpy()

    def read_limit():
        return lambda it: list(map(torch.Tensor.item, values))

    def ring_limit():
        ring = np.zeros((4096, len(row)))
        return lambda it: ring.__setitem__(it % 4096, row)

    def ours_put():
        storage = EventStorage()
        return lambda it: storage.put_scalars_bulk(names, row, cur_iter=it)

    def ours_writer(deferred: bool):
        def make():
            # Entered and left open: MetricsWriter finds it through get_event_storage().
            storage = EventStorage().__enter__()
            writer = MetricsWriter(deferred=deferred, period=PERIOD)
            return lambda it: writer.write(loss_dict, 0.01, cur_iter=it + 1)

        return make

    def detectron2():
        storage = d2.Detectron2Storage()
        return lambda it: d2.write_metrics(storage, loss_dict, 0.01, it)

    def mmengine():
        hub = MessageHub(f"bench-{time.perf_counter_ns()}")
        return lambda it: hub.update_scalars(dict(loss_dict))

    return {
        STACK_LIMIT: stack_limit,
        READ_LIMIT: read_limit,
        RING_LIMIT: ring_limit,
        OURS_PUT: ours_put,
        OURS_STEP: ours_writer(False),
        OURS_DEFERRED: ours_writer(True),
        D2_STEP: detectron2,
        MMENGINE: mmengine,
    }


# ---------------------------------------------------------------------------- one writer period's read
READ_KEYS = 80


def period_read_ms(loss_dict: Dict[str, torch.Tensor], steps: int, repeats: int) -> Dict[str, float]:
    """Median ms of one ``latest_with_smoothing_hint(20)`` over ``READ_KEYS`` keys, computed
    afresh (a put comes before each read), ours against detectron2's on the same values."""
    _, names, row = LossDictReducer().reduce_row(loss_dict, 0.01, 0)
    extra = [f"metric_{i}" for i in range(READ_KEYS - len(names) - 1)]
    ours, theirs = EventStorage(), d2.Detectron2Storage()
    rng = np.random.default_rng(0)
    for it in range(steps):
        noisy = row * rng.uniform(0.5, 1.5, len(row))
        ours.put_scalars_bulk(names, noisy, cur_iter=it)
        ours.put_scalars(cur_iter=it, **dict(zip(extra, noisy.tolist())))
        ours.put_scalar("lr", 1e-4, smoothing_hint=False, cur_iter=it)
        theirs.put_scalars(cur_iter=it, **dict(zip(names + tuple(extra), noisy.tolist() * 2)))
        theirs.put_scalar("lr", 1e-4, smoothing_hint=False, cur_iter=it)
    assert len(ours.latest()) == len(theirs.latest_with_smoothing_hint()) == READ_KEYS
    windows = np.random.default_rng(1).random((READ_KEYS, 20))

    readers = {
        "limit: np.median(axis=1) of a [keys x 20] array": lambda: np.median(windows, axis=1),
        "ours (latest_with_smoothing_hint, fresh)": lambda: ours.latest_with_smoothing_hint(20),
        "detectron2 + fvcore": lambda: theirs.latest_with_smoothing_hint(20),
    }
    timings: Dict[str, List[float]] = {name: [] for name in readers}
    iteration = steps
    for rep in range(repeats):
        for name, read in readers.items():
            ours.put_scalar("lr", 1e-4, smoothing_hint=False, cur_iter=iteration)  # a fresh read
            iteration += 1
            start = time.perf_counter()
            read()
            timings[name].append((time.perf_counter() - start) * 1e3)
    return {name: float(np.median(values)) for name, values in timings.items()}


def traced_bytes(make_step: Callable[[], Callable[[int], None]], steps: int) -> int:
    """Bytes still allocated (tracemalloc) by a fresh contender after ``steps`` steps."""
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    step = make_step()
    for iteration in range(steps):
        step(iteration)
    gc.collect()
    used = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    del step
    return used


def memory_after_1m(make_step: Callable[[], Callable[[int], None]], first: int, second: int) -> float:
    """MB after 1M steps, extrapolated linearly from tracemalloc at ``first`` and ``second``."""
    low, high = traced_bytes(make_step, first), traced_bytes(make_step, second)
    per_step = (high - low) / (second - first)
    return (high + per_step * (1_000_000 - second)) / 2**20


# ---------------------------------------------------------------------------- two ranks
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _dist_worker(rank: int, world_size: int, port: int, steps: int, repeats: int, results) -> None:
    torch.distributed.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=120),
    )
    loss_dict = detr_relation_loss_dict(seed=rank)
    floats = {name: float(value) for name, value in loss_dict.items()}
    # Our exchanged row for this dict: 66 values | 66 weights (6 counts, 60 presence) | 6 host columns.
    packed = torch.rand(66 + 66 + 6, dtype=torch.float64)
    period_packed = torch.rand(PERIOD, packed.numel(), dtype=torch.float64)
    parts = [torch.empty_like(packed) for _ in range(world_size)]
    period_parts = [torch.empty_like(period_packed) for _ in range(world_size)]

    def ours_writer(deferred: bool):
        storage = EventStorage().__enter__()
        writer = MetricsWriter(deferred=deferred, period=PERIOD)
        return lambda it: writer.write(loss_dict, 0.01, cur_iter=it + 1)

    def detectron2():
        storage = d2.Detectron2Storage()
        return lambda it: d2.write_metrics(storage, loss_dict, 0.01, it)

    def every_period(it: int) -> None:
        if it % PERIOD == PERIOD - 1:
            torch.distributed.all_gather(period_parts, period_packed)

    contenders = {
        COMM_TITLE: {
            "detectron2: gather_object of the dict": lambda: (lambda it: comm.gather(floats)),
            "all_reduce of our packed vector": lambda: (lambda it: torch.distributed.all_reduce(packed)),
            "ours per step: all_gather of the packed vector": lambda: (
                lambda it: torch.distributed.all_gather(parts, packed)
            ),
            f"ours deferred: all_gather of {PERIOD} vectors per {PERIOD} steps": lambda: every_period,
        },
        TOTAL_TITLE: {
            "detectron2 write_metrics + fvcore": detectron2,
            "ours per step (reduce + put)": lambda: ours_writer(False),
            f"ours deferred, period {PERIOD} (add + flush + put)": lambda: ours_writer(True),
        },
    }
    timings = {title: {name: float("inf") for name in group} for title, group in contenders.items()}
    for _ in range(repeats):  # round-robin, so that load changes hit every contender alike
        for title, group in contenders.items():
            for name, make in group.items():
                step = make()
                for warm in range(PERIOD):
                    step(warm - PERIOD)
                torch.distributed.barrier()
                start = time.perf_counter()
                for iteration in range(steps):
                    step(iteration)
                elapsed = torch.tensor((time.perf_counter() - start) / steps * 1e6)
                torch.distributed.all_reduce(elapsed, op=torch.distributed.ReduceOp.MAX)
                timings[title][name] = min(timings[title][name], float(elapsed))
    if rank == 0:
        results.put(timings)
    torch.distributed.destroy_process_group()


def two_rank_timings(world_size: int, steps: int, repeats: int) -> Dict[str, Dict[str, float]]:
    ctx = torch.multiprocessing.get_context("spawn")
    results = ctx.SimpleQueue()
    torch.multiprocessing.start_processes(
        _dist_worker,
        args=(world_size, _free_port(), steps, repeats, results),
        nprocs=world_size,
        start_method="spawn",
    )
    return results.get()


# ---------------------------------------------------------------------------- report
def print_table(
    title: str, timings: Dict[str, float], reference: str, extra: Optional[Dict[str, str]] = None
) -> None:
    print(f"\n{title}")
    print(f"| contender | µs / step | × {reference} |" + (" MB after 1M steps |" if extra else ""))
    print("|---|---:|---:|" + ("---:|" if extra else ""))
    for name, us in timings.items():
        row = f"| {name} | {us:,.1f} | {us / timings[reference]:.2f} |"
        print(row + (f" {extra[name]} |" if extra else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=2000, help="timed steps per single-process run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--memory-steps",
        type=int,
        default=100_000,
        help="steps of our storage under tracemalloc (1,000,000 takes a few minutes)",
    )
    parser.add_argument(
        "--dist-steps", type=int, default=400, help="timed steps per contender, per rank (0: skip)"
    )
    parser.add_argument("--world-size", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, python {sys.version.split()[0]}")

    loss_dict = detr_relation_loss_dict()
    contenders = single_process_contenders(loss_dict)
    timings = {name: float("inf") for name in contenders}
    for _ in range(args.repeats):  # round-robin, so that load changes hit every contender alike
        for name, make in contenders.items():
            timings[name] = min(timings[name], per_step_us(make, args.steps, 1))

    early = traced_bytes(contenders[OURS_PUT], 10_000) / 2**20
    memory = {
        OURS_PUT: traced_bytes(contenders[OURS_PUT], args.memory_steps) / 2**20,
        OURS_STEP: traced_bytes(contenders[OURS_STEP], 20_000) / 2**20,
        OURS_DEFERRED: traced_bytes(contenders[OURS_DEFERRED], 20_000) / 2**20,
        D2_STEP: memory_after_1m(contenders[D2_STEP], 5_000, 20_000),
        MMENGINE: memory_after_1m(contenders[MMENGINE], 1_000, 3_000),
    }
    notes = {name: "" for name in contenders}
    notes.update({
        OURS_PUT: f"{memory[OURS_PUT]:.1f} (measured at {args.memory_steps:,}; {early:.1f} at 10,000)",
        OURS_STEP: f"{memory[OURS_STEP]:.1f} (measured at 20,000: bounded)",
        OURS_DEFERRED: f"{memory[OURS_DEFERRED]:.1f} (measured at 20,000: bounded)",
        D2_STEP: f"{memory[D2_STEP]:,.0f} (extrapolated)",
        MMENGINE: f"{memory[MMENGINE]:,.0f} (extrapolated)",
    })
    print_table(
        f"One CPU process, 66-key loss dict, best of {args.repeats} × {args.steps} steps",
        timings,
        D2_STEP,
        notes,
    )
    print(
        "\nmmengine's HistoryBuffer grows with np.append (a full copy per update): its cost per "
        f"step rises with the history; the figure above is the mean over the first {args.steps} steps."
    )

    reads = period_read_ms(loss_dict, steps=2_000, repeats=max(50, 20 * args.repeats))
    print(f"\nOne writer period's read, {READ_KEYS} keys, 2,000 steps kept, median ms")
    print("| reader | ms | × detectron2 |\n|---|---:|---:|")
    d2_read = reads["detectron2 + fvcore"]
    for name, ms in reads.items():
        print(f"| {name} | {ms:.3f} | {ms / d2_read:.3f} |")
    ours_read = reads["ours (latest_with_smoothing_hint, fresh)"]

    print("\nGoals (issue 13), this run:")
    goal_lines = [
        (f"per step, reduce + put: {timings[OURS_STEP]:.1f} µs (goal ≤ 40), "
         f"{timings[D2_STEP] / timings[OURS_STEP]:.1f}× below detectron2 (goal ≥ 20×); "
         f"limit here {timings[STACK_LIMIT]:.1f} µs"),
        (f"per step, deferred, amortized: {timings[OURS_DEFERRED]:.1f} µs (goal ≤ 15); "
         f"reading the values alone {timings[READ_LIMIT]:.1f} µs"),
        f"storage put of the reduced row: {timings[OURS_PUT]:.1f} µs (goal ≤ 3; limit here {timings[RING_LIMIT]:.1f} µs)",
        f"one writer period's read, {READ_KEYS} keys: {ours_read:.3f} ms (goal ≤ 0.1), {d2_read / ours_read:.0f}× below detectron2",
        f"memory after {args.memory_steps:,} steps × 66 keys: {memory[OURS_PUT]:.1f} MB, {early:.1f} MB at 10,000 (goal ≤ 16, flat)",
    ]
    for line in goal_lines:
        print("  " + line)

    if args.dist_steps <= 0:
        return
    dist = two_rank_timings(args.world_size, args.dist_steps, args.repeats)
    for title, reference in (
        (COMM_TITLE, "detectron2: gather_object of the dict"),
        (TOTAL_TITLE, D2_STEP),
    ):
        print_table(
            f"{args.world_size} gloo ranks, {title}: max over ranks of the mean per step, "
            f"best of {args.repeats} × {args.dist_steps} steps",
            dist[title],
            reference,
        )
    comm_times, total_times = dist[COMM_TITLE], dist[TOTAL_TITLE]
    print(
        f"\ndetectron2's per-step gather_object / our deferred collective: "
        f"{comm_times['detectron2: gather_object of the dict'] / comm_times[list(comm_times)[-1]]:.0f}× "
        f"(target ≥ 20×); whole logging step: "
        f"{total_times[D2_STEP] / total_times[list(total_times)[-1]]:.1f}×"
    )


if __name__ == "__main__":
    main()
