import math
import resource
import sys
import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from events.history_buffer import HistoryBuffer, ScalarBlock, column_medians


def test_window_statistics_match_numpy_over_the_last_values():
    buf = HistoryBuffer(max_length=8)
    data = [3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0, 5.0, 3.0, 5.0]  # wraps the ring
    for i, v in enumerate(data):
        buf.update(v, i * 10)
    kept = data[-8:]
    for w in (1, 3, 5, 8, 100):
        tail = kept[-w:]
        assert buf.median(w) == np.median(tail)
        assert buf.avg(w) == pytest.approx(np.mean(tail))
        assert buf.max(w) == max(tail)
        assert buf.min(w) == min(tail)
    assert buf.latest() == 5.0
    assert buf.values() == [(v, float(i * 10)) for i, v in list(enumerate(data))[-8:]]
    assert buf.count == len(data) and len(buf) == 8


def test_global_avg_covers_evicted_values():
    buf = HistoryBuffer(max_length=4)
    for v in range(100):
        buf.update(float(v))
    assert buf.global_avg() == pytest.approx(49.5)
    assert buf.values()[0] == (96.0, 96.0)  # default iteration = update count


def test_empty_buffer_raises_and_global_avg_is_nan():
    buf = HistoryBuffer()
    with pytest.raises(IndexError):
        buf.latest()
    with pytest.raises(IndexError):
        buf.median(20)
    assert math.isnan(buf.global_avg())


def test_state_round_trip_continues_the_ring_exactly():
    a = HistoryBuffer(max_length=5)
    for v in range(13):
        a.update(float(v) ** 2, v)
    b = HistoryBuffer(max_length=2)
    b.load_state_dict(a.state_dict())
    for v in range(13, 17):
        a.update(float(v), v)
        b.update(float(v), v)
    assert b.values() == a.values()
    assert b.global_avg() == a.global_avg()
    assert b.median(3) == a.median(3) and b.count == a.count


def test_state_with_inconsistent_lengths_is_rejected():
    state = HistoryBuffer(4).state_dict()
    state.update(count=3, values=[1.0], iterations=[1.0])
    with pytest.raises(ValueError, match="holds 1 values"):
        HistoryBuffer().load_state_dict(state)


def test_memory_is_flat_as_steps_grow():
    buf = HistoryBuffer(max_length=1024)
    for i in range(2000):
        buf.update(float(i), i)
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for i in range(2000, 200_000):
        buf.update(float(i), i)
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    growth = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    assert growth < 10_000, f"history grew by {growth} bytes over 198k updates"


def test_column_medians_equal_numpy_medians_nan_included():
    rng = np.random.default_rng(0)
    for n in [*range(1, 8), 64, 65, 100]:  # short windows are sorted, long ones partitioned
        values = rng.normal(size=(n, 5))
        values[rng.random((n, 5)) < 0.15] = np.nan
        np.testing.assert_array_equal(column_medians(values), np.median(values, axis=0))


def test_fvcore_scenario_many_lengths_default_iterations_and_statistics():
    # fvcore's own HistoryBuffer check: 1000 integer updates into buffers of random lengths.
    rng = np.random.default_rng(42)
    for length in rng.integers(1, 1000, size=15).tolist():
        data = rng.integers(1000, size=1000)
        buf = HistoryBuffer(length)
        for v in data:
            buf.update(v)
        values, iterations = zip(*buf.values())
        assert list(values) == data[-length:].tolist()
        assert list(iterations) == list(range(1000 - length, 1000))
        assert buf.global_avg() == pytest.approx(data.mean())
        window = data[-min(100, length):]
        assert buf.median(100) == np.median(window) and buf.avg(100) == pytest.approx(window.mean())


@settings(max_examples=80, deadline=None)
@given(
    st.integers(1, 9),  # max_length
    st.lists(st.integers(0, 25), min_size=1, max_size=10),  # rows per put_rows call
    # fresh; restored from a checkpoint of 5 rows (the ring's folds fall elsewhere); columns
    # already diverged (a partial write came first)
    st.sampled_from(["fresh", "restored", "diverged"]),
)
def test_put_rows_is_put_row_for_each_row_sums_included(max_length, batch_sizes, start):
    rng = np.random.default_rng(max_length * 1000 + sum(batch_sizes))
    one_by_one, batched = ScalarBlock(max_length, 3), ScalarBlock(max_length, 3)
    for block in (one_by_one, batched):
        if start == "restored":
            for column in range(3):
                block.load_column(column, 5, 15.0, [1.0, 2.0, 3.0, 4.0, 5.0], [-5, -4, -3, -2, -1])
            block.realign()
        elif start == "diverged":
            block.put_cell(1, 0.5, -1)
    first = 0
    for size in batch_sizes:
        # Values of many magnitudes: a sum folded at other rows would round differently.
        rows = rng.normal(size=(size, 3)) * 10.0 ** rng.integers(-8, 9, size=(size, 3))
        iterations = np.arange(first, first + size, dtype=np.float64)
        for row, iteration in zip(rows, iterations):
            one_by_one.put_row(row, iteration)
        batched.put_rows(rows, iterations)
        first += size
        assert np.array_equal(batched.values, one_by_one.values)
        assert np.array_equal(batched.iterations, one_by_one.iterations)
        assert np.array_equal(batched.counts(), one_by_one.counts())
        assert np.array_equal(batched.sums(), one_by_one.sums())  # exactly: same fold points
        if first:  # every column holds a value
            assert np.array_equal(batched.window_medians(4), one_by_one.window_medians(4))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="counts minor page faults (getrusage)")
def test_a_new_block_is_backed_by_memory_before_its_rows_are_written():
    # np.zeros maps pages lazily; the ring's first pass would fault one in every few steps.
    block = ScalarBlock(4096, 70)
    row = np.ones(70)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for iteration in range(4096):
        block.put_row(row, iteration)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    pages = 2 * block.values.nbytes // resource.getpagesize()  # values and iterations: 1,120
    assert faults < pages // 10
    # A ring made far longer than any window keeps the rest lazy: committed as it is used.
    before_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    long_ring = ScalarBlock(2_000_000, 70)  # 2.2 GB if it were all touched
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before_rss < 200_000  # KB
    assert long_ring.values.shape == (2_000_000, 70)


def reference_count_within(iterations, kept, window):
    """detectron2's count_samples over the kept iterations, the plain way: look back at
    window, 2 * window, 4 * window... values until the look holds one from outside the window."""
    iterations = iterations[-kept:]
    look_back = window
    while True:
        recent = iterations[-look_back:]
        inside = sum(1 for itr in recent if itr > iterations[-1] - window)
        if inside < len(recent) or len(recent) == len(iterations):
            return max(inside, 1)
        look_back *= 2


@settings(max_examples=150, deadline=None)
@given(
    # (iterations forward, values put there): several values per iteration, and now and then
    # values put at an earlier iteration (a late validation value)
    st.lists(st.tuples(st.integers(-3, 2), st.integers(1, 12)), min_size=1, max_size=40),
    st.integers(1, 8),  # window
    st.integers(4, 60),  # max_length
)
def test_count_within_and_window_medians_match_the_plain_look_back(puts, window, max_length):
    buffer, block = HistoryBuffer(max_length=max_length), ScalarBlock(max_length, 2)
    iterations, iteration = [], 0
    for forward, count in puts:
        iteration += forward
        for k in range(count):
            value = float((iteration * 7 + k * 3) % 11)
            buffer.update(value, iteration)
            block.put_row(np.array([value, -value]), iteration)
            iterations.append(iteration)
    kept = min(len(iterations), max_length)
    expected = reference_count_within(iterations, kept, window)
    assert buffer.count_within(window) == expected
    values = [v for v, _ in buffer.values()][-expected:]
    assert np.array_equal(block.window_medians(window), [np.median(values), np.median([-v for v in values])])
