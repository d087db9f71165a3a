"""engine.metrics across 2 and 3 gloo ranks whose key sets differ.

One spawned job per world size runs every scenario (spawning costs seconds); the parent checks
the results against hand-computed means.

The script, per rank (values are multiplied by ``k = step + 1``; data_time is not):

    rank 0: loss_ce 1.0, loss_relation_synthetic 0.5, loss_relation_real 0.2 over 2 samples,
            data_time 0.1
    rank 1: loss_ce 2.0, no loss_relation_synthetic, loss_relation_real 0.6 over 6 samples,
            data_time 0.7, and from step 3 on a new key loss_new 3.0
    rank 2: loss_ce 4.0, loss_relation_synthetic 1.5, loss_relation_real NaN over 0 samples
            (a mean over nothing), k_log_rank2_only 9.0 (no other rank has it), data_time 0.3
"""

import collections

import pytest
import torch
import torch.distributed as dist

from dist_utils import run_distributed
from engine.rank_stats import is_rank_key
from engine.metrics import NUM_SAMPLES_SUFFIX, LossDictReducer, MetricsWriter, NonFiniteLossError, write_metrics
from events.storage import EventStorage
from test_metrics import _cuda_syncs, detr_like_dict

NUM_STEPS = 5
COUNT = NUM_SAMPLES_SUFFIX
WATCHED_COLLECTIVES = (
    "all_gather",
    "all_gather_object",
    "all_gather_into_tensor",
    "all_reduce",
    "reduce",
    "gather",
    "gather_object",
    "broadcast",
    "broadcast_object_list",
    "barrier",
    "scatter",
)


def scripted_loss_dict(rank, step):
    def t(value):
        return torch.tensor(value * (step + 1))

    if rank == 0:
        loss_dict = {
            "loss_ce": t(1.0),
            "loss_relation_synthetic": t(0.5),
            "loss_relation_real": t(0.2),
            "loss_relation_real" + COUNT: torch.tensor(2),
        }
    elif rank == 1:
        loss_dict = {
            "loss_ce": t(2.0),
            "loss_relation_real": t(0.6),
            "loss_relation_real" + COUNT: torch.tensor(6),
        }
        if step >= 3:
            loss_dict["loss_new"] = t(3.0)
    else:
        loss_dict = {
            "loss_ce": t(4.0),
            "loss_relation_synthetic": t(1.5),
            "loss_relation_real": torch.tensor(float("nan")),
            "loss_relation_real" + COUNT: torch.tensor(0),
            "k_log_rank2_only": t(9.0),
        }
    return loss_dict


DATA_TIME = {0: 0.1, 1: 0.7, 2: 0.3}


def expected_values(world_size, step):
    """Hand-computed reductions of the script above."""
    k = step + 1
    if world_size == 2:
        expected = {
            "loss_ce": (1.0 + 2.0) / 2 * k,
            "loss_relation_synthetic": 0.5 * k,  # rank 1 lacks it: not averaged with a zero
            "loss_relation_real": (0.2 * 2 + 0.6 * 6) / (2 + 6) * k,  # 0.5, not (0.2 + 0.6) / 2
        }
    else:
        expected = {
            "loss_ce": (1.0 + 2.0 + 4.0) / 3 * k,
            "loss_relation_synthetic": (0.5 + 1.5) / 2 * k,
            "loss_relation_real": (0.2 * 2 + 0.6 * 6) / (2 + 6) * k,  # rank 2's NaN has no samples
            "k_log_rank2_only": 9.0 * k,
        }
    if step >= 3:
        expected["loss_new"] = 3.0 * k
    expected["total_loss"] = sum(
        v for name, v in expected.items() if name in ("loss_ce", "loss_relation_synthetic", "loss_new")
    )
    expected["data_time"] = 0.7
    return expected


def _count_collectives():
    """Wrap the torch.distributed collectives (inside this worker only) with call counters."""
    counts = collections.Counter()
    for name in WATCHED_COLLECTIVES:
        original = getattr(dist, name, None)
        if original is None:
            continue

        def counting(*args, _name=name, _original=original, **kwargs):
            counts[_name] += 1
            return _original(*args, **kwargs)

        setattr(dist, name, counting)
    return counts


def _calls_during(counts, action):
    before = counts.copy()
    result = action()
    return result, dict(counts - before)


class _RowsOnTheCollectiveDevice(LossDictReducer):
    """Packs CPU tensors as CUDA tensors are packed: one row kept on their device. Under gloo
    that device is the collective's (the CPU), as a CUDA device is under NCCL, so the exchange
    takes the NCCL path: the row is written into the matrix on that device, no transfer first."""

    def _read_steady(self, loss_dict):
        return None  # a device row is never read on the host per step: the general packing

    def _pack_entries(self, present, source, layout, check):
        if present and isinstance(present[0], torch.Tensor):
            return self._stack_on_device(source, layout, check.complete), layout.entry_columns
        return super()._pack_entries(present, source, layout, check)


def _count_host_reads():
    """Wrap the tensor methods that read a device tensor on the host with call counters."""
    counts = collections.Counter()
    for name in ("cpu", "item", "tolist", "__float__"):
        original = getattr(torch.Tensor, name)

        def counting(self, *args, _name=name, _original=original, **kwargs):
            counts[_name] += 1
            return _original(self, *args, **kwargs)

        setattr(torch.Tensor, name, counting)
    return counts


def _scripted_runs(make_reducer, counts, rank):
    """The script per step, then as two deferred periods; ``counts``' calls during each.

    Returns the per-step reducer, the deferred one, and ``{"per_step": [values per step],
    "per_step_calls", "deferred_periods": [[(iteration, values)] per period], "deferred_add_calls",
    "deferred_flush_calls"}``.
    """
    runs = collections.defaultdict(list)
    per_step = make_reducer()
    for step in range(NUM_STEPS):
        values, calls = _calls_during(
            counts, lambda: per_step.reduce(scripted_loss_dict(rank, step), DATA_TIME[rank], 100 + step)
        )
        runs["per_step"].append(values)
        runs["per_step_calls"].append(calls)
    deferred = make_reducer()
    for period in range(2):
        _, add_calls = _calls_during(
            counts,
            lambda: [
                deferred.add(scripted_loss_dict(rank, step), DATA_TIME[rank], 100 + step)
                for step in range(NUM_STEPS)
            ],
        )
        flushed, flush_calls = _calls_during(counts, deferred.flush)
        runs["deferred_periods"].append(flushed)
        runs["deferred_add_calls"].append(add_calls)
        runs["deferred_flush_calls"].append(flush_calls)
    return per_step, deferred, dict(runs)


def _reduction_worker(rank, world_size):
    per_step, deferred, out = _scripted_runs(LossDictReducer, _count_collectives(), rank)

    # NaN on the last rank only, at iteration 201: every rank must raise, then go on in step.
    out["nan"] = []
    for iteration in (200, 201, 202):
        loss_dict = scripted_loss_dict(rank, 0)
        if iteration == 201 and rank == world_size - 1:
            loss_dict["loss_ce"] = torch.tensor(float("inf"))
        try:
            out["nan"].append(("ok", per_step.reduce(loss_dict, 0.0, iteration)["loss_ce"]))
        except NonFiniteLossError as error:
            out["nan"].append(("raised", str(error), error.iteration, error.keys))

    # A malformed dict on rank 1 only: every rank raises the same one-line error.
    loss_dict = scripted_loss_dict(rank, 0)
    if rank == 1:
        loss_dict["loss_orphan" + COUNT] = torch.tensor(3)
    try:
        per_step.reduce(loss_dict, 0.0, 300)
        out["invalid"] = "no error"
    except ValueError as error:
        out["invalid"] = str(error)

    # Deferred NaN: found at the flush, first bad iteration named, steps before it kept.
    for step in range(4):
        loss_dict = scripted_loss_dict(rank, step)
        if rank == 0 and step >= 2:
            loss_dict["loss_relation_synthetic"] = torch.tensor(float("nan"))
        deferred.add(loss_dict, 0.0, 400 + step)
    try:
        deferred.flush()
        out["deferred_nan"] = "no error"
    except NonFiniteLossError as error:
        out["deferred_nan"] = (str(error), [it for it, _ in error.reduced_before])

    # Finite values near the float64 limit on every rank: the mean must not overflow (a sum
    # first would give inf); a total that does overflow raises on every rank at once.
    huge = torch.tensor(1.5e308, dtype=torch.float64)
    near_limit = LossDictReducer()
    out["overflow"] = []
    for iteration, loss_dict in (
        (600, {"loss_ce": huge, "k_log": torch.tensor(1.0)}),
        (601, {"loss_ce": huge, "loss_bbox": huge}),
        (602, {"loss_ce": huge, "loss_bbox": torch.tensor(1.0, dtype=torch.float64)}),
    ):
        try:
            reduced = near_limit.reduce(loss_dict, 0.0, iteration)
            out["overflow"].append(("ok", reduced["loss_ce"], reduced["total_loss"]))
        except NonFiniteLossError as error:
            out["overflow"].append(("raised", str(error), error.iteration, error.keys))

    # write_metrics: every rank's storage holds the same reduced values.
    with EventStorage(start_iter=500) as storage:
        write_metrics(scripted_loss_dict(rank, 0), DATA_TIME[rank], prefix="train/")
    out["storage"] = {name: value for name, (value, _) in storage.latest().items()}

    # Last: the host-read counters stay on torch.Tensor.
    out["on_device"] = _scripted_runs(_RowsOnTheCollectiveDevice, _count_host_reads(), rank)[2]
    return out


@pytest.fixture(scope="module", params=[2, 3], ids=["2-ranks", "3-ranks"])
def job(request):
    world_size = request.param
    return world_size, run_distributed(_reduction_worker, world_size=world_size, timeout=120)


@pytest.mark.distributed
def test_per_step_means_are_exact_and_identical_on_every_rank(job):
    world_size, results = job
    for rank, result in enumerate(results):
        for step, values in enumerate(result["per_step"]):
            expected = expected_values(world_size, step)
            expected["rank_data_time"] = DATA_TIME[rank]
            assert values == pytest.approx(expected), f"rank {rank} step {step}"


@pytest.mark.distributed
def test_one_collective_per_step_in_steady_state(job):
    world_size, results = job
    register = {"all_gather": 2, "all_gather_object": 1}  # first step; step 3 brings loss_new
    steady = {"all_gather": 1}
    for result in results:
        assert result["per_step_calls"] == [register, steady, steady, register, steady]


@pytest.mark.distributed
def test_deferred_mode_matches_per_step_with_one_collective_per_period(job):
    world_size, results = job
    for result in results:
        per_step = [(100 + step, values) for step, values in enumerate(result["per_step"])]
        assert result["deferred_periods"] == [per_step, per_step]
        assert result["deferred_add_calls"] == [{}, {}]
        # The first period registers the keys; the second is one all_gather for 5 steps.
        assert result["deferred_flush_calls"] == [
            {"all_gather": 2, "all_gather_object": 1},
            {"all_gather": 1},
        ]


@pytest.mark.distributed
def test_rows_on_the_collective_device_give_the_same_values_and_cross_to_the_host_once(job):
    # What NCCL does with a CUDA loss dict: one transfer per exchange, the gathered matrix.
    _, results = job
    once = {"cpu": 1}
    for result in results:
        on_device = result["on_device"]
        assert on_device["per_step"] == result["per_step"]
        assert on_device["deferred_periods"] == result["deferred_periods"]
        # Steps 0 and 3 register keys (two exchanges, the second widened with the new names);
        # the first period registers them again for the deferred reducer.
        steady = [reads for step, reads in enumerate(on_device["per_step_calls"]) if step not in (0, 3)]
        assert steady == [once] * 3
        assert on_device["deferred_add_calls"] == [{}, {}]
        assert on_device["deferred_flush_calls"][1] == once


@pytest.mark.distributed
def test_non_finite_value_on_one_rank_raises_on_every_rank_and_training_goes_on(job):
    world_size, results = job
    last = world_size - 1
    for result in results:
        first, nan, after = result["nan"]
        assert first == ("ok", pytest.approx(expected_values(world_size, 0)["loss_ce"]))
        assert nan == (
            "raised",
            f"Loss became infinite or NaN at iteration=201: loss_ce (rank {last})",
            201,
            ["loss_ce"],
        )
        assert after == first


@pytest.mark.distributed
def test_malformed_dict_on_one_rank_raises_the_same_error_on_every_rank(job):
    _, results = job
    for result in results:
        assert result["invalid"] == (
            "Invalid loss dict at iteration=300: rank 1: 'loss_orphan__num_samples' has no value key 'loss_orphan'"
        )


@pytest.mark.distributed
def test_deferred_nan_names_the_first_bad_iteration_on_every_rank(job):
    _, results = job
    for result in results:
        message, reduced_before = result["deferred_nan"]
        assert (
            message == "Loss became infinite or NaN at iteration=402: loss_relation_synthetic (rank 0)"
        )
        assert reduced_before == [400, 401]


@pytest.mark.distributed
def test_write_metrics_puts_the_same_values_on_every_rank(job):
    world_size, results = job
    expected = {"train/" + name: value for name, value in expected_values(world_size, 0).items()}
    per_rank_of = []
    for rank, result in enumerate(results):
        stored = dict(result["storage"])
        assert stored.pop("train/rank_data_time") == pytest.approx(DATA_TIME[rank])
        per_rank_of.append({k: stored.pop(k) for k in list(stored) if is_rank_key(k[len("train/"):])})
        assert stored == pytest.approx(expected)
    # Every rank's own data time, carried by the same collective, identical on every rank.
    per_rank = per_rank_of[0]
    assert all(other == per_rank for other in per_rank_of[1:])
    data_times = [DATA_TIME[r] for r in range(world_size)]
    assert [per_rank[f"train/rank_data_time/r{r}"] for r in range(world_size)] == pytest.approx(data_times)
    assert per_rank["train/rank_data_time/max"] == pytest.approx(max(data_times))
    assert per_rank["train/rank_data_time/argmax"] == data_times.index(max(data_times))
    assert all(per_rank[f"train/rank_max_mem/r{r}"] > 0 for r in range(world_size))  # peak RSS, MB


@pytest.mark.distributed
def test_finite_values_near_the_limit_average_without_overflow_and_an_overflow_raises_everywhere(job):
    _, results = job
    for result in results:
        assert result["overflow"] == [
            ("ok", 1.5e308, 1.5e308),
            ("raised", "Loss became infinite or NaN at iteration=601: total_loss (overflow of finite values)", 601, ["total_loss"]),
            ("ok", 1.5e308, 1.5e308 + 1.0),
        ]


def _nccl_sync_worker(rank, world_size):
    torch.cuda.set_device(rank)
    group = dist.new_group(backend="nccl")  # beside the gloo world: the reducer's collective
    cuda_dict = {name: value.cuda() for name, value in detr_like_dict().items()}
    with EventStorage():
        per_step = MetricsWriter(group=group)
        per_step.write(cuda_dict, 0.0, cur_iter=0)  # registration and NCCL's first collective
        per_step_syncs = [_cuda_syncs(lambda: per_step.write(cuda_dict, 0.0, cur_iter=it)) for it in range(1, 4)]
        deferred = MetricsWriter(deferred=True, period=4, group=group)
        deferred.write(cuda_dict, 0.0, cur_iter=0)
        deferred.flush()
        add_syncs = [_cuda_syncs(lambda: deferred.write(cuda_dict, 0.0, cur_iter=it)) for it in (1, 2)]
        flush_syncs = _cuda_syncs(lambda: deferred.write(cuda_dict, 0.0, cur_iter=3))
    return per_step_syncs, add_syncs, flush_syncs


@pytest.mark.distributed
@pytest.mark.skipif(
    torch.cuda.device_count() < 2 or not dist.is_nccl_available(), reason="needs 2 CUDA devices and NCCL"
)
def test_one_host_sync_per_step_under_nccl_and_none_deferred():
    # The rows stay on the GPU through the all_gather: the gathered matrix is the one transfer.
    for result in run_distributed(_nccl_sync_worker, world_size=2, timeout=120):
        assert result == ([1, 1, 1], [0, 0], 1)
