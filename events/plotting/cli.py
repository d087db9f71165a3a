"""The command line of tools/vis_train_log.py: read logs, print and save a summary, draw figures.

Exit status: 0 on success, 2 when a log cannot be read or an option is wrong (one ``error:``
line on stderr, never a traceback).
"""
from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from typing import List, Optional, Sequence

from events.readers import LogReadError, LogTable, find_logs, log_label, read_runs, select_run, sniff_file
from events.readers.table import X_AXES

from .figures import filter_keys, plan_figures
from .html_report import write_html_report
from .options import PlotOptions
from .render import FIGURE_FORMATS, default_jobs, render_figures
from .smoothing import parse_smooth
from .style import PlottingUnavailable
from .summary import RunSummary, format_summary, summarize, write_summary

__all__ = ["main", "build_parser"]

_QUICK_FIGURES = ("overview", "train_vs_val")


class _UsageError(Exception):
    pass


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vis_train_log.py",
        description="Replot a training log (detectron2 log.txt / metrics.json, DETR log.txt, MMDetection "
        ".log.json, MMEngine text log / scalars.json, PyTorch Lightning metrics.csv, CSV/JSONL, TensorBoard "
        "events): figures + summary numbers.",
    )
    parser.add_argument("--log-file", help="log file, or a run folder holding one")
    parser.add_argument("--compare", nargs="+", default=[], metavar="LOG", help="more logs drawn on shared axes, one colour per log")
    parser.add_argument("--output-dir", default=None, help="where figures and summary go (default: training_plots/; "
                        "with --html: the report's folder, and no PNGs unless given)")
    parser.add_argument("--html", metavar="FILE", help="write one self-contained interactive report (needs the report extra)")
    parser.add_argument("--format", default="png", choices=FIGURE_FORMATS, help="figure format (default: png)")
    parser.add_argument("--dpi", type=int, default=300, help="raster resolution (default: 300)")
    parser.add_argument("--keys", nargs="+", default=[], metavar="GLOB", help="only these series, e.g. 'loss_ce*' 'bbox/*'")
    parser.add_argument("--smooth", default="auto", help="auto | none | N (rolling mean of N points) | ema:W (TensorBoard's debiased EMA)")
    parser.add_argument("--log-scale", action="store_true", help="log y axis for losses")
    parser.add_argument("--x", default="iter", choices=X_AXES, help="x axis: iteration, epoch or wall-clock time")
    parser.add_argument("--run", default="last", help="which run of a file with several: last (default), all, or its number (1 = first)")
    parser.add_argument("--title", default="", help="text put before every figure title")
    parser.add_argument("--list", nargs="?", const="outputs", metavar="DIR", help="list the logs under DIR (default: outputs) and exit")
    parser.add_argument("--latest", nargs="?", const="outputs", metavar="DIR", help="replot the most recently written log under DIR (default: outputs)")
    parser.add_argument("--quick", action="store_true", help="only the overview and train-vs-validation figures")
    parser.add_argument("--jobs", type=int, default=0, help="processes for decoding big logs and rendering figures (default: one per idle CPU, at most 4)")
    return parser


def _list_logs(root: str) -> int:
    if not os.path.isdir(root):
        raise _UsageError(f"{root}: no such folder")
    logs = find_logs(root)
    if not logs:
        print(f"no training logs under {root}")
        return 0
    print(f"{'modified':<16}  {'size':>9}  {'format':<18}  path")
    for log in logs:
        try:
            fmt = sniff_file(log.path)
        except LogReadError:  # emptied or removed since it was found
            fmt = "unreadable"
        stamp = datetime.datetime.fromtimestamp(log.modified).strftime("%Y-%m-%d %H:%M")
        print(f"{stamp:<16}  {log.size / 1024:>8.0f}K  {fmt:<18}  {log.path}")
    return 0


def _read(paths: Sequence[str], run: str, jobs: int) -> List[LogTable]:
    tables: List[LogTable] = []
    # Legends name runs by folder or file (log_label); where two would read the same, by path.
    unique = len({log_label(p) for p in paths}) == len(paths)
    for path in paths:
        runs = read_runs(path, jobs=jobs)
        label = runs[0].label if unique else path
        if run == "all":
            for table in runs:
                table.label = f"{label} run {table.run.number}" if table.run else label
            tables += runs
        else:
            table = select_run(runs, run)
            table.label = label if len(runs) == 1 else f"{label} (run {table.run.number if table.run else 1} of {len(runs)})"
            tables.append(table)
        skipped = runs[0].skipped.summary(path)
        if skipped:
            print(skipped)
    return tables


def _check_x_axis(tables: Sequence[LogTable], axis: str) -> None:
    if axis == "iter":
        return
    for table in tables:
        if axis not in table.axes or len(table.axes[axis]) == 0:
            what = "epoch numbers" if axis == "epoch" else "timestamps or per-iteration times"
            raise _UsageError(f"{table.source} has no {what}; use --x iter")


def _run(args: argparse.Namespace) -> int:
    if args.list:
        return _list_logs(args.list)
    paths = ([args.log_file] if args.log_file else []) + list(args.compare)
    if args.latest:
        logs = find_logs(args.latest) if os.path.isdir(args.latest) else []
        if not logs:
            raise _UsageError(f"{args.latest}: no training logs found")
        paths.insert(0, logs[0].path)
    if not paths:
        raise _UsageError("give --log-file LOG (or --compare LOG..., --latest [DIR], --list [DIR])")
    if args.run not in ("last", "all"):
        try:
            int(args.run)
        except ValueError:
            raise _UsageError(f"--run {args.run!r}: use last, all or a run number") from None
    if args.dpi <= 0:
        raise _UsageError("--dpi must be positive")
    try:
        smooth = parse_smooth(args.smooth)
    except ValueError as error:
        raise _UsageError(str(error)) from None

    started = time.perf_counter()
    jobs = args.jobs or default_jobs()
    tables = filter_keys(_read(paths, args.run, jobs), args.keys)
    if not any(t.train or t.val for t in tables):
        raise _UsageError(f"no series match --keys {' '.join(args.keys)}")
    _check_x_axis(tables, args.x)

    options = PlotOptions(x=args.x, smooth=smooth, log_scale=args.log_scale, title=args.title, dpi=args.dpi, fmt=args.format)
    specs = plan_figures(tables, options)
    if args.quick:
        specs = [spec for spec in specs if spec.name in _QUICK_FIGURES]
    summary_files: List[str] = []
    summaries: List[RunSummary] = []
    # With --html alone: the report and the summary beside it, no PNGs.
    out_dir = args.output_dir or (os.path.dirname(os.path.abspath(args.html)) if args.html else "training_plots")

    def summarize_runs() -> None:  # runs while the figures are drawn in other processes
        summaries.extend(summarize(table, smooth) for table in tables)
        for run_summary in summaries:
            print(format_summary(run_summary), flush=True)
        summary_files.extend(write_summary(summaries, out_dir))

    if args.html and not args.output_dir:
        summarize_runs()
        written: List[str] = []
    else:
        written = render_figures(specs, tables, out_dir, options, jobs=jobs, notify=print, meanwhile=summarize_runs)
    if args.html:
        print(f"wrote {write_html_report(tables, args.html, options, summaries)}")
    csv_path, md_path = summary_files
    names = ", ".join(os.path.basename(path) for path in written)
    if written or not args.html:
        print(f"wrote {len(written)} figure(s) to {out_dir}/: {names}")
    print(f"summary: {csv_path}, {md_path} ({time.perf_counter() - started:.1f}s)")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the tool; returns the exit status (see the module docstring)."""
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except (LogReadError, _UsageError, PlottingUnavailable) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # e.g. an output folder that cannot be written
        print(f"error: {error.filename or ''}: {error.strerror or error}", file=sys.stderr)
        return 2
