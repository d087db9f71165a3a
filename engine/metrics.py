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
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.distributed as dist

from engine import comm
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

# The host columns closing every packed row (see _Layout).
_DATA_TIME, _HAS_UNREGISTERED, _INVALID = range(3)
_NUM_EXTRA_COLUMNS = 3

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

    With ``weight_dict``: ``sum(weight_dict[k] * loss_dict[k])`` over the keys of ``weight_dict``
    present in ``loss_dict``; without it: the sum of the loss terms (:func:`is_loss_term`).
    """
    if weight_dict is None:
        terms = [value for name, value in loss_dict.items() if is_loss_term(name, loss_dict)]
    else:
        terms = [loss_dict[name] * weight for name, weight in weight_dict.items() if name in loss_dict]
    if not terms:
        wanted = "keys of weight_dict" if weight_dict is not None else "loss terms ('loss*' keys)"
        raise ValueError(f"loss dict has no {wanted}; keys: {sorted(loss_dict)}")
    return torch.stack([torch.as_tensor(term).reshape(()) for term in terms]).sum()


class NonFiniteLossError(FloatingPointError):
    """A reduced loss dict held NaN or Inf.

    Attributes:
        iteration: the first iteration with a non-finite value.
        keys: the non-finite keys at that iteration (a bad count is named ``K__num_samples``).
        reduced_before: ``[(iteration, values)]`` of the steps reduced in the same flush before
            the bad one (deferred mode), so that they can still be written.
    """

    def __init__(self, iteration: int, bad_ranks: Mapping[str, Sequence[int]], reduced_before: List[Tuple[int, Reduced]]):
        self.iteration = iteration
        self.keys = list(bad_ranks)
        self.reduced_before = reduced_before
        named = ", ".join(f"{key} (rank {', '.join(map(str, ranks))})" for key, ranks in bad_ranks.items())
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
        return cls(
            names=list(names),
            count_keys=[n + NUM_SAMPLES_SUFFIX for n, c in zip(names, counted) if c],
            uncounted=[n for n, c in zip(names, counted) if not c],
            weight_order=np.asarray(order, dtype=np.intp),
        )


@dataclasses.dataclass
class _PendingStep:
    """One rank's step, packed but not yet exchanged."""

    iteration: int
    data_time: float
    row: torch.Tensor  # [values | counts] of the registry at packing time, float64, loss device
    presence: List[float]  # of the uncounted keys of the registry at packing time
    registry_size: int
    unregistered: Optional[Dict[str, torch.Tensor]]  # entries the registry lacked, or None
    invalid: Optional[str]  # why this rank's dict cannot be reduced, or None


@dataclasses.dataclass
class _KeySetCheck:
    """What a loss dict's key set means against the current registry (cached per key tuple)."""

    unregistered: Tuple[str, ...]  # keys (values and their counts) the registry lacks
    invalid: Optional[str]


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
    ) -> None:
        self.weight_dict = weight_dict
        self._group = group
        # The registry: identical, in the same order, on every rank.
        self._names: List[str] = []
        self._counted: List[bool] = []
        self._index: Dict[str, int] = {}
        self._layout = _Layout.of([], [])
        self._loss_terms: List[str] = []  # registered names that are loss terms
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
        if flags[:, :, _INVALID].any():
            self._raise_invalid(steps, flags[:, :, _INVALID])
        if flags[:, :, _HAS_UNREGISTERED].any():
            # Every rank sees the flag, so every rank takes this branch: no hang.
            self._register(steps)
            gathered = self._exchange(steps)
        return self._finish(steps, gathered)

    # ------------------------------------------------------------------ packing (per step)
    def _pack(self, loss_dict: Mapping[str, Any], data_time: float, iteration: int) -> _PendingStep:
        keys = tuple(loss_dict)
        check = self._checks.get(keys)
        if check is None:
            check = self._checks[keys] = self._check_key_set(keys)
        size = len(self._names)
        invalid, unregistered = check.invalid, None
        if invalid is None:
            try:
                row, presence = self._pack_entries(loss_dict, self._layout)
            except (TypeError, RuntimeError):
                # Python numbers, [1]-shaped or mixed-device tensors, or garbage: normalize
                # entry by entry (slow, with a named error) and pack again.
                loss_dict, invalid = _normalized(loss_dict)
                if invalid is None:
                    row, presence = self._pack_entries(loss_dict, self._layout)
        if invalid is None and check.unregistered:
            # Rare (a new key set): keep the new entries, detached, to widen the row later.
            unregistered, invalid = _normalized({key: loss_dict[key] for key in check.unregistered})
        if invalid is not None:
            device = _device_and_dtype(loss_dict)[0] if loss_dict else torch.device("cpu")
            row = torch.zeros(size + len(self._layout.count_keys), dtype=torch.float64, device=device)
            presence, unregistered = [0.0] * len(self._layout.uncounted), None
        return _PendingStep(iteration, data_time, row, presence, size, unregistered, invalid)

    def _pack_entries(self, source: Mapping[str, Any], layout: _Layout) -> Tuple[torch.Tensor, List[float]]:
        """``layout``'s ``[values | counts]`` of ``source`` as one float64 device vector (built
        with ``torch.stack``: asynchronous on CUDA, no host sync) and its host presence list."""
        device, dtype = _device_and_dtype(source)
        zero = self._zeros.get((device, dtype))
        if zero is None:
            zero = self._zeros[(device, dtype)] = torch.zeros((), dtype=dtype, device=device)
        get = source.get
        with torch.no_grad():  # a pending row must never keep the autograd graph alive
            parts = [torch.stack([get(name, zero) for name in layout.names])] if layout.names else []
            if layout.count_keys:
                parts.append(torch.stack([get(key, zero) for key in layout.count_keys]))
            if len(parts) == 1:
                row = parts[0].to(torch.float64)
            else:
                row = torch.cat([part.to(torch.float64) for part in parts]) if parts else zero.new_zeros(0)
        if row.dim() != 1:
            raise RuntimeError("loss dict entries are not scalars")
        return row, [1.0 if name in source else 0.0 for name in layout.uncounted]

    def _check_key_set(self, keys: Tuple[str, ...]) -> _KeySetCheck:
        present = set(keys)
        unregistered: List[str] = []
        for key in keys:
            if key.endswith(NUM_SAMPLES_SUFFIX):
                if key[: -len(NUM_SAMPLES_SUFFIX)] not in present:
                    return _KeySetCheck((), f"{key!r} has no value key {key[: -len(NUM_SAMPLES_SUFFIX)]!r}")
                continue
            counted = key + NUM_SAMPLES_SUFFIX in present
            index = self._index.get(key)
            if index is None:
                unregistered += [key, key + NUM_SAMPLES_SUFFIX] if counted else [key]
            elif self._counted[index] != counted:
                return _KeySetCheck((), _count_mismatch_message(key))
        return _KeySetCheck(tuple(unregistered), None)

    # ------------------------------------------------------------------ exchange (per flush)
    def _exchange(self, steps: List[_PendingStep]) -> np.ndarray:
        """All ranks' packed steps as a host array ``[world, steps, row length]``."""
        widened = [self._widened(step) for step in steps]
        device_part = widened[0][0][None] if len(steps) == 1 else torch.stack([row for row, _ in widened])
        host_part = np.array(
            [
                presence + [step.data_time, step.unregistered is not None, step.invalid is not None]
                for step, (_, presence) in zip(steps, widened)
            ],
            dtype=np.float64,
        )
        world_size = dist.get_world_size(self._group) if comm.is_distributed() else 1
        if world_size == 1:
            return np.concatenate([device_part.cpu().numpy(), host_part], axis=1)[None]
        device = comm.collective_device(self._group)
        # With gloo, device_part.to(cpu) is the one host transfer; with NCCL it is the .cpu() below.
        packed = torch.cat([device_part.to(device), torch.from_numpy(host_part).to(device)], dim=1)
        parts = [torch.empty_like(packed) for _ in range(world_size)]
        dist.all_gather(parts, packed, group=self._group)
        return torch.stack(parts).cpu().numpy()

    def _widened(self, step: _PendingStep) -> Tuple[torch.Tensor, List[float]]:
        """``step``'s row and presence against a registry that may have grown since packing."""
        old, size = step.registry_size, len(self._names)
        if old == size:
            return step.row, step.presence
        added = _Layout.of(self._names[old:], self._counted[old:])
        if step.unregistered is None:
            new_row = torch.zeros(len(added.names) + len(added.count_keys), dtype=torch.float64)
            new_presence = [0.0] * len(added.uncounted)
        else:
            new_row, new_presence = self._pack_entries(step.unregistered, added)
        new_row = new_row.to(step.row.device)
        row = torch.cat(
            [step.row[:old], new_row[: size - old], step.row[old:], new_row[size - old :]]
        )
        return row, step.presence + new_presence

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
                    raise ValueError(_count_mismatch_message(name))
        for name, counted in proposed.items():
            self._index[name] = len(self._names)
            self._names.append(name)
            self._counted.append(counted)
            if name.startswith("loss") and not counted:
                self._loss_terms.append(name)
        self._layout = _Layout.of(self._names, self._counted)
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
        num_weights = len(layout.count_keys) + len(layout.uncounted)
        values = gathered[:, :, :size]  # [world, steps, keys]
        weights = gathered[:, :, size : size + num_weights][:, :, layout.weight_order]
        data_times = gathered[:, :, size + num_weights + _DATA_TIME].max(axis=0).tolist()
        last = len(steps)
        counts = gathered[:, :, size : size + len(layout.count_keys)]
        if not (np.isfinite(gathered).all() and (counts >= 0).all()):
            # Rare: mask out entries with no weight (a count of 0 may stand beside a NaN mean
            # over nothing) and find the first step with a real problem.
            present = weights > 0
            with np.errstate(invalid="ignore"):
                bad_values = present & ~np.isfinite(values)
                bad_counts = ~np.isfinite(weights)
                negative = weights < 0
            problems = (bad_values | bad_counts | negative).any(axis=(0, 2))
            if problems.any():
                last = int(np.argmax(problems))
            usable = present & np.isfinite(values) & np.isfinite(weights)  # differs only in problem steps
            values, weights = np.where(usable, values, 0.0), np.where(usable, weights, 0.0)
        weight_sums = weights.sum(axis=0)  # [steps, keys]
        held = weight_sums > 0
        means = np.divide((values * weights).sum(axis=0), weight_sums, out=np.zeros_like(weight_sums), where=held)

        results = []
        for index in range(last):
            reduced = {
                name: mean
                for name, mean, has in zip(self._names, means[index].tolist(), held[index].tolist())
                if has
            }
            self._add_totals(reduced)
            reduced[DATA_TIME] = data_times[index]
            reduced[RANK_DATA_TIME] = steps[index].data_time
            results.append((steps[index].iteration, reduced))
        if last < len(steps):
            self._raise_for_step(
                steps[last].iteration, bad_values[:, last], bad_counts[:, last], negative[:, last], results
            )
        return results

    def _add_totals(self, reduced: Reduced) -> None:
        weight_dict = self.weight_dict
        if weight_dict is None:
            terms = [reduced[name] for name in self._loss_terms if name in reduced]
        else:
            terms = [reduced[name] for name in weight_dict if name in reduced]
            if terms:
                reduced[TOTAL_LOSS_WEIGHTED] = math.fsum(
                    weight * reduced[name] for name, weight in weight_dict.items() if name in reduced
                )
        if terms:
            reduced[TOTAL_LOSS] = math.fsum(terms)

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
        self.reducer = LossDictReducer(weight_dict, group)
        self.deferred = deferred
        self.period = period
        self.prefix = prefix

    def write(self, loss_dict: Mapping[str, Any], data_time: float, cur_iter: Optional[int] = None) -> None:
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
        _shared_reducer = (world, LossDictReducer())
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
