"""EventStorage keeps detectron2.utils.events semantics (code written for it runs unchanged)."""
import numpy as np
import pytest

from events import EventStorage, get_event_storage, has_event_storage


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
