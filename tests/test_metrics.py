"""engine.metrics in one process: the reduction's semantics (totals, counts, NaN, bad input),
deferred mode, and the storage-facing write_metrics / MetricsWriter. The cross-rank behaviour
lives in test_metrics_distributed.py."""

import collections
import math

import pytest
import torch

from engine.metrics import (
    NUM_SAMPLES_SUFFIX,
    LossDictReducer,
    MetricsWriter,
    NonFiniteLossError,
    backward_total,
    is_loss_term,
    write_metrics,
)
from events.storage import EventStorage

T = torch.tensor
NAN, INF = float("nan"), float("inf")


def detr_like_dict():
    """Loss terms, an aux-layer term, logs that are not terms, and a counted group statistic."""
    return {
        "loss_ce": T(1.5),
        "loss_bbox": T(0.25),
        "loss_ce_0": T(2.0),
        "k_log_layer0": T(7.0),
        "class_error": T(50.0),
        "cardinality_error": T(3.0),
        "loss_relation_real": T(0.8),
        "loss_relation_real" + NUM_SAMPLES_SUFFIX: T(4),
    }


def test_one_rank_values_pass_through_and_total_sums_loss_terms_only():
    reduced = LossDictReducer().reduce(detr_like_dict(), data_time=0.3, iteration=0)
    assert reduced == pytest.approx(
        {
            "loss_ce": 1.5,
            "loss_bbox": 0.25,
            "loss_ce_0": 2.0,
            "k_log_layer0": 7.0,
            "class_error": 50.0,
            "cardinality_error": 3.0,
            "loss_relation_real": 0.8,
            # 1.5 + 0.25 + 2.0: not k_log/class_error/cardinality_error, not the counted key
            "total_loss": 3.75,
            "data_time": 0.3,
            "rank_data_time": 0.3,
        }
    )
    assert "loss_relation_real" + NUM_SAMPLES_SUFFIX not in reduced


def test_weight_dict_gives_unweighted_and_weighted_totals_over_its_present_keys():
    weight_dict = {"loss_ce": 2.0, "loss_bbox": 5.0, "loss_giou": 2.0}  # loss_giou absent
    reduced = LossDictReducer(weight_dict).reduce(detr_like_dict(), data_time=0.0, iteration=0)
    assert reduced["total_loss"] == pytest.approx(1.5 + 0.25)
    assert reduced["total_loss_weighted"] == pytest.approx(2.0 * 1.5 + 5.0 * 0.25)


def test_weight_dict_can_be_replaced_between_steps():
    reducer = LossDictReducer()
    assert "total_loss_weighted" not in reducer.reduce(detr_like_dict(), 0.0, 0)
    reducer.weight_dict = {"loss_ce": 10.0}
    reduced = reducer.reduce(detr_like_dict(), 0.0, 1)
    assert reduced["total_loss"] == pytest.approx(1.5)
    assert reduced["total_loss_weighted"] == pytest.approx(15.0)


def test_keys_may_come_and_go_between_steps():
    reducer = LossDictReducer()
    first = reducer.reduce({"loss_a": T(1.0)}, 0.0, 0)
    second = reducer.reduce({"loss_a": T(1.0), "loss_synthetic": T(2.0)}, 0.0, 1)
    third = reducer.reduce({"loss_synthetic": T(4.0)}, 0.0, 2)
    assert first["total_loss"] == 1.0 and "loss_synthetic" not in first
    assert second["total_loss"] == 3.0
    assert "loss_a" not in third and third["total_loss"] == 4.0


def test_another_key_set_of_the_same_size_is_noticed():
    reducer = LossDictReducer()
    for iteration, (loss_a, other) in enumerate((("loss_b", 2.0), ("loss_c", 5.0), ("loss_c", 6.0))):
        reduced = reducer.reduce({"loss_a": T(1.0), loss_a: T(other)}, 0.0, iteration)
        assert set(reduced) == {"loss_a", loss_a, "total_loss", "data_time", "rank_data_time"}
        assert reduced["total_loss"] == 1.0 + other
    # As many keys as the last dict, another set; a defaultdict must not have a key made up.
    reduced = reducer.reduce(collections.defaultdict(lambda: T(9.0), {"loss_a": T(1.0), "loss_b": T(4.0)}), 0.0, 3)
    assert "loss_c" not in reduced and reduced["total_loss"] == 5.0
    reducer.add({"loss_a": T(1.0), "loss_c": T(2.0)}, 0.0, 4)
    reducer.add({"loss_a": T(1.0), "loss_b": T(3.0)}, 0.0, 5)
    assert [values["total_loss"] for _, values in reducer.flush()] == [3.0, 4.0]
    reducer.reduce({"loss_a": T(1.0), "loss_c": T(2.0)}, 0.0, 6)
    assert reducer.reduce({"loss_a": T(1.0), "loss_b": T(2.0), "loss_c": T(3.0)}, 0.0, 7)["total_loss"] == 6.0


def test_no_total_without_loss_terms():
    reducer = LossDictReducer()
    assert "total_loss" not in reducer.reduce({"k_log_layer1": T(2.0), "class_error": T(5.0)}, 0.0, 0)
    reducer.weight_dict = {"loss_ce": 1.0}
    reduced = reducer.reduce({"k_log_layer1": T(2.0)}, 0.0, 1)
    assert "total_loss" not in reduced and "total_loss_weighted" not in reduced


def test_a_zero_count_means_no_value_even_beside_a_nan_mean_over_nothing():
    loss_dict = {"loss_ce": T(1.0), "loss_synth": T(NAN), "loss_synth" + NUM_SAMPLES_SUFFIX: T(0)}
    reduced = LossDictReducer().reduce(loss_dict, 0.0, 0)
    assert "loss_synth" not in reduced
    assert reduced["total_loss"] == 1.0


def test_non_finite_value_raises_naming_keys_and_iteration():
    reducer = LossDictReducer()
    reducer.reduce(detr_like_dict(), 0.0, 6)
    bad = detr_like_dict()
    bad["loss_bbox"] = T(NAN)
    bad["k_log_layer0"] = T(-INF)
    with pytest.raises(FloatingPointError, match=r"iteration=7") as info:
        reducer.reduce(bad, 0.0, 7)
    assert isinstance(info.value, NonFiniteLossError)
    assert info.value.iteration == 7
    assert info.value.keys == ["loss_bbox", "k_log_layer0"]
    assert "loss_bbox (rank 0)" in str(info.value) and "loss_ce" not in str(info.value)
    # The reducer is still usable after the error.
    assert reducer.reduce(detr_like_dict(), 0.0, 8)["loss_bbox"] == 0.25


def test_non_finite_count_is_named_as_the_count_key():
    bad = detr_like_dict()
    bad["loss_relation_real" + NUM_SAMPLES_SUFFIX] = T(INF)
    with pytest.raises(NonFiniteLossError, match="loss_relation_real__num_samples"):
        LossDictReducer().reduce(bad, 0.0, 3)


@pytest.mark.parametrize(
    "loss_dict, message",
    [
        (
            {"loss_a": T(1.0), "loss_b" + NUM_SAMPLES_SUFFIX: T(2)},
            "'loss_b__num_samples' has no value key 'loss_b'",
        ),
        ({"loss_a": T([1.0, 2.0])}, "'loss_a' is a tensor of shape [2], not a scalar"),
        ({"loss_a": T(1.0), "note": "text"}, "'note' is a str"),
        (
            {"loss_a": T(1.0), "loss_a" + NUM_SAMPLES_SUFFIX: T(-1)},
            "Negative sample count 'loss_a__num_samples'",
        ),
    ],
)
def test_malformed_loss_dict_is_a_one_line_error_naming_key_and_iteration(loss_dict, message):
    with pytest.raises(ValueError) as info:
        LossDictReducer().reduce(loss_dict, 0.0, 12)
    assert message in str(info.value)
    assert "iteration=12" in str(info.value)
    assert "\n" not in str(info.value)


def test_a_key_must_always_or_never_carry_its_count():
    reducer = LossDictReducer()
    reducer.reduce({"loss_real": T(1.0), "loss_real" + NUM_SAMPLES_SUFFIX: T(2)}, 0.0, 0)
    with pytest.raises(
        ValueError,
        match=r"iteration=1: rank 0: 'loss_real' must carry its count 'loss_real__num_samples'",
    ):
        reducer.reduce({"loss_real": T(1.0)}, 0.0, 1)


def test_numbers_odd_shapes_dtypes_and_grad_tensors_are_accepted():
    leaf = torch.tensor(3.0, requires_grad=True)
    loss_dict = {
        "loss_number": 0.5,
        "loss_shape_1": T([0.25]),
        "loss_f64": T(0.125, dtype=torch.float64),
        "loss_bf16": T(2.0, dtype=torch.bfloat16),
        "loss_grad": leaf * 2,
        "loss_counted": T(1.0),
        "loss_counted" + NUM_SAMPLES_SUFFIX: 3,
    }
    reducer = LossDictReducer()
    reducer.add(loss_dict, 0.0, 0)
    row = reducer._pending[0].entries  # a pending step keeps no autograd graph
    assert not isinstance(row, torch.Tensor) or not row.requires_grad
    ((_, reduced),) = reducer.flush()
    assert reduced["total_loss"] == pytest.approx(0.5 + 0.25 + 0.125 + 2.0 + 6.0)
    assert reduced["loss_counted"] == 1.0


def test_cpu_values_are_read_once_each_without_stacking_or_copies(monkeypatch):
    # On the CPU reading each value once costs less than a stack; on a device the row is stacked
    # there and crosses once (test_one_host_sync_per_step_on_cuda_and_none_deferred).
    reducer = LossDictReducer()
    reducer.reduce(detr_like_dict(), 0.0, 0)  # registers the keys
    calls = {"item": 0, "tolist": 0, "cpu": 0, "numpy": 0}
    for name in calls:
        original = getattr(torch.Tensor, name)

        def counting(self, *args, _name=name, _original=original, **kwargs):
            calls[_name] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counting)
    monkeypatch.setattr(torch, "stack", None)
    reducer.reduce(detr_like_dict(), 0.0, 1)
    assert calls == {"item": len(detr_like_dict()), "tolist": 0, "cpu": 0, "numpy": 0}


def scripted_steps():
    """Six steps whose key sets change: a new key at step 3, a key missing at step 4, a zero
    count at step 5."""
    steps = []
    for step in range(6):
        loss_dict = {
            "loss_ce": T(1.0 + step),
            "loss_real": T(0.5 * step),
            "loss_real" + NUM_SAMPLES_SUFFIX: T(2),
        }
        if step >= 3:
            loss_dict["loss_synthetic"] = T(10.0 + step)
        if step == 4:
            del loss_dict["loss_ce"]
        if step == 5:
            loss_dict["loss_real" + NUM_SAMPLES_SUFFIX] = T(0)
        steps.append((loss_dict, 0.01 * step, 100 + step))
    return steps


def test_deferred_mode_gives_the_per_step_values_without_any_host_transfer_per_step(monkeypatch):
    per_step = LossDictReducer({"loss_ce": 1.0, "loss_synthetic": 0.5})
    expected = [(iteration, per_step.reduce(d, dt, iteration)) for d, dt, iteration in scripted_steps()]

    deferred = LossDictReducer({"loss_ce": 1.0, "loss_synthetic": 0.5})
    with monkeypatch.context() as patch:
        for name in ("item", "tolist", "cpu", "numpy", "__float__"):
            patch.setattr(
                torch.Tensor, name, lambda *a, _name=name, **k: pytest.fail(f"add() called {_name}")
            )
        for loss_dict, data_time, iteration in scripted_steps():
            deferred.add(loss_dict, data_time, iteration)
    assert deferred.pending == 6
    assert deferred.flush() == expected
    assert deferred.pending == 0
    assert [values.get("loss_synthetic") for _, values in expected] == [
        None,
        None,
        None,
        13.0,
        14.0,
        15.0,
    ]
    assert "loss_real" not in expected[5][1]


def varied_steps(count=24):
    """The usual loss dict, step after step, with every other kind of step in between (after the
    first period, when the usual keys are registered): a key missing, a Python number, another
    Mapping type, a zero count, keys in another order, a one-element tensor; from step 13 on, a
    new key stays."""
    changes = {
        5: lambda d: d.pop("loss_bbox"),
        6: lambda d: d.update(loss_ce=2.5),
        7: lambda d: collections.OrderedDict(d),
        9: lambda d: d.update({"loss_relation_real" + NUM_SAMPLES_SUFFIX: T(0)}),
        10: lambda d: dict(reversed(list(d.items()))),
        17: lambda d: d.update(loss_ce=T([3.0])),
    }
    for step in range(count):
        loss_dict = {**detr_like_dict(), "loss_ce": T(1.0 + step), "k_log_layer0": T(float(step))}
        if step >= 13:
            loss_dict["loss_new"] = T(0.125 * step)
        changed = changes.get(step, lambda d: None)(loss_dict)
        yield (changed if isinstance(changed, dict) else loss_dict), 0.01 * step, 100 + step


@pytest.mark.parametrize("period", [1, 4, 5, 7])
def test_deferred_periods_of_every_kind_of_step_match_per_step(period, monkeypatch):
    per_step = LossDictReducer({"loss_ce": 2.0, "loss_bbox": 5.0})
    expected = [(iteration, per_step.reduce(d, dt, iteration)) for d, dt, iteration in varied_steps()]
    deferred = LossDictReducer({"loss_ce": 2.0, "loss_bbox": 5.0})
    general_packs = collections.Counter()
    original = LossDictReducer._pack
    monkeypatch.setattr(
        LossDictReducer, "_pack", lambda self, d, *a: general_packs.update([a[1]]) or original(self, d, *a)
    )
    flushed = []
    for loss_dict, data_time, iteration in varied_steps():
        deferred.add(loss_dict, data_time, iteration)
        if deferred.pending == period:
            flushed += deferred.flush()
    flushed += deferred.flush()
    assert flushed == expected
    # Once registered, the usual dict is kept without the general packing: only the first
    # period, a key missing, a Python number and the new key until its registration take it.
    first_period = set(range(100, 100 + period))
    until_registered = set(range(113, 113 + period - 13 % period))
    assert general_packs.keys() == first_period | {105, 106} | until_registered


def test_a_nan_in_a_period_of_usual_steps_is_named_with_the_steps_before_it():
    reducer = LossDictReducer()
    reducer.add(detr_like_dict(), 0.0, 0)
    reducer.flush()  # registered: the next steps are the usual ones
    for step in range(1, 6):
        reducer.add({**detr_like_dict(), "loss_bbox": T(NAN if step == 3 else 0.5)}, 0.0, step)
    with pytest.raises(NonFiniteLossError, match=r"iteration=3: loss_bbox \(rank 0\)") as info:
        reducer.flush()
    assert [(it, values["loss_bbox"]) for it, values in info.value.reduced_before] == [(1, 0.5), (2, 0.5)]
    assert reducer.pending == 0


def test_deferred_nan_is_found_at_the_flush_naming_the_first_bad_iteration():
    reducer = LossDictReducer()
    for step in range(5):
        value = NAN if step in (2, 3) else float(step)
        reducer.add({"loss_ce": T(value)}, 0.0, 40 + step)
    with pytest.raises(NonFiniteLossError, match="iteration=42: loss_ce") as info:
        reducer.flush()
    assert [(it, values["loss_ce"]) for it, values in info.value.reduced_before] == [
        (40, 0.0),
        (41, 1.0),
    ]
    assert reducer.pending == 0


def test_reduce_refuses_to_mix_with_pending_deferred_steps():
    reducer = LossDictReducer()
    reducer.add({"loss_ce": T(1.0)}, 0.0, 0)
    with pytest.raises(RuntimeError, match="1 deferred steps pending"):
        reducer.reduce({"loss_ce": T(1.0)}, 0.0, 1)


def test_write_metrics_puts_prefixed_scalars_without_counts():
    with EventStorage(start_iter=5) as storage:
        write_metrics(detr_like_dict(), 0.2, prefix="val_", weight_dict={"loss_ce": 2.0})
        write_metrics(detr_like_dict(), 0.4, cur_iter=9, prefix="val_", weight_dict={"loss_ce": 2.0})
    latest = storage.latest()
    assert latest["val_loss_ce"] == (1.5, 9)
    assert latest["val_total_loss"] == (1.5, 9)
    assert latest["val_total_loss_weighted"] == (3.0, 9)
    assert latest["val_data_time"] == (0.4, 9)
    assert storage.history("val_loss_bbox").values() == [(0.25, 5), (0.25, 9)]
    assert not any(name.endswith(NUM_SAMPLES_SUFFIX) for name in latest)
    assert not any(not name.startswith("val_") for name in latest)


def test_write_metrics_non_finite_raises_and_writes_nothing_for_that_step():
    with EventStorage() as storage:
        with pytest.raises(FloatingPointError, match="iteration=0: loss_ce"):
            write_metrics({"loss_ce": T(NAN)}, 0.0)
    assert storage.latest() == {}


def test_metrics_writer_deferred_writes_at_period_ends_and_before_a_nan():
    with EventStorage(start_iter=0) as storage:
        writer = MetricsWriter(deferred=True, period=5)
        for iteration in range(7):
            storage.iter = iteration
            writer.write({"loss_ce": T(float(iteration))}, 0.0)
            written = storage.history("loss_ce").count if "loss_ce" in storage.histories() else 0
            assert written == (5 if iteration >= 4 else 0)
        writer.write({"loss_ce": T(NAN)}, 0.0, cur_iter=7)
        writer.write({"loss_ce": T(8.0)}, 0.0, cur_iter=8)
        with pytest.raises(NonFiniteLossError, match="iteration=7"):
            writer.write({"loss_ce": T(9.0)}, 0.0, cur_iter=9)  # end of the period: flush
    assert [it for _, it in storage.history("loss_ce").values()] == [0, 1, 2, 3, 4, 5, 6]


def test_metrics_writer_deferred_fills_the_storage_as_per_step_does():
    histories = []
    for deferred in (False, True):
        with EventStorage(history_length=7) as storage:  # the ring wraps several times
            writer = MetricsWriter({"loss_ce": 2.0}, deferred=deferred, period=5, prefix="train/")
            for loss_dict, data_time, iteration in varied_steps(40):
                writer.write(loss_dict, data_time, cur_iter=iteration)
            writer.flush()
        histories.append(
            {name: (buffer.values(), buffer.count, buffer.global_sum()) for name, buffer in storage.histories().items()}
        )
    assert histories[1] == histories[0]
    assert histories[0]["train/loss_ce"][1] == 40


def test_metrics_writer_per_step_and_final_flush():
    with EventStorage() as storage:
        per_step = MetricsWriter(prefix="a/")
        per_step.write({"loss_ce": T(1.0)}, 0.0, cur_iter=0)
        assert storage.latest()["a/loss_ce"] == (1.0, 0)
        deferred = MetricsWriter(deferred=True, period=20, prefix="b/")
        deferred.write({"loss_ce": T(2.0)}, 0.0, cur_iter=0)
        assert "b/loss_ce" not in storage.latest()
        deferred.flush()
        assert storage.latest()["b/loss_ce"] == (2.0, 0)
        deferred.flush()  # nothing pending: no-op
    with pytest.raises(ValueError, match="period must be >= 1"):
        MetricsWriter(period=0)


def test_is_loss_term_rule():
    keys = {"loss_ce", "loss_real", "loss_real" + NUM_SAMPLES_SUFFIX, "k_log_layer0", "class_error"}
    assert is_loss_term("loss_ce", keys)
    assert not is_loss_term("loss_real", keys)
    assert not is_loss_term("loss_real" + NUM_SAMPLES_SUFFIX, keys)
    assert not is_loss_term("k_log_layer0", keys)
    assert not is_loss_term("class_error", keys)


def test_backward_total_keeps_the_graph_and_follows_the_totals():
    leaf = torch.tensor(2.0, requires_grad=True)
    loss_dict = {
        "loss_ce": leaf * 3,
        "loss_bbox": leaf,
        "k_log": leaf * 100,
        "loss_real": leaf * 50,
        "loss_real" + NUM_SAMPLES_SUFFIX: T(4),
    }
    total = backward_total(loss_dict)
    total.backward()
    assert total.item() == 8.0 and leaf.grad.item() == 4.0
    weighted = backward_total(loss_dict, {"loss_ce": 2.0, "loss_giou": 7.0})
    assert weighted.item() == 12.0
    with pytest.raises(ValueError, match="no weight_dict key is in the loss dict"):
        backward_total(loss_dict, {"loss_giou": 1.0})
    with pytest.raises(ValueError, match="no loss terms"):
        backward_total({"k_log": T(1.0)})


def test_finite_values_near_the_float64_limit_do_not_overflow_and_an_overflowing_total_raises():
    huge = T(1.5e308, dtype=torch.float64)
    reducer = LossDictReducer()
    reduced = reducer.reduce({"loss_ce": huge, "k_log": T(1.0)}, 0.0, 0)
    assert reduced["loss_ce"] == 1.5e308 and reduced["total_loss"] == 1.5e308
    with pytest.raises(NonFiniteLossError, match=r"iteration=1: total_loss \(overflow of finite values\)"):
        reducer.reduce({"loss_ce": huge, "loss_bbox": huge}, 0.0, 1)
    with EventStorage() as storage:  # deferred: the steps before the overflow are still written
        writer = MetricsWriter(deferred=True, period=3)
        writer.write({"loss_ce": huge, "loss_bbox": T(1.0, dtype=torch.float64)}, 0.0, cur_iter=0)
        writer.write({"loss_ce": huge, "loss_bbox": huge}, 0.0, cur_iter=1)
        with pytest.raises(NonFiniteLossError, match="iteration=1: total_loss"):
            writer.write({"loss_ce": T(1.0), "loss_bbox": T(1.0)}, 0.0, cur_iter=2)
    assert storage.latest()["total_loss"] == (1.5e308, 0)


def _cuda_syncs(action):
    """How many times ``action`` synchronised the host with the GPU (torch's sync debug mode)."""
    import warnings

    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            action()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (counts host-GPU synchronisations)")
def test_one_host_sync_per_step_on_cuda_and_none_deferred():
    cuda_dict = {name: value.cuda() for name, value in detr_like_dict().items()}
    with EventStorage():
        per_step = MetricsWriter()
        per_step.write(cuda_dict, 0.0, cur_iter=0)  # registration: extra work, once
        assert [_cuda_syncs(lambda: per_step.write(cuda_dict, 0.0, cur_iter=it)) for it in range(1, 4)] == [1, 1, 1]
        deferred = MetricsWriter(deferred=True, period=4)
        deferred.write(cuda_dict, 0.0, cur_iter=0)
        deferred.flush()
        assert [_cuda_syncs(lambda: deferred.write(cuda_dict, 0.0, cur_iter=it)) for it in (1, 2)] == [0, 0]
        assert _cuda_syncs(lambda: deferred.write(cuda_dict, 0.0, cur_iter=3)) == 1  # the flush


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_deferred_add_on_cuda_never_syncs_the_host():
    reducer = LossDictReducer()
    cuda_dict = {name: value.cuda() for name, value in detr_like_dict().items()}
    reducer.add(cuda_dict, 0.0, 0)  # registration happens at the first flush
    reducer.flush()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for iteration in range(1, 4):
            reducer.add(cuda_dict, 0.0, iteration)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    results = reducer.flush()
    assert [it for it, _ in results] == [1, 2, 3]
    assert results[-1][1]["total_loss"] == pytest.approx(3.75)
    assert math.isclose(results[-1][1]["loss_relation_real"], 0.8, rel_tol=1e-6)
