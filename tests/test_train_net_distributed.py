"""tools/train_net.py on 2 gloo ranks whose batches hold different real/synthetic key sets.

The ``*_synthetic`` split keys exist on a rank when its batch holds synthetic relations, and
their ``__num_samples`` count is how many. With ``SYNTHETIC_RATIO 0.3`` and 4 samples per rank the
demo data give (synthetic relations on rank 0, rank 1) for iterations 0..7:

    0: (0, 3)   1: (0, 0)   2: (1, 0)   3: (0, 7)   4: (0, 0)   5: (1, 1)   6: (2, 6)   7: (10, 3)

(at 4, rank 0 holds a synthetic scene without relations): the synthetic keys are on one rank
only, on neither, and on both with different counts. The tests read these numbers from
``engine.demo``'s loaders themselves.

* In-process: the trainer that ``train_net.build_trainer`` wires, on 2 ranks spawned by
  ``dist_utils``, with its criterion wrapped to record each rank's raw loss dict. The parent
  recomputes every logged value by hand (count-weighted means over the ranks that hold a key)
  and compares it with what the storage of each rank and rank 0's metrics.json hold.
* torchrun: the real command line; only rank 0 writes files, and its metrics.json holds those
  same hand-computed means (training is repeatable: same seeds, one thread, gloo).
"""
import argparse
import importlib.util
import sys

import pytest
import torch

from dist_utils import run_distributed
from engine.config import load_config
from engine.demo.data import build_train_loader
from engine.hooks import HookBase
from engine.metrics import NUM_SAMPLES_SUFFIX
from events.rank_keys import is_rank_key
from train_net_outputs import (
    DEMO_CONFIG,
    TRAIN_NET,
    read_metrics,
    run_train_net,
    train_net_command,
    train_net_env,
)
from wandb_reader import find_run_files, read_offline_run

pytestmark = [pytest.mark.slow, pytest.mark.distributed, pytest.mark.timeout(900)]

WORLD_SIZE = 2
MAX_ITER = 8
SPLIT_KEY = "loss_relation_synthetic"
OVERRIDES = [
    "SOLVER.MAX_ITER", MAX_ITER,
    "SOLVER.IMS_PER_BATCH", 8,  # 4 per rank
    "DATASETS.MULTI_DATASET.SYNTHETIC_RATIO", 0.3,
    "SOLVER.CHECKPOINT_PERIOD", 4,
    "TEST.EVAL_PERIOD", 0,
    "TELEMETRY.WRITE_PERIOD", 1,  # every iteration on disk ...
    "TELEMETRY.WINDOW_SIZE", 1,  # ... unsmoothed: the reduced values themselves
]
# Keys the trainer's hooks put next to the reduced loss dict (and the per-rank timings, see
# test_straggler_distributed.py); not part of the hand computation.
NOT_FROM_THE_LOSS_DICT = {"data_time", "rank_data_time", "time", "lr", "grad_norm", "eta_seconds"}


def demo_config(output_dir=None, *extra):
    overrides = [str(x) for x in OVERRIDES + list(extra)]
    if output_dir is not None:
        overrides += ["OUTPUT_DIR", str(output_dir)]
    return load_config(str(DEMO_CONFIG), overrides)


@pytest.fixture(scope="module")
def synthetic_relations():
    """``{iteration: [synthetic relations in rank 0's batch, in rank 1's]}`` from the demo's loaders."""
    cfg = demo_config()
    loaders = [build_train_loader(cfg, rank, WORLD_SIZE) for rank in range(WORLD_SIZE)]
    return {
        i: [sum(len(t["relations"]) for t in loader.batch(i)[1] if t["dataset_type"] == "synthetic") for loader in loaders]
        for i in range(MAX_ITER)
    }


def load_train_net():
    """tools/train_net.py as a module (it is a script, not part of a package)."""
    spec = importlib.util.spec_from_file_location("train_net", TRAIN_NET)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class RecordingCriterion:
    """Wraps the criterion: returns its loss dict unchanged and keeps a float copy of it."""

    def __init__(self, criterion):
        self.criterion = criterion
        self.weight_dict = criterion.weight_dict
        self.loss_dicts = []

    def __call__(self, outputs, targets):
        loss_dict = self.criterion(outputs, targets)
        self.loss_dicts.append({k: float(torch.as_tensor(v).detach()) for k, v in loss_dict.items()})
        return loss_dict


class ReducedValues(HookBase):
    """After each step: every scalar the storage received at that iteration."""

    def __init__(self):
        self.by_iter = {}

    def after_step(self):
        iteration = self.trainer.iter
        latest = self.trainer.storage.latest()
        self.by_iter[iteration] = {k: v for k, (v, itr) in latest.items() if itr == iteration}


def train_with_recording(rank, world_size, output_dir):
    """One rank of the in-process run: train_net's own wiring, raw and reduced values recorded."""
    torch.set_num_threads(1)
    train_net = load_train_net()
    cfg = demo_config(output_dir, "TENSORBOARD.ENABLED", False, "WANDB.ENABLED", False)
    trainer, start_iter, _ = train_net.build_trainer(cfg, argparse.Namespace(resume=False))
    recorder = RecordingCriterion(trainer.criterion)
    trainer.criterion = recorder
    reduced = ReducedValues()
    trainer.register_hooks([reduced])
    trainer.train(start_iter, cfg.SOLVER.MAX_ITER)
    return {"raw": recorder.loss_dicts, "reduced": reduced.by_iter, "weight_dict": dict(trainer.weight_dict)}


def count_weighted_means(loss_dicts, weight_dict):
    """The reduction, by hand: a key with a ``__num_samples`` count is ``sum(c * v) / sum(c)``
    over the ranks with a non-zero count; any other key the plain mean over the ranks holding
    it; ``total_loss`` sums the weight_dict's keys, ``total_loss_weighted`` weights them."""
    names = {k for d in loss_dicts for k in d if not k.endswith(NUM_SAMPLES_SUFFIX)}
    means = {}
    for name in names:
        holders = [d for d in loss_dicts if name in d]
        count_key = name + NUM_SAMPLES_SUFFIX
        if any(count_key in d for d in holders):
            pairs = [(d[count_key], d[name]) for d in holders if d[count_key] > 0]
            if pairs:
                means[name] = sum(c * v for c, v in pairs) / sum(c for c, _ in pairs)
        else:
            means[name] = sum(d[name] for d in holders) / len(holders)
    terms = [k for k in weight_dict if k in means]
    means["total_loss"] = sum(means[k] for k in terms)
    means["total_loss_weighted"] = sum(weight_dict[k] * means[k] for k in terms)
    return means


@pytest.fixture(scope="module")
def in_process(tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("in_process") / "out"
    results = run_distributed(train_with_recording, WORLD_SIZE, args=(str(output_dir),), timeout=600)
    weight_dict = results[0]["weight_dict"]
    expected = {
        i: count_weighted_means([r["raw"][i] for r in results], weight_dict) for i in range(MAX_ITER)
    }
    return output_dir, results, expected


def test_the_batches_really_hold_different_key_sets(in_process, synthetic_relations):
    _, results, _ = in_process
    for i, counts in synthetic_relations.items():
        for rank, result in enumerate(results):
            raw = result["raw"][i]
            assert raw.get(SPLIT_KEY + NUM_SAMPLES_SUFFIX, 0) == counts[rank], (i, rank, counts)
            assert (SPLIT_KEY in raw) == (counts[rank] > 0), (i, rank, counts)
    cases = list(synthetic_relations.values())
    assert any(counts.count(0) == 1 for counts in cases)  # one rank only
    assert any(counts == [0, 0] for counts in cases)  # neither rank
    assert any(min(counts) > 0 and counts[0] != counts[1] for counts in cases)  # both, unequal


def test_every_rank_stores_the_hand_computed_count_weighted_means(in_process):
    _, results, expected = in_process
    for i, means in expected.items():
        for rank, result in enumerate(results):
            stored = {k: v for k, v in result["reduced"][i].items() if k not in NOT_FROM_THE_LOSS_DICT and not is_rank_key(k)}
            # Same keys: a key no rank holds is absent (never a zero), counts are never logged.
            assert set(stored) == set(means), (i, rank, set(stored) ^ set(means))
            for key, value in means.items():
                assert stored[key] == pytest.approx(value, rel=1e-9, abs=1e-12), (i, rank, key)


def test_a_key_held_by_one_rank_is_that_ranks_value(in_process):
    _, results, _ = in_process
    checked = 0
    for i in range(MAX_ITER):
        holders = [r["raw"][i] for r in results if SPLIT_KEY in r["raw"][i]]
        if len(holders) == 1:
            assert results[0]["reduced"][i][SPLIT_KEY] == pytest.approx(holders[0][SPLIT_KEY], rel=1e-12)
            checked += 1
        elif not holders:
            assert SPLIT_KEY not in results[0]["reduced"][i]
    assert checked >= 2


def test_counts_weigh_a_key_both_ranks_hold(in_process):
    _, results, expected = in_process
    weighted = 0
    for i in range(MAX_ITER):
        raw = [r["raw"][i] for r in results]
        if all(SPLIT_KEY in d for d in raw) and raw[0][SPLIT_KEY + NUM_SAMPLES_SUFFIX] != raw[1][SPLIT_KEY + NUM_SAMPLES_SUFFIX]:
            plain_mean = (raw[0][SPLIT_KEY] + raw[1][SPLIT_KEY]) / 2
            assert expected[i][SPLIT_KEY] != pytest.approx(plain_mean, rel=1e-6)  # the weighting matters
            assert results[1]["reduced"][i][SPLIT_KEY] == pytest.approx(expected[i][SPLIT_KEY], rel=1e-9)
            weighted += 1
    assert weighted >= 1


def test_rank0_metrics_json_holds_the_reduced_values(in_process):
    output_dir, _, expected = in_process
    records = {r["iteration"]: r for r in read_metrics(output_dir / "metrics.json")}
    assert sorted(records) == list(range(MAX_ITER + 1))  # + the final evaluation at MAX_ITER
    for i, means in expected.items():
        for key, value in means.items():
            assert records[i][key] == pytest.approx(value, rel=1e-9, abs=1e-12), (i, key)
    assert not list(output_dir.glob("metrics.json.rank*"))


@pytest.fixture(scope="module")
def torchrun_output(tmp_path_factory):
    root = tmp_path_factory.mktemp("torchrun")
    output_dir = root / "out"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(WORLD_SIZE)]
    run_train_net(train_net_command(output_dir, OVERRIDES, launcher=launcher), train_net_env(root), cwd=root)
    return output_dir


def test_torchrun_only_rank0_writes_files(torchrun_output):
    names = sorted(p.name for p in torchrun_output.iterdir())
    assert [n for n in names if "rank" in n] == ["log.txt.rank1"]
    assert len([n for n in names if n.startswith("events.out.tfevents.")]) == 1
    assert {"metrics.json", "log.txt", "config.yaml", "train_history.json", "loss_graph.png", "model_final.pth"} <= set(names)
    assert len(find_run_files(str(torchrun_output))) == 1
    rank1_log = (torchrun_output / "log.txt.rank1").read_text()
    assert "Rank 1 of 2" in rank1_log
    assert "Rank 0 of 2" in (torchrun_output / "log.txt").read_text()


def test_torchrun_logs_the_count_weighted_means(torchrun_output, in_process, synthetic_relations):
    records = {r["iteration"]: r for r in read_metrics(torchrun_output / "metrics.json")}
    assert sorted(records) == list(range(MAX_ITER + 1))
    _, _, expected = in_process
    for i, means in expected.items():
        counts = synthetic_relations[i]
        assert (SPLIT_KEY in records[i]) == (max(counts) > 0), (i, counts)
        logged = {k: v for k, v in records[i].items() if k not in NOT_FROM_THE_LOSS_DICT | {"iteration"} and not is_rank_key(k)}
        assert set(logged) == set(means), i
        for key, value in means.items():
            assert logged[key] == pytest.approx(value, rel=1e-9, abs=1e-12), (i, key)
    wandb_rows = read_offline_run(find_run_files(str(torchrun_output))[0]).history
    assert [row["iteration"] for row in wandb_rows] == sorted(records)
