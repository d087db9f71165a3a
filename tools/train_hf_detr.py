#!/usr/bin/env python
"""Train Hugging Face transformers' DetrForObjectDetection on the demo's scenes with the plain-loop telemetry.

    python tools/train_hf_detr.py                                  # configs/hf_detr.yaml
    python tools/train_hf_detr.py OUTPUT_DIR out SOLVER.MAX_ITER 60
    python tools/train_hf_detr.py OUTPUT_DIR out --resume          # after a crash or Ctrl-C

A DETR that nobody here wrote, trained by a hand-written loop (DETR ``main.py`` style) that
calls ``engine.loop.TrainingTelemetry.step`` once per iteration with the model's own
``outputs.loss_dict``. The model is built tiny in code (a small random ResNet backbone, nothing
downloaded) and trains on CPU. Same conventions as ``tools/train_net.py``: ``--config-file``,
trailing ``KEY VALUE`` overrides, ``OUTPUT_DIR``, ``--resume``. Needs ``pip install
'detr-telemetry[hf]'``.
"""
from __future__ import annotations

import logging
import os
import sys

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from engine import comm  # noqa: E402
from engine.checkpoint import Checkpointer, announce_if_complete  # noqa: E402
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
from engine.demo.data import build_train_loader  # noqa: E402
from engine.run_report import write_run_report  # noqa: E402
from engine.demo.hf_detr import (  # noqa: E402
    HfDetrTrainConfig,
    build_hf_detr,
    build_hf_detr_config,
    hf_detr_weight_dict,
    to_hf_labels,
)
from engine.graceful_stop import GracefulStop, TrainingInterrupted, exit_code_of  # noqa: E402
from engine.loop import TrainingTelemetry  # noqa: E402
from engine.solver import build_optimizer  # noqa: E402
from events.writer_guard import MissingExtraError  # noqa: E402

DEFAULT_CONFIG = os.path.join(REPO, "configs", "hf_detr.yaml")

logger = logging.getLogger("train_hf_detr")


def main(args) -> int:
    # Ctrl-C / SIGTERM from here on stop training after the current step, with a checkpoint.
    with GracefulStop() as stop:
        try:
            cfg = load_config(args.config_file, list(args.opts) + output_dir_override(args), schema=HfDetrTrainConfig)
            build_hf_detr_config(cfg)  # every config mistake is reported before anything is written
        except (ConfigError, MissingExtraError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        if announce_if_complete(cfg.OUTPUT_DIR, cfg.SOLVER.MAX_ITER, args.resume):
            return 0
        try:
            train(cfg, args.resume, stop)
        except FloatingPointError as e:
            # Every rank raises at the same iteration; what was logged before is on disk.
            print(f"error: {e}", file=sys.stderr)
            return 1
        except TrainingInterrupted as e:
            # The telemetry closed on the way out (everything logged is on disk) after the
            # checkpoint of the last step was saved.
            print(
                f"{e.signal_name}: training stopped after iteration {e.iteration}; "
                f"resume with: {resume_command(cfg, comm.get_world_size())}",
                file=sys.stderr,
            )
            return e.exit_code
    return 0


def train(cfg, resume: bool, stop: GracefulStop) -> None:
    """The loop: data -> HF model (loss inside) -> backward -> telemetry.step -> optimizer step."""
    device = torch.device(cfg.MODEL.DEVICE)
    init_distributed_from_env()
    rank, world_size = comm.get_rank(), comm.get_world_size()
    output_dir = cfg.OUTPUT_DIR
    # log.txt, archive of an earlier run, seed
    default_setup(output_dir, cfg.SEED, resume=resume, command=command_line(cfg))
    one_cpu_thread_for_tiny_models(device)

    model = build_hf_detr(cfg).to(device)
    optimizer, scheduler = build_optimizer(cfg, model)
    checkpointer = Checkpointer(model, output_dir, optimizer=optimizer, scheduler=scheduler)
    checkpoint = checkpointer.latest_checkpoint() if resume else None
    state = checkpointer.load(checkpoint)["telemetry"] if checkpoint else None
    if comm.is_main_process():
        dump_config(cfg, os.path.join(output_dir, "config.yaml"))
    train_model = model
    if world_size > 1:
        train_model = torch.nn.parallel.DistributedDataParallel(model)

    solver, max_iter = cfg.SOLVER, cfg.SOLVER.MAX_ITER
    with TrainingTelemetry.from_config(
        cfg, weight_dict=hf_detr_weight_dict(cfg), state=state, prepare_output=False
    ) as telemetry:
        # Batch i is a pure function of i, so a resumed run sees the batches it would have seen.
        loader = build_train_loader(cfg, rank, world_size, start_iter=telemetry.iter)
        for iteration, (images, targets) in zip(range(telemetry.iter, max_iter), telemetry.timed(loader)):
            outputs = train_model(pixel_values=images.to(device), labels=to_hf_labels(targets, device))
            optimizer.zero_grad(set_to_none=True)
            outputs.loss.backward()
            scalars = {}
            if solver.CLIP_GRAD_NORM > 0:
                scalars["grad_norm"] = torch.nn.utils.clip_grad_norm_(model.parameters(), solver.CLIP_GRAD_NORM)
            # Before the optimizer step: a NaN loss stops training before it reaches the weights.
            telemetry.step(outputs.loss_dict, lr=optimizer.param_groups[0]["lr"], **scalars)
            optimizer.step()
            scheduler.step()
            done, stopping = iteration + 1 == max_iter, stop.should_stop()  # every rank asks
            if done or stopping or (solver.CHECKPOINT_PERIOD > 0 and (iteration + 1) % solver.CHECKPOINT_PERIOD == 0):
                name = "model_final" if done else f"model_{iteration:07d}"
                checkpointer.save(name, telemetry=telemetry.state_dict())
            if stopping:
                raise stop.interrupted(iteration)
    logger.info("Finished at iteration %d; outputs in %s", max_iter, output_dir)
    if comm.is_main_process():
        write_run_report(output_dir)
    comm.synchronize()


if __name__ == "__main__":
    parser = default_argument_parser(__doc__.splitlines()[0], default_config=DEFAULT_CONFIG)
    parser.epilog = "Examples:\n" + "\n".join(line for line in __doc__.splitlines() if "python tools/" in line)
    args = parser.parse_args()
    sys.exit(exit_code_of(lambda: main(args)))
