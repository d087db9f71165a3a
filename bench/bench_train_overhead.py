"""What all writers together cost a real training step: tools/train_net.py's demo trainer with
console, metrics.json, TensorBoard and W&B (offline) on, against the same run with the writers
off (TensorBoard and W&B disabled, a write period longer than the run).

Both runs build the trainer with train_net's own ``build_trainer`` (same config, seed, data and
hooks; evaluation and periodic checkpoints off so they do not blur the comparison) and train
``--iters`` iterations on one torch thread. Each run happens in a fresh process (no logging
handlers or W&B state left over from the previous one), alternating off/on ``--pairs`` times so
that load from other processes hits both alike (off-on, on-off, off-on, ...).

Two step times are reported, both without the first ``--warmup`` iterations:

* wall: time from one iteration's start to the next one's, so it includes every hook's
  ``after_step`` -- the writers run there, every WRITE_PERIOD iterations;
* ``time``: what IterationTimer puts in the storage. As in detectron2 it stops at the timer's
  own ``after_step``, before the writers run, so it shows the per-step telemetry (loss-dict
  reduction, grad norm) but not the writers themselves.

    python bench/bench_train_overhead.py [--iters 200] [--pairs 3] [--warmup 20]

Prints per-run means and the on/off ratio of the wall step time per pair (goal: < 1.02).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Dict, List

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

TRAIN_NET = os.path.join(REPO, "tools", "train_net.py")
DEMO_CONFIG = os.path.join(REPO, "configs", "demo.yaml")
WRITE_PERIOD = 20  # the demo's
COMMON = ["TEST.EVAL_PERIOD", "0", "SOLVER.CHECKPOINT_PERIOD", "0"]
MODES = {
    "on": ["TELEMETRY.WRITE_PERIOD", str(WRITE_PERIOD), "TENSORBOARD.ENABLED", "True", "WANDB.ENABLED", "True"],
    "off": ["TELEMETRY.WRITE_PERIOD", str(10**9), "TENSORBOARD.ENABLED", "False", "WANDB.ENABLED", "False"],
}


def one_run(mode: str, iters: int, warmup: int, output_dir: str) -> Dict[str, float]:
    """Train ``iters`` iterations in this process; return mean step times and start-up time."""
    import torch

    from engine.config import load_config
    from engine.hooks import HookBase

    torch.set_num_threads(1)
    spec = importlib.util.spec_from_file_location("train_net", TRAIN_NET)
    train_net = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train_net)

    class StepClock(HookBase):
        """perf_counter at the start of every iteration (after the timer's before_step)."""

        def __init__(self) -> None:
            self.starts: List[float] = []

        def before_step(self) -> None:
            self.starts.append(time.perf_counter())

    overrides = ["SOLVER.MAX_ITER", str(iters), "OUTPUT_DIR", output_dir] + COMMON + MODES[mode]
    cfg = load_config(DEMO_CONFIG, overrides)
    start = time.perf_counter()
    trainer, start_iter, _ = train_net.build_trainer(cfg, argparse.Namespace(resume=False))
    startup = time.perf_counter() - start
    clock = StepClock()
    trainer.register_hooks([clock])
    trainer.train(start_iter, iters)
    # starts[i + 1] - starts[i] is iteration i with all its hooks; the last one has no successor.
    wall = {i: b - a for i, (a, b) in enumerate(zip(clock.starts, clock.starts[1:])) if i >= warmup}
    timer = [value for value, itr in trainer.storage.history("time").values() if itr >= warmup]
    # Within the run: how much longer the iterations ending a write period take than the others
    # (robust to load drift between runs; in the "off" run the same split measures noise only).
    at_write = [t for i, t in wall.items() if (i + 1) % WRITE_PERIOD == 0]
    others = [t for i, t in wall.items() if (i + 1) % WRITE_PERIOD != 0]
    excess = statistics.median(at_write) - statistics.median(others)
    return {
        "wall_ms": 1e3 * statistics.fmean(wall.values()),
        "time_ms": 1e3 * statistics.fmean(timer),
        "write_excess_ms": 1e3 * excess,
        "write_excess_share": excess / (WRITE_PERIOD * statistics.median(others)),
        "startup_s": startup,
    }


def spawn_run(mode: str, iters: int, warmup: int) -> Dict[str, float]:
    """``one_run`` in a fresh interpreter, W&B offline and kept inside a temporary directory."""
    with tempfile.TemporaryDirectory(prefix=f"bench-train-{mode}-") as root:
        env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
        env.update(WANDB_MODE="offline", WANDB_SILENT="true", OMP_NUM_THREADS="1", NETRC=os.path.join(root, "netrc"))
        for name in ("WANDB_DIR", "WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
            env[name] = os.path.join(root, name.lower())
        command = [sys.executable, __file__, "--one-run", mode, "--iters", str(iters), "--warmup", str(warmup),
                   "--output-dir", os.path.join(root, "out")]
        result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise SystemExit(f"{mode} run failed (exit {result.returncode}):\n{result.stderr[-3000:]}")
        return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=200, help="iterations per run (a multiple of 20)")
    parser.add_argument("--pairs", type=int, default=3, help="off/on pairs, alternating")
    parser.add_argument("--warmup", type=int, default=20, help="first iterations left out")
    parser.add_argument("--one-run", choices=sorted(MODES), help=argparse.SUPPRESS)
    parser.add_argument("--output-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.warmup >= args.iters - 1:
        parser.error("--warmup must leave at least two iterations")

    if args.one_run:
        # Training logs to stdout too: the result is the last line.
        print(json.dumps(one_run(args.one_run, args.iters, args.warmup, args.output_dir)))
        return

    print(f"demo trainer, {args.iters} iterations per run ({args.warmup} warm-up left out), 1 thread, "
          f"write period {WRITE_PERIOD}; {args.pairs} off/on pairs")
    print(f"{'pair':>4} {'mode':>4} {'wall step ms':>13} {'time ms':>8} {'write-step excess ms':>21} "
          f"{'per period %':>13} {'start-up s':>11}")
    ratios, time_ratios, shares = [], [], {"on": [], "off": []}
    for pair in range(args.pairs):
        runs = {}
        # ABBA order: a drift in the machine's load favours neither mode.
        for mode in ("off", "on") if pair % 2 == 0 else ("on", "off"):
            runs[mode] = r = spawn_run(mode, args.iters, args.warmup)
            shares[mode].append(r["write_excess_share"])
            print(f"{pair:>4} {mode:>4} {r['wall_ms']:>13.2f} {r['time_ms']:>8.2f} {r['write_excess_ms']:>21.2f} "
                  f"{100 * r['write_excess_share']:>13.2f} {r['startup_s']:>11.2f}", flush=True)
        ratios.append(runs["on"]["wall_ms"] / runs["off"]["wall_ms"])
        time_ratios.append(runs["on"]["time_ms"] / runs["off"]["time_ms"])
    print("wall step on/off per pair: " + ", ".join(f"{r:.4f}" for r in ratios))
    print(f"median on/off ratio, wall step (writers included): {statistics.median(ratios):.4f} "
          f"(overhead {100 * (statistics.median(ratios) - 1):+.2f} %, goal < +2 %)")
    print(f"median on/off ratio, IterationTimer time:          {statistics.median(time_ratios):.4f}")
    print(f"median write-step excess per period, on: {100 * statistics.median(shares['on']):+.2f} % "
          f"(off, i.e. noise: {100 * statistics.median(shares['off']):+.2f} %)")


if __name__ == "__main__":
    main()
