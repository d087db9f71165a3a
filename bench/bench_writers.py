"""What each writer costs per write period, for a DETR-sized set of scalars (80 keys).

Each period puts 20 steps of scalars into an ``EventStorage`` and then calls every writer's
``write()``; only ``write()`` is timed (in the training thread: tensorboardX and wandb finish
the work in a background thread / the wandb-core process). The storage's smoothed read
(``latest_with_smoothing_hint``) is timed on its own, first in each period: it is computed once
per period and every writer after it gets it from the cache. The cost is shown in ms and as a
share of a 20-step window at two step times: 0.05 s (a small model) and 0.43 s (the median
``time`` of a real Mask2Former run).

Peers: detectron2's ``TensorboardXWriter`` as it is today (its storage's read on fvcore's
``HistoryBuffer``, then one ``torch.utils.tensorboard`` ``add_scalar`` per key; re-implemented in
``bench/detectron2_reference.py`` because detectron2 is not on PyPI, and fed the same values
each step), tensorboardX ``add_scalar`` per key on the same read, and a W&B ``log`` with an
explicit ``step``.

    python bench/bench_writers.py [--periods 100] [--keys 79]
"""
from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
import warnings
from typing import Callable, Dict, List

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import detectron2_reference as d2  # noqa: E402
from events import CommonMetricPrinter, EventStorage, JSONWriter  # noqa: E402
from events.storage import StaleIterationWarning, get_event_storage  # noqa: E402
from events.writers import METRICS_LOGGER_NAME, EventWriter  # noqa: E402

WINDOW = 20
STEP_SECONDS = (0.05, 0.43)
READ = "storage read (latest_with_smoothing_hint, once per period)"
CONSOLE = "console (CommonMetricPrinter -> log.txt)"
OURS_TB = "TensorBoard, ours (1 event/step)"
D2_TB = "TensorBoard, detectron2's TensorboardXWriter (read + add_scalar/key)"
TBX_TB = "TensorBoard, tensorboardX add_scalar/key (detectron2's read)"


def loss_keys(n: int) -> List[str]:
    """DETR-like names: base losses, per-layer aux copies, real/synthetic splits, timings."""
    bases = ["loss_ce", "loss_bbox", "loss_giou", "loss_rel", "loss_sub", "loss_obj"]
    keys = bases + [f"{b}_{layer}" for b in bases for layer in range(5)]
    keys += [f"{b}_{split}" for b in bases for split in ("real", "synthetic")]
    keys += ["total_loss", "total_loss_weighted", "class_error", "time", "data_time"]
    keys += [f"metric_{i}" for i in range(max(0, n - len(keys)))]
    return keys[:n]


class StepAxisWandb(EventWriter):
    """W&B with the iteration as explicit ``step`` (the common integration; the peer)."""

    def __init__(self, run) -> None:
        self._run = run

    def write(self) -> None:
        storage = get_event_storage()
        values = {k: v for k, (v, _) in storage.latest_with_smoothing_hint(WINDOW).items()}
        self._run.log(values, step=storage.iter)

    def close(self) -> None:
        self._run.finish()


def time_writers(
    makers: Dict[str, Callable[[], EventWriter]],
    d2_makers: Dict[str, Callable[[d2.Detectron2Storage], d2.TensorboardXWriter]],
    keys: List[str],
    periods: int,
) -> Dict[str, List[float]]:
    """Seconds per period of the storage read and of each writer's ``write()`` over ``periods``
    periods (after a warm-up one).

    Our writers see the same storage state each period, in a rotating order, so machine noise
    hits them alike; detectron2's writers read a detectron2 storage fed the same values.
    """
    rng = np.random.default_rng(0)
    costs: Dict[str, List[float]] = {name: [] for name in [READ, *makers, *d2_makers]}
    reference = d2.Detectron2Storage()
    with EventStorage() as storage:
        writers = {name: make() for name, make in makers.items()}
        writers.update({name: make(reference) for name, make in d2_makers.items()})
        names = list(writers)
        names_tuple = tuple(keys)
        for period in range(periods + 1):
            for _ in range(WINDOW):
                values = rng.random(len(keys))
                storage.put_scalars_bulk(names_tuple, values)
                storage.put_scalar("lr", 1e-4, smoothing_hint=False)
                reference.put_scalars(cur_iter=storage.iter, **dict(zip(keys, values.tolist())))
                reference.put_scalar("lr", 1e-4, smoothing_hint=False, cur_iter=storage.iter)
                storage.step()
            storage.iter -= 1  # write at the last iteration of the window, as PeriodicWriter does
            timed = [(READ, lambda: storage.latest_with_smoothing_hint(WINDOW))]
            shift = period % len(names)
            timed += [(name, writers[name].write) for name in names[shift:] + names[:shift]]
            for name, call in timed:
                start = time.perf_counter()
                call()
                if period:  # the first write creates files and runs
                    costs[name].append(time.perf_counter() - start)
            storage.step()
        for writer in writers.values():
            writer.close()
    return costs


def wandb_run(root: str, name: str):
    import wandb

    return wandb.init(
        project="bench", name=name, dir=root, mode="offline",
        settings=wandb.Settings(silent=True, console="off", x_disable_stats=True),
    )


def candidates(root: str) -> Dict[str, Callable[[], EventWriter]]:
    from events.tensorboard_writer import TensorboardXWriter
    from events.wandb_writer import WandbWriter

    console_logger = logging.getLogger(METRICS_LOGGER_NAME)
    console_logger.propagate = False
    console_logger.addHandler(logging.FileHandler(os.path.join(root, "log.txt")))
    console_logger.setLevel(logging.INFO)

    return {
        CONSOLE: lambda: CommonMetricPrinter(max_iter=10**6),
        "metrics.json (JSONWriter, fsync)": lambda: JSONWriter(os.path.join(root, "metrics.json")),
        OURS_TB: lambda: TensorboardXWriter(os.path.join(root, "tb")),
        "W&B offline, ours": lambda: WandbWriter(
            "bench", run_dir=os.path.join(root, "wb"), mode="offline", system_metrics=False
        ),
        "W&B offline, log(step=iter)": lambda: StepAxisWandb(wandb_run(os.path.join(root, "wb2"), "peer")),
    }


class TensorboardXPerKey(d2.TensorboardXWriter):
    """detectron2's writer on tensorboardX's SummaryWriter (its writer before torch had one)."""

    def __init__(self, storage: d2.Detectron2Storage, log_dir: str) -> None:
        from tensorboardX import SummaryWriter

        self._storage, self._window_size, self._last_write = storage, WINDOW, -1
        self._writer = SummaryWriter(log_dir)


def detectron2_candidates(root: str) -> Dict[str, Callable[[d2.Detectron2Storage], d2.TensorboardXWriter]]:
    return {
        D2_TB: lambda storage: d2.TensorboardXWriter(storage, os.path.join(root, "d2-tb"), WINDOW),
        TBX_TB: lambda storage: TensorboardXPerKey(storage, os.path.join(root, "tbx-per-key")),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--periods", type=int, default=100)
    parser.add_argument("--keys", type=int, default=79, help="scalars per step besides lr")
    args = parser.parse_args()
    os.environ["WANDB_SILENT"] = "true"
    # The rotating order puts the console (which puts eta_seconds while writing) after the
    # other writers in most periods; the storage rightly reports that value as never written.
    warnings.simplefilter("ignore", StaleIterationWarning)
    keys = loss_keys(args.keys)
    print(f"{len(keys) + 1} keys per write (incl. lr), {args.periods} periods of {WINDOW} steps\n")
    header = f"{'writer':70s} {'median ms':>9s} {'p90 ms':>7s}"
    header += "".join(f" {f'% of 20x{s}s':>12s}" for s in STEP_SECONDS)
    print(header)
    with tempfile.TemporaryDirectory() as root:
        costs = time_writers(candidates(root), detectron2_candidates(root), keys, args.periods)
    # Ours with the read it needs (paid once per period, whoever reads first), per period.
    costs[OURS_TB + ", read included"] = [read + tb for read, tb in zip(costs[READ], costs[OURS_TB])]
    medians = {name: statistics.median(c) for name, c in costs.items()}
    for name, c in costs.items():
        median, p90 = medians[name], float(np.percentile(c, 90))
        shares = "".join(f" {100 * median / (WINDOW * s):11.3f}%" for s in STEP_SECONDS)
        print(f"{name:70s} {1e3 * median:9.3f} {1e3 * p90:7.3f}{shares}")
    ours, theirs = medians[OURS_TB + ", read included"], medians[D2_TB]
    print("\nGoals (issue 13), this run:")
    print(f"  one writer period's read, {len(keys) + 1} keys: {1e3 * medians[READ]:.3f} ms (goal ≤ 0.1)")
    print(
        f"  TensorBoard write of one period, read included: {1e3 * ours:.3f} ms (goal ≤ 1), "
        f"{theirs / ours:.1f}× below detectron2's TensorboardXWriter (goal ≥ 15×)"
    )


if __name__ == "__main__":
    main()
