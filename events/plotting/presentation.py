"""How a series is shown, decided from the data alone (no matplotlib), so that every renderer
(the PNG figures, an HTML report) shows the same things:

* ``unit_of`` / ``with_unit``: a series' unit in its title (``class_error*`` is a percentage);
* ``is_step_series`` / ``step_points``: a learning rate is piecewise constant and is drawn as
  steps, where a logged value holds back to the record before it (the scheduler changes it at a
  milestone, which trainers place right after a logging step): matplotlib's
  ``drawstyle="steps-pre"``, plotly's ``line_shape="vh"``;
* ``constant_value`` / ``split_constant`` / ``constant_note``: a series that never changes
  (``k_log_layer1`` = 1 with one-to-one matching) gets a line of text, not a panel;
* ``validation_panel_title``: what a panel of validation metrics shows (``class_error_{object,
  relation,subject} (%)``, ``bbox: AP, AP50, AP75``), never a bare ``metrics (2)``;
* ``is_bookkeeping``: names that are logged but are no training metric (``eta_seconds``);
* ``SPLIT_FIGURE_NOTE``: why the optimized loss term sits below its real and synthetic curves.
"""
from __future__ import annotations

import os
import re
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from events.readers.table import Series

__all__ = [
    "unit_of",
    "with_unit",
    "is_step_series",
    "step_points",
    "constant_value",
    "split_constant",
    "constant_note",
    "validation_panel_title",
    "is_bookkeeping",
    "SPLIT_FIGURE_NOTE",
    "TITLE_CHARS",
]

# Characters of a panel title that fit over one ~3-inch panel at 9 pt.
TITLE_CHARS = 44
# Logged for the console (time left), not a property of training: no statistics, no panel.
_BOOKKEEPING = frozenset({"eta_seconds", "eta"})
# DETR's / our class_error is 100 - top-1 accuracy over matched queries, in percent.
_PERCENT = re.compile(r"(?:^|[/._])class_error")
_TOKENS = re.compile(r"[/_.]")
_SEPARATORS = "_/.@"
_TRAILING_NUMBER = re.compile(r"^(?P<stem>.*?)(?P<number>\d+)$")

SPLIT_FIGURE_NOTE = (
    "grey = the loss term as optimized: each sample scaled by its loss weight (synthetic samples "
    "usually weigh less than real ones) and, for classification, averaged over every query including "
    "the unmatched ones (no-object, an easy target). real / synthetic = unweighted means over matched "
    "relations only. So the grey curve can lie below both."
)


def is_bookkeeping(name: str) -> bool:
    """Whether ``name`` is logged bookkeeping (``eta_seconds``) rather than a training metric."""
    return os.path.basename(name) in _BOOKKEEPING


def unit_of(name: str) -> Optional[str]:
    """The unit of series ``name`` when its name says it (``"%"`` for ``class_error*``)."""
    return "%" if _PERCENT.search(name) else None


def with_unit(title: str, names: Iterable[str]) -> str:
    """``title`` followed by `` (unit)`` when every one of ``names`` has that unit."""
    units = {unit_of(name) for name in names}
    unit = units.pop() if len(units) == 1 else None
    return f"{title} ({unit})" if unit else title


def is_step_series(name: str) -> bool:
    """Whether ``name`` is a learning rate (``lr``, ``train_lr``, ``lr_backbone``, ``optim/lr``,
    ``learning_rate``): piecewise constant between logged records, drawn as steps."""
    lowered = name.lower()
    return "learning_rate" in lowered or "lr" in _TOKENS.split(lowered)


def step_points(x: np.ndarray, y: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """The points of a step series (``steps-pre``: ``y[i]`` holds on ``(x[i-1], x[i]]``) that its
    drawing needs: the first, the last, and the last one before every change of value. A
    100k-point schedule with two drops keeps a handful of points, exactly where they were logged."""
    if len(y) <= 2:
        return x, y
    keep = np.empty(len(y), dtype=bool)
    keep[0] = keep[-1] = True
    keep[1:-1] = y[1:-1] != y[2:]  # NaN != NaN: kept
    return x[keep], y[keep]


def constant_value(series: Iterable[Series], rel_tol: float = 1e-9) -> Optional[float]:
    """The value every point of every series in ``series`` holds, or None: when some point is
    NaN/inf, a series has fewer than 2 points (one evaluation is not "constant"), or values differ
    by more than ``rel_tol`` of their size (float noise of an averaged 1.0 is still 1.0)."""
    low, high, seen = np.inf, -np.inf, False
    for one in series:
        values = one.values
        if len(values) < 2 or not np.isfinite(values).all():
            return None
        low, high, seen = min(low, float(values.min())), max(high, float(values.max())), True
    if not seen or high - low > rel_tol * max(abs(low), abs(high)):
        return None
    return float(low + high) / 2 if high != low else float(low)


def split_constant(groups: Dict[str, List[Series]]) -> Tuple[List[str], Dict[str, float]]:
    """``groups`` (panel name -> every series it would draw) split into the names of panels
    worth drawing, in order, and ``{name: value}`` of those whose series all hold one value."""
    varying: List[str] = []
    constant: Dict[str, float] = {}
    for name, members in groups.items():
        value = constant_value(members)
        if value is None:
            varying.append(name)
        else:
            constant[name] = value
    return varying, constant


def _compact_names(names: Sequence[str]) -> str:
    """``k_log_layer1, k_log_layer2, k_log_layer3`` -> ``k_log_layer1–3``; other names as they are."""
    by_stem: Dict[str, List[int]] = {}
    plain: List[str] = []
    for name in names:
        match = _TRAILING_NUMBER.match(name)
        if match and match.group("stem"):
            by_stem.setdefault(match.group("stem"), []).append(int(match.group("number")))
        else:
            plain.append(name)
    parts = []
    for stem, numbers in by_stem.items():
        numbers.sort()
        consecutive = numbers == list(range(numbers[0], numbers[0] + len(numbers)))
        if len(numbers) == 1:
            parts.append(f"{stem}{numbers[0]}")
        elif consecutive:
            parts.append(f"{stem}{numbers[0]}–{numbers[-1]}")
        else:
            parts.append(f"{stem}{{{','.join(str(n) for n in numbers)}}}")
    return ", ".join(plain + parts)


def constant_note(constant: Dict[str, float], where: str = "logged point") -> Optional[str]:
    """One sentence naming the constant series and their values (None when there are none), e.g.
    ``constant, not drawn: k_log_layer1–3 = 1 at every logged point``."""
    if not constant:
        return None
    by_value: Dict[float, List[str]] = {}
    for name, value in constant.items():
        by_value.setdefault(value, []).append(name)
    parts = [f"{_compact_names(names)} = {value:.6g}{' %' if unit_of(names[0]) == '%' else ''}" for value, names in by_value.items()]
    return f"constant, not drawn: {'; '.join(parts)} at every {where}"


def _common_prefix(names: Sequence[str]) -> str:
    """The names' common start, ending at a separator unless it is a whole name or has none
    (``class_error_`` for ``class_error_object``/``class_error_relation``; ``AP`` for ``AP``/``AP50``)."""
    prefix = os.path.commonprefix(list(names))
    if not prefix or prefix[-1] in _SEPARATORS or prefix in names:
        return prefix
    cut = max(prefix.rfind(separator) for separator in _SEPARATORS)
    return prefix[: cut + 1] if cut >= 0 else prefix


def validation_panel_title(task: str, names: Sequence[str], limit: int = TITLE_CHARS) -> str:
    """What a validation panel shows: its task (``bbox``) and metrics, shortened to fit ``limit``
    characters, with the unit when all share one: ``bbox: AP, AP50, AP75``,
    ``class_error_{object,relation,subject} (%)``, ``SG: SGMeanRecall@{20,50,100}``."""
    leaves = [name.rsplit("/", 1)[-1] for name in names]
    head = f"{task}: " if task else ""
    room = limit - len(head) - (4 if with_unit("", names) else 0)
    listed = ", ".join(leaves)
    if len(leaves) > 1 and len(listed) > room:
        prefix = _common_prefix(leaves)
        braced = f"{prefix}{{{','.join(leaf[len(prefix):] for leaf in leaves)}}}" if prefix else ""
        if prefix and len(braced) <= room:
            listed = braced
        elif prefix:
            listed = f"{prefix}* ({len(leaves)})"
        else:
            listed = f"{leaves[0]} and {len(leaves) - 1} more"
    return with_unit(f"{head}{listed}", names)
