"""How logged names group into figures: decoder-layer families, loss families, real/synthetic splits.

A name is read right to left as ``<base>[_<layer>][_<split>][_unscaled]`` (the split may also
come before the layer). ``_<digits>`` is a decoder layer only when the base's indices are exactly
0..N-1 and either N >= 2 or the base itself is logged too, so ``loss_ce_0..loss_ce_8`` are
layers while ``mAP_50``/``mAP_75`` (indices 50, 75) and ``AP50`` (no underscore) are not.
"""
from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from events.rank_keys import is_rank_key

__all__ = ["KeyParts", "KeyGroups", "parse_keys", "group_keys", "loss_family", "layer_order", "TOTAL_LOSS_NAMES", "OVERVIEW_NAMES", "SPLITS"]

SPLITS = ("real", "synthetic")
_SPLIT_ALIASES = {"real": "real", "synthetic": "synthetic", "synth": "synthetic", "syn": "synthetic"}
_SPLIT_SUFFIX = re.compile(r"^(?P<rest>.+)_(?P<split>real|synthetic|synth|syn)$")
_LAYER_SUFFIX = re.compile(r"^(?P<rest>.+)_(?P<layer>\d{1,3})$")
_VARIANT = "_unscaled"

# Names of the summed loss, in order of preference (ours/detectron2, mmdet/DETR, weighted).
TOTAL_LOSS_NAMES = ("total_loss", "loss", "total_loss_weighted", "losses")
# Scalars the overview figure shows (besides the total loss); they get no figure of their own.
OVERVIEW_NAMES = ("lr", "time", "data_time", "last_time", "last_data_time", "rank_data_time", "eta_seconds", "max_mem", "memory")
# Words naming the branch a loss belongs to in relation / scene-graph models.
_FAMILY_WORDS = ("subject", "object", "relation", "predicate", "entity", "sub", "obj", "rel")


@dataclass(frozen=True)
class KeyParts:
    """A logged name split into its base, decoder layer (None = final layer), split and variant."""

    key: str
    base: str
    layer: Optional[int] = None
    split: Optional[str] = None
    unscaled: bool = False


def _split_suffixes(key: str) -> Tuple[str, Optional[str], Optional[str], bool]:
    """(rest, layer digits, split, unscaled) without checking that the digits are layers."""
    rest, unscaled = (key[: -len(_VARIANT)], True) if key.endswith(_VARIANT) and len(key) > len(_VARIANT) else (key, False)
    split = None
    match = _SPLIT_SUFFIX.match(rest)
    if match:
        rest, split = match.group("rest"), _SPLIT_ALIASES[match.group("split")]
    layer = None
    match = _LAYER_SUFFIX.match(rest)
    if match:
        rest, layer = match.group("rest"), match.group("layer")
    if split is None:
        match = _SPLIT_SUFFIX.match(rest)
        if match:
            rest, split = match.group("rest"), _SPLIT_ALIASES[match.group("split")]
    return rest, layer, split, unscaled


def parse_keys(keys: Iterable[str]) -> Dict[str, KeyParts]:
    """``KeyParts`` of every key, deciding layer suffixes from the whole set (module docstring)."""
    keys = list(keys)
    raw = {key: _split_suffixes(key) for key in keys}
    indices: Dict[Tuple[str, Optional[str], bool], set] = defaultdict(set)
    for rest, layer, split, unscaled in raw.values():
        if layer is not None:
            indices[(rest, split, unscaled)].add(int(layer))
    plain = {(rest, split, unscaled) for rest, layer, split, unscaled in raw.values() if layer is None}
    parts = {}
    for key, (rest, layer, split, unscaled) in raw.items():
        group = (rest, split, unscaled)
        found = indices.get(group, set())
        is_layer = layer is not None and found == set(range(len(found))) and (len(found) >= 2 or group in plain)
        if layer is not None and not is_layer:
            rest = f"{rest}_{layer}"
        parts[key] = KeyParts(key, rest, int(layer) if is_layer else None, split, unscaled)
    return parts


def loss_family(base: str) -> str:
    """The branch a loss belongs to (``loss_ce_subject`` -> ``subject``), else ``"loss"``."""
    tokens = base.split("_")
    for word in _FAMILY_WORDS:
        if word in tokens:
            return {"sub": "subject", "obj": "object", "rel": "relation"}.get(word, word)
    return "loss"


def layer_order(parts: List[KeyParts]) -> List[KeyParts]:
    """Aux layers first (0, 1, ...), the final layer last, so it is drawn on top."""
    return sorted(parts, key=lambda p: (p.layer is None, p.layer if p.layer is not None else 0))


@dataclass
class KeyGroups:
    """Training keys sorted into figures: the totals (overview), loss families
    (family -> base -> layers), other bases, and bases logged for both real and synthetic."""

    total: List[str]
    loss_families: Dict[str, Dict[str, List[KeyParts]]]
    other_bases: Dict[str, List[KeyParts]]
    split_bases: Dict[str, Dict[str, str]]


def group_keys(names: Sequence[str]) -> KeyGroups:
    """Sort training key names for the figures (see ``KeyGroups``)."""
    parts = parse_keys(names)
    present = set(names)
    total = [n for n in TOTAL_LOSS_NAMES if n in present]
    families: Dict[str, Dict[str, List[KeyParts]]] = defaultdict(lambda: defaultdict(list))
    others: Dict[str, List[KeyParts]] = defaultdict(list)
    splits: Dict[str, Dict[str, str]] = defaultdict(dict)
    for name in names:
        p = parts[name]
        if name in TOTAL_LOSS_NAMES or name in OVERVIEW_NAMES or is_rank_key(name):
            continue  # the overview and the ranks figure show these
        if p.unscaled and p.key[: -len("_unscaled")] in present:
            continue  # DETR's unscaled copy of a logged loss: same curve, another scale
        if p.split in SPLITS:
            if p.layer is None:
                splits[p.base][p.split] = name
            continue
        base = p.base + ("_unscaled" if p.unscaled else "")
        if "loss" in p.base:  # loss_ce, s0.loss_cls (mmdet cascade stages), decode.loss_seg
            families[loss_family(p.base)][base].append(p)
        else:
            others[base].append(p)
    splits = {b: s for b, s in splits.items() if len(s) == len(SPLITS)}
    return KeyGroups(total, families, others, splits)
