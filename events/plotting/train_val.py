"""Which training and validation losses compare like with like (no matplotlib).

A run that trains on real and synthetic samples (it logs ``<loss>_synthetic``) optimizes a
per-sample weighted mean, ``(1/N) Σ wᵢ·Lᵢ`` with synthetic samples usually weighing less, while a
validation set of real scenes has weight 1 everywhere: validation minus train of such a total is
not a generalization gap (it grows as the weighting's share does). What both sides log in the same
terms is the real-scene split: ``<loss>_real`` is, in training and validation alike, the
unweighted mean over the matched relations of real samples. So for such runs the figure and the
summary compare the sum of those terms (and draw its gap), and show the total without a gap and
with a note saying how the two sides differ. Runs without the split compare their totals as before.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from functools import reduce
from typing import List, Optional, Sequence, Tuple

import numpy as np

from events.readers.table import LogTable, Series

from .families import TOTAL_LOSS_NAMES, parse_keys
from .presentation import TITLE_CHARS

__all__ = ["TrainValPair", "train_val_pairs", "sum_series", "sample_weights"]


@dataclass(frozen=True)
class TrainValPair:
    """One train-vs-validation comparison: ``name`` (a logged key, or a derived sum), the logged
    ``terms`` it sums (one: the key itself), whether validation minus train is a like-with-like
    ``gap`` (drawn and summarized), and a ``note`` saying what the curves are or why no gap."""

    name: str
    terms: Tuple[str, ...]
    gap: bool = True
    note: Optional[str] = None

    @property
    def title(self) -> str:
        """The comparison's panel title (the bare name when the whole does not fit one panel)."""
        title = f"{self.name}: {'train vs validation' if self.gap else 'not like with like (see below)'}"
        return title if len(title) <= TITLE_CHARS else self.name

    def train(self, table: LogTable) -> Optional[Series]:
        return _summed(table.train, self.terms)

    def val(self, table: LogTable) -> Optional[Series]:
        return _summed(table.val, self.terms)


def sum_series(series: Sequence[Series]) -> Series:
    """``[points]`` sum of ``series`` at the steps every one of them was logged at."""
    steps = series[0].steps
    if not all(np.array_equal(one.steps, steps) for one in series):  # usually logged together
        steps = reduce(np.intersect1d, [one.steps for one in series])
    values = sum(one.values if len(one) == len(steps) else one.values[np.searchsorted(one.steps, steps)] for one in series)
    return Series(steps, np.asarray(values, dtype=np.float64))


def _summed(group: dict, terms: Tuple[str, ...]) -> Optional[Series]:
    if any(term not in group for term in terms):
        return None
    return group[terms[0]] if len(terms) == 1 else sum_series([group[term] for term in terms])


def sample_weights(table: LogTable) -> Optional[Tuple[float, float]]:
    """``(real, synthetic)`` loss weights from the ``config.yaml`` beside the log (this project's
    and SpeaQ's ``DATASETS.MULTI_DATASET.REAL_LOSS_WEIGHT`` / ``SYNTHETIC_LOSS_WEIGHT``), or None."""
    import yaml

    path = os.path.join(os.path.dirname(os.path.abspath(table.source)), "config.yaml")
    try:
        with open(path, encoding="utf-8") as handle:
            multi = yaml.safe_load(handle)["DATASETS"]["MULTI_DATASET"]
        return float(multi["REAL_LOSS_WEIGHT"]), float(multi["SYNTHETIC_LOSS_WEIGHT"])
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError):
        return None  # no config, another trainer's, unreadable: the note stays general


def _mixes_synthetic(table: LogTable) -> bool:
    """Training logs synthetic-sample losses that validation does not."""
    has = lambda names: any(parts.split == "synthetic" for parts in parse_keys(names).values())
    return has(table.train) and not has(table.val)


def _plain_pairs(tables: Sequence[LogTable]) -> List[str]:
    """Loss names logged for both training and validation: the totals if any, else up to four
    components (the component figures show the rest)."""
    common = [n for n in tables[0].train if any(n in t.val for t in tables) and "loss" in n]
    parts = parse_keys(common)
    keep = [n for n in common if parts[n].layer is None and not parts[n].unscaled and parts[n].split is None]
    totals = [n for n in TOTAL_LOSS_NAMES if n in keep]
    return totals or keep[:4]


def _real_terms(tables: Sequence[LogTable]) -> Tuple[str, ...]:
    """Final-layer ``<loss>_real`` keys logged in training and validation by every table."""
    parts = parse_keys(tables[0].train)
    return tuple(n for n, p in parts.items() if p.split == "real" and p.layer is None and "loss" in p.base
                 and all(n in t.train and n in t.val for t in tables))


def _weighting(tables: Sequence[LogTable]) -> str:
    weights = {sample_weights(table) for table in tables}
    known = weights.pop() if len(weights) == 1 else None
    if known is None:
        return "scales each sample by its loss weight (synthetic ones usually weigh less)"
    real, synthetic = known
    return f"weighs real samples {real:g} and synthetic ones {synthetic:g} (config.yaml)"


def train_val_pairs(tables: Sequence[LogTable]) -> List[TrainValPair]:
    """The comparisons to draw, in order (module docstring); empty without validation loss."""
    plain = _plain_pairs(tables)
    if not any(_mixes_synthetic(table) for table in tables):
        return [TrainValPair(name, (name,)) for name in plain]
    pairs = []
    terms = _real_terms(tables)
    if terms:
        name = f"real-scene loss (Σ of {len(terms)} loss_*_real)"
        pairs.append(TrainValPair(name, terms, note=(
            f"{name}: the final layer's loss terms on real scenes only, each the unweighted mean over matched "
            "relations, computed the same way in training and validation: like with like, so its gap is drawn.")))
    for name in plain[:1]:
        pairs.append(TrainValPair(name, (name,), gap=False, note=(
            f"{name}: training mixes synthetic samples and {_weighting(tables)}; validation holds real scenes only, "
            "at weight 1. Not like with like: no gap drawn.")))
    return pairs
