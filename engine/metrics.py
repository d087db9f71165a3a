"""Loss-dict reduction across ranks: one host transfer and one collective per step.

A loss dict maps names to scalars (0-dim tensors, CPU or CUDA, or Python numbers). Ranks may hold
different keys at the same step (a batch without synthetic samples yields no
``loss_relation_synthetic``). The reduction turns the dicts of all ranks into one dict of floats
that is identical on every rank:

* a key is averaged over the ranks that hold it; a rank without it is not counted (no zeros,
  no ``KeyError``, no hang);
* a key ``K`` accompanied by ``K + NUM_SAMPLES_SUFFIX`` (how many samples stand behind ``K`` on
  this rank) is averaged weighted by that count, ``sum_r c_r * v_r / sum_r c_r``, which is the
  exact mean over all samples; a count of 0 means "no value here"; counts are not logged;
* ``data_time`` is the maximum over ranks (the slowest loader sets the pace) and
  ``rank_data_time`` is this rank's own, as detectron2 logs them;
* with ``per_rank=True`` (the training reducers of ``MetricsWriter`` and ``write_metrics``) and
  several ranks: each rank's data time, step time and peak memory, their max / median / argmax,
  and ``slowest_rank`` when one rank is consistently the slowest (``engine/rank_stats.py``),
  carried as three more columns of the same collective;
* ``total_loss`` sums the loss terms (:func:`is_loss_term`); with a ``weight_dict`` it sums the
  keys of the weight dict, and ``total_loss_weighted`` is what backward saw,
  ``sum(weight_dict[k] * v)``;
* a non-finite value raises :class:`NonFiniteLossError` (a ``FloatingPointError``) naming the
  keys, ranks and iteration, on every rank at the same step: every rank decides on the same
  gathered numbers.

How: all ranks keep an identical *registry* of key names (same order). Each step packs
``[values over the registry, count per key, data_time, "has unregistered keys", "invalid"]``
into one float64 row and exchanges it with one ``all_gather``; each rank then reduces the
``[world, length]`` matrix locally. When some rank flags keys the registry lacks (the first
step, the first synthetic batch), every rank sees the flag, the new names are exchanged once
with ``all_gather_object``, the registry grows in the same order everywhere and the step is
packed again. That costs two extra collectives, once per new key set.

Deferred mode (:meth:`LossDictReducer.add` / :meth:`LossDictReducer.flush`, or
``MetricsWriter(deferred=True)``) keeps each step's packed row on the loss dict's device and
reduces the whole period with one host transfer and one collective at the flush: no host sync
and no communication per step. The trade-off: a NaN is noticed at the flush, up to one period
late. The error then names the first bad iteration, and the steps before it are still written.
"""

from __future__ import annotations

import dataclasses
import math
import itertools
import operator
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.distributed as dist

from criterion.weight_dict import weighted_total
from engine import comm
from engine.rank_stats import RANK_FIELDS, RankStats
from events.storage import get_event_storage

__all__ = [
    "NUM_SAMPLES_SUFFIX",
    "NonFiniteLossError",
    "LossDictReducer",
    "MetricsWriter",
    "write_metrics",
    "is_loss_term",
    "backward_total",
]

NUM_SAMPLES_SUFFIX = "__num_samples"

TOTAL_LOSS = "total_loss"
TOTAL_LOSS_WEIGHTED = "total_loss_weighted"
DATA_TIME = "data_time"
RANK_DATA_TIME = "rank_data_time"

# The host columns closing every packed row (see _Layout), then the per-rank numbers
# (engine/rank_stats.py; zeros when the reducer does not log them).
_DATA_TIME, _HAS_UNREGISTERED, _INVALID = range(3)
_RANK_COLUMNS = slice(3, 3 + len(RANK_FIELDS))
_NUM_EXTRA_COLUMNS = 3 + len(RANK_FIELDS)

Reduced = Dict[str, float]


def is_loss_term(name: str, keys: Any) -> bool:
    """Whether ``name`` is a term of the total loss in a dict whose keys are ``keys``.

    Loss terms start with ``"loss"`` and carry no ``NUM_SAMPLES_SUFFIX`` count (a counted key is
    a group statistic such as ``loss_relation_real``); ``k_log_*``, ``class_error``,
    ``cardinality_error`` and timings are never terms.
    """
    return (
        name.startswith("loss")
        and not name.endswith(NUM_SAMPLES_SUFFIX)
        and name + NUM_SAMPLES_SUFFIX not in keys
    )


def backward_total(
    loss_dict: Mapping[str, torch.Tensor], weight_dict: Optional[Mapping[str, float]] = None
) -> torch.Tensor:
    """The scalar that ``backward()`` sees, keeping the graph.

    With ``weight_dict``: the criterion's ``weighted_total`` (``sum(weight_dict[k] * loss_dict[k])``
    over the keys of ``weight_dict`` present, refusing to weight a metric); without it: the sum of
    the loss terms (:func:`is_loss_term`).
    """
    if weight_dict is not None:
        return weighted_total(loss_dict, weight_dict)
    terms = [value for name, value in loss_dict.items() if is_loss_term(name, loss_dict)]
    if not terms:
        raise ValueError(f"loss dict has no loss terms ('loss*' keys); keys: {sorted(loss_dict)}")
    return torch.stack([torch.as_tensor(term).reshape(()) for term in terms]).sum()


class NonFiniteLossError(FloatingPointError):
    """A reduced loss dict held NaN or Inf.

    Attributes:
        iteration: the first iteration with a non-finite value.
        keys: the non-finite keys at that iteration (a bad count is named ``K__num_samples``).
        reduced_before: ``[(iteration, values)]`` of the steps reduced in the same flush before
            the bad one (deferred mode), so that they can still be written.
    """

    def __init__(
        self,
        iteration: int,
        bad_ranks: Mapping[str, Sequence[int]],
        reduced_before: List[Tuple[int, Reduced]],
    ):
        self.iteration = iteration
        self.keys = list(bad_ranks)
        self.reduced_before = reduced_before
        named = ", ".join(
            f"{key} (rank {', '.join(map(str, ranks))})" for key, ranks in bad_ranks.items()
        )
        super().__init__(f"Loss became infinite or NaN at iteration={iteration}: {named}")


@dataclasses.dataclass
class _Layout:
    """Where each registered key lives in a packed row.

    A row is ``[values of names | counts of count_keys | presence of uncounted]`` followed (at
    exchange time) by ``[data_time, has unregistered keys, invalid]``. Values and counts are
    device data; presence (1.0 / 0.0 for keys without a count) is known on the host for free.
    """

    names: List[str]
    count_keys: List[str]  # ``K + NUM_SAMPLES_SUFFIX`` of the counted names, in registry order
    uncounted: List[str]
    weight_order: np.ndarray  # registry index -> column in the [counts | presence] block
    get_values: Callable[[Mapping[str, Any]], Tuple[Any, ...]]  # names' entries of a dict
    get_counts: Callable[[Mapping[str, Any]], Tuple[Any, ...]]  # count_keys' entries

    @classmethod
    def of(cls, names: Sequence[str], counted: Sequence[bool]) -> "_Layout":
        num_counted = sum(counted)
        order, next_count, next_presence = [], 0, num_counted
        for is_counted in counted:
            if is_counted:
                order.append(next_count)
                next_count += 1
            else:
                order.append(next_presence)
                next_presence += 1
        count_keys = [n + NUM_SAMPLES_SUFFIX for n, c in zip(names, counted) if c]
        return cls(
            names=list(names),
            count_keys=count_keys,
            uncounted=[n for n, c in zip(names, counted) if not c],
            weight_order=np.asarray(order, dtype=np.intp),
            get_values=_tuple_getter(names),
            get_counts=_tuple_getter(count_keys),
        )

    def presence(self, keys: Any) -> np.ndarray:
        """1.0 / 0.0 per uncounted name: whether it is in ``keys``."""
        return np.array([name in keys for name in self.uncounted], dtype=np.float64)


@dataclasses.dataclass
class _PendingStep:
    """One rank's step, packed but not yet exchanged."""

    iteration: int
    data_time: float
    row: torch.Tensor  # [values | counts] of the registry at packing time, float64, loss device
    presence: np.ndarray  # of the uncounted names of the registry at packing time
    registry_size: int
    unregistered: Optional[Dict[str, torch.Tensor]]  # entries the registry lacked, or None
    invalid: Optional[str]  # why this rank's dict cannot be reduced, or None
    rank_values: np.ndarray  # [len(RANK_FIELDS)] this rank's timing and memory (rank_stats)


@dataclasses.dataclass
class _KeySetCheck:
    """What a loss dict's key set means against the current registry (cached per key tuple)."""

    unregistered: Tuple[str, ...]  # keys (values and their counts) the registry lacks
    invalid: Optional[str]
    complete: bool = False  # holds every registered name (and count): no padding needed
    presence: Optional[np.ndarray] = None  # see _Layout.presence


class LossDictReducer:
    """Reduces loss dicts across ranks; every rank gets the same ``{name: float}``.

    All ranks of ``group`` (default: the world) must call ``reduce`` / ``flush`` the same number
    of times, as with any collective. Per-step use::

        reducer = LossDictReducer(weight_dict)
        values = reducer.reduce(loss_dict, data_time, iteration)   # one collective

    Deferred use (no host sync and no collective per step)::

        reducer.add(loss_dict, data_time, iteration)                # each step
        for iteration, values in reducer.flush(): ...               # once per writer period

    ``weight_dict`` is a plain attribute; it only decides the totals and may be replaced between
    steps.
    """

    def __init__(
        self,
        weight_dict: Optional[Mapping[str, float]] = None,
        group: Optional[dist.ProcessGroup] = None,
        per_rank: bool = False,
    ) -> None:
        self.weight_dict = weight_dict
        self._group = group
        # per_rank: also return each rank's data/step time and memory (engine/rank_stats.py),
        # carried by the same collective. For training steps, not for validation.
        self._rank_stats = RankStats() if per_rank else None
        # The registry: identical, in the same order, on every rank.
        self._names: List[str] = []
        self._counted: List[bool] = []
        self._index: Dict[str, int] = {}
        self._layout = _Layout.of([], [])
        self._loss_term_mask = np.zeros(0)  # 1.0 for registered names that are loss terms
        self._checks: Dict[Tuple[str, ...], _KeySetCheck] = {}
        self._zeros: Dict[Tuple[torch.device, torch.dtype], torch.Tensor] = {}
        self._pending: List[_PendingStep] = []

    # ------------------------------------------------------------------ public API
    def reduce(self, loss_dict: Mapping[str, Any], data_time: float, iteration: int) -> Reduced:
        """Reduce one step across ranks (one host transfer, one collective in steady state).

        Args:
            loss_dict: ``{name: 0-dim tensor or number}``; ``K + NUM_SAMPLES_SUFFIX`` entries
                are the sample counts behind ``K``.
            data_time: this rank's seconds spent waiting for data.
            iteration: the step's iteration (named in errors).
        Returns:
            ``{key: mean over the ranks holding it, "total_loss", ["total_loss_weighted"],
            "data_time": max over ranks, "rank_data_time": this rank's}``; counts excluded.
        Raises:
            NonFiniteLossError: on every rank, when a value is NaN/Inf on any rank.
            ValueError: on every rank, when a rank's dict is malformed (named in the message).
        """
        if self._pending:
            raise RuntimeError(
                f"reduce() called with {len(self._pending)} deferred steps pending; flush() first"
            )
        self.add(loss_dict, data_time, iteration)
        return self.flush()[0][1]

    def add(self, loss_dict: Mapping[str, Any], data_time: float, iteration: int) -> None:
        """Pack one step and keep it on the loss dict's device until :meth:`flush`.

        No communication, and no host sync when the values are tensors on one device.
        """
        self._pending.append(self._pack(loss_dict, float(data_time), int(iteration)))

    @property
    def pending(self) -> int:
        """Number of steps added and not yet flushed."""
        return len(self._pending)

    def flush(self) -> List[Tuple[int, Reduced]]:
        """Reduce every pending step with one host transfer and one collective.

        Returns:
            ``[(iteration, values)]`` in the order the steps were added (see :meth:`reduce`).
        Raises:
            NonFiniteLossError: naming the first non-finite iteration; its ``reduced_before``
                holds the steps before it. All pending steps are consumed either way.
            ValueError: on every rank, when a rank's dict was malformed.
        """
        steps, self._pending = self._pending, []
        if not steps:
            return []
        gathered = self._exchange(steps)
        flags = gathered[:, :, -_NUM_EXTRA_COLUMNS:]
        if flags[:, :, _HAS_UNREGISTERED : _INVALID + 1].any():  # rare; every rank sees it: no hang
            if flags[:, :, _INVALID].any():
                self._raise_invalid(steps, flags[:, :, _INVALID])
            self._register(steps)
            gathered = self._exchange(steps)
        return self._finish(steps, gathered)

    # ------------------------------------------------------------------ packing (per step)
    def _pack(self, loss_dict: Mapping[str, Any], data_time: float, iteration: int) -> _PendingStep:
        keys = tuple(loss_dict)
        check = self._checks.get(keys)
        if check is None:
            check = self._checks[keys] = self._check_key_set(keys)
        size, layout = len(self._names), self._layout
        invalid, unregistered, source = check.invalid, None, loss_dict
        if invalid is None:
            try:
                row = self._pack_entries(source, layout, check.complete)
            except (TypeError, RuntimeError):
                # Python numbers, [1]-shaped or mixed-device tensors, or garbage: normalize
                # entry by entry (slow, with a named error) and pack again.
                source, invalid = _normalized(loss_dict)
                if invalid is None:
                    row = self._pack_entries(source, layout, check.complete)
        if invalid is None and check.unregistered:
            # Rare (a new key set): keep the new entries, detached, to widen the row later.
            unregistered, invalid = _normalized({key: source[key] for key in check.unregistered})
        if invalid is not None:
            device = _device_and_dtype(loss_dict)[0]
            row = torch.zeros(size + len(layout.count_keys), dtype=torch.float64, device=device)
            return _PendingStep(iteration, data_time, row, layout.presence(()), size, None, invalid, self._sample(data_time, row))
        return _PendingStep(iteration, data_time, row, check.presence, size, unregistered, None, self._sample(data_time, row))

    def _sample(self, data_time: float, row: torch.Tensor) -> np.ndarray:
        if self._rank_stats is None:
            return np.zeros(len(RANK_FIELDS))
        return self._rank_stats.sample(data_time, row.device)

    def _pack_entries(self, source: Mapping[str, Any], layout: _Layout, complete: bool) -> torch.Tensor:
        """``layout``'s ``[values | counts]`` of ``source`` as one float64 vector on the entries'
        device, built with ``torch.stack`` (asynchronous on CUDA: no host sync). Absent names
        are padded with zeros unless ``source`` is known to be ``complete``."""
        if complete:
            values, counts = layout.get_values(source), layout.get_counts(source)
        else:
            device, dtype = _device_and_dtype(source)
            zero = self._zeros.get((device, dtype))
            if zero is None:
                zero = self._zeros[(device, dtype)] = torch.zeros((), dtype=dtype, device=device)
            get = source.get
            values = [get(name, zero) for name in layout.names]
            counts = [get(key, zero) for key in layout.count_keys]
        with torch.no_grad():  # a pending row must never keep the autograd graph alive
            # Two stacks, not one: counts are often integer tensors, and a mixed-dtype stack is
            # several times slower than a uniform one.
            parts = [torch.stack(entries).to(torch.float64) for entries in (values, counts) if entries]
            if len(parts) == 2:
                row = torch.cat(parts)
            elif parts:
                row = parts[0]
            else:  # nothing registered yet (the first step)
                row = torch.zeros(0, dtype=torch.float64, device=_device_and_dtype(source)[0])
        if row.dim() != 1:
            raise RuntimeError("loss dict entries are not scalars")
        return row

    def _check_key_set(self, keys: Tuple[str, ...]) -> _KeySetCheck:
        present = set(keys)
        unregistered: List[str] = []
        for key in keys:
            if key.endswith(NUM_SAMPLES_SUFFIX):
                if key[: -len(NUM_SAMPLES_SUFFIX)] not in present:
                    return _KeySetCheck(
                        (), f"{key!r} has no value key {key[: -len(NUM_SAMPLES_SUFFIX)]!r}"
                    )
                continue
            counted = key + NUM_SAMPLES_SUFFIX in present
            index = self._index.get(key)
            if index is None:
                unregistered += [key, key + NUM_SAMPLES_SUFFIX] if counted else [key]
            elif self._counted[index] != counted:
                return _KeySetCheck((), _count_mismatch_message(key))
        layout = self._layout
        complete = present.issuperset(layout.names) and present.issuperset(layout.count_keys)
        return _KeySetCheck(tuple(unregistered), None, complete, layout.presence(present))

    # ------------------------------------------------------------------ exchange (per flush)
    def _exchange(self, steps: List[_PendingStep]) -> np.ndarray:
        """All ranks' packed steps as a host array ``[world, steps, row length]``."""
        widened = [self._widened(step) for step in steps]
        device_part = (
            widened[0][0][None] if len(steps) == 1 else torch.stack([row for row, _ in widened])
        )
        num_presence = len(self._layout.uncounted)
        host_part = np.empty((len(steps), num_presence + _NUM_EXTRA_COLUMNS))
        for host_row, step, (_, presence) in zip(host_part, steps, widened):
            host_row[:num_presence] = presence
            host_row[num_presence : num_presence + 3] = (
                step.data_time,
                step.unregistered is not None,
                step.invalid is not None,
            )
            host_row[num_presence + _RANK_COLUMNS.start :] = step.rank_values
        world_size = dist.get_world_size(self._group) if comm.is_distributed() else 1
        if world_size == 1:
            return np.concatenate([device_part.cpu().numpy(), host_part], axis=1)[None]
        device = comm.collective_device(self._group)
        # With gloo, device_part.to(cpu) is the one host transfer; with NCCL it is the .cpu() below.
        packed = torch.cat([device_part.to(device), torch.from_numpy(host_part).to(device)], dim=1)
        parts = [torch.empty_like(packed) for _ in range(world_size)]
        dist.all_gather(parts, packed, group=self._group)
        if self._rank_stats is not None:
            self._rank_stats.exchanged()
        return torch.stack(parts).cpu().numpy()

    def _widened(self, step: _PendingStep) -> Tuple[torch.Tensor, np.ndarray]:
        """``step``'s row and presence against a registry that may have grown since packing."""
        old, size = step.registry_size, len(self._names)
        if old == size:
            return step.row, step.presence
        added = _Layout.of(self._names[old:], self._counted[old:])
        source = step.unregistered or {}
        new_row = self._pack_entries(source, added, complete=False).to(step.row.device)
        row = torch.cat([step.row[:old], new_row[: size - old], step.row[old:], new_row[size - old :]])
        return row, np.concatenate([step.presence, added.presence(source)])

    def _register(self, steps: List[_PendingStep]) -> None:
        """Exchange unregistered names and extend the registry identically on every rank."""
        local: Dict[str, bool] = {}
        for step in steps:
            for key in step.unregistered or ():
                if not key.endswith(NUM_SAMPLES_SUFFIX):
                    local.setdefault(key, key + NUM_SAMPLES_SUFFIX in step.unregistered)
        proposed: Dict[str, bool] = {}
        for rank_names in comm.all_gather(list(local.items()), group=self._group):
            for name, counted in rank_names:
                if proposed.setdefault(name, counted) != counted:
                    raise ValueError(
                        f"Invalid loss dicts at iterations {steps[0].iteration}..{steps[-1].iteration}: "
                        + _count_mismatch_message(name)
                    )
        for name, counted in proposed.items():
            self._index[name] = len(self._names)
            self._names.append(name)
            self._counted.append(counted)
        self._layout = _Layout.of(self._names, self._counted)
        self._loss_term_mask = np.array(
            [
                name.startswith("loss") and not counted
                for name, counted in zip(self._names, self._counted)
            ],
            dtype=np.float64,
        )
        self._checks.clear()

    def _raise_invalid(self, steps: List[_PendingStep], invalid: np.ndarray) -> None:
        """Every rank raises the same ValueError for the first step some rank could not pack;
        ``invalid`` is ``[world, steps]``."""
        first = int(np.flatnonzero(invalid.any(axis=0))[0])
        messages = comm.all_gather(steps[first].invalid, group=self._group)
        named = "; ".join(f"rank {rank}: {msg}" for rank, msg in enumerate(messages) if msg)
        raise ValueError(f"Invalid loss dict at iteration={steps[first].iteration}: {named}")

    # ------------------------------------------------------------------ reduction (host)
    def _finish(self, steps: List[_PendingStep], gathered: np.ndarray) -> List[Tuple[int, Reduced]]:
        layout, size = self._layout, len(self._names)
        num_counts = len(layout.count_keys)
        num_weights = num_counts + len(layout.uncounted)
        values = gathered[:, :, :size]  # [world, steps, keys]
        weights = gathered[:, :, size : size + num_weights][:, :, layout.weight_order]
        data_times = gathered[:, :, size + num_weights + _DATA_TIME].max(axis=0)
        per_rank = self._per_rank(gathered[:, :, size + num_weights:][:, :, _RANK_COLUMNS])
        last = len(steps)
        # One sum tells whether everything is finite (a huge finite sum that overflows only
        # sends us down the careful path, which finds no problem).
        all_finite = math.isfinite(gathered.sum())
        if not all_finite or (num_counts and gathered[:, :, size : size + num_counts].min() < 0):
            # Rare: find the first step with a real problem, and mask out entries without
            # weight (a count of 0 may stand beside a NaN mean over nothing).
            present = weights > 0
            with np.errstate(invalid="ignore"):
                bad_values = present & ~np.isfinite(values)
                bad_counts = ~np.isfinite(weights)
                negative = weights < 0
            problems = (bad_values | bad_counts | negative).any(axis=(0, 2))
            if problems.any():
                last = int(np.argmax(problems))
            usable = (
                present & np.isfinite(values) & np.isfinite(weights)
            )  # differs only in problem steps
            values, weights = np.where(usable, values, 0.0), np.where(usable, weights, 0.0)
        if len(gathered) == 1:  # one rank: nothing to sum over
            weight_sums, weighted_sums = weights[0], values[0] * weights[0]
        else:
            weight_sums, weighted_sums = weights.sum(axis=0), (values * weights).sum(axis=0)
        held = weight_sums > 0  # [steps, keys]
        means = weighted_sums / np.where(held, weight_sums, 1.0)  # 0 where not held
        totals = self._totals(means, held)

        results = []
        names = self._names
        for index, held_here, means_here, data_time in zip(
            range(last), held.tolist(), means.tolist(), data_times.tolist()
        ):
            if all(held_here):
                reduced = dict(zip(names, means_here))
            else:
                reduced = dict(
                    zip(itertools.compress(names, held_here), itertools.compress(means_here, held_here))
                )
            for name, column in totals:
                if column[index] is not None:
                    reduced[name] = column[index]
            reduced[DATA_TIME] = data_time
            reduced[RANK_DATA_TIME] = steps[index].data_time
            reduced.update(per_rank[index])
            results.append((steps[index].iteration, reduced))
        if last < len(steps):
            self._raise_for_step(
                steps[last].iteration,
                bad_values[:, last],
                bad_counts[:, last],
                negative[:, last],
                results,
            )
        return results

    def _per_rank(self, block: np.ndarray) -> List[Dict[str, float]]:
        """Per step, the per-rank scalars of ``block`` (``[world, steps, len(RANK_FIELDS)]``)."""
        if self._rank_stats is None:
            return [{} for _ in range(block.shape[1])]
        return self._rank_stats.decode(block)

    def _totals(self, means: np.ndarray, held: np.ndarray) -> List[Tuple[str, List[Optional[float]]]]:
        """``[(name, per-step value or None)]`` for total_loss (and total_loss_weighted);
        ``means`` / ``held`` are ``[steps, keys]`` (means 0 where not held)."""
        weight_dict = self.weight_dict
        if weight_dict is None:
            in_total, weights = self._loss_term_mask, None
        else:
            in_total = np.array([name in weight_dict for name in self._names], dtype=np.float64)
            weights = np.array([weight_dict.get(name, 0.0) for name in self._names], dtype=np.float64)
        has_terms = (held @ in_total > 0).tolist()
        columns = [(TOTAL_LOSS, means @ in_total)]
        if weights is not None:
            columns.append((TOTAL_LOSS_WEIGHTED, means @ weights))
        return [
            (name, [value if has else None for value, has in zip(column.tolist(), has_terms)])
            for name, column in columns
        ]

    def _raise_for_step(
        self,
        iteration: int,
        bad_values: np.ndarray,
        bad_counts: np.ndarray,
        negative: np.ndarray,
        reduced_before: List[Tuple[int, Reduced]],
    ) -> None:
        """Raise the error of one step; the masks are ``[world, keys]``."""
        bad_ranks: Dict[str, List[int]] = {}
        for mask, suffix in ((bad_values, ""), (bad_counts, NUM_SAMPLES_SUFFIX)):
            for index, rank in zip(*np.nonzero(mask.T)):  # registry order, then rank order
                bad_ranks.setdefault(self._names[index] + suffix, []).append(int(rank))
        if bad_ranks:
            raise NonFiniteLossError(iteration, bad_ranks, reduced_before)
        index, rank = np.argwhere(negative.T)[0]
        raise ValueError(
            f"Negative sample count {self._names[index] + NUM_SAMPLES_SUFFIX!r} on rank {rank} "
            f"at iteration={iteration}"
        )


def _count_mismatch_message(name: str) -> str:
    return (
        f"{name!r} must carry its count {name + NUM_SAMPLES_SUFFIX!r} on every step and rank, "
        "or never"
    )


def _tuple_getter(keys: Sequence[str]) -> Callable[[Mapping[str, Any]], Tuple[Any, ...]]:
    """``lambda d: tuple(d[k] for k in keys)``, in C (``operator.itemgetter``)."""
    if len(keys) == 1:
        key = keys[0]
        return lambda source: (source[key],)
    return operator.itemgetter(*keys) if keys else (lambda source: ())


def _device_and_dtype(source: Mapping[str, Any]) -> Tuple[torch.device, torch.dtype]:
    """Device and dtype of the first floating-point tensor in ``source`` (or of any tensor;
    CPU float64 when it holds none). Padding with that dtype keeps ``torch.stack`` on its fast
    path: mixed dtypes make it several times slower."""
    fallback = (torch.device("cpu"), torch.float64)
    for value in source.values():
        if isinstance(value, torch.Tensor):
            if value.is_floating_point():
                return value.device, value.dtype
            fallback = (value.device, torch.float64)
    return fallback


def _normalized(loss_dict: Mapping[str, Any]) -> Tuple[Dict[str, torch.Tensor], Optional[str]]:
    """Every entry as a detached 0-dim float64 tensor on one device, or a message naming the
    first bad entry."""
    device = _device_and_dtype(loss_dict)[0]
    normalized = {}
    for name, value in loss_dict.items():
        if isinstance(value, torch.Tensor):
            if value.numel() != 1:
                return {}, f"{name!r} is a tensor of shape {list(value.shape)}, not a scalar"
            normalized[name] = value.detach().reshape(()).to(device=device, dtype=torch.float64)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            normalized[name] = torch.tensor(float(value), dtype=torch.float64, device=device)
        else:
            return {}, f"{name!r} is a {type(value).__name__}, not a number or a scalar tensor"
    return normalized, None


def _put(storage: Any, iteration: int, values: Reduced, prefix: str) -> None:
    names = [prefix + name for name in values] if prefix else list(values)
    storage.put_scalars_bulk(names, list(values.values()), cur_iter=iteration)


class MetricsWriter:
    """Reduces each step's loss dict across ranks and puts the result into the current
    ``EventStorage`` (every rank puts the same values, so storage states stay identical).

    Per step (default): one collective per step; a NaN raises at the step where it happened.

    Deferred (``deferred=True``): steps stay on the device and are reduced together after
    iteration ``i`` with ``(i + 1) % period == 0`` (use ``PeriodicWriter``'s period so the
    writers see complete data) and at :meth:`flush`. No host sync and no collective per step;
    a NaN raises at the flush, naming its iteration, after the steps before it were put.

    Every name put is ``prefix + name`` (``prefix="val_"`` keeps validation losses apart).
    """

    def __init__(
        self,
        weight_dict: Optional[Mapping[str, float]] = None,
        *,
        deferred: bool = False,
        period: int = 20,
        prefix: str = "",
        group: Optional[dist.ProcessGroup] = None,
    ) -> None:
        if period < 1:
            raise ValueError(f"MetricsWriter period must be >= 1, got {period}")
        self.reducer = LossDictReducer(weight_dict, group, per_rank=True)
        self.deferred = deferred
        self.period = period
        self.prefix = prefix

    def write(
        self, loss_dict: Mapping[str, Any], data_time: float, cur_iter: Optional[int] = None
    ) -> None:
        """Reduce (or buffer) one step; ``cur_iter`` defaults to the storage's iteration."""
        storage = get_event_storage()
        iteration = storage.iter if cur_iter is None else int(cur_iter)
        if not self.deferred:
            _put(storage, iteration, self.reducer.reduce(loss_dict, data_time, iteration), self.prefix)
            return
        self.reducer.add(loss_dict, data_time, iteration)
        if (iteration + 1) % self.period == 0 or self.reducer.pending >= self.period:
            self.flush()

    def flush(self) -> None:
        """Reduce and put every buffered step (a no-op in per-step mode or with none pending)."""
        if not self.reducer.pending:
            return
        storage = get_event_storage()
        try:
            results = self.reducer.flush()
        except NonFiniteLossError as error:
            for iteration, values in error.reduced_before:
                _put(storage, iteration, values, self.prefix)
            raise
        for iteration, values in results:
            _put(storage, iteration, values, self.prefix)


_shared_reducer: Optional[Tuple[Any, LossDictReducer]] = None


def _reducer_for_world() -> LossDictReducer:
    """One reducer per default process group, so the key registry persists across calls."""
    global _shared_reducer
    world = dist.group.WORLD if comm.is_distributed() else None
    if _shared_reducer is None or _shared_reducer[0] is not world:
        _shared_reducer = (world, LossDictReducer(per_rank=True))
    return _shared_reducer[1]


def write_metrics(
    loss_dict: Mapping[str, Any],
    data_time: float,
    cur_iter: Optional[int] = None,
    prefix: str = "",
    weight_dict: Optional[Mapping[str, float]] = None,
) -> None:
    """detectron2's ``SimpleTrainer.write_metrics``, with one collective per step.

    Reduces ``loss_dict`` across all ranks (see the module docstring) and puts every resulting
    scalar, named ``prefix + name``, into ``get_event_storage()`` at ``cur_iter`` (default: the
    storage's iteration) on every rank.

    Raises:
        NonFiniteLossError: (a ``FloatingPointError``) on every rank when any value is NaN/Inf.
    """
    storage = get_event_storage()
    iteration = storage.iter if cur_iter is None else int(cur_iter)
    reducer = _reducer_for_world()
    reducer.weight_dict = weight_dict
    _put(storage, iteration, reducer.reduce(loss_dict, data_time, iteration), prefix)
