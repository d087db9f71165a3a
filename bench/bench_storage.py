"""Per-step cost and memory of logging a DETR relation loss dict, ours against peers.

The loss dict is what ``criterion.RelationCriterion`` yields for 6 decoder layers: 9 losses per
layer (ce/bbox/giou of subject, object and relation; aux layers suffixed ``_0``..``_4``), 6
real/synthetic split statistics with their ``__num_samples`` counts, and 6 ``k_log_layer*``:
66 scalars (72 entries with the counts), 0-dim CPU float32 tensors.

Contenders, one CPU process:
  ours put        ``EventStorage.put_scalars_bulk`` of the reduced floats (the storage put path)
  ours per step   ``MetricsWriter.write``: reduce (one host transfer) + put
  ours deferred   ``MetricsWriter(deferred=True, period=20).write``, flush amortized
  detectron2      its ``SimpleTrainer.write_metrics`` (per-key ``.detach().cpu().item()``,
                  ``comm.gather``, per-key ``np.mean``, ``EventStorage.put_scalar``), re-implemented
                  here on fvcore's ``HistoryBuffer`` (detectron2 is not on PyPI)
  mmengine        ``MessageHub.update_scalars`` of the tensor dict (per-key ``.item()``)

Memory after 1M steps: ours is bounded (a ring buffer per key): tracemalloc at 10k steps and at
``--memory-steps`` (default 100k; 1M takes ~6 min under tracemalloc) shows it flat. The peers keep
every value up to 1M per key, so theirs is measured with tracemalloc at two step counts and
extrapolated linearly to 1M (each step adds the same bytes).

Two gloo ranks (``--world-size``, spawned), timed twice: the communication alone (detectron2's
per-step ``gather_object`` of the dict; ``all_reduce`` / ``all_gather`` of our packed vector; our
deferred mode's one ``all_gather`` of a period's vectors, amortized) and the whole logging step
(pack/reduce + collective + put into storage).

    .venv/bin/pip install -e '.[bench]'
    .venv/bin/python bench/bench_storage.py [--steps 2000] [--memory-steps 100000] [--dist-steps 400]
"""

from __future__ import annotations

import argparse
import collections
import datetime
import gc
import os
import socket
import sys
import time
import tracemalloc
from typing import Callable, Dict, List, Mapping, Optional

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

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


# ---------------------------------------------------------------------------- peers
class Detectron2StyleStorage:
    """The scalar path of detectron2's ``EventStorage`` (put_scalar / put_scalars) on fvcore's
    ``HistoryBuffer`` (kept up to 1M values per key)."""

    def __init__(self) -> None:
        from fvcore.common.history_buffer import HistoryBuffer

        self._history = collections.defaultdict(HistoryBuffer)
        self._smoothing_hints: Dict[str, bool] = {}
        self._latest_scalars: Dict[str, tuple] = {}

    def put_scalar(
        self, name: str, value: float, smoothing_hint: bool = True, cur_iter: Optional[int] = None
    ) -> None:
        value = float(value)
        self._history[name].update(value, cur_iter)
        self._latest_scalars[name] = (value, cur_iter)
        if self._smoothing_hints.setdefault(name, smoothing_hint) != smoothing_hint:
            raise AssertionError(f"Scalar {name} was put with a different smoothing_hint!")

    def put_scalars(
        self, *, smoothing_hint: bool = True, cur_iter: Optional[int] = None, **kwargs: float
    ) -> None:
        for name, value in kwargs.items():
            self.put_scalar(name, value, smoothing_hint=smoothing_hint, cur_iter=cur_iter)


def detectron2_write_metrics(
    storage: Detectron2StyleStorage,
    loss_dict: Mapping[str, torch.Tensor],
    data_time: float,
    cur_iter: int,
) -> None:
    """detectron2 ``SimpleTrainer.write_metrics``: per-key item, gather_object to rank 0."""
    metrics_dict = {k: v.detach().cpu().item() for k, v in loss_dict.items()}
    metrics_dict["data_time"] = data_time
    storage.put_scalar("rank_data_time", data_time, cur_iter=cur_iter)
    all_metrics_dict = comm.gather(metrics_dict)
    if comm.is_main_process():
        data_time = np.max([x.pop("data_time") for x in all_metrics_dict])
        storage.put_scalar("data_time", data_time, cur_iter=cur_iter)
        metrics_dict = {k: np.mean([x[k] for x in all_metrics_dict]) for k in all_metrics_dict[0].keys()}
        total_losses_reduced = sum(metrics_dict.values())
        if not np.isfinite(total_losses_reduced):
            raise FloatingPointError(f"Loss became infinite or NaN at iteration={cur_iter}!")
        storage.put_scalar("total_loss", total_losses_reduced, cur_iter=cur_iter)
        storage.put_scalars(cur_iter=cur_iter, **metrics_dict)


# ---------------------------------------------------------------------------- single process
def per_step_us(make_step: Callable[[], Callable[[int], None]], steps: int, repeats: int) -> float:
    """Best mean µs per step over ``repeats`` runs of ``steps`` steps (fresh state each run)."""
    best = float("inf")
    for _ in range(repeats):
        step = make_step()
        step(-1)  # first call: registration, buffer creation
        gc.collect()
        start = time.perf_counter()
        for iteration in range(steps):
            step(iteration)
        best = min(best, (time.perf_counter() - start) / steps * 1e6)
    return best


def single_process_contenders(
    loss_dict: Dict[str, torch.Tensor],
) -> Dict[str, Callable[[], Callable[[int], None]]]:
    from mmengine.logging import MessageHub

    reduced = LossDictReducer().reduce(loss_dict, 0.01, 0)
    names, values = list(reduced), list(reduced.values())

    def ours_put():
        storage = EventStorage()
        return lambda it: storage.put_scalars_bulk(names, values, cur_iter=it)

    def ours_writer(deferred: bool):
        def make():
            # Entered and left open: MetricsWriter finds it through get_event_storage().
            storage = EventStorage().__enter__()
            writer = MetricsWriter(deferred=deferred, period=PERIOD)
            return lambda it: writer.write(loss_dict, 0.01, cur_iter=it + 1)  # it=-1 -> 0

        return make

    def detectron2():
        storage = Detectron2StyleStorage()
        return lambda it: detectron2_write_metrics(storage, loss_dict, 0.01, it)

    def mmengine():
        hub = MessageHub(f"bench-{time.perf_counter_ns()}")
        return lambda it: hub.update_scalars(dict(loss_dict))

    return {
        "ours put (storage only)": ours_put,
        "ours per step (reduce + put)": ours_writer(False),
        "ours deferred (amortized)": ours_writer(True),
        "detectron2 write_metrics + fvcore": detectron2,
        "mmengine MessageHub.update_scalars": mmengine,
    }


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
    # Our packed row for this dict: 66 values | 6 counts | 60 presence flags | data_time, 2 flags.
    packed = torch.rand(66 + 6 + 60 + 3, dtype=torch.float64)
    period_packed = torch.rand(PERIOD, packed.numel(), dtype=torch.float64)
    parts = [torch.empty_like(packed) for _ in range(world_size)]
    period_parts = [torch.empty_like(period_packed) for _ in range(world_size)]

    def ours_writer(deferred: bool):
        storage = EventStorage().__enter__()
        writer = MetricsWriter(deferred=deferred, period=PERIOD)
        return lambda it: writer.write(loss_dict, 0.01, cur_iter=it + 1)

    def detectron2():
        storage = Detectron2StyleStorage()
        return lambda it: detectron2_write_metrics(storage, loss_dict, 0.01, it)

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
        help="steps of our storage under tracemalloc (1,000,000 takes ~6 min)",
    )
    parser.add_argument(
        "--dist-steps", type=int, default=400, help="timed steps per contender, per rank"
    )
    parser.add_argument("--world-size", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, python {sys.version.split()[0]}")

    loss_dict = detr_relation_loss_dict()
    contenders = single_process_contenders(loss_dict)
    names = list(contenders)
    timings = {name: float("inf") for name in names}
    for _ in range(args.repeats):
        for name in names:
            timings[name] = min(timings[name], per_step_us(contenders[name], args.steps, 1))

    early = traced_bytes(contenders[names[0]], 10_000) / 2**20
    memory = {
        names[0]: traced_bytes(contenders[names[0]], args.memory_steps) / 2**20,
        names[1]: traced_bytes(contenders[names[1]], 20_000) / 2**20,
        names[2]: traced_bytes(contenders[names[2]], 20_000) / 2**20,
        names[3]: memory_after_1m(contenders[names[3]], 5_000, 20_000),
        names[4]: memory_after_1m(contenders[names[4]], 1_000, 3_000),
    }
    notes = {
        names[0]: f"{memory[names[0]]:.1f} (measured at {args.memory_steps:,}; {early:.1f} at 10,000)",
        names[1]: f"{memory[names[1]]:.1f} (measured at 20,000: bounded)",
        names[2]: f"{memory[names[2]]:.1f} (measured at 20,000: bounded)",
        names[3]: f"{memory[names[3]]:,.0f} (extrapolated)",
        names[4]: f"{memory[names[4]]:,.0f} (extrapolated)",
    }
    print_table(
        f"One CPU process, 66-key loss dict, best of {args.repeats} × {args.steps} steps",
        timings,
        "detectron2 write_metrics + fvcore",
        notes,
    )
    print(
        "\nmmengine's HistoryBuffer grows with np.append (a full copy per update): its cost per "
        f"step rises with the history; the figure above is the mean over the first {args.steps} steps."
    )

    dist = two_rank_timings(args.world_size, args.dist_steps, args.repeats)
    for title, reference in (
        (COMM_TITLE, "detectron2: gather_object of the dict"),
        (TOTAL_TITLE, "detectron2 write_metrics + fvcore"),
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
        f"{total_times['detectron2 write_metrics + fvcore'] / total_times[list(total_times)[-1]]:.1f}×"
    )
    print(
        f"storage put path: {timings[names[0]]:.1f} µs / step (target ≤ 40 µs); "
        f"storage after {args.memory_steps:,} steps: {memory[names[0]]:.1f} MB (target < 16 MB)"
    )


if __name__ == "__main__":
    main()
