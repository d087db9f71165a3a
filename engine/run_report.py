"""The interactive ``report.html`` a trainer writes into its output folder at the end of training
(beside ``loss_graph.png``), from the run's own ``metrics.json`` and ``config.yaml``. Every
trainer of this repository calls ``write_run_report``; plotly is optional, and without it the
trainer logs one line naming the extra and goes on."""
from __future__ import annotations

import logging
import os
from typing import Optional

__all__ = ["write_run_report"]

logger = logging.getLogger(__name__)


def write_run_report(output_dir: str, log_name: str = "metrics.json") -> Optional[str]:
    """Write ``output_dir/report.html`` from ``output_dir/log_name``; returns its path, or None
    when plotly is missing or the log cannot be read (said in one logged line, never raised:
    a report must not fail a finished training)."""
    from events.plotting import PlotOptions, PlottingUnavailable, write_html_report
    from events.readers import LogReadError, read_log

    path = os.path.join(output_dir, "report.html")
    try:
        table = read_log(os.path.join(output_dir, log_name))
        write_html_report([table], path, PlotOptions())
    except (PlottingUnavailable, LogReadError, OSError) as error:
        logger.warning("No report.html: %s", error)
        return None
    logger.info("Interactive report written to %s", path)
    return path
