"""Replot benchmark: a 100k-line metrics.json with 66 keys -> every figure, whole process.

Compares, in the same run and on the same file:

* ours:   ``python tools/vis_train_log.py --log-file metrics.json --output-dir D`` (all figures
          at 300 DPI, summary.csv/.md), timed as a whole process;
* pandas: DETR's ``util/plot_utils.plot_logs`` way -- ``pd.read_json(lines=True)``, then
          ``df.interpolate().ewm(com=0).mean().plot(...)`` -- for every numeric column, 9 panels
          per figure, saved at 300 DPI, also a whole process.

    python bench/bench_replot.py                 # generates /tmp/bench_replot/metrics.json once
    python bench/bench_replot.py --lines 20000 --repeat 1

It prints the median of ``--repeat`` whole-process runs of each, their ratio, and where our
time goes phase by phase.

pandas is a bench-only dependency (``pip install pandas``).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def metric_names() -> list:
    """The 66 keys our relation trainer logs: 9 loss terms x (final + 4 aux layers), real/synthetic
    splits, class errors, totals, lr, timings, grad norm, k_log per layer."""
    terms = [f"loss_{kind}_{branch}" for branch in ("subject", "object") for kind in ("ce", "bbox", "giou")]
    terms += ["loss_relation", "loss_bbox_relation", "loss_giou_relation"]
    names = [t + suffix for t in terms for suffix in ["", "_0", "_1", "_2", "_3"]]
    names += [f"{t}_{split}" for t in ("loss_relation", "loss_ce_subject", "loss_ce_object") for split in ("real", "synthetic")]
    names += ["class_error_subject", "class_error_object", "class_error_relation"]
    names += ["total_loss", "total_loss_weighted", "lr", "time", "data_time", "eta_seconds", "grad_norm"]
    names += [f"k_log_layer{n}" for n in range(1, 6)]
    assert len(names) == 66, len(names)
    return names


def generate(path: str, lines: int, seed: int = 0) -> None:
    """Write a detectron2-style metrics.json (JSONWriter: sort_keys, full-precision floats),
    with an evaluation record every 5000 iterations."""
    import numpy as np

    rng = np.random.default_rng(seed)
    names = metric_names()
    decay = np.exp(-np.arange(lines) / (lines / 4.0))
    scale = rng.uniform(0.2, 3.0, size=len(names))
    noise = rng.lognormal(0.0, 0.25, size=(lines, len(names)))
    values = (0.3 + decay[:, None]) * scale[None, :] * noise
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w") as handle:
        for iteration in range(lines):
            record = dict(zip(names, values[iteration].tolist()))
            record["lr"] = 1e-4 * (0.1 if iteration > 0.8 * lines else 1.0)
            record["iteration"] = iteration
            handle.write(json.dumps(record, sort_keys=True) + "\n")
            if iteration % 5000 == 4999:
                ap = 30.0 * (1 - decay[iteration]) + rng.normal(0, 0.5)
                evaluation = {"iteration": iteration, "bbox/AP": ap, "bbox/AP50": ap * 1.6, "SG/SGRecall@50": ap / 100,
                              "SG/SGMeanRecall@50": ap / 200, "validation/total_loss": float(values[iteration, names.index("total_loss")] * 1.1)}
                handle.write(json.dumps(evaluation, sort_keys=True) + "\n")
    os.replace(path + ".tmp", path)


def pandas_path(log: str, out_dir: str) -> None:
    """DETR's plot_logs approach on every numeric column (runs in its own process)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    os.makedirs(out_dir, exist_ok=True)
    df = pd.read_json(log, lines=True)
    columns = [c for c in df.columns if c != "iteration" and pd.api.types.is_numeric_dtype(df[c])]
    smoothed = df.interpolate().ewm(com=0).mean()
    for figure_index in range(math.ceil(len(columns) / 9)):
        chunk = columns[figure_index * 9: (figure_index + 1) * 9]
        fig, axs = plt.subplots(3, 3, figsize=(14, 9))
        for ax, column in zip(axs.flat, chunk):
            smoothed.plot(x="iteration", y=[column], ax=ax)
            ax.set_title(column)
        fig.tight_layout()
        fig.savefig(os.path.join(out_dir, f"figure_{figure_index}.png"), dpi=300)
        plt.close(fig)


def phases(log: str, out_dir: str) -> None:
    """Where our time goes, in one process (jobs=1): CPU seconds per phase."""
    started = [time.process_time()]

    def mark(name: str) -> None:
        now = time.process_time()
        print(f"  {name:<28} {now - started[0]:5.2f} s CPU")
        started[0] = now

    from events.readers import read_log

    mark("import readers")
    table = read_log(log)
    mark("read + assemble")
    from events.plotting import PlotOptions, plan_figures, render_figures, summarize

    summarize(table)
    mark("summary numbers")
    options = PlotOptions()
    specs = plan_figures([table], options)
    from events.plotting.style import matplotlib_figure

    matplotlib_figure()
    mark("import matplotlib")
    render_figures(specs, [table], out_dir, options, jobs=1)
    mark(f"{len(specs)} figures at {options.dpi} DPI")


def _timed(command: list) -> tuple:
    started = time.perf_counter()
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}")
    return elapsed, result.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=100_000)
    parser.add_argument("--data", default="/tmp/bench_replot")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=0, help="passed to vis_train_log.py (0 = its default)")
    parser.add_argument("--pandas-path", nargs=2, metavar=("LOG", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--phases", nargs=2, metavar=("LOG", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.pandas_path:
        pandas_path(*args.pandas_path)
        return
    if args.phases:
        phases(*args.phases)
        return

    log = os.path.join(args.data, f"metrics_{args.lines}.json")
    if not os.path.exists(log):
        print(f"generating {log} ...", flush=True)
        generate(log, args.lines)
    size_mb = os.path.getsize(log) / 1e6
    decoder = "orjson" if importlib.util.find_spec("orjson") else "json (stdlib)"
    print(f"{log}: {args.lines} lines, 66 keys, {size_mb:.0f} MB; decoder {decoder}; cpus {os.cpu_count()}; "
          f"load average {os.getloadavg()[0]:.1f}")

    ours_cmd = [sys.executable, "tools/vis_train_log.py", "--log-file", log, "--output-dir", os.path.join(args.data, "ours")]
    if args.jobs:
        ours_cmd += ["--jobs", str(args.jobs)]
    pandas_cmd = [sys.executable, __file__, "--pandas-path", log, os.path.join(args.data, "pandas")]
    ours, theirs = [], []
    for _ in range(args.repeat):
        elapsed, stdout = _timed(ours_cmd)
        ours.append(elapsed)
        figures = stdout.strip().splitlines()[-2]
        theirs.append(_timed(pandas_cmd)[0])
    print(figures)
    ours_median, theirs_median = statistics.median(ours), statistics.median(theirs)
    print(f"ours   (vis_train_log.py): median {ours_median:.2f} s  runs {', '.join(f'{t:.2f}' for t in ours)}")
    print(f"pandas (read_json + plot): median {theirs_median:.2f} s  runs {', '.join(f'{t:.2f}' for t in theirs)}")
    print(f"ratio pandas / ours: {theirs_median / ours_median:.1f}x")
    print("ours, phase by phase (one process):")
    print(_timed([sys.executable, __file__, "--phases", log, os.path.join(args.data, "phases")])[1], end="")


if __name__ == "__main__":
    main()
