"""Configuration: OmegaConf structured defaults in detectron2's conventions.

Every key has a default here; a YAML file only overrides them. Keys are upper case and keep
detectron2's names (``SOLVER.MAX_ITER``, ``SOLVER.BASE_LR``, ``OUTPUT_DIR``, ...) and the
SpeaQ / IterativeSG names for the relation model (``MODEL.DETR.*``, ``DATASETS.MULTI_DATASET.*``).

A YAML file may start from another one with ``_BASE_: relative/or/absolute.yaml`` (resolved
against the including file, chains allowed, cycles rejected); trailing command-line ``KEY VALUE``
pairs override the result, values parsed as YAML (``SOLVER.MAX_ITER 50``, ``WANDB.TAGS [a,b]``).

Any mistake (unknown key, wrong type, missing or unparsable file, ``_BASE_`` cycle) raises
:class:`ConfigError`, whose message is ONE line naming the key and the file, so a command-line
tool can print it instead of a traceback.

Usage::

    cfg = load_config("configs/demo.yaml", ["SOLVER.MAX_ITER", "50"])   # read-only DictConfig
    dump_config(cfg, os.path.join(cfg.OUTPUT_DIR, "config.yaml"))     # never writes a secret
"""
from __future__ import annotations

import dataclasses
import difflib
import logging
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, List, Sequence

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from events.secret_redaction import REDACTED, redact_secrets

from criterion.config import CriterionConfig

__all__ = ["ConfigError", "get_cfg", "load_config", "dump_config", "BASE_KEY"]

logger = logging.getLogger(__name__)

BASE_KEY = "_BASE_"


class ConfigError(ValueError):
    """A config problem, described in one line that names the key and the file."""


# --------------------------------------------------------------------------------------------
# Schema: every key and its default.
# --------------------------------------------------------------------------------------------
@dataclass
class DetrConfig(CriterionConfig):
    """``MODEL.DETR``: the criterion's matching/loss keys (:class:`CriterionConfig`, which also
    holds NUM_CLASSES, NUM_REL_CLASSES, DEC_LAYERS, DEEP_SUPERVISION) plus the demo model's
    architecture keys, under DETR's names."""

    HIDDEN_DIM: int = 256
    NHEADS: int = 8
    DIM_FEEDFORWARD: int = 2048
    DROPOUT: float = 0.1
    NUM_RELATION_QUERIES: int = 100


@dataclass
class ModelConfig:
    DEVICE: str = "cpu"
    DETR: DetrConfig = field(default_factory=DetrConfig)


@dataclass
class InputConfig:
    # The demo's scenes are square images of this many pixels a side.
    IMAGE_SIZE: int = 64


@dataclass
class MultiDatasetConfig:
    """``DATASETS.MULTI_DATASET``: mixing a real and a synthetic dataset (SpeaQ-syn names)."""

    ENABLED: bool = False
    # Probability that one training sample is drawn from the synthetic dataset.
    SYNTHETIC_RATIO: float = 0.3
    REAL_LOSS_WEIGHT: float = 1.0
    SYNTHETIC_LOSS_WEIGHT: float = 0.5
    NORMALIZE_LOSS_WEIGHTS: bool = False


@dataclass
class SceneDomainConfig:
    """How one domain (real or synthetic) of the demo's rectangle scenes is drawn."""

    NUM_SCENES: int = 2000
    # Uniform per-pixel noise amplitude and per-object colour jitter, both in [0, 1] units.
    NOISE: float = 0.0
    COLOR_JITTER: float = 0.0
    # Grey clutter shapes drawn under the objects; they are not objects.
    NUM_DISTRACTORS: int = 0


@dataclass
class DemoScenesConfig:
    """``DATASETS.DEMO``: the toy dataset of coloured rectangles and their spatial relations."""

    SEED: int = 0
    MIN_OBJECTS: int = 2
    MAX_OBJECTS: int = 4
    # Objects whose gap is at most this fraction of the image side are "near".
    NEAR_DISTANCE: float = 0.15
    NUM_VAL_SCENES: int = 200
    # A straggler for the per-rank figures: this rank's loader sleeps SLOW_RANK_SECONDS before
    # each batch (-1: no rank is slowed).
    SLOW_RANK: int = -1
    SLOW_RANK_SECONDS: float = 0.05
    REAL: SceneDomainConfig = field(default_factory=lambda: SceneDomainConfig(NOISE=0.02, COLOR_JITTER=0.03))
    SYNTHETIC: SceneDomainConfig = field(
        default_factory=lambda: SceneDomainConfig(NOISE=0.1, COLOR_JITTER=0.1, NUM_DISTRACTORS=3)
    )


@dataclass
class DatasetsConfig:
    MULTI_DATASET: MultiDatasetConfig = field(default_factory=MultiDatasetConfig)
    DEMO: DemoScenesConfig = field(default_factory=DemoScenesConfig)


@dataclass
class SolverConfig:
    """``SOLVER``: detectron2's names and defaults."""

    MAX_ITER: int = 40000
    BASE_LR: float = 0.001
    IMS_PER_BATCH: int = 16
    CHECKPOINT_PERIOD: int = 5000
    WEIGHT_DECAY: float = 0.0001
    STEPS: List[int] = field(default_factory=lambda: [30000])
    GAMMA: float = 0.1
    WARMUP_ITERS: int = 1000
    WARMUP_FACTOR: float = 0.001
    # Max total gradient norm; 0 turns clipping off.
    CLIP_GRAD_NORM: float = 0.0


@dataclass
class TestConfig:
    # 0 = no periodic evaluation (detectron2's convention).
    EVAL_PERIOD: int = 0


@dataclass
class TelemetryConfig:
    WRITE_PERIOD: int = 20
    WINDOW_SIZE: int = 20
    DEFERRED_REDUCTION: bool = False
    STRICT_WRITERS: bool = False
    # 0 = off
    HISTOGRAM_PERIOD: int = 0
    LOG_GRAD_NORM: bool = True


@dataclass
class TensorboardConfig:
    ENABLED: bool = True
    # "" = OUTPUT_DIR
    LOG_DIR: str = ""


@dataclass
class WandbConfig:
    """``WANDB``: never holds an API key; wandb reads it from its own login or the environment."""

    ENABLED: bool = True
    PROJECT: str = "detr-telemetry"
    ENTITY: str = ""
    NAME: str = ""
    GROUP: str = ""
    TAGS: List[str] = field(default_factory=list)
    # "auto" = online if an API key is configured, else offline.
    MODE: str = "auto"
    # "" = OUTPUT_DIR
    DIR: str = ""
    # "" = generated, persisted in OUTPUT_DIR for resume.
    RUN_ID: str = ""


@dataclass
class Config:
    OUTPUT_DIR: str = "./output"
    # Negative = a fresh random seed per run (detectron2's convention).
    SEED: int = -1
    VERSION: int = 2
    MODEL: ModelConfig = field(default_factory=ModelConfig)
    INPUT: InputConfig = field(default_factory=InputConfig)
    DATASETS: DatasetsConfig = field(default_factory=DatasetsConfig)
    SOLVER: SolverConfig = field(default_factory=SolverConfig)
    TEST: TestConfig = field(default_factory=TestConfig)
    TELEMETRY: TelemetryConfig = field(default_factory=TelemetryConfig)
    TENSORBOARD: TensorboardConfig = field(default_factory=TensorboardConfig)
    WANDB: WandbConfig = field(default_factory=WandbConfig)


# Keys whose value must be one of a few strings.
_CHOICES = {
    "WANDB.MODE": ("auto", "online", "offline", "disabled"),
}


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------
def get_cfg() -> DictConfig:
    """A fresh, writable config holding every default."""
    return OmegaConf.structured(Config)


def load_config(path: str | os.PathLike, overrides: Sequence[str] = ()) -> DictConfig:
    """Defaults <- ``_BASE_`` chain of ``path`` (base first) <- ``path`` <- ``overrides``.

    Args:
        path: YAML file.
        overrides: flat ``[KEY, VALUE, KEY, VALUE, ...]`` list (detectron2's ``opts``); each
            VALUE is parsed as YAML, so ``"50"`` is an int and ``"[a, b]"`` a list.

    Returns:
        The merged config, read-only.

    Raises:
        ConfigError: one line naming the key and the file (or the command-line override).
    """
    cfg = get_cfg()
    for file_path, data in _read_with_bases(Path(path)):
        cfg = _merge(cfg, data, source=str(file_path))
    for key, value in _parse_overrides(overrides):
        source = f"command-line override '{key} {value}'"
        cfg = _merge(cfg, _nest(key, _parse_yaml_value(value, source)), source=source)
    OmegaConf.set_readonly(cfg, True)
    return cfg


def dump_config(cfg: DictConfig, path: str | os.PathLike) -> None:
    """Write ``cfg`` (resolved) as YAML that :func:`load_config` reads back.

    Secrets never reach the file: a value that contains a secret environment variable's value,
    sits under a secret-sounding key, or looks like a W&B API key is written as ``<redacted>``
    (with a warning naming the key).
    """
    data, redacted = redact_secrets(OmegaConf.to_container(cfg, resolve=True))
    for key in redacted:
        logger.warning("dump_config: %s looks like a secret; written as %s", key, REDACTED)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        yaml.safe_dump(data, f, sort_keys=False, default_flow_style=None)


# --------------------------------------------------------------------------------------------
# Reading files and their _BASE_ chain
# --------------------------------------------------------------------------------------------
def _read_with_bases(path: Path, chain: tuple[Path, ...] = ()) -> Iterator[tuple[Path, dict]]:
    """Yield ``(file, mapping)`` for the ``_BASE_`` chain of ``path``, base first."""
    resolved = path.expanduser().resolve()
    if resolved in chain:
        cycle = " -> ".join(str(p) for p in (*chain, resolved))
        raise ConfigError(f"{path}: {BASE_KEY} cycle: {cycle}")
    data = _read_yaml(path, included_from=chain[-1] if chain else None)
    base = data.pop(BASE_KEY, None)
    if base is not None:
        if not isinstance(base, str) or not base:
            raise ConfigError(f"{path}: {BASE_KEY} must be a file name, got {base!r}")
        base_path = Path(base).expanduser()
        if not base_path.is_absolute():
            base_path = path.parent / base_path
        yield from _read_with_bases(base_path, (*chain, resolved))
    yield path, data


def _read_yaml(path: Path, included_from: Path | None) -> dict:
    where = f" (the {BASE_KEY} of {included_from})" if included_from else ""
    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found{where}") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config file{where}: {e.strerror}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{path}{line}: invalid YAML: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must be a mapping of keys, got {type(data).__name__}")
    return data


# --------------------------------------------------------------------------------------------
# Command-line overrides
# --------------------------------------------------------------------------------------------
def _parse_overrides(overrides: Sequence[str]) -> list[tuple[str, str]]:
    overrides = list(overrides)
    if len(overrides) % 2:
        raise ConfigError(
            f"command-line override '{overrides[-1]}' has no value "
            "(overrides are KEY VALUE pairs, e.g. SOLVER.MAX_ITER 50)"
        )
    return list(zip(overrides[0::2], overrides[1::2]))


def _parse_yaml_value(text: str, source: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{source}: value is not valid YAML: {problem}") from None


def _nest(dotted_key: str, value: Any) -> dict:
    """``"A.B.C", v`` -> ``{"A": {"B": {"C": v}}}``."""
    nested: Any = value
    for part in reversed(dotted_key.split(".")):
        nested = {part: nested}
    return nested


# --------------------------------------------------------------------------------------------
# Merging with one-line errors
# --------------------------------------------------------------------------------------------
def _merge(cfg: DictConfig, data: dict, source: str) -> DictConfig:
    """Merge ``data`` into ``cfg``; any problem becomes a one-line :class:`ConfigError`."""
    _check_keys(Config, data, prefix="", source=source)
    try:
        merged = OmegaConf.merge(cfg, data)
    except OmegaConfBaseException as e:
        key = e.full_key or "?"
        message = (e.msg or str(e)).splitlines()[0]
        raise ConfigError(f"{source}: bad value for {key}: {message}") from None
    # Defaults are valid, so the first merge that breaks a choice is the one to blame.
    _check_choices(merged, source)
    return merged


def _check_keys(schema: type, data: Any, prefix: str, source: str) -> None:
    """Walk ``data`` against the dataclass ``schema`` before OmegaConf sees it.

    OmegaConf catches unknown keys and unconvertible values itself; this walk adds what it lets
    through or words obscurely: a group or a list given a scalar, a YAML boolean (``off``,
    ``no``) silently becoming a string, an int silently becoming a boolean.
    """
    if not isinstance(data, dict):
        raise ConfigError(
            f"{source}: {prefix.rstrip('.') or 'the config'} is a group of keys, "
            f"got the value {data!r}"
        )
    hints = typing.get_type_hints(schema)
    known = [f.name for f in dataclasses.fields(schema)]
    for key, value in data.items():
        full_key = f"{prefix}{key}"
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f" (did you mean {prefix}{close[0]}?)" if close else ""
            raise ConfigError(f"{source}: unknown config key {full_key}{hint}")
        expected = hints[key]
        if dataclasses.is_dataclass(expected):
            _check_keys(expected, value, prefix=f"{full_key}.", source=source)
        elif typing.get_origin(expected) is list and not isinstance(value, list):
            raise ConfigError(f"{source}: {full_key} expects a list, e.g. [1, 2], got {value!r}")
        elif expected is bool and not isinstance(value, bool):
            raise ConfigError(f"{source}: {full_key} expects true/false, got {value!r}")
        elif expected is str and isinstance(value, bool):
            raise ConfigError(
                f"{source}: {full_key} expects a string, got the YAML boolean {value!r} "
                "(quote it, e.g. 'off')"
            )


def _check_choices(cfg: DictConfig, source: str) -> None:
    for key, allowed in _CHOICES.items():
        value = OmegaConf.select(cfg, key)
        if value not in allowed:
            raise ConfigError(f"{source}: {key} must be one of {', '.join(allowed)}; got {value!r}")


