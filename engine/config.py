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
import math
import os
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from events.secret_redaction import REDACTED, redact_secrets

from criterion.config import CriterionConfig, check_criterion_config

__all__ = ["ConfigError", "get_cfg", "load_config", "dump_config", "BASE_KEY"]

logger = logging.getLogger(__name__)

BASE_KEY = "_BASE_"


class ConfigError(ValueError):
    """A config problem, described in one line that names the key and the file."""


# --------------------------------------------------------------------------------------------
# Value constraints, declared next to each key (``key(default, *checks)``) and checked once, on
# the merged config, so a constraint between two keys never trips over a half-merged state.
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Check:
    """One rule a key's value must follow. ``holds(value, group)`` sees the key's value and its
    group (the node holding it and its sibling keys); ``related`` names the sibling it consults."""

    rule: str  # completes "SOLVER.MAX_ITER must ...", e.g. "be >= 1"
    holds: Callable[[Any, Any], bool]
    related: Optional[str] = None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def at_least(low: float) -> Check:
    return Check(f"be a finite number >= {low}", lambda v, _: _is_number(v) and v >= low)


def above(low: float) -> Check:
    return Check(f"be a finite number > {low}", lambda v, _: _is_number(v) and v > low)


def between(low: float, high: float) -> Check:
    return Check(f"be in [{low}, {high}]", lambda v, _: _is_number(v) and low <= v <= high)


def each_at_least(low: float) -> Check:
    return Check(f"hold numbers >= {low}", lambda v, _: all(_is_number(x) and x >= low for x in v))


def one_of(*allowed: str) -> Check:
    return Check(f"be one of {', '.join(allowed)}", lambda v, _: v in allowed)


def divides(sibling: str) -> Check:
    return Check(f"divide {sibling}", lambda v, group: v > 0 and group[sibling] % v == 0, related=sibling)


def not_below(sibling: str) -> Check:
    return Check(f"be >= {sibling}", lambda v, group: v >= group[sibling], related=sibling)


def key(default: Any, *checks: Check) -> Any:
    """A dataclass field with ``default`` whose value must pass ``checks``."""
    return field(default=default, metadata={"checks": checks})


# --------------------------------------------------------------------------------------------
# Schema: every key and its default.
# --------------------------------------------------------------------------------------------
@dataclass
class DetrConfig(CriterionConfig):
    """``MODEL.DETR``: the criterion's matching/loss keys (:class:`CriterionConfig`, which also
    holds NUM_CLASSES, NUM_REL_CLASSES, DEC_LAYERS, DEEP_SUPERVISION and checks them itself)
    plus the demo model's architecture keys, under DETR's names."""

    HIDDEN_DIM: int = key(256, at_least(1))
    # Attention heads split HIDDEN_DIM evenly (torch's MultiheadAttention requires it).
    NHEADS: int = key(8, at_least(1), divides("HIDDEN_DIM"))
    DIM_FEEDFORWARD: int = key(2048, at_least(1))
    DROPOUT: float = key(0.1, between(0, 0.99))
    NUM_RELATION_QUERIES: int = key(100, at_least(1))


@dataclass
class ModelConfig:
    DEVICE: str = "cpu"
    DETR: DetrConfig = field(default_factory=DetrConfig)


@dataclass
class InputConfig:
    # The demo's scenes are square images of this many pixels a side.
    IMAGE_SIZE: int = key(64, at_least(16))


@dataclass
class MultiDatasetConfig:
    """``DATASETS.MULTI_DATASET``: mixing a real and a synthetic dataset (SpeaQ-syn names)."""

    ENABLED: bool = False
    # Probability that one training sample is drawn from the synthetic dataset.
    SYNTHETIC_RATIO: float = key(0.3, between(0, 1))
    REAL_LOSS_WEIGHT: float = key(1.0, at_least(0))
    SYNTHETIC_LOSS_WEIGHT: float = key(0.5, at_least(0))
    NORMALIZE_LOSS_WEIGHTS: bool = False


@dataclass
class SceneDomainConfig:
    """How one domain (real or synthetic) of the demo's rectangle scenes is drawn."""

    NUM_SCENES: int = key(2000, at_least(1))
    # Uniform per-pixel noise amplitude and per-object colour jitter, both in [0, 1] units.
    NOISE: float = key(0.0, between(0, 1))
    COLOR_JITTER: float = key(0.0, between(0, 1))
    # Grey clutter shapes drawn under the objects; they are not objects.
    NUM_DISTRACTORS: int = key(0, at_least(0))


@dataclass
class DemoScenesConfig:
    """``DATASETS.DEMO``: the toy dataset of coloured rectangles and their spatial relations."""

    SEED: int = 0
    MIN_OBJECTS: int = key(2, at_least(1))
    MAX_OBJECTS: int = key(4, not_below("MIN_OBJECTS"))
    # Objects whose gap is at most this fraction of the image side are "near".
    NEAR_DISTANCE: float = key(0.15, between(0, 1))
    NUM_VAL_SCENES: int = key(200, at_least(1))
    # A straggler for the per-rank figures: this rank's loader sleeps SLOW_RANK_SECONDS before
    # each batch (-1: no rank is slowed).
    SLOW_RANK: int = key(-1, at_least(-1))
    SLOW_RANK_SECONDS: float = key(0.05, at_least(0))
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

    MAX_ITER: int = key(40000, at_least(1))
    BASE_LR: float = key(0.001, above(0))
    # Images per step over all ranks (each rank gets IMS_PER_BATCH / world size).
    IMS_PER_BATCH: int = key(16, at_least(1))
    # 0 = no periodic checkpoint (the final one is still written).
    CHECKPOINT_PERIOD: int = key(5000, at_least(0))
    WEIGHT_DECAY: float = key(0.0001, at_least(0))
    STEPS: List[int] = field(default_factory=lambda: [30000], metadata={"checks": (each_at_least(0),)})
    GAMMA: float = key(0.1, above(0))
    WARMUP_ITERS: int = key(1000, at_least(0))
    WARMUP_FACTOR: float = key(0.001, between(0, 1))
    # Max total gradient norm; 0 turns clipping off.
    CLIP_GRAD_NORM: float = key(0.0, at_least(0))


@dataclass
class TestConfig:
    # 0 = no periodic evaluation (detectron2's convention).
    EVAL_PERIOD: int = key(0, at_least(0))


@dataclass
class TelemetryConfig:
    WRITE_PERIOD: int = key(20, at_least(1))
    WINDOW_SIZE: int = key(20, at_least(1))
    DEFERRED_REDUCTION: bool = False
    STRICT_WRITERS: bool = False
    # 0 = off
    HISTOGRAM_PERIOD: int = key(0, at_least(0))
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
    MODE: str = key("auto", one_of("auto", "online", "offline", "disabled"))
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


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------
def get_cfg(schema: type = Config) -> DictConfig:
    """A fresh, writable config holding every default."""
    return OmegaConf.structured(schema)


def load_config(path: str | os.PathLike, overrides: Sequence[str] = (), schema: type = Config) -> DictConfig:
    """Defaults <- ``_BASE_`` chain of ``path`` (base first) <- ``path`` <- ``overrides``.

    Args:
        path: YAML file.
        overrides: flat ``[KEY, VALUE, KEY, VALUE, ...]`` list (detectron2's ``opts``); each
            VALUE is parsed as YAML, so ``"50"`` is an int and ``"[a, b]"`` a list.
        schema: the dataclass of every key and its default: :class:`Config`, or a subclass
            that adds a script's own keys (as detectron2's ``add_*_config`` do).

    Returns:
        The merged config, read-only, every value within its declared constraints.

    Raises:
        ConfigError: one line naming the key and the file (or the command-line override).
    """
    cfg = get_cfg(schema)
    sources: Dict[str, str] = {}  # dotted key -> the file or override that set it last
    for file_path, data in _read_with_bases(Path(path)):
        cfg = _merge(cfg, data, source=str(file_path), sources=sources, schema=schema)
    for key_name, value in _parse_overrides(overrides):
        shown = value if len(value) <= 60 else f"{value[:57]}..."
        source = f"command-line override '{key_name} {shown}'"
        cfg = _merge(cfg, _nest(key_name, _parse_yaml_value(value, source)), source=source, sources=sources, schema=schema)
    _check_values(cfg, sources, schema)
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


# A config is a few levels deep; anything far deeper is a mistake or an attack on the parser.
MAX_YAML_DEPTH = 32


class _ConfigLoader(yaml.SafeLoader):
    """PyYAML's safe loader without aliases and with a nesting limit.

    Aliases (``*name``) let a few hundred bytes expand into gigabytes (the "billion laughs"
    bomb); a config never needs them (``_BASE_`` shares settings between files). The depth
    limit turns a deeply nested list into an error instead of a ``RecursionError``.
    """

    _depth = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None, f"YAML aliases (*{event.anchor}) are not allowed in a config; use {BASE_KEY}",
                event.start_mark,
            )
        if self._depth >= MAX_YAML_DEPTH:
            raise yaml.composer.ComposerError(
                None, None, f"nested more than {MAX_YAML_DEPTH} levels deep", self.peek_event().start_mark
            )
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _yaml_problem(error: yaml.YAMLError) -> Tuple[str, str]:
    """``(":<line>" or "", first line of the problem)`` of a PyYAML error."""
    mark = getattr(error, "problem_mark", None)
    line = f":{mark.line + 1}" if mark is not None else ""
    return line, getattr(error, "problem", None) or str(error).splitlines()[0]


def _read_yaml(path: Path, included_from: Path | None) -> dict:
    where = f" (the {BASE_KEY} of {included_from})" if included_from else ""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found{where}") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config file{where}: {e.strerror}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"{path}: not a UTF-8 text file (byte 0x{raw[e.start]:02x} at offset {e.start}){where}; "
            "a config must be YAML text"
        ) from None
    if "\0" in text:
        raise ConfigError(f"{path}: a binary file (it holds NUL bytes){where}; a config must be YAML text")
    try:
        data = yaml.load(text, Loader=_ConfigLoader)
    except yaml.YAMLError as e:
        line, problem = _yaml_problem(e)
        raise ConfigError(f"{path}{line}: invalid YAML: {problem}{where}") from None
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
        return yaml.load(text, Loader=_ConfigLoader)
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: value is not valid YAML: {_yaml_problem(e)[1]}") from None


def _nest(dotted_key: str, value: Any) -> dict:
    """``"A.B.C", v`` -> ``{"A": {"B": {"C": v}}}``."""
    nested: Any = value
    for part in reversed(dotted_key.split(".")):
        nested = {part: nested}
    return nested


# --------------------------------------------------------------------------------------------
# Merging with one-line errors
# --------------------------------------------------------------------------------------------
def _merge(cfg: DictConfig, data: dict, source: str, sources: Dict[str, str], schema: type = Config) -> DictConfig:
    """Merge ``data`` into ``cfg``; any problem becomes a one-line :class:`ConfigError`.
    ``sources`` learns which keys ``source`` set, for the value checks at the end."""
    _check_keys(schema, data, prefix="", source=source)
    try:
        merged = OmegaConf.merge(cfg, data)
    except OmegaConfBaseException as e:
        key_name = e.full_key or "?"
        message = (e.msg or str(e)).splitlines()[0]
        raise ConfigError(f"{source}: bad value for {key_name}: {message}") from None
    sources.update(dict.fromkeys(_leaf_keys(data), source))
    return merged


def _leaf_keys(data: dict, prefix: str = "") -> Iterator[str]:
    for name, value in data.items():
        if isinstance(value, dict):
            yield from _leaf_keys(value, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}"


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


def declared_checks(schema: type = Config, prefix: str = "") -> Iterator[Tuple[str, Tuple[Check, ...]]]:
    """``(dotted key, checks)`` for every key of ``schema`` (default: the whole config) that
    declares constraints."""
    hints = typing.get_type_hints(schema)
    for f in dataclasses.fields(schema):
        expected = hints[f.name]
        if dataclasses.is_dataclass(expected):
            yield from declared_checks(expected, f"{prefix}{f.name}.")
        elif f.metadata.get("checks"):
            yield f"{prefix}{f.name}", f.metadata["checks"]


def _check_values(cfg: DictConfig, sources: Dict[str, str], schema: type = Config) -> None:
    """Every declared constraint on the merged ``cfg``; the error names who set the value."""
    for dotted, checks in declared_checks(schema):
        group_key, _, name = dotted.rpartition(".")
        group = OmegaConf.select(cfg, group_key) if group_key else cfg
        value = group[name]
        for check in checks:
            if check.holds(value, group):
                continue
            where = sources.get(dotted) or "the defaults"
            detail = ""
            if check.related:
                related = f"{group_key}.{check.related}" if group_key else check.related
                where = sources.get(dotted) or sources.get(related) or where
                related_source = sources.get(related)
                detail = f" ({related} is {group[check.related]!r}" + (
                    f", set in {related_source})" if related_source and related_source != where else ")"
                )
            raise ConfigError(f"{where}: {dotted} must {check.rule}, got {value!r}{detail}")
    try:
        check_criterion_config(cfg.MODEL.DETR)
    except ValueError as e:
        named = re.search(r"MODEL\.DETR\.\w+", str(e))
        where = sources.get(named.group(0)) if named else None
        raise ConfigError(f"{where or 'config'}: {e}") from None
