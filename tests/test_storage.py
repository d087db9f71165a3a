"""EventStorage keeps detectron2.utils.events semantics (code written for it runs unchanged)."""
import json
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from events import EventStorage, JSONWriter, get_event_storage, has_event_storage
from events.storage import StaleIterationWarning


def test_context_manager_sets_and_restores_current_storage():
    assert not has_event_storage()
    with pytest.raises(RuntimeError):
        get_event_storage()
    with EventStorage(5) as outer:
        assert get_event_storage() is outer and outer.iter == 5 and outer.iteration == 5
        with EventStorage() as inner:
            assert get_event_storage() is inner
        assert get_event_storage() is outer
    assert not has_event_storage()


def test_put_scalar_history_latest_and_hints():
    with EventStorage() as storage:
        for i in range(30):
            storage.iter = i
            storage.put_scalar("loss", float(i))
            storage.put_scalar("lr", 0.1 * i, smoothing_hint=False)
        assert storage.latest()["loss"] == (29.0, 29)
        assert storage.smoothing_hints() == {"loss": True, "lr": False}
        smoothed = storage.latest_with_smoothing_hint(10)
        assert smoothed["loss"] == (np.median(range(20, 30)), 29)
        assert smoothed["lr"] == (pytest.approx(2.9), 29)
        assert storage.history("loss").global_avg() == pytest.approx(14.5)
        with pytest.raises(KeyError, match="nothere"):
            storage.history("nothere")
        with pytest.raises(ValueError, match="different smoothing_hint"):
            storage.put_scalar("lr", 1.0, smoothing_hint=True)


def test_put_scalars_cur_iter_and_bulk_match_single_puts():
    with EventStorage() as a, EventStorage() as b:
        names, values = ["loss_a", "loss_b"], [1.5, 2.5]
        a.put_scalars(loss_a=1.5, loss_b=2.5, cur_iter=7)
        b.put_scalars_bulk(names, values, cur_iter=7)
        assert a.latest() == b.latest() == {"loss_a": (1.5, 7), "loss_b": (2.5, 7)}
        with pytest.raises(ValueError, match="2 names and 1 values"):
            b.put_scalars_bulk(names, [1.0])
        b.put_scalar("flag", 1.0, smoothing_hint=False)
        with pytest.raises(ValueError, match="different smoothing_hint"):
            b.put_scalars_bulk(["flag"], [2.0])


def test_count_samples_counts_values_within_the_iteration_window():
    with EventStorage() as storage:
        for i in range(10):  # two values per iteration (e.g. deferred flush of sub-steps)
            storage.put_scalar("loss", 1.0, cur_iter=i)
            storage.put_scalar("loss", 3.0, cur_iter=i)
        assert storage.count_samples("loss", window_size=3) == 6
        assert storage.latest_with_smoothing_hint(3)["loss"] == (2.0, 9)


def test_name_scope_nests_and_restores_on_exception():
    with EventStorage() as storage:
        with storage.name_scope("val"):
            with storage.name_scope("coco/"):
                storage.put_scalar("AP", 40.0)
            storage.put_scalar("loss", 1.0)
        with pytest.raises(ZeroDivisionError):
            with storage.name_scope("broken"):
                1 / 0
        storage.put_scalar("loss", 2.0)
        assert set(storage.histories()) == {"val/coco/AP", "val/loss", "loss"}


def test_histogram_counts_every_element_and_images_are_queued():
    with EventStorage(3) as storage:
        storage.put_histogram("weights", np.arange(12.0).reshape(3, 4), bins=4)
        hist = storage._histograms[0]
        assert hist["num"] == 12  # detectron2 records len() == 3 here
        assert sum(hist["bucket_counts"]) == 12
        assert hist["min"] == 0 and hist["max"] == 11 and hist["sum"] == 66
        assert hist["sum_squares"] == sum(v * v for v in range(12)) and hist["global_step"] == 3
        storage.put_image("sample", np.zeros((3, 4, 4)))
        assert storage._vis_data[0][0] == "sample" and storage._vis_data[0][2] == 3
        storage.clear_histograms()
        storage.clear_images()
        assert storage._histograms == [] and storage._vis_data == []
        with pytest.raises(ValueError, match="empty"):
            storage.put_histogram("none", np.array([]))


def test_torch_tensors_are_accepted():
    import torch
    with EventStorage() as storage:
        storage.put_scalar("loss", torch.tensor(2.0))
        storage.put_histogram("w", torch.ones(2, 5, requires_grad=True), bins=10)
        assert storage.latest()["loss"] == (2.0, 0)
        assert storage._histograms[0]["num"] == 10


def test_state_dict_round_trip_restores_windows_averages_and_iteration():
    with EventStorage() as storage:
        for i in range(50):
            storage.iter = i
            storage.put_scalars(loss=float(i), time=0.1)
            storage.put_scalar("lr", 0.01, smoothing_hint=False)
        state = storage.state_dict()
    with EventStorage() as restored:
        restored.load_state_dict(state)
        assert restored.iter == 49
        assert restored.latest_with_smoothing_hint(20) == storage.latest_with_smoothing_hint(20)
        assert restored.history("loss").global_avg() == storage.history("loss").global_avg()
        assert restored.smoothing_hints() == storage.smoothing_hints()
        restored.put_scalar("loss", 100.0, cur_iter=50)
        assert restored.history("loss").count == 51


def test_state_dict_is_loadable_with_torch_weights_only(tmp_path):
    import torch
    with EventStorage() as storage:
        storage.put_scalars(loss=1.0, cur_iter=0)
        torch.save(storage.state_dict(), tmp_path / "s.pth")
    state = torch.load(tmp_path / "s.pth", weights_only=True)
    assert state["histories"]["loss"]["values"] == [1.0]


def test_smoothed_view_is_recomputed_after_every_put():
    with EventStorage() as storage:
        storage.put_scalar("loss", 1.0, cur_iter=0)
        first = storage.latest_with_smoothing_hint(20)
        first["loss"] = (99.0, 0)  # callers may mutate what they get
        assert storage.latest_with_smoothing_hint(20) == {"loss": (1.0, 0)}
        storage.put_scalars_bulk(["loss"], [3.0], cur_iter=1)
        assert storage.latest_with_smoothing_hint(20) == {"loss": (2.0, 1)}
        assert storage.latest_with_smoothing_hint(1) == {"loss": (3.0, 1)}


# ---------------------------------------------------------------------------- values put too late
def _stale_warnings(caught):
    return [str(w.message) for w in caught if issubclass(w.category, StaleIterationWarning)]


def test_a_loop_that_never_steps_is_warned_once_per_key_naming_it(tmp_path):
    path = tmp_path / "metrics.json"
    with warnings.catch_warnings(record=True) as caught, EventStorage() as storage:
        warnings.simplefilter("always")
        writer = JSONWriter(str(path))
        for i in range(12):  # storage.step() forgotten: every value lands at iteration 0
            storage.put_scalars(loss=float(i), loss_bbox=0.5)
            storage.put_scalar("lr", 0.1, smoothing_hint=False)
            if i % 4 == 3:
                writer.write()
        writer.close()
    messages = _stale_warnings(caught)
    # Written at the first write; the next puts land at the iteration already written.
    assert len(messages) == 2
    assert messages[0].startswith("'loss', 'loss_bbox' were put again at iteration 0, which the writers have already written")
    assert messages[1].startswith("'lr' was put again at iteration 0")
    assert all("storage.step()" in message for message in messages)
    assert [json.loads(line)["iteration"] for line in open(path)] == [0]  # what the warning is about


def test_a_stepping_loop_and_deliberately_earlier_values_are_not_warned(tmp_path):
    with warnings.catch_warnings(record=True) as caught, EventStorage() as storage:
        warnings.simplefilter("always")
        writer = JSONWriter(str(tmp_path / "metrics.json"))
        for i in range(10):
            storage.put_scalar("loss", 1.0)
            storage.put_scalar("loss", 2.0)  # several values per iteration are fine
            if i % 5 == 4:
                writer.write()
                storage.put_scalar("eta_seconds", 3.0, cur_iter=i - 1)  # dated before now: allowed
            storage.step()
        storage.iter -= 1
        storage.put_scalar("loss", 3.0)  # once after the final write (a shutdown hook): not a pattern
        writer.close()
    assert _stale_warnings(caught) == []


# ---------------------------------------------------------------------------- blocks = per-key histories
class ReferenceStorage:
    """The per-key semantics the storage promises, written the plain way: a list of
    ``(value, iteration)`` per key, cut to ``history_length``."""

    def __init__(self, history_length):
        self.length, self.values, self.hints, self.counts, self.sums = history_length, {}, {}, {}, {}

    def put(self, name, value, hint, iteration):
        self.hints.setdefault(name, hint)
        kept = self.values.setdefault(name, [])
        kept.append((value, iteration))
        del kept[: -self.length]
        self.counts[name] = self.counts.get(name, 0) + 1
        self.sums[name] = self.sums.get(name, 0.0) + value

    def count_samples(self, name, window):
        kept = self.values[name]
        last, look_back = kept[-1][1], window
        while True:
            recent = kept[-look_back:]
            inside = sum(1 for _, itr in recent if itr > last - window)
            if inside < len(recent) or len(recent) == len(kept):
                return max(inside, 1)
            look_back *= 2

    def smoothed(self, window):
        result = {}
        for name, kept in self.values.items():
            value = kept[-1][0]
            if self.hints[name]:
                value = float(np.median([v for v, _ in kept[-self.count_samples(name, window):]]))
            result[name] = (value, kept[-1][1])
        return result


KEYS = ["loss_a", "loss_b", "loss_c", "loss_d"]
operations = st.lists(
    st.tuples(
        st.sampled_from(["bulk", "bulk_subset", "single", "step", "step"]),
        st.lists(st.sampled_from(KEYS), min_size=1, max_size=4, unique=True),
        st.floats(-1e3, 1e3),
    ),
    min_size=1,
    max_size=120,
)


@settings(max_examples=60, deadline=None)
@given(operations, st.integers(1, 6), st.sampled_from([1, 3, 20]))
def test_block_histories_match_per_key_histories(ops, history_length, window):
    storage, reference = EventStorage(history_length=history_length), ReferenceStorage(history_length)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", StaleIterationWarning)
        for index, (kind, names, value) in enumerate(ops):
            if kind == "step":
                storage.step()
                continue
            if kind == "bulk":
                names = KEYS  # the same loss dict every time: one block, row writes
            values = [value + i + index for i in range(len(names))]
            if kind == "single":
                storage.put_scalar(names[0], values[0])
                names, values = names[:1], values[:1]
            else:
                storage.put_scalars_bulk(tuple(names), np.array(values))
            for name, v in zip(names, values):
                reference.put(name, v, True, storage.iter)
            if index % 7 == 6:  # a writer period
                assert storage.latest_with_smoothing_hint(window) == reference.smoothed(window)
    assert storage.latest_with_smoothing_hint(window) == reference.smoothed(window)
    assert storage.latest() == {name: kept[-1] for name, kept in reference.values.items()}
    for name, kept in reference.values.items():
        buffer = storage.history(name)
        assert buffer.values() == kept
        assert (buffer.count, buffer.global_sum()) == (reference.counts[name], pytest.approx(reference.sums[name]))
        assert storage.count_samples(name, window) == reference.count_samples(name, window)
    restored = EventStorage()
    restored.load_state_dict(storage.state_dict())
    assert restored.latest_with_smoothing_hint(window) == storage.latest_with_smoothing_hint(window)
    assert {n: b.values() for n, b in restored.histories().items()} == {n: b.values() for n, b in storage.histories().items()}


def test_a_loss_dict_is_one_block_and_its_histories_are_views(tmp_path):
    with EventStorage() as storage:
        names = ("loss_ce", "loss_bbox", "total_loss")
        for i in range(5):
            storage.put_scalars_bulk(names, np.array([1.0, 2.0, 3.0]) * i, cur_iter=i)
        storage.put_scalar("lr", 0.1, smoothing_hint=False)
        assert len(storage._blocks) == 2
        storage.history("loss_bbox").update(100.0, 5)  # a view: the storage sees it
        assert storage.latest()["loss_bbox"] == (100.0, 5)
        assert storage.history("loss_ce").count == 5 and storage.history("loss_bbox").count == 6
        state = storage.state_dict()
    assert state["blocks"] == [list(names), ["lr"]]
    del state["blocks"]  # a checkpoint written before blocks existed
    with EventStorage() as old:
        old.load_state_dict(state)
        assert old.latest_with_smoothing_hint(3) == storage.latest_with_smoothing_hint(3)


# ---------------------------------------------------------------------------- a period of rows at once
row_batches = st.lists(
    st.tuples(
        # whose names: the loss dict (one block), part of it with a key of its own (several
        # blocks), or a name twice
        st.sampled_from(["loss dict", "loss dict", "spanning", "repeated"]),
        st.integers(0, 9),  # rows
        st.booleans(),  # a writer reads afterwards
    ),
    min_size=1,
    max_size=12,
)


@settings(max_examples=60, deadline=None)
@given(row_batches, st.integers(1, 8), st.sampled_from(["", "val/"]))
def test_put_scalar_rows_is_put_scalars_bulk_row_by_row(batches, history_length, scope):
    rows_at_once, row_by_row = EventStorage(history_length=history_length), EventStorage(history_length=history_length)
    names_of = {"loss dict": tuple(KEYS), "spanning": ("loss_b", "lr_scale"), "repeated": ("loss_a", "loss_a")}
    caught = {}
    iteration = 0
    for index, (kind, count, read) in enumerate(batches):
        names = names_of[kind]
        values = np.arange(count * len(names), dtype=np.float64).reshape(count, len(names)) * (index + 1.5)
        # Every other batch starts at the last iteration of the one before, which a writer may
        # have read: the stale warning counts such puts.
        start = iteration - index % 2
        iterations = [start + step for step in range(count)]
        for storage, put in (
            (rows_at_once, lambda s: s.put_scalar_rows(names, values, iterations)),
            (row_by_row, lambda s: [s.put_scalars_bulk(names, row, cur_iter=it) for row, it in zip(values, iterations)]),
        ):
            with warnings.catch_warnings(record=True) as record, storage.name_scope(scope):
                warnings.simplefilter("always")
                storage.iter = start
                put(storage)
                if read:
                    storage.latest_with_smoothing_hint(3)
            caught.setdefault(id(storage), []).extend(_stale_warnings(record))
        iteration += count
    assert caught[id(rows_at_once)] == caught[id(row_by_row)]
    assert rows_at_once.latest_with_smoothing_hint(3) == row_by_row.latest_with_smoothing_hint(3)
    for name, buffer in row_by_row.histories().items():
        batched = rows_at_once.history(name)
        assert batched.values() == buffer.values()
        assert (batched.count, batched.global_sum()) == (buffer.count, buffer.global_sum())


def test_put_scalar_rows_names_a_shape_mismatch():
    with pytest.raises(ValueError, match=r"2 names and 3 iterations, but rows of shape \[3, 3\]"):
        EventStorage().put_scalar_rows(("a", "b"), np.zeros((3, 3)), [0, 1, 2])
