#!/usr/bin/env python
"""Train the demo relation DETR on synthetic scenes with every telemetry hook and writer on.

    python tools/train_net.py --config-file configs/demo.yaml
    python tools/train_net.py --config-file configs/demo.yaml --resume     # after a crash or Ctrl-C
    torchrun --nproc_per_node 2 tools/train_net.py --config-file configs/demo.yaml

This script is also the reference for wiring the telemetry into your own trainer: build the
model, criterion and data, then register the hooks in the order below (PeriodicWriter last).
The output directory receives log.txt, metrics.json, TensorBoard events, a W&B offline run,
checkpoints, config.yaml, train_history.json, loss_graph.png and report.html. Ctrl-C or SIGTERM stops after
the current step with every writer flushed and a checkpoint of that step (exit 130 / 143).
"""
from __future__ import annotations

import logging
import os
import sys
from typing import Any, Dict, Iterator

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from criterion import build_relation_criterion  # noqa: E402
from engine import comm  # noqa: E402
from engine.checkpoint import Checkpointer, PeriodicCheckpointer, announce_if_complete, latest_checkpoint  # noqa: E402
from engine.config import ConfigError, dump_config, load_config  # noqa: E402
from engine.defaults import (  # noqa: E402
    command_line,
    default_argument_parser,
    default_setup,
    init_distributed_from_env,
    one_cpu_thread_for_tiny_models,
    output_dir_override,
    resume_command,
)
from engine.demo.data import build_train_loader, build_val_loader, predicate_counts  # noqa: E402
from engine.demo.model import build_demo_model  # noqa: E402
from engine.evaluation import evaluate_loss  # noqa: E402
from engine.graceful_stop import GracefulStop, TrainingInterrupted, exit_code_of  # noqa: E402
from engine.hooks import EvalHook, GradientClipper, IterationTimer, LRScheduler, PeriodicWriter  # noqa: E402
from engine.metrics import LossDictReducer  # noqa: E402
from engine.param_monitor import ParameterMonitor  # noqa: E402
from engine.run_history import RunHistory  # noqa: E402
from engine.run_report import write_run_report  # noqa: E402
from engine.solver import build_optimizer  # noqa: E402
from engine.train_loop import SimpleTrainer  # noqa: E402
from engine.writer_builder import build_writers  # noqa: E402

logger = logging.getLogger("train_net")


def to_device(loader, device: torch.device) -> Iterator:
    """Batches ``(images [B, 3, S, S], targets)`` moved to ``device``."""
    for images, targets in loader:
        yield images.to(device), [
            {k: v.to(device) if torch.is_tensor(v) else v for k, v in target.items()} for target in targets
        ]


def write_loss_graph(output_dir: str) -> None:
    """``loss_graph.png`` (train and validation loss, 300 DPI) through the replot tool's code."""
    from events.plotting import plot_train_val_loss
    from events.readers import read_log

    table = read_log(os.path.join(output_dir, "metrics.json"))
    path = plot_train_val_loss(table, os.path.join(output_dir, "loss_graph.png"), dpi=300)
    logger.info("Loss graph written to %s", path)


def main(args) -> int:
    # Ctrl-C / SIGTERM from here on stop training after the current step, with a checkpoint.
    with GracefulStop() as stop:
        try:
            cfg = load_config(args.config_file, list(args.opts) + output_dir_override(args))
            if announce_if_complete(cfg.OUTPUT_DIR, cfg.SOLVER.MAX_ITER, args.resume):
                return 0
            trainer, start_iter, resumed = build_trainer(cfg, args)
        except ConfigError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        return run(trainer, cfg, args.config_file, start_iter, resumed, stop)


def build_trainer(cfg, args):
    """Model, criterion, data, optimizer, checkpoint state and hooks, in the order they depend
    on each other. Returns (trainer, start iteration, whether a checkpoint was resumed).

    Everything a config value can make fail is built before the output directory is touched, so
    a bad value is a ``ConfigError`` that leaves no trace there."""
    try:
        device = torch.device(cfg.MODEL.DEVICE)
    except RuntimeError as e:
        raise ConfigError(f"MODEL.DEVICE={cfg.MODEL.DEVICE!r} is not a torch device: {e}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"MODEL.DEVICE={cfg.MODEL.DEVICE!r} but torch sees no CUDA device; use MODEL.DEVICE cpu")
    init_distributed_from_env()
    rank, world_size = comm.get_rank(), comm.get_world_size()
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", comm.get_local_rank())  # one GPU per torchrun process
    train_data = build_train_loader(cfg, rank, world_size)
    val_loader = build_val_loader(cfg, rank, world_size)
    counts = None
    if cfg.MODEL.DETR.REWEIGHT_RELATIONS:
        counts = predicate_counts(train_data.datasets.values(), cfg.MODEL.DETR.NUM_REL_CLASSES)
    criterion = build_relation_criterion(
        cfg.MODEL.DETR, multi_dataset=cfg.DATASETS.MULTI_DATASET, predicate_counts=counts
    )

    output_dir = cfg.OUTPUT_DIR
    default_setup(output_dir, cfg.SEED, resume=args.resume, command=command_line(cfg))
    one_cpu_thread_for_tiny_models(device)

    model = build_demo_model(cfg).to(device)
    optimizer, scheduler = build_optimizer(cfg, model)
    checkpointer = Checkpointer(model, output_dir, optimizer=optimizer)

    # Resume: the checkpoint fixes the start iteration, which the data stream and writers follow.
    checkpoint = checkpointer.latest_checkpoint() if args.resume else None
    start_iter = 0
    extra: Dict[str, Any] = {}
    if checkpoint is not None:
        extra = checkpointer.load(checkpoint)
        start_iter = int(extra["trainer"]["iteration"]) + 1
    elif args.resume:
        logger.info("--resume: no checkpoint in %s, starting from iteration 0", output_dir)
    if comm.is_main_process():
        dump_config(cfg, os.path.join(output_dir, "config.yaml"))

    train_model = model
    if world_size > 1:
        train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    train_data.start_iter = start_iter  # batch i is a pure function of i: resume replays the stream
    loader = to_device(train_data, device)
    telemetry = cfg.TELEMETRY
    trainer = SimpleTrainer(
        train_model,
        loader,
        optimizer,
        criterion,
        criterion.weight_dict,
        deferred_metrics=telemetry.DEFERRED_REDUCTION,
        metrics_period=telemetry.WRITE_PERIOD,
    )
    val_reducer = LossDictReducer(criterion.weight_dict)

    def validation() -> Dict[str, Dict[str, float]]:
        values = evaluate_loss(
            train_model, criterion, to_device(val_loader, device), reducer=val_reducer, iteration=trainer.iter
        )
        return {"validation": values}

    max_iter = cfg.SOLVER.MAX_ITER
    writers = build_writers(cfg, output_dir, max_iter, resume_iter=start_iter if args.resume else None)
    trainer.register_hooks(
        [
            IterationTimer(),
            LRScheduler(scheduler=scheduler),
            ParameterMonitor.from_config(cfg),
            GradientClipper(cfg.SOLVER.CLIP_GRAD_NORM) if cfg.SOLVER.CLIP_GRAD_NORM > 0 else None,
            EvalHook(cfg.TEST.EVAL_PERIOD, validation),
            PeriodicWriter(writers, period=telemetry.WRITE_PERIOD),
            # Last: a checkpoint at iteration i is taken after i's metrics are on disk, so a
            # kill between the two never loses a record from before the checkpoint.
            PeriodicCheckpointer(checkpointer, cfg.SOLVER.CHECKPOINT_PERIOD),
        ]
    )
    if extra:
        trainer.load_state_dict(extra["trainer"])
    return trainer, start_iter, checkpoint is not None


def run(trainer: SimpleTrainer, cfg, config_file: str, start_iter: int, resumed: bool, stop: GracefulStop) -> int:
    """Train to ``SOLVER.MAX_ITER``, keep train_history.json, draw loss_graph.png and report.html at the end.

    Returns the exit code: 0, 1 (non-finite values) or 128 + signal (stopped by Ctrl-C/SIGTERM).
    """
    output_dir = cfg.OUTPUT_DIR
    history = None
    if comm.is_main_process():
        history = RunHistory(output_dir, config_file, start_iter, resumed, command_line(cfg))

    def final_values() -> Dict[str, Any]:
        storage = trainer.storage
        return storage.latest_with_smoothing_hint(cfg.TELEMETRY.WINDOW_SIZE) if storage else {}

    try:
        trainer.train(start_iter, cfg.SOLVER.MAX_ITER, stop=stop)
    except FloatingPointError as e:
        # Every rank raises at the same iteration; what was logged before is on disk.
        if history:
            history.finish("non-finite values", final_values(), error=str(e))
        print(f"error: training stopped at iteration {trainer.iter}: {e}", file=sys.stderr)
        return 1
    except TrainingInterrupted as e:
        # The writers are flushed and closed and the step's checkpoint saved (after_train hooks).
        checkpoint = latest_checkpoint(output_dir)
        message = (
            f"{e.signal_name}: training stopped after iteration {e.iteration}; checkpoint saved to "
            f"{checkpoint}; resume with: {resume_command(cfg, comm.get_world_size())}"
        )
        if history:
            history.finish("interrupted", final_values(), error=message)
            print(message, file=sys.stderr)
        return e.exit_code
    except BaseException as e:
        if history:
            history.finish("crashed", final_values(), error=f"{type(e).__name__}: {e}")
        raise
    if history:
        history.finish("completed", final_values())
        write_loss_graph(output_dir)
        write_run_report(output_dir)
    comm.synchronize()
    return 0


if __name__ == "__main__":
    args = default_argument_parser(__doc__.splitlines()[0]).parse_args()
    sys.exit(exit_code_of(lambda: main(args)))
