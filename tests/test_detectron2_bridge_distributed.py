"""detectron2's own trainer loop (the stand-in in tests/standins) on 2 gloo ranks after
``engine.integrations.detectron2.install()``, with loss dicts whose keys differ between ranks.

One spawned job runs every scenario (spawning costs seconds); the parent checks the results.
Without the bridge, detectron2's ``write_metrics`` would raise ``KeyError:
'loss_relation_synthetic'`` on rank 0 here and drop rank 1's ``loss_bbox_relation_synthetic``.
"""
import json
import math
import os
import statistics

import pytest
import torch

from d2_standin import batches, expected_reduction, ScriptedLossModel
from dist_utils import run_distributed

NUM_STEPS = 6
PERIOD = 3
NAN_STEP = 3
REPORTED = ("loss_ce", "loss_ce_0", "loss_relation_real", "loss_relation_synthetic", "loss_bbox_relation_synthetic", "total_loss")


def _train(trainer_class, rank, output_dir, *, ddp=False, nan_at=None, num_steps=NUM_STEPS, **kwargs):
    from detectron2.engine import hooks
    from detectron2.engine.defaults import create_ddp_model
    from detectron2.utils.events import JSONWriter

    data = list(batches(rank, num_steps))
    if nan_at is not None and rank == 1:
        data[nan_at]["loss_ce"] = math.nan
    model = ScriptedLossModel()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    trainer = trainer_class(create_ddp_model(model) if ddp else model, data, optimizer, **kwargs)
    writers = [JSONWriter(os.path.join(output_dir, "metrics.json"))] if rank == 0 else []
    trainer.register_hooks([hooks.IterationTimer(), hooks.PeriodicWriter(writers, period=PERIOD)])
    outcome = {"error": None}
    try:
        trainer.train(0, num_steps)
    except FloatingPointError as e:
        outcome["error"] = (type(e).__name__, trainer.iter, str(e))
    storage = trainer.storage
    outcome["history"] = {
        name: storage.history(name).values() for name in REPORTED if name in storage.histories()
    }
    outcome["storage_type"] = type(storage).__module__
    return outcome


def worker(rank, world_size, root):
    from detectron2.engine import AMPTrainer, SimpleTrainer

    from engine.integrations.detectron2 import install

    results = {}
    try:  # one step of detectron2's own write_metrics, before install()
        results["before_install"] = _train(SimpleTrainer, rank, root, num_steps=1)["history"]
    except KeyError as e:
        results["before_install"] = repr(e)
    install()
    for name, trainer_class, options in [
        ("sync", SimpleTrainer, {}),
        ("async_ddp", SimpleTrainer, dict(ddp=True, async_write_metrics=True)),
        ("amp", AMPTrainer, {}),
        ("nan_sync", SimpleTrainer, dict(nan_at=NAN_STEP)),
        ("nan_async", SimpleTrainer, dict(nan_at=NAN_STEP, num_steps=10, async_write_metrics=True)),
    ]:
        output_dir = os.path.join(root, name)
        os.makedirs(output_dir, exist_ok=True)
        results[name] = _train(trainer_class, rank, output_dir, **options)
        if rank == 0:
            with open(os.path.join(output_dir, "metrics.json")) as f:
                results[name]["metrics_json"] = [json.loads(line) for line in f]
    return results


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    return run_distributed(worker, world_size=2, args=(str(tmp_path_factory.mktemp("d2bridge")),), timeout=240)


def assert_reduced(history, steps):
    for name, expected_by_step in ((n, [expected_reduction(s)[n] for s in steps]) for n in REPORTED):
        assert [itr for _, itr in history[name]] == list(steps), name
        assert [v for v, _ in history[name]] == pytest.approx(expected_by_step), name


@pytest.mark.distributed
def test_the_stand_in_fails_as_detectron2_does_without_the_bridge(ranks):
    assert ranks[0]["before_install"] == "KeyError('loss_relation_synthetic')"
    assert ranks[1]["before_install"] == {}  # detectron2 puts the reduced values on rank 0 only


@pytest.mark.distributed
@pytest.mark.parametrize("scenario", ["sync", "async_ddp", "amp"])
def test_every_rank_stores_the_same_reduction_of_rank_dependent_keys(ranks, scenario):
    for rank in (0, 1):
        outcome = ranks[rank][scenario]
        assert outcome["error"] is None
        assert outcome["storage_type"] == "events.storage"
        assert_reduced(outcome["history"], range(NUM_STEPS))


@pytest.mark.distributed
@pytest.mark.parametrize("scenario", ["sync", "async_ddp"])
def test_metrics_json_gets_complete_iterations_in_order(ranks, scenario):
    records = ranks[0][scenario]["metrics_json"]
    assert [r["iteration"] for r in records] == [2, 5]
    for record in records:
        # detectron2's JSONWriter writes the window median of each smoothed key.
        window = [expected_reduction(s) for s in range(record["iteration"] + 1)]
        for name in REPORTED:
            assert record[name] == pytest.approx(statistics.median(w[name] for w in window)), name


@pytest.mark.distributed
def test_nan_raises_on_every_rank_at_the_same_iteration(ranks):
    for rank in (0, 1):
        name, iteration, message = ranks[rank]["nan_sync"]["error"]
        assert (name, iteration) == ("NonFiniteLossError", NAN_STEP)
        assert f"iteration={NAN_STEP}" in message and "loss_ce (rank 1)" in message
        assert_reduced(ranks[rank]["nan_sync"]["history"], range(NAN_STEP))


@pytest.mark.distributed
def test_nan_in_a_background_write_raises_two_steps_later_on_every_rank(ranks):
    for rank in (0, 1):
        name, iteration, message = ranks[rank]["nan_async"]["error"]
        assert (name, iteration) == ("NonFiniteLossError", NAN_STEP + 2)
        assert f"iteration={NAN_STEP}" in message and "loss_ce (rank 1)" in message
        history = ranks[rank]["nan_async"]["history"]
        # Step 3's NaN also reached rank 1's weight through optimizer.step(): step 4 is not
        # finite either. Every write before the first failure is in the storage.
        assert [itr for _, itr in history["total_loss"]] == [0, 1, 2]
