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
``[value per key | weight per key | _HOST_COLUMNS]`` (a weight is the key's count, or 1/0 for
present/absent; then "has unregistered keys", "invalid", data_time and the per-rank numbers)
into one float64 row and exchanges it with one ``all_gather``; each rank then reduces the
``[world, steps, length]`` array locally. Means are taken as ``sum_r (w_r / sum w) v_r`` with the
weights scaled first, so finite values cannot overflow; a total that does overflow raises
:class:`NonFiniteLossError` like a NaN. CPU values are read once each (``Tensor.item``: cheaper
than ``torch.stack`` there); values on a device are stacked there and cross to the host once:
before the collective when it runs on the host (one process, gloo), with its result when it runs
on their device (NCCL; the host columns go over without a sync). When some rank flags keys the
registry lacks (the first step, the first synthetic batch), every rank sees the flag, the new
names are exchanged once with ``all_gather_object``, the registry grows in the same order
everywhere and the step is packed again. That costs two extra collectives, once per new key set.

Deferred mode (:meth:`LossDictReducer.add` / :meth:`LossDictReducer.flush`, or
``MetricsWriter(deferred=True)``) keeps each step's packed values (on the loss dict's device) and
reduces the whole period with one host transfer and one collective at the flush: no host sync
and no communication per step. The trade-off: a NaN is noticed at the flush, up to one period
late. The error then names the first bad iteration, and the steps before it are still written.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import operator
import struct
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
    "ReducedRow",
    "write_metrics",
    "is_loss_term",
    "backward_total",
]

NUM_SAMPLES_SUFFIX = "__num_samples"

TOTAL_LOSS = "total_loss"
TOTAL_LOSS_WEIGHTED = "total_loss_weighted"
DATA_TIME = "data_time"
RANK_DATA_TIME = "rank_data_time"

# The per-rank host values closing every exchanged row, after the device values: two flags,
# then this rank's figures. The one all_gather hands every rank every rank's copy, so another
# per-rank figure is one more name at the end here, its value in the tuple _exchange writes for
# each _PendingStep, and a read of that column of ``host`` (``[world, steps,
# len(_HOST_COLUMNS)]``) in LossDictReducer._reduce. The rank_* columns are engine/rank_stats.py's
# numbers (zeros when the reducer does not log them).
_HOST_COLUMNS = ("has_unregistered", "invalid", "data_time") + tuple("rank_" + field for field in RANK_FIELDS)
_HAS_UNREGISTERED, _INVALID, _DATA_TIME = range(3)
_RANK_COLUMNS = slice(3, 3 + len(RANK_FIELDS))
_NUM_EXTRA_COLUMNS = len(_HOST_COLUMNS)
_NO_RANK_VALUES = (0.0,) * len(RANK_FIELDS)

Reduced = Dict[str, float]
# One reduced step as the storage takes it: (iteration, names, values aligned with the names).
ReducedRow = Tuple[int, Tuple[str, ...], np.ndarray]
# Consecutive reduced steps with the same names: (iterations, names, values [steps, names]), what
# ``EventStorage.put_scalar_rows`` writes at once.
ReducedTable = Tuple[List[int], Tuple[str, ...], np.ndarray]


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
        # A key without ranks is a reduction of finite values that overflowed (a mean of
        # values near the float64 limit, a total of huge terms).
        named = ", ".join(
            f"{key} (rank {', '.join(map(str, ranks))})" if ranks else f"{key} (overflow of finite values)"
            for key, ranks in bad_ranks.items()
        )
        super().__init__(f"Loss became infinite or NaN at iteration={iteration}: {named}")


@dataclasses.dataclass
class _Layout:
    """Where each registered key lives in an exchanged row.

    A row is ``[values of names | weights of names]`` followed by the ``_HOST_COLUMNS``. A
    counted name's weight is its count ``K + NUM_SAMPLES_SUFFIX`` (from the loss dict); any other
    name's weight is its presence, 1.0 or 0.0, known on the host for free.
    """

    names: List[str]
    count_keys: List[str]  # ``K + NUM_SAMPLES_SUFFIX`` of the counted names, in registry order
    uncounted: List[str]
    entry_columns: np.ndarray  # row column of each of names + count_keys (values, then counts)
    uncounted_weights: np.ndarray  # row columns of the uncounted names' weights
    get_values: Callable[[Mapping[str, Any]], Tuple[Any, ...]]  # names' entries of a dict
    get_counts: Callable[[Mapping[str, Any]], Tuple[Any, ...]]  # count_keys' entries
    get_entries: Callable[[Mapping[str, Any]], Tuple[Any, ...]]  # names' then count_keys' entries
    # Packs one step's entries (floats, as read) into float64 bytes: struct does it about twice
    # as fast as numpy converts a list of floats.
    pack_entries: Callable[..., bytes]

    @classmethod
    def of(cls, names: Sequence[str], counted: Sequence[bool]) -> "_Layout":
        size = len(names)
        count_keys = [n + NUM_SAMPLES_SUFFIX for n, c in zip(names, counted) if c]
        counted_index = [i for i, c in enumerate(counted) if c]
        return cls(
            names=list(names),
            count_keys=count_keys,
            uncounted=[n for n, c in zip(names, counted) if not c],
            entry_columns=np.asarray(list(range(size)) + [size + i for i in counted_index], dtype=np.intp),
            uncounted_weights=np.asarray([size + i for i, c in enumerate(counted) if not c], dtype=np.intp),
            get_values=_tuple_getter(names),
            get_counts=_tuple_getter(count_keys),
            get_entries=_tuple_getter(list(names) + count_keys),
            pack_entries=struct.Struct(f"{size + len(count_keys)}d").pack,
        )

    @property
    def row_size(self) -> int:
        """Length of the ``[values | weights]`` part."""
        return 2 * len(self.names)

    def template(self, keys: Any) -> np.ndarray:
        """A row of zeros holding the presence weights of the uncounted names in ``keys``."""
        row = np.zeros(self.row_size)
        row[self.uncounted_weights] = [name in keys for name in self.uncounted]
        return row


@dataclasses.dataclass
class _PendingStep:
    """One rank's step, packed but not yet exchanged.

    Its row is ``template`` with ``entries`` written at ``columns`` (see ``_Layout``), against
    the registry at packing time (``registry_size`` names): ``entries`` is a list of floats when
    the loss dict was on the CPU, else a tensor on its device, moved to the host at the exchange
    (one transfer for all pending steps).
    """

    iteration: int
    data_time: float
    entries: Any
    columns: np.ndarray
    template: np.ndarray
    registry_size: int
    unregistered: Optional[Dict[str, torch.Tensor]]  # entries the registry lacked, or None
    invalid: Optional[str]  # why this rank's dict cannot be reduced, or None
    rank_values: Optional[np.ndarray]  # [len(RANK_FIELDS)] this rank's timing and memory, or None

    @classmethod
    def steady(
        cls, check: "_KeySetCheck", registry_size: int, iteration: int, data_time: float, entries: List[float],
        rank_values: Optional[np.ndarray],
    ) -> "_PendingStep":
        """A step with the steady key set (``check.steady``), read on the host."""
        return cls(iteration, data_time, entries, check.present_columns, check.template, registry_size, None, None,
                   rank_values)


@dataclasses.dataclass
class _SteadyRun:
    """Consecutive steps added with the steady key set (every registered key and count, nothing
    else; see ``_KeySetCheck.steady``), read on the host: the usual deferred period. A step is a
    tuple ``(iteration, data_time, entries, rank_values)``, cheaper to keep than a
    ``_PendingStep``, and the period is reduced from these columns at once."""

    check: _KeySetCheck  # any steady check of the registry: they pack alike
    registry_size: int
    sampled: bool  # whether each step samples this rank's timing and memory (see _sample)
    steps: List[Tuple[int, float, List[float], Optional[np.ndarray]]] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        # The check's key count and getter, one attribute away for the hot path (add).
        self.size, self.get_present = self.check.size, self.check.get_present

    def pending_steps(self) -> List[_PendingStep]:
        """The steps as the general path takes them."""
        return [_PendingStep.steady(self.check, self.registry_size, *step) for step in self.steps]


@dataclasses.dataclass
class _KeySetCheck:
    """What a loss dict's key set means against the current registry (cached per key tuple)."""

    unregistered: Tuple[str, ...]  # keys (values and their counts) the registry lacks
    invalid: Optional[str]
    complete: bool = False  # holds every registered name (and count): no padding needed
    template: Optional[np.ndarray] = None  # see _Layout.template
    # The registered entries it holds, in layout order, and their row columns.
    get_present: Callable[[Mapping[str, Any]], Tuple[Any, ...]] = lambda source: ()
    present_columns: Optional[np.ndarray] = None
    size: int = 0  # number of keys
    whole: bool = False  # valid, every key registered: get_present reads every key
    # Whole and complete, and not empty: the key set every step has once it is registered.
    steady: bool = False


@dataclasses.dataclass
class _Totals:
    """What the totals add up for one weight dict (cached)."""

    weight_dict: Optional[Dict[str, float]]  # a copy, to notice a change made in place
    # [keys, totals]: column 0 is 1.0 for the terms of total_loss; column 1, with a weight
    # dict, holds the weights of total_loss_weighted (0 for other keys).
    matrix: np.ndarray
    names: Tuple[str, ...]  # total_loss[, total_loss_weighted]
    is_term: np.ndarray  # [keys] bool: column 0 of matrix
    any_term: bool


class LossDictReducer:
    """Reduces loss dicts across ranks; every rank gets the same ``{name: float}``.

    All ranks of ``group`` (default: the world) must call ``reduce`` / ``flush`` the same number
    of times, as with any collective. Per-step use::

        reducer = LossDictReducer(weight_dict)
        values = reducer.reduce(loss_dict, data_time, iteration)   # one collective

    Deferred use (no host sync and no collective per step)::

        reducer.add(loss_dict, data_time, iteration)                # each step
        for iteration, values in reducer.flush(): ...               # once per writer period

    ``weight_dict`` is a plain attribute; it only decides the totals and may be replaced (or
    changed) between steps.
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
        self._checks: Dict[Tuple[str, ...], _KeySetCheck] = {}
        self._last_check: Optional[_KeySetCheck] = None  # of the last packed dict
        self._zeros: Dict[Tuple[torch.device, torch.dtype], torch.Tensor] = {}
        # Steps added and not yet flushed: the general ones, then the open run of steady ones.
        self._pending: List[_PendingStep] = []
        self._run: Optional[_SteadyRun] = None
        self._totals_cache: Optional[_Totals] = None
        # Output names per "which columns are held" mask: the same tuple object every step, so
        # the storage recognises it at a glance.
        self._output_names: Dict[bytes, Tuple[str, ...]] = {}

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
            NonFiniteLossError: on every rank, when a value is NaN/Inf on any rank, or a mean or
                total of finite values overflows.
            ValueError: on every rank, when a rank's dict is malformed (named in the message).
        """
        return _as_dict(self.reduce_row(loss_dict, data_time, iteration))[1]

    def reduce_row(self, loss_dict: Mapping[str, Any], data_time: float, iteration: int) -> ReducedRow:
        """:meth:`reduce`, returning ``(iteration, names, values)``: ``names`` is the same tuple
        object at every step with the same keys, ``values`` a float64 array (what
        ``EventStorage.put_scalars_bulk`` writes as one row)."""
        if self.pending:
            raise RuntimeError(f"reduce() called with {self.pending} deferred steps pending; flush() first")
        distributed, data_time, iteration = comm.is_distributed(), float(data_time), int(iteration)
        entries = self._read_steady(loss_dict)
        if entries is None:
            step = self._pack(loss_dict, data_time, iteration, distributed)
        else:
            if not distributed:
                reduced = self._reduce_steady_step(iteration, data_time, entries)
                if reduced is not None:
                    return reduced
            step = _PendingStep.steady(self._last_check, len(self._names), iteration, data_time, entries,
                                       self._sample(data_time, None, distributed))
        return self._exchange_and_reduce([step])[0]

    def add(self, loss_dict: Mapping[str, Any], data_time: float, iteration: int) -> int:
        """Pack one step and keep it until :meth:`flush`: on the CPU its values, else a row on
        the loss dict's device (no host sync when the values are tensors on one device).

        No communication. Returns the number of steps pending (:attr:`pending`).
        """
        run = self._run
        # The usual step, in as few operations as possible (this is the deferred hot path): a
        # plain dict with the open run's keys, as _key_set_check finds them, of CPU tensors.
        if run is not None and type(loss_dict) is dict and len(loss_dict) == run.size:
            try:
                entries = _read_on_host(run.get_present(loss_dict))
            except KeyError:  # as many keys, other ones: the general path decides
                entries = None
            if entries is not None:
                data_time = float(data_time)
                rank_values = self._rank_stats.sample(data_time, None) if run.sampled else None
                run.steps.append((int(iteration), data_time, entries, rank_values))
                return len(self._pending) + len(run.steps)
        distributed, data_time, iteration = comm.is_distributed(), float(data_time), int(iteration)
        entries = self._read_steady(loss_dict)
        if entries is None:
            self._close_run()
            self._pending.append(self._pack(loss_dict, data_time, iteration, distributed))
        else:
            if run is None:
                sampled = self._rank_stats is not None and distributed
                run = self._run = _SteadyRun(self._last_check, len(self._names), sampled)
            run.steps.append((iteration, data_time, entries, self._sample(data_time, None, distributed)))
        return self.pending

    @property
    def pending(self) -> int:
        """Number of steps added and not yet flushed."""
        return len(self._pending) + (len(self._run.steps) if self._run is not None else 0)

    def _close_run(self) -> None:
        """Move the open run of steady steps to the general pending steps (a step that is not
        steady comes after them)."""
        if self._run is not None:
            self._pending += self._run.pending_steps()
            self._run = None

    def flush(self) -> List[Tuple[int, Reduced]]:
        """Reduce every pending step with one host transfer and one collective.

        Returns:
            ``[(iteration, values)]`` in the order the steps were added (see :meth:`reduce`).
        Raises:
            NonFiniteLossError: naming the first non-finite iteration; its ``reduced_before``
                holds the steps before it. All pending steps are consumed either way.
            ValueError: on every rank, when a rank's dict was malformed.
        """
        return [
            _as_dict((iteration, names, row))
            for iterations, names, table in self.flush_tables()
            for iteration, row in zip(iterations, table)
        ]

    def flush_tables(self) -> List[ReducedTable]:
        """:meth:`flush`, returning ``(iterations, names, values)`` tables: consecutive steps
        with the same names (usually the whole period) as one ``[steps, names]`` float64 array,
        what ``EventStorage.put_scalar_rows`` writes at once."""
        run = self._run
        if run is not None and not self._pending and not comm.is_distributed():
            table = self._reduce_run(run)
            if table is not None:
                self._run = None
                return [table]
        self._close_run()
        steps, self._pending = self._pending, []
        if not steps:
            return []
        return _tables(self._exchange_and_reduce(steps))

    def _exchange_and_reduce(self, steps: List[_PendingStep]) -> List[ReducedRow]:
        """The general reduction of ``steps``: exchanged between the ranks (registering new
        names first, when some rank has any), then reduced on the host."""
        gathered = self._exchange(steps)
        flags = 2 * len(self._names)  # the flags are the first host columns
        if gathered[:, :, flags : flags + 2].any():  # rare; every rank sees it: no hang
            invalid = gathered[:, :, flags + _INVALID]
            if invalid.any():
                self._raise_invalid(steps, invalid)
            self._register(steps)
            gathered = self._exchange(steps)
        return self._reduce(steps, gathered)

    def _reduce_steady_step(self, iteration: int, data_time: float, entries: List[float]) -> Optional[ReducedRow]:
        """The reduction of one steady step (see ``_KeySetCheck.steady``; ``entries`` as read)
        without a process group, when everything is finite. ``None`` otherwise, and the general
        path (:meth:`_exchange_and_reduce`) decides. Same numbers as that path, without its
        ``[world, steps]`` machinery: this is the per-step hot path of a single process. The
        checks run on the floats: for one row, cheaper than numpy calls (about 1 µs each)."""
        size = len(self._names)
        totals = self._totals_for_weight_dict()
        try:
            finite = math.isfinite(math.fsum(entries))  # entries: [values of names | counts]
        except OverflowError:
            finite = False
        if not (totals.any_term and finite and min(entries[size:], default=1.0) > 0):
            return None
        means = np.frombuffer(self._layout.pack_entries(*entries))[:size]
        sums = (means @ totals.matrix).tolist()
        if not all(map(math.isfinite, sums)):  # an overflowing total: the general path raises
            return None
        reduced = np.concatenate((means, sums + [data_time, data_time]))
        return iteration, self._output_names.get(None) or self._output_names_for(None, totals), reduced

    @np.errstate(over="ignore", invalid="ignore")
    def _reduce_run(self, run: _SteadyRun) -> Optional[ReducedTable]:
        """:meth:`_reduce_steady_step` for a deferred period of steady steps at once: a few numpy
        calls over the ``[steps, entries]`` matrix (their cost does not grow with the steps),
        not a loop over the steps, giving one table. ``None`` when it needs the general path
        (a non-finite value, a count that is not positive, no loss term)."""
        totals = self._totals_for_weight_dict()
        if not totals.any_term:
            return None
        size = len(self._names)
        width = len(self._layout.entry_columns)  # every step's entries: [names | counts] floats
        steps, pack = run.steps, self._layout.pack_entries
        matrix = np.frombuffer(b"".join([pack(*step[2]) for step in steps])).reshape(len(steps), width)
        values, counts = matrix[:, :size], matrix[:, size:]
        sums = values @ totals.matrix  # [steps, totals]
        # One sum tells that every value, count and total is finite: else the general path
        # raises, naming what is not (a huge finite sum that overflows only sends us down that
        # path, which finds no problem).
        if not (math.isfinite(matrix.sum() + sums.sum()) and (not counts.size or counts.min() > 0)):
            return None
        # [steps, keys | totals | data_time, rank_data_time]: one rank's values are the means
        times = np.array([step[1] for step in steps])[:, None]
        table = np.concatenate((values, sums, times, times), axis=1)
        names = self._output_names.get(None) or self._output_names_for(None, totals)
        return [step[0] for step in steps], names, table

    # ------------------------------------------------------------------ packing (per step)
    def _pack(
        self, loss_dict: Mapping[str, Any], data_time: float, iteration: int, distributed: bool
    ) -> _PendingStep:
        """One step's entries and host values; ``distributed``: whether a process group exists
        (only then is there another rank to compare this rank's timing with)."""
        check, present = self._key_set_check(loss_dict)
        size, layout = len(self._names), self._layout
        invalid, unregistered, source = check.invalid, None, loss_dict
        if invalid is None:
            try:
                entries, columns = self._pack_entries(present, source, layout, check)
            except (TypeError, RuntimeError):
                # Python numbers, mixed-device tensors, or garbage: normalize entry by entry
                # (slow, with a named error) and pack again.
                source, invalid = _normalized(loss_dict)
                if invalid is None:
                    entries, columns = self._pack_entries(check.get_present(source), source, layout, check)
        if invalid is None and check.unregistered:
            # Rare (a new key set): keep the new entries, detached, to widen the row later.
            unregistered, invalid = _normalized({key: source[key] for key in check.unregistered})
        if invalid is not None:
            empty = np.zeros(0, dtype=np.intp)
            return _PendingStep(
                iteration, data_time, np.zeros(0), empty, layout.template(()), size, None, invalid, self._sample(data_time, None, distributed)
            )
        rank_values = self._sample(data_time, entries.device if isinstance(entries, torch.Tensor) else None, distributed)
        return _PendingStep(iteration, data_time, entries, columns, check.template, size, unregistered, None, rank_values)

    def _read_steady(self, loss_dict: Mapping[str, Any]) -> Optional[List[float]]:
        """The entries of a step with the steady key set (see ``_KeySetCheck.steady``; it is
        ``self._last_check`` afterwards), read on the host (:func:`_read_on_host`). ``None`` for
        anything else: the general path (:meth:`_pack`) packs it, or names what is wrong."""
        check, present = self._key_set_check(loss_dict)
        return _read_on_host(present) if check.steady else None

    def _sample(self, data_time: float, device: Optional[torch.device], distributed: bool) -> Optional[np.ndarray]:
        """This rank's timing and memory for the step packed now (engine/rank_stats.py), or None
        when they are not logged (no other rank to compare with: not sampled at all)."""
        if self._rank_stats is None or not distributed:
            return None
        return self._rank_stats.sample(data_time, device)

    def _key_set_check(self, loss_dict: Mapping[str, Any]) -> Tuple[_KeySetCheck, Tuple[Any, ...]]:
        """What ``loss_dict``'s key set means (cached per key set) and the registered entries it
        holds, in layout order."""
        check = self._last_check
        # Usually the key set of the last step, found without building or hashing it: a plain
        # dict with as many keys as that one, holding each of its keys, holds the same keys.
        # (Only a plain dict: a defaultdict would make up a missing key.)
        if check is not None and check.whole and type(loss_dict) is dict and len(loss_dict) == check.size:
            try:
                return check, check.get_present(loss_dict)
            except KeyError:  # as many keys, other ones
                pass
        keys = tuple(loss_dict)
        check = self._checks.get(keys)
        if check is None:
            check = self._checks[keys] = self._check_key_set(keys)
        self._last_check = check
        return check, check.get_present(loss_dict)

    def _pack_entries(
        self, present: Tuple[Any, ...], source: Mapping[str, Any], layout: _Layout, check: _KeySetCheck
    ) -> Tuple[Any, np.ndarray]:
        """The registered entries of ``source`` (``present``: those it holds, in layout order)
        and their row columns.

        CPU tensors are read one by one (``Tensor.item`` costs less than stacking them) into a
        list of floats. Tensors on an accelerator are stacked on their device with
        ``torch.stack`` (asynchronous: no host sync), absent names padded with zeros; that row
        crosses to the host at the exchange.
        """
        if present and isinstance(present[0], torch.Tensor) and not present[0].is_cpu:
            return self._stack_on_device(source, layout, check.complete), layout.entry_columns
        return list(map(torch.Tensor.item, present)), check.present_columns

    def _stack_on_device(self, source: Mapping[str, Any], layout: _Layout, complete: bool) -> torch.Tensor:
        """``[values of names | counts of count_keys]`` as one float64 vector on the device."""
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
            row = torch.cat(parts) if len(parts) == 2 else parts[0]
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
        entry_keys = layout.names + layout.count_keys
        held = [position for position, key in enumerate(entry_keys) if key in present]
        complete = len(held) == len(entry_keys)
        return _KeySetCheck(
            tuple(unregistered),
            None,
            complete,
            layout.template(present),
            layout.get_entries if complete else _tuple_getter([entry_keys[position] for position in held]),
            layout.entry_columns if complete else layout.entry_columns[held],
            size=len(keys),
            whole=not unregistered,
            steady=complete and not unregistered and bool(entry_keys),
        )

    # ------------------------------------------------------------------ exchange (per flush)
    def _exchange(self, steps: List[_PendingStep]) -> np.ndarray:
        """All ranks' packed steps as a host array ``[world, steps, row length]``, after one
        device-to-host transfer.

        Entries kept on the device the collective runs on (CUDA under NCCL) are written into
        the matrix there, once its host part went over, and come back with the gathered rows;
        any other device's entries (one process, gloo) cross to the host first, together.
        """
        size = steps[0].registry_size  # every pending step was packed against one registry
        world_size = dist.get_world_size(self._group) if comm.is_distributed() else 1
        device = comm.collective_device(self._group) if world_size > 1 else None
        matrix = np.empty((len(steps), 2 * size + _NUM_EXTRA_COLUMNS))
        rows = matrix[:, : 2 * size]
        entries, late = self._host_entries(steps, device)
        first = steps[0]
        if len(steps) == 1 or all(step.columns is first.columns and step.template is first.template for step in steps):
            rows[:] = first.template  # the usual case: one key set, written for all steps at once
            rows[:, first.columns] = entries
        else:
            for row, step, step_entries in zip(rows, steps, entries):
                row[:] = step.template
                row[step.columns] = step_entries
        matrix[:, 2 * size : 2 * size + 3] = [  # _HOST_COLUMNS
            (step.unregistered is not None, step.invalid is not None, step.data_time) for step in steps
        ]
        matrix[:, 2 * size + _RANK_COLUMNS.start :] = [
            _NO_RANK_VALUES if step.rank_values is None else step.rank_values for step in steps
        ]
        if size != len(self._names):
            matrix = self._widened(steps, matrix)
        if world_size == 1:
            return matrix[None]
        # Host to device without waiting for the device (a blocking copy synchronises the stream).
        packed = torch.from_numpy(matrix).to(device, non_blocking=True)
        if late:
            self._write_late_entries(packed, steps, late)
        parts = [torch.empty_like(packed) for _ in range(world_size)]
        dist.all_gather(parts, packed, group=self._group)
        if self._rank_stats is not None:
            self._rank_stats.exchanged()
        return torch.stack(parts).cpu().numpy()

    @staticmethod
    def _host_entries(steps: List[_PendingStep], device: Optional[torch.device]) -> Tuple[List[Any], List[int]]:
        """Every step's entries on the host (lists of floats, arrays), and the positions of the
        steps whose entries are kept on ``device`` (the collective's, None without one): zeros
        here, written on the device later. Entries on any other device cross in one transfer."""
        on_device = [step.entries for step in steps if isinstance(step.entries, torch.Tensor)]
        if not on_device:
            return [step.entries for step in steps], []
        late = [
            position
            for position, step in enumerate(steps)
            if isinstance(step.entries, torch.Tensor) and step.entries.device == device
        ]
        crossing = [entries for entries in on_device if entries.device != device]
        host = torch.cat(crossing).cpu().numpy() if crossing else np.zeros(0)
        moved = iter(np.split(host, np.cumsum([len(entries) for entries in crossing])[:-1]))
        return [
            step.entries if not isinstance(step.entries, torch.Tensor)
            else np.zeros(len(step.entries)) if step.entries.device == device
            else next(moved)
            for step in steps
        ], late

    def _write_late_entries(self, packed: torch.Tensor, steps: List[_PendingStep], late: List[int]) -> None:
        """Write the entries of the steps at positions ``late``, kept on ``packed``'s device
        (``[steps, row length]``), into their columns there: index tensors copied without
        waiting and an index write, no host sync."""
        old, size = steps[0].registry_size, len(self._names)
        # Device rows are packed complete, against the one registry of the pending steps: one
        # set of columns, shifted past the names registered since (see _widened).
        columns = steps[late[0]].columns
        columns = np.where(columns < old, columns, columns + size - old)
        row_index = torch.tensor(late)[:, None].to(packed.device, non_blocking=True)
        column_index = torch.from_numpy(columns).to(packed.device, non_blocking=True)
        packed[row_index, column_index] = torch.stack([steps[position].entries for position in late])

    def _widened(self, steps: List[_PendingStep], matrix: np.ndarray) -> np.ndarray:
        """``matrix`` (rows packed against a smaller registry) against the current registry,
        with the entries the steps held for the names registered since."""
        old, size = steps[0].registry_size, len(self._names)
        added = _Layout.of(self._names[old:], self._counted[old:])
        widened = np.zeros((len(steps), 2 * size + _NUM_EXTRA_COLUMNS))
        widened[:, :old] = matrix[:, :old]
        widened[:, size : size + old] = matrix[:, old : 2 * old]
        widened[:, 2 * size :] = matrix[:, 2 * old :]
        for row, step in zip(widened, steps):
            source = step.unregistered or {}
            new = added.template(source)
            new[added.entry_columns] = [float(source.get(key, 0.0)) for key in added.names + added.count_keys]
            row[old:size], row[size + old : 2 * size] = new[: size - old], new[size - old :]
        return widened

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
        self._checks.clear()
        self._last_check = None
        self._totals_cache = None
        self._output_names.clear()

    def _raise_invalid(self, steps: List[_PendingStep], invalid: np.ndarray) -> None:
        """Every rank raises the same ValueError for the first step some rank could not pack;
        ``invalid`` is ``[world, steps]``."""
        first = int(np.flatnonzero(invalid.any(axis=0))[0])
        messages = comm.all_gather(steps[first].invalid, group=self._group)
        named = "; ".join(f"rank {rank}: {msg}" for rank, msg in enumerate(messages) if msg)
        raise ValueError(f"Invalid loss dict at iteration={steps[first].iteration}: {named}")

    # ------------------------------------------------------------------ reduction (host)
    @np.errstate(over="ignore", invalid="ignore")
    def _reduce(self, steps: List[_PendingStep], gathered: np.ndarray) -> List[ReducedRow]:
        """Every rank's identical reduction of ``gathered`` (``[world, steps, row length]``)."""
        size = len(self._names)
        values = gathered[:, :, :size]  # [world, steps, keys]
        weights = gathered[:, :, size : 2 * size]
        host = gathered[:, :, 2 * size :]  # [world, steps, _HOST_COLUMNS]
        per_rank = None  # per step, every rank's timing and memory as scalars (several ranks)
        if self._rank_stats is not None and len(gathered) > 1:
            per_rank = self._rank_stats.decode(host[:, :, _RANK_COLUMNS])
        last = len(steps)
        bad = None
        # One sum tells whether everything is finite (a huge finite sum that overflows only
        # sends us down the careful path, which finds no problem).
        finite = math.isfinite(gathered.sum())
        if finite:
            means, held, all_held = _weighted_means(values, weights)  # [steps, keys]
        # Every weight > 0 (all_held on one rank) rules out a negative count without a look.
        if not finite or (self._layout.count_keys and not (all_held and len(gathered) == 1) and weights.min() < 0):
            # Rare: find the first step with a real problem, and mask out entries without
            # weight (a count of 0 may stand beside a NaN mean over nothing).
            present = weights > 0
            bad = (present & ~np.isfinite(values), ~np.isfinite(weights), weights < 0)
            problems = (bad[0] | bad[1] | bad[2]).any(axis=(0, 2))
            if problems.any():
                last = int(np.argmax(problems))
            usable = present & np.isfinite(values) & np.isfinite(weights)  # differs only in problem steps
            values, weights = np.where(usable, values, 0.0), np.where(usable, weights, 0.0)
            means, held, all_held = _weighted_means(values, weights)
        totals = self._totals_for_weight_dict()
        reduced = size + len(totals.names)
        data_times = (host[0] if len(host) == 1 else host.max(axis=0))[:, _DATA_TIME].tolist()
        # [steps, keys | totals | data_time, rank_data_time]
        table = np.concatenate(
            (means, means @ totals.matrix, [(dt, step.data_time) for dt, step in zip(data_times, steps)]), axis=1
        )
        if totals.any_term and all_held:  # the usual case: every key held at every step
            complete = [True] * len(steps)
        else:
            has_terms = (held & totals.is_term).any(axis=1)  # a total needs a held term
            complete = (held.all(axis=1) & has_terms).tolist()
        # Finite inputs whose mean or total overflowed raise as a NaN does, on every rank.
        overflows = not math.isfinite(table[:last, :reduced].sum())
        results = []
        for index in range(last):
            row = table[index]
            if complete[index]:
                names = self._output_names.get(None) or self._output_names_for(None, totals)
            else:
                shown = np.concatenate([held[index], np.repeat(has_terms[index], len(totals.names)), [True, True]])
                names, row = self._output_names_for(shown, totals), row[shown]
            if overflows:
                overflowed = {name: [] for name, value in zip(names, row[:-2].tolist()) if not math.isfinite(value)}
                if overflowed:
                    raise NonFiniteLossError(steps[index].iteration, overflowed, list(map(_as_dict, results)))
            if per_rank is not None and per_rank[index]:
                names, row = self._with_rank_scalars(names, row, per_rank[index])
            results.append((steps[index].iteration, names, row))
        if last < len(steps):
            self._raise_for_step(
                steps[last].iteration, *(mask[:, last] for mask in bad), list(map(_as_dict, results))
            )
        return results

    def _output_names_for(self, shown: Optional[np.ndarray], totals: "_Totals") -> Tuple[str, ...]:
        """The names of a reduced row: every registered name, the totals and the data times, or
        those ``shown`` selects; the same tuple object every time (the storage's fast path)."""
        key = None if shown is None else shown.tobytes()
        names = self._output_names.get(key)
        if names is None:
            every = self._names + list(totals.names) + [DATA_TIME, RANK_DATA_TIME]
            names = tuple(every) if shown is None else tuple(itertools.compress(every, shown.tolist()))
            self._output_names[key] = names
        return names

    def _with_rank_scalars(
        self, names: Tuple[str, ...], row: np.ndarray, rank_scalars: Dict[str, float]
    ) -> Tuple[Tuple[str, ...], np.ndarray]:
        """``names`` / ``row`` followed by the per-rank scalars (engine/rank_stats.py), with the
        same names tuple object whenever the same keys come back."""
        key = (names, tuple(rank_scalars))
        combined = self._output_names.get(key)
        if combined is None:
            combined = self._output_names[key] = names + key[1]
        return combined, np.concatenate((row, list(rank_scalars.values())))

    def _totals_for_weight_dict(self) -> "_Totals":
        """What the totals add up for the current ``weight_dict`` (recomputed when it changes)."""
        weight_dict, cache = self.weight_dict, self._totals_cache
        if cache is not None and (
            cache.weight_dict is None if weight_dict is None else cache.weight_dict == weight_dict
        ):
            return cache
        if weight_dict is None:
            in_total = [name.startswith("loss") and not counted for name, counted in zip(self._names, self._counted)]
            columns, names = [in_total], (TOTAL_LOSS,)
        else:
            in_total = [name in weight_dict for name in self._names]
            weights = [weight_dict.get(name, 0.0) for name in self._names]
            columns, names = [in_total, weights], (TOTAL_LOSS, TOTAL_LOSS_WEIGHTED)
        if cache is None or cache.names != names:
            self._output_names.clear()
        copy = None if weight_dict is None else dict(weight_dict)
        is_term = np.array(in_total, dtype=bool)
        matrix = np.array(columns, dtype=np.float64).T.reshape(len(self._names), len(names))
        self._totals_cache = _Totals(copy, matrix, names, is_term, bool(is_term.any()))
        return self._totals_cache

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


def _weighted_means(values: np.ndarray, weights: np.ndarray) -> Tuple[np.ndarray, np.ndarray, bool]:
    """``sum_r w_r v_r / sum_r w_r`` over ranks (axis 0), whether any rank held each key
    (``[steps, keys]`` both), and whether every key was held at every step.

    Computed as ``sum_r (w_r / sum w) v_r`` with the weights first scaled by their maximum, so
    finite inputs cannot overflow (``1.5e308`` on two ranks averages to ``1.5e308``, where the
    sum first would give ``inf``). Entries without weight give 0 (not held).
    """
    if len(values) == 1:  # one rank: its values are the means
        held = weights[0] > 0
        all_held = bool(held.all())
        return (values[0] if all_held else np.where(held, values[0], 0.0)), held, all_held
    scale = weights.max(axis=0)
    held = scale > 0
    shares = weights / np.where(held, scale, 1.0)  # in [0, 1]
    shares /= np.where(held, shares.sum(axis=0), 1.0)
    return (shares * values).sum(axis=0), held, bool(held.all())


def _read_on_host(present: Tuple[Any, ...]) -> Optional[List[float]]:
    """``present`` (a dict's entries) as floats, read from CPU tensors one ``Tensor.item`` each
    (cheaper than stacking them); ``None`` for a number, a tensor of several values, or a first
    entry on a device (a device dict is stacked there, not read here): the general path packs
    those."""
    try:
        return list(map(torch.Tensor.item, present)) if present[0].is_cpu else None
    except (AttributeError, TypeError, RuntimeError):  # a number; several values (see _pack)
        return None


def _tables(rows: List[ReducedRow]) -> List[ReducedTable]:
    """Consecutive ``rows`` with the same names tuple (the same object) as one table each."""
    tables = []
    for _, same_names in itertools.groupby(rows, key=lambda row: id(row[1])):
        group = list(same_names)
        tables.append(([row[0] for row in group], group[0][1], np.stack([row[2] for row in group])))
    return tables


def _as_dict(reduced: ReducedRow) -> Tuple[int, Reduced]:
    iteration, names, values = reduced
    return iteration, dict(zip(names, values.tolist()))


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


def _put(storage: Any, reduced: ReducedRow, prefix: str) -> None:
    """Put one reduced step into ``storage`` as one row, every name prefixed with ``prefix``."""
    iteration, names, values = reduced
    storage.put_scalars_bulk(_prefixed(prefix, names) if prefix else names, values, cur_iter=iteration)


@functools.lru_cache(maxsize=64)
def _prefixed(prefix: str, names: Tuple[str, ...]) -> Tuple[str, ...]:
    # The same tuple object every step, so the storage recognises the row at a glance.
    return tuple(prefix + name for name in names)


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
            _put(storage, self.reducer.reduce_row(loss_dict, data_time, iteration), self.prefix)
            return
        if self.reducer.add(loss_dict, data_time, iteration) >= self.period or (iteration + 1) % self.period == 0:
            self.flush()

    def flush(self) -> None:
        """Reduce and put every buffered step (a no-op in per-step mode or with none pending)."""
        if not self.reducer.pending:
            return
        storage = get_event_storage()
        try:
            tables = self.reducer.flush_tables()
        except NonFiniteLossError as error:
            for iteration, values in error.reduced_before:
                _put(storage, (iteration, tuple(values), np.fromiter(values.values(), np.float64)), self.prefix)
            raise
        for iterations, names, table in tables:
            storage.put_scalar_rows(_prefixed(self.prefix, names) if self.prefix else names, table, iterations)


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
    _put(storage, reducer.reduce_row(loss_dict, data_time, iteration), prefix)
