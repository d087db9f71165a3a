"""``build_writers``: the writers a config asks for, each guarded so a failing one never stops
training.

Main process: console line, ``metrics.json``, TensorBoard (``TENSORBOARD.ENABLED``) and W&B
(``WANDB.ENABLED``, offline unless an API key is configured). Other ranks: the console line
only (their logger decides what is shown); files and the W&B run belong to the main process.
"""
from __future__ import annotations

import os
from typing import Any, Dict, List, Mapping, Optional

from omegaconf import DictConfig, OmegaConf

from engine import comm
from events.secret_redaction import redact_secrets
from events.writer_guard import build_guarded
from events.writers import CommonMetricPrinter, EventWriter, JSONWriter

METRICS_FILE = "metrics.json"


def build_writers(
    cfg: DictConfig,
    output_dir: Optional[str] = None,
    max_iter: Optional[int] = None,
    *,
    resume_iter: Optional[int] = None,
    run_config: Optional[Mapping[str, Any]] = None,
) -> List[EventWriter]:
    """Console, JSON, W&B and TensorBoard writers as ``cfg`` configures them.

    Args:
        cfg: the run's config (``TELEMETRY.*``, ``TENSORBOARD.*``, ``WANDB.*``, ``OUTPUT_DIR``).
        output_dir: where metrics.json, events and the W&B state go (default ``cfg.OUTPUT_DIR``).
        max_iter: for the console ETA (default ``cfg.SOLVER.MAX_ITER``).
        resume_iter: the iteration a resumed run starts at: metrics.json moves the crashed
            run's records >= it aside, TensorBoard purges its steps >= it, and W&B reopens the
            same run. None (fresh or resumed, not known yet): each writer reads the start from
            the trainer's ``EventStorage(start_iter)`` at its first write and does the same,
            W&B reopening the saved run only when the start is past 0.
        run_config: what TensorBoard (hparams + text) and W&B record as the run's config
            (nested dict, e.g. ``vars(args)`` of a script); default: ``cfg``.

    Returns:
        ``GuardedWriter``s (each disables itself on failure unless
        ``TELEMETRY.STRICT_WRITERS``). W&B comes before TensorBoard so it reads the storage's
        histograms before TensorBoard clears them.
    """
    output_dir = output_dir or cfg.OUTPUT_DIR
    max_iter = cfg.SOLVER.MAX_ITER if max_iter is None else max_iter
    window = cfg.TELEMETRY.WINDOW_SIZE
    strict = cfg.TELEMETRY.STRICT_WRITERS
    candidates = [("CommonMetricPrinter", lambda: CommonMetricPrinter(max_iter, window_size=window))]

    if comm.is_main_process():
        os.makedirs(output_dir, exist_ok=True)
        # WandbWriter redacts it itself.
        config = OmegaConf.to_container(cfg, resolve=True) if run_config is None else dict(run_config)
        tb_enabled = cfg.TENSORBOARD.ENABLED
        candidates.append(
            (
                "JSONWriter",
                lambda: JSONWriter(os.path.join(output_dir, METRICS_FILE), window, resume_from=resume_iter),
            )
        )
        if cfg.WANDB.ENABLED:
            candidates.append(("WandbWriter", lambda: _wandb_writer(cfg, output_dir, config, resume_iter, tb_enabled)))
        if tb_enabled:
            tb_config = redact_secrets(config)[0]
            candidates.append(
                ("TensorboardXWriter", lambda: _tensorboard_writer(cfg, output_dir, tb_config, resume_iter))
            )

    writers = [build_guarded(name, factory, strict=strict) for name, factory in candidates]
    return [w for w in writers if w is not None]


def _tensorboard_writer(cfg: DictConfig, output_dir: str, config: Dict[str, Any], resume_iter: Optional[int]):
    from events.tensorboard_writer import TensorboardXWriter

    return TensorboardXWriter(
        cfg.TENSORBOARD.LOG_DIR or output_dir,
        cfg.TELEMETRY.WINDOW_SIZE,
        config=config,
        purge_step=resume_iter,
    )


def _wandb_writer(
    cfg: DictConfig, output_dir: str, config: Dict[str, Any], resume_iter: Optional[int], tb_enabled: bool
):
    from events.wandb_writer import STATE_FILE_NAME, WandbWriter

    wandb_cfg = cfg.WANDB
    return WandbWriter(
        wandb_cfg.PROJECT,
        run_dir=wandb_cfg.DIR or output_dir,
        config=config,
        entity=wandb_cfg.ENTITY,
        name=wandb_cfg.NAME,
        group=wandb_cfg.GROUP,
        tags=list(wandb_cfg.TAGS),
        mode=wandb_cfg.MODE,
        run_id=wandb_cfg.RUN_ID,
        resume=None if resume_iter is None else True,
        resume_iter=resume_iter,
        # Next to the checkpoints, wherever WANDB.DIR points.
        state_file=os.path.join(output_dir, STATE_FILE_NAME),
        window_size=cfg.TELEMETRY.WINDOW_SIZE,
        clear_histograms=not tb_enabled,
    )

