"""What each writer costs per write period, for a DETR-sized loss dict (66 keys).

Each period puts 20 steps of 66 scalars into an ``EventStorage`` and then calls every writer's
``write()``; only ``write()`` is timed (in the training thread: tensorboardX and wandb finish
the work in a background thread / the wandb-core process). The cost is shown in ms and as a
share of a 20-step window at two step times: 0.05 s (a small model) and 0.43 s (the median
``time`` of a real Mask2Former run, shared/real-logs/d2-metrics__BUAAZhangHaonan__*.json).

Peers: detectron2's TensorBoard path (one ``SummaryWriter.add_scalar`` per key, tensorboardX
and torch.utils.tensorboard) and a W&B ``log`` with an explicit ``step``.

    python bench/bench_writers.py [--periods 100] [--keys 66]
"""
from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from typing import Callable, Dict, List

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from events import CommonMetricPrinter, EventStorage, JSONWriter  # noqa: E402
from events.storage import get_event_storage  # noqa: E402
from events.writers import METRICS_LOGGER_NAME, EventWriter  # noqa: E402

WINDOW = 20
STEP_SECONDS = (0.05, 0.43)
BASELINE = "baseline: storage.latest_with_smoothing_hint only"
CONSOLE = "console (CommonMetricPrinter -> log.txt)"


def loss_keys(n: int) -> List[str]:
    """DETR-like names: base losses, per-layer aux copies, real/synthetic splits, timings."""
    bases = ["loss_ce", "loss_bbox", "loss_giou", "loss_rel", "loss_sub", "loss_obj"]
    keys = bases + [f"{b}_{layer}" for b in bases for layer in range(5)]
    keys += [f"{b}_{split}" for b in bases for split in ("real", "synthetic")]
    keys += ["total_loss", "total_loss_weighted", "class_error", "time", "data_time"]
    keys += [f"metric_{i}" for i in range(max(0, n - len(keys)))]
    return keys[:n]


class PerKeyTensorboard(EventWriter):
    """detectron2's TensorboardXWriter.write: one add_scalar per key (the peer)."""

    def __init__(self, summary_writer) -> None:
        self._writer = summary_writer
        self._last_write = -1

    def write(self) -> None:
        storage = get_event_storage()
        for key, (value, itr) in storage.latest_with_smoothing_hint(WINDOW).items():
            if itr > self._last_write:
                self._writer.add_scalar(key, value, itr)
        self._last_write = storage.iter

    def close(self) -> None:
        self._writer.close()


class StorageReadOnly(EventWriter):
    """The baseline: what every writer pays to read the smoothed values from the storage."""

    def write(self) -> None:
        get_event_storage().latest_with_smoothing_hint(WINDOW)


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


def time_writers(makers: Dict[str, Callable[[], EventWriter]], keys: List[str], periods: int) -> Dict[str, List[float]]:
    """Seconds per ``write()`` of each writer over ``periods`` periods (after a warm-up one).

    All writers see the same storage state each period, in a rotating order, so machine noise
    hits them alike.
    """
    rng = np.random.default_rng(0)
    costs: Dict[str, List[float]] = {name: [] for name in makers}
    with EventStorage() as storage:
        writers = {name: make() for name, make in makers.items()}
        names = list(writers)
        for period in range(periods + 1):
            for _ in range(WINDOW):
                storage.put_scalars_bulk(keys, rng.random(len(keys)).tolist())
                storage.put_scalar("lr", 1e-4, smoothing_hint=False)
                storage.step()
            storage.iter -= 1  # write at the last iteration of the window, as PeriodicWriter does
            shift = period % len(names)
            for name in names[shift:] + names[:shift]:
                start = time.perf_counter()
                writers[name].write()
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


def candidates(root: str, keys: List[str]) -> Dict[str, Callable[[], EventWriter]]:
    from events.tensorboard_writer import TensorboardXWriter
    from events.wandb_writer import WandbWriter

    console_logger = logging.getLogger(METRICS_LOGGER_NAME)
    console_logger.propagate = False
    console_logger.addHandler(logging.FileHandler(os.path.join(root, "log.txt")))
    console_logger.setLevel(logging.INFO)

    def tbx_per_key():
        from tensorboardX import SummaryWriter

        return PerKeyTensorboard(SummaryWriter(os.path.join(root, "tbx-per-key")))

    def torch_per_key():
        from torch.utils.tensorboard import SummaryWriter

        return PerKeyTensorboard(SummaryWriter(os.path.join(root, "torch-per-key")))

    return {
        BASELINE: StorageReadOnly,
        CONSOLE: lambda: CommonMetricPrinter(max_iter=10**6),
        "metrics.json (JSONWriter, fsync)": lambda: JSONWriter(os.path.join(root, "metrics.json")),
        "TensorBoard, ours (1 event/step)": lambda: TensorboardXWriter(os.path.join(root, "tb")),
        "TensorBoard, detectron2 (tensorboardX add_scalar/key)": tbx_per_key,
        "TensorBoard, torch.utils.tensorboard add_scalar/key": torch_per_key,
        "W&B offline, ours": lambda: WandbWriter(
            "bench", run_dir=os.path.join(root, "wb"), mode="offline", system_metrics=False
        ),
        "W&B offline, log(step=iter)": lambda: StepAxisWandb(wandb_run(os.path.join(root, "wb2"), "peer")),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--periods", type=int, default=100)
    parser.add_argument("--keys", type=int, default=66)
    args = parser.parse_args()
    os.environ["WANDB_SILENT"] = "true"
    keys = loss_keys(args.keys)
    print(f"{len(keys) + 1} keys per write (incl. lr), {args.periods} periods of {WINDOW} steps\n")
    header = f"{'writer':55s} {'median ms':>9s} {'p90 ms':>7s} {'net ms':>7s}"
    header += "".join(f" {f'% of 20x{s}s':>12s}" for s in STEP_SECONDS)
    print(header)
    with tempfile.TemporaryDirectory() as root:
        costs = time_writers(candidates(root, keys), keys, args.periods)
    medians = {name: statistics.median(c) for name, c in costs.items()}
    baseline = medians[BASELINE]
    for name, c in costs.items():
        median, p90 = medians[name], float(np.percentile(c, 90))
        shares = "".join(f" {100 * median / (WINDOW * s):11.3f}%" for s in STEP_SECONDS)
        # The console line reads its own medians (loss keys only), not the smoothed dict.
        net = "n/a" if name == CONSOLE else f"{1e3 * (median - baseline):.3f}"
        print(f"{name:55s} {1e3 * median:9.3f} {1e3 * p90:7.3f} {net:>7s}{shares}")
    ours = medians["TensorBoard, ours (1 event/step)"] - baseline
    d2 = medians["TensorBoard, detectron2 (tensorboardX add_scalar/key)"] - baseline
    print("\nnet ms = median minus the baseline (the storage read that the scalar writers each do).")
    print(f"TensorBoard, net of the storage read: detectron2's per-key path costs {d2 / ours:.1f}x ours.")

if __name__ == "__main__":
    main()
