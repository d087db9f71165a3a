"""engine/rank_stats.py: decoding every rank's numbers from the reducer's gathered block."""
import numpy as np
import pytest

from engine.rank_stats import CONSISTENT_SHARE, WINDOW, RankStats, is_rank_key


def block_of(data_times, step_times, mems):
    """``[world, steps, 3]`` from per-rank lists of per-step values."""
    return np.stack([np.array(data_times).T, np.array(step_times).T, np.array(mems).T], axis=-1)


def test_decode_names_every_rank_and_the_spread():
    block = np.array([[[0.01, 0.20, 100.0]], [[0.50, 0.21, 300.0]], [[0.02, 0.19, 200.0]]])  # [3 ranks, 1 step, 3]
    (values,) = RankStats().decode(block)
    assert [values[f"rank_data_time/r{r}"] for r in range(3)] == [0.01, 0.50, 0.02]
    assert values["rank_data_time/max"] == 0.50 and values["rank_data_time/argmax"] == 1
    assert values["rank_data_time/median"] == pytest.approx(0.02)
    assert values["rank_max_mem/max"] == 300.0 and values["rank_max_mem/argmax"] == 1
    assert values["rank_step_time/median"] == pytest.approx(0.20)
    assert "slowest_rank" not in values  # one step is no pattern
    assert all(is_rank_key(name) for name in values) and not is_rank_key("rank_data_time")


def test_slowest_rank_only_when_one_rank_is_consistently_slowest():
    stats = RankStats()
    steps = WINDOW
    slow = np.full((3, steps), 0.01)
    slow[2] = 0.2  # rank 2 waits for data every step
    decoded = stats.decode(np.stack([slow, np.full((3, steps), 0.1), np.ones((3, steps))], axis=-1))
    assert "slowest_rank" not in decoded[WINDOW // 2 - 2]
    assert decoded[-1]["slowest_rank"] == 2
    # Then the slowest rank alternates: once rank 2's share of the window drops below the bar,
    # no rank is named.
    alternating = np.full((3, steps), 0.01)
    alternating[np.arange(steps) % 3, np.arange(steps)] = 0.2
    decoded = stats.decode(np.stack([alternating, np.full((3, steps), 0.1), np.ones((3, steps))], axis=-1))
    assert "slowest_rank" not in decoded[-1]
    assert CONSISTENT_SHARE > 1 / 3


def test_one_rank_logs_nothing_per_rank():
    assert RankStats().decode(np.ones((1, 4, 3))) == [{}, {}, {}, {}]


def test_sample_measures_time_since_the_last_exchange_and_peak_memory():
    stats = RankStats()
    stats.exchanged()
    data_time, step_time, memory = stats.sample(0.25, None)
    assert data_time == 0.25 and 0 <= step_time < 5 and memory > 1  # MB of this process
