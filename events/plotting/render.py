"""Building and saving planned figures, one process or several.

Saving a 300 DPI PNG is the expensive part of replotting (rasterising millions of pixels), so
the command-line tool renders figures in forked worker processes, which share the parsed tables
without copying them. Library callers (the trainer) render in-process: forking a process that
runs CUDA or threads is unsafe.
"""
from __future__ import annotations

import logging
import multiprocessing
import os
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from typing import Any, Callable, Dict, List, Optional, Sequence

from events.readers.table import LogTable

from .options import FigureSpec, PlotOptions
from .style import base_rc, font_settings, matplotlib_figure, rasterize, save_figure, write_png

__all__ = ["render_figures", "figure_context", "default_jobs", "FIGURE_FORMATS"]

_LOGGER = logging.getLogger(__name__)

FIGURE_FORMATS = ("png", "svg", "pdf")

# Set in the parent just before forking, read by the workers (fork shares it copy-on-write).
_JOB: Dict[str, Any] = {}


class figure_context:
    """rcParams for our figures (and a CJK font when labels need one), restored on exit.

    ``note`` says when labels hold CJK characters and no CJK font is installed.
    """

    def __init__(self, tables: Sequence[LogTable], options: PlotOptions) -> None:
        texts = [options.title] + [n for t in tables for n in list(t.train) + list(t.val)] + [t.label for t in tables]
        fonts, self.note = font_settings(texts)
        self._rc = {**base_rc(), **fonts}
        self._stack = ExitStack()

    def __enter__(self) -> "figure_context":
        import matplotlib

        self._stack.enter_context(matplotlib.rc_context(self._rc))
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()


def _figure_path(spec: FigureSpec, out_dir: str, options: PlotOptions) -> str:
    return os.path.join(out_dir, f"{spec.name}.{options.fmt}")


def _render_sequentially(specs: Sequence[FigureSpec], out_dir: str, options: PlotOptions) -> List[str]:
    """Build and draw each figure in turn; PNG files are compressed by a writer thread meanwhile
    (PIL releases the GIL while compressing, so drawing the next figure goes on)."""
    paths = [_figure_path(spec, out_dir, options) for spec in specs]
    if options.fmt != "png":
        return [save_figure(spec.build(), path, options.dpi, options.fmt) for spec, path in zip(specs, paths)]
    with ThreadPoolExecutor(max_workers=1) as writer:
        pending = [writer.submit(write_png, rasterize(spec.build(), options.dpi), path, options.dpi)
                   for spec, path in zip(specs, paths)]
        return [future.result() for future in pending]


def _render_one(index: int) -> str:
    spec, options = _JOB["specs"][index], _JOB["options"]
    with _JOB["context"]:
        return save_figure(spec.build(), _figure_path(spec, _JOB["out_dir"], options), options.dpi, options.fmt)


def render_figures(specs: Sequence[FigureSpec], tables: Sequence[LogTable], out_dir: str, options: PlotOptions,
                   jobs: int = 1, notify: Callable[[str], None] = _LOGGER.warning,
                   meanwhile: Optional[Callable[[], None]] = None) -> List[str]:
    """Build and save every figure of ``specs`` into ``out_dir``; returns the paths written.

    ``jobs`` > 1 renders in that many forked processes where fork exists (Linux, macOS).
    ``notify`` receives the note about missing CJK fonts, if any. ``meanwhile`` is called in
    this process while the workers render (with one job: before rendering), so that other work
    (the command line's summary numbers) overlaps the drawing.
    """
    if options.fmt not in FIGURE_FORMATS:
        raise ValueError(f"unknown figure format {options.fmt!r}; use one of {', '.join(FIGURE_FORMATS)}")
    os.makedirs(out_dir, exist_ok=True)
    context = figure_context(tables, options)
    if context.note:
        notify(context.note)
    jobs = min(jobs, len(specs))
    if jobs > 1 and "fork" in multiprocessing.get_all_start_methods():
        matplotlib_figure()  # import matplotlib once in the parent: the forked workers share it
        _JOB.update(specs=list(specs), out_dir=out_dir, options=options, context=context)
        # One figure per task, heaviest first, to whichever worker is free: the last to finish
        # are small figures, so the workers end together.
        order = sorted(range(len(specs)), key=lambda index: -specs[index].panels)
        try:
            with multiprocessing.get_context("fork").Pool(jobs) as pool:
                rendering = pool.map_async(_render_one, order, chunksize=1)
                if meanwhile is not None:
                    meanwhile()
                by_index = dict(zip(order, rendering.get()))
        finally:
            _JOB.clear()
        return [by_index[i] for i in range(len(specs))]
    if meanwhile is not None:
        meanwhile()
    with context:
        return _render_sequentially(specs, out_dir, options)


def _runnable_now() -> Optional[int]:
    """Tasks running or ready to run on this machine now (``procs_running`` of /proc/stat,
    this process included); None where there is no /proc/stat."""
    try:
        with open("/proc/stat", "rb") as handle:
            for line in handle:
                if line.startswith(b"procs_running "):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def _busy_elsewhere() -> float:
    """CPUs that other processes keep busy: the fewest runnable tasks over a few samples 2 ms
    apart, less this process (a short-lived task is not a CPU hog), else the 1-minute load
    average. The load average lags by about a minute: right after a heavy job it reads as
    busy a machine that is idle."""
    samples = []
    for attempt in range(4):
        if attempt:
            time.sleep(0.002)
        runnable = _runnable_now()
        if runnable is None:
            break
        samples.append(runnable)
    if samples:
        return max(0, min(samples) - 1)
    try:
        return os.getloadavg()[0]
    except OSError:  # pragma: no cover - no load average on this platform
        return 0.0


def default_jobs() -> int:
    """Processes the command-line tool uses: one per idle CPU (see ``_busy_elsewhere``), at
    least 1, at most 4. On a busy machine extra processes only add fork and transfer costs."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS
        cpus = os.cpu_count() or 1
    return max(1, min(4, int(cpus - _busy_elsewhere() + 0.5)))
