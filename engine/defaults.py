"""What every training script repeats: the argument parser, distributed start-up from
``torchrun``'s environment, and the output-directory set-up (logger, dumped config, seed)."""
from __future__ import annotations

import argparse
import datetime
import logging
import os
import random
import shlex
import sys
from typing import Any, List, Mapping, Optional, Tuple, Union

import numpy as np
import torch
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf

from engine import comm
from engine.logger import setup_logger
from events.secret_redaction import redact_argv

logger = logging.getLogger(__name__)


class _OptionsAnywhereParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose options may also follow the trailing ``KEY VALUE`` overrides:
    ``... SOLVER.MAX_ITER 50 --resume`` means ``... --resume SOLVER.MAX_ITER 50`` (plain argparse
    would take ``--resume`` for a config key). A ``--option`` it does not know, where a KEY
    belongs, is a usage error naming the options."""

    def parse_known_args(self, args=None, namespace=None):
        args = list(sys.argv[1:] if args is None else args)
        start = self._overrides_start(args)
        options, overrides = self._split_options(args[start:])
        parsed, extras = super().parse_known_args(args[:start] + options + overrides, namespace)
        for key in overrides[0::2]:
            if key.startswith("--"):
                known = ", ".join(a.option_strings[-1] for a in self._actions if a.option_strings)
                self.error(f"unrecognized option {key} (the options are {known})")
        return parsed, extras

    def _action(self, token: str) -> Optional[argparse.Action]:
        return self._option_string_actions.get(token.split("=", 1)[0]) if token.startswith("-") else None

    def _takes_value(self, token: str) -> bool:
        action = self._action(token)
        return action is not None and action.nargs != 0 and "=" not in token

    def _overrides_start(self, args: List[str]) -> int:
        """Index of the first ``KEY`` in ``args``: the first token that is neither an option
        nor an option's value (where ``argparse.REMAINDER`` starts)."""
        i = 0
        while i < len(args) and args[i].startswith("-"):
            i += 1 + self._takes_value(args[i])
        return i

    def _split_options(self, opts: List[str]) -> Tuple[List[str], List[str]]:
        """``(this parser's options with their values, the KEY VALUE overrides)`` of ``opts``."""
        options: List[str] = []
        overrides: List[str] = []
        i = 0
        while i < len(opts):
            # Only where a KEY belongs: a VALUE may be anything, even "--resume".
            if len(overrides) % 2 or not opts[i].startswith("--") or self._action(opts[i]) is None:
                overrides.append(opts[i])
                i += 1
                continue
            end = i + 1 + self._takes_value(opts[i])
            options += opts[i:end]
            i = end
        return options, overrides


def default_argument_parser(
    description: Optional[str] = None, default_config: Optional[str] = None
) -> argparse.ArgumentParser:
    """``--config-file``, ``--resume``, ``--output-dir`` and ``KEY VALUE`` overrides; the options
    may also come after the overrides. ``--config-file`` is required unless ``default_config``
    names the file to use without it."""
    parser = _OptionsAnywhereParser(
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Examples:\n"
        "  python tools/train_net.py --config-file configs/demo.yaml\n"
        "  python tools/train_net.py --config-file configs/demo.yaml --resume\n"
        "  python tools/train_net.py --config-file configs/demo.yaml SOLVER.MAX_ITER 50 OUTPUT_DIR outputs/short\n"
        "  torchrun --nproc_per_node 2 tools/train_net.py --config-file configs/demo.yaml",
    )
    parser.add_argument(
        "--config-file",
        required=default_config is None,
        default=default_config,
        metavar="FILE",
        help="path to a YAML config" + (f" (default: {default_config})" if default_config else ""),
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue from the latest checkpoint in the output directory"
    )
    parser.add_argument(
        "--output-dir",
        default=None,
        help="output directory (overrides OUTPUT_DIR); 'auto' makes outputs/<config>-<time> for a new run",
    )
    parser.add_argument(
        "opts",
        nargs=argparse.REMAINDER,
        default=[],
        help="config overrides as KEY VALUE pairs, e.g. SOLVER.MAX_ITER 50",
    )
    return parser


def output_dir_override(args: argparse.Namespace) -> List[str]:
    """``KEY VALUE`` overrides for ``--output-dir`` (``auto`` names a fresh run directory)."""
    if args.output_dir is None:
        return []
    if args.output_dir != "auto":
        return ["OUTPUT_DIR", args.output_dir]
    stem = os.path.splitext(os.path.basename(args.config_file))[0]
    return ["OUTPUT_DIR", os.path.join("outputs", f"{stem}-{datetime.datetime.now():%Y%m%d-%H%M%S}")]


def command_line(cfg: Optional[Union[DictConfig, Mapping[str, Any]]] = None) -> str:
    """This process's command line, shell-quoted, for log.txt and run records: an argument that
    holds a secret (by the rules that redact config.yaml, including any value the redaction of
    ``cfg``, the run's config or a plain dict such as ``vars(args)``, hides) reads ``<redacted>``."""
    config = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
    return shlex.join(redact_argv(sys.argv, config))


def resume_command(cfg, world_size: int = 1) -> str:
    """The command that continues this run: this process's command line (secrets redacted as
    in ``command_line``) with ``--resume``, and ``--output-dir`` pinned to the run's directory
    (``--output-dir auto`` would start a fresh one)."""
    argv = shlex.split(command_line(cfg))
    args: List[str] = []
    skip_next = False
    for arg in argv[1:]:
        if skip_next:
            args.append(cfg.OUTPUT_DIR)
            skip_next = False
        elif arg.startswith("--output-dir="):
            args.append(f"--output-dir={cfg.OUTPUT_DIR}")
        else:
            skip_next = arg == "--output-dir"
            args.append(arg)
    if "--resume" not in args:
        args.insert(0, "--resume")
    launcher = ["torchrun", f"--nproc_per_node={world_size}"] if world_size > 1 else ["python"]
    return shlex.join([*launcher, argv[0], *args])


def init_distributed_from_env() -> None:
    """Join the process group that ``torchrun`` describes in the environment, if any.

    gloo on CPU, NCCL when CUDA is available. A plain ``python tools/train_net.py`` (no
    WORLD_SIZE) stays a single process with no process group at all.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(comm.get_local_rank())
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=10))


def one_cpu_thread_for_tiny_models(device: torch.device) -> None:
    """One intra-op thread per process on CPU, unless ``OMP_NUM_THREADS`` says otherwise.

    The demos' tensors are tiny: one thread is ~10x faster than two on a busy 2-core machine
    (threads spin-wait for each other).
    """
    if device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(1)


RUN_MARKERS = ("metrics.json", "last_checkpoint", "log.txt", "train_history.json", "wandb_run.json")
ARCHIVE_PREFIX = "archived-"


def archive_previous_run(output_dir: str) -> Optional[str]:
    """Move what an earlier run left in ``output_dir`` into ``output_dir/archived-<time>/``.

    A fresh start (no ``--resume``) in a directory holding a run would otherwise append a second
    run to metrics.json, put two overlapping event files side by side for TensorBoard and resume
    the old W&B run. Nothing is deleted; ``tensorboard --logdir output_dir`` shows the archived
    run as a run of its own. Returns the archive directory, or None when there was no run.
    """
    if not os.path.isdir(output_dir):
        return None
    entries = [e for e in os.listdir(output_dir) if not e.startswith(ARCHIVE_PREFIX)]
    if not any(e in RUN_MARKERS or e.startswith("events.out.tfevents") for e in entries):
        return None
    archive = os.path.join(output_dir, f"{ARCHIVE_PREFIX}{datetime.datetime.now():%Y%m%d-%H%M%S-%f}")
    os.makedirs(archive)
    for entry in entries:
        os.replace(os.path.join(output_dir, entry), os.path.join(archive, entry))
    return archive


def seed_all(seed: int) -> int:
    """Seed python, numpy and torch; each rank gets ``seed + rank`` so their data differ.

    A negative ``seed`` (detectron2's default ``SEED: -1``) draws a fresh one; the seed used is
    returned and logged so the run can be repeated.
    """
    if seed < 0:
        seed = int.from_bytes(os.urandom(4), "little") % 2**31
    seed = (seed + comm.get_rank()) % 2**32
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return seed


def prepare_output_dir(output_dir: str, resume: bool = False) -> logging.Logger:
    """Create ``output_dir``, archive an earlier run there unless resuming, and log to the
    console and ``<output_dir>/log.txt`` (rank 0; other ranks to ``log.txt.rank<r>``).

    Returns the root logger. Fails with one line naming the directory when it cannot be
    created or written.
    """
    rank = comm.get_rank()
    archived = None
    try:
        if rank == 0:
            os.makedirs(output_dir, exist_ok=True)
            archived = None if resume else archive_previous_run(output_dir)
        comm.synchronize()  # other ranks open their log files only after the archive move
        root = setup_logger(output_dir, distributed_rank=rank)
    except OSError as e:
        raise SystemExit(f"error: cannot write to output directory {output_dir!r}: {e.strerror or e}") from None
    if archived:
        root.info("Fresh start: the earlier run in %s was moved to %s (use --resume to continue a run)", output_dir, archived)
    return root


def default_setup(output_dir: str, seed: int, resume: bool = False, command: Optional[str] = None) -> logging.Logger:
    """Create ``output_dir``, archive an earlier run there unless resuming, log to
    ``<output_dir>/log.txt`` (rank 0) and seed everything. ``command``: the command line to log
    (default ``command_line()``; pass ``command_line(cfg)`` to redact what the config hides).

    Fails with one line naming the directory when it cannot be created or written.
    """
    root = prepare_output_dir(output_dir, resume)
    root.info("Rank %d of %d; command line: %s", comm.get_rank(), comm.get_world_size(), command or command_line())
    root.info("Python %s, torch %s", sys.version.split()[0], torch.__version__)
    root.info("Using seed %d", seed_all(seed))
    return root
