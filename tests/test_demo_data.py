"""engine.demo: scene geometry, learnable relations, real/synthetic mixing, determinism, sharding."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from engine.config import ConfigError, load_config
from engine.demo.data import build_scene_dataset, build_train_loader, build_val_loader, predicate_counts
from engine.demo.sampler import MultiDatasetSampler
from engine.demo.scenes import ABOVE, BACKGROUND, DISTRACTOR, INSIDE, LEFT_OF, NEAR, PALETTE, relate, scene_relations

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


@pytest.fixture(scope="module")
def cfg():
    return load_config(CONFIG_DIR / "demo.yaml")


def box(x0, y0, x1, y1):
    return np.array([x0, y0, x1, y1])


# --------------------------------------------------------------------------------------------
# The predicate rule, by hand
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "a, b, expected",
    [
        # a left of b with a 20 px horizontal gap, vertical overlap
        (box(0, 0, 10, 10), box(30, 5, 40, 15), (0, 1, LEFT_OF)),
        # same pair given the other way round: subject is still the left box
        (box(30, 5, 40, 15), box(0, 0, 10, 10), (1, 0, LEFT_OF)),
        # a above b: vertical gap 20 beats horizontal gap 2
        (box(0, 0, 10, 10), box(12, 30, 20, 40), (0, 1, ABOVE)),
        # b above a
        (box(0, 30, 10, 40), box(0, 0, 10, 10), (1, 0, ABOVE)),
        # a strictly inside b, and the reverse order
        (box(5, 5, 10, 10), box(0, 0, 20, 20), (0, 1, INSIDE)),
        (box(0, 0, 20, 20), box(5, 5, 10, 10), (1, 0, INSIDE)),
        # gap 5 <= near_px 8: near, subject = left box
        (box(20, 0, 30, 10), box(0, 0, 15, 10), (1, 0, NEAR)),
        # a tie of gaps (8 and 8) is decided on x
        (box(0, 0, 10, 10), box(18, 18, 25, 25), (0, 1, NEAR)),
        # gap exactly 9 > 8: no longer near
        (box(0, 0, 10, 10), box(19, 0, 25, 10), (0, 1, LEFT_OF)),
    ],
)
def test_relate_by_hand(a, b, expected):
    assert relate(a, b, near_px=8) == expected


def test_scene_relations_has_one_row_per_unordered_pair():
    boxes = np.array([box(0, 0, 10, 10), box(40, 0, 50, 10), box(0, 40, 10, 50)])
    rows = scene_relations(boxes, near_px=5)
    # boxes 1 and 2: horizontal gap 30, vertical gap 30 -> tie decided on x, the left one (2) is subject
    assert rows.tolist() == [[0, 1, LEFT_OF], [0, 2, ABOVE], [2, 1, LEFT_OF]]
    assert rows.dtype == np.int64


# --------------------------------------------------------------------------------------------
# Target format
# --------------------------------------------------------------------------------------------
def test_targets_follow_the_relation_format(cfg):
    images, targets = build_train_loader(cfg).batch(0)
    size = cfg.INPUT.IMAGE_SIZE
    assert images.shape == (cfg.SOLVER.IMS_PER_BATCH, 3, size, size) and images.dtype == torch.float32
    assert 0.0 <= images.min() and images.max() <= 1.0
    for target in targets:
        labels, boxes, relations = target["labels"], target["boxes"], target["relations"]
        n = len(labels)
        assert labels.dtype == torch.int64 and boxes.dtype == torch.float32 and relations.dtype == torch.int64
        assert boxes.shape == (n, 4) and relations.shape == (n * (n - 1) // 2, 3)
        assert len(set(labels.tolist())) == n and ((0 <= labels) & (labels < cfg.MODEL.DETR.NUM_CLASSES)).all()
        x0, y0 = boxes[:, 0] - boxes[:, 2] / 2, boxes[:, 1] - boxes[:, 3] / 2
        x1, y1 = boxes[:, 0] + boxes[:, 2] / 2, boxes[:, 1] + boxes[:, 3] / 2
        assert (x0 >= 0).all() and (y0 >= 0).all() and (x1 <= 1).all() and (y1 <= 1).all()
        assert (boxes[:, 2:] > 0).all()
        assert ((relations[:, :2] >= 0) & (relations[:, :2] < n)).all()
        assert (relations[:, 0] != relations[:, 1]).all()
        assert ((relations[:, 2] >= 0) & (relations[:, 2] < cfg.MODEL.DETR.NUM_REL_CLASSES)).all()


def test_every_predicate_occurs(cfg):
    counts = predicate_counts([build_scene_dataset(cfg, "real")], cfg.MODEL.DETR.NUM_REL_CLASSES)
    assert counts.shape == (cfg.MODEL.DETR.NUM_REL_CLASSES,)
    assert (counts > 0.05 * counts.sum()).all(), counts  # no predicate is vanishingly rare


# --------------------------------------------------------------------------------------------
# Learnability: boxes and relations can be read back from the pixels alone
# --------------------------------------------------------------------------------------------
def read_scene_from_pixels(image: torch.Tensor) -> dict[int, np.ndarray]:
    """Nearest-colour segmentation of ``[3, S, S]`` -> ``{class: pixel box (x0, y0, x1, y1)}``."""
    colours = np.concatenate([PALETTE, BACKGROUND[None], DISTRACTOR[None]])  # [C + 2, 3]
    pixels = image.numpy().transpose(1, 2, 0)  # [S, S, 3]
    nearest = np.linalg.norm(pixels[:, :, None, :] - colours, axis=-1).argmin(-1)  # [S, S]
    found = {}
    for label in range(len(PALETTE)):
        ys, xs = np.nonzero(nearest == label)
        if len(xs):
            found[label] = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    return found


@pytest.mark.parametrize("dataset_type", ["real", "synthetic"])
def test_relations_are_a_function_of_the_drawn_image(cfg, dataset_type):
    dataset = build_scene_dataset(cfg, dataset_type)
    size = cfg.INPUT.IMAGE_SIZE
    near_px = cfg.DATASETS.DEMO.NEAR_DISTANCE * size
    for index in range(60):
        image, target = dataset[index]
        found = read_scene_from_pixels(image)
        labels = target["labels"].tolist()
        # exactly the annotated classes are visible, each at its annotated box ...
        assert sorted(found) == sorted(labels)
        pixel_boxes = np.stack([found[label] for label in labels]) if labels else np.zeros((0, 4))
        cx, cy, w, h = (target["boxes"].numpy() * size).T
        annotated = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=-1)
        np.testing.assert_allclose(pixel_boxes, annotated.reshape(-1, 4), atol=1e-4)
        # ... so the relations computed from what is visible are the annotated ones
        assert scene_relations(pixel_boxes, near_px).tolist() == target["relations"].tolist()


def test_synthetic_domain_is_cluttered_and_real_is_clean(cfg):
    real, synthetic = build_scene_dataset(cfg, "real"), build_scene_dataset(cfg, "synthetic")

    def off_palette(image):  # mean distance of pixels to the nearest clean colour
        colours = np.concatenate([PALETTE, BACKGROUND[None]])
        pixels = image.numpy().transpose(1, 2, 0)[:, :, None, :]
        return np.linalg.norm(pixels - colours, axis=-1).min(-1).mean()

    def grey_pixels(image):
        return int((np.abs(image.numpy() - 0.5) < 0.15).all(0).sum())

    real_images = [real[i][0] for i in range(20)]
    synthetic_images = [synthetic[i][0] for i in range(20)]
    assert np.mean([off_palette(im) for im in synthetic_images]) > 3 * np.mean([off_palette(im) for im in real_images])
    assert sum(grey_pixels(im) for im in real_images) == 0
    assert sum(grey_pixels(im) for im in synthetic_images) > 0


# --------------------------------------------------------------------------------------------
# Determinism, resume, ranks, validation split
# --------------------------------------------------------------------------------------------
def assert_same_batch(a, b):
    assert torch.equal(a[0], b[0])
    assert len(a[1]) == len(b[1])
    for ta, tb in zip(a[1], b[1]):
        assert ta.keys() == tb.keys()
        for key in ta:
            assert torch.equal(ta[key], tb[key]) if torch.is_tensor(ta[key]) else ta[key] == tb[key]


def test_same_seed_same_stream_and_resume_replays_it(cfg):
    first = iter(build_train_loader(cfg))
    batches = [next(first) for _ in range(4)]
    again = iter(build_train_loader(cfg))
    for batch in batches:
        assert_same_batch(next(again), batch)
    resumed = iter(build_train_loader(cfg, start_iter=2))
    assert_same_batch(next(resumed), batches[2])


def test_other_seed_other_stream(cfg):
    a = build_train_loader(cfg, seed=1).batch(0)
    b = build_train_loader(cfg, seed=2).batch(0)
    assert not torch.equal(a[0], b[0])


def test_ranks_draw_their_own_streams_of_the_per_rank_batch(cfg):
    rank0 = build_train_loader(cfg, rank=0, world_size=2).batch(0)
    rank1 = build_train_loader(cfg, rank=1, world_size=2).batch(0)
    assert rank0[0].shape[0] == rank1[0].shape[0] == cfg.SOLVER.IMS_PER_BATCH // 2
    assert not torch.equal(rank0[0], rank1[0])


def test_batch_not_divisible_by_world_size_is_a_config_error(cfg):
    with pytest.raises(ConfigError, match="SOLVER.IMS_PER_BATCH"):
        build_train_loader(cfg, rank=0, world_size=3)


def test_too_many_classes_for_the_palette_is_a_config_error():
    cfg = load_config(CONFIG_DIR / "demo.yaml", ["MODEL.DETR.NUM_CLASSES", "150"])
    with pytest.raises(ConfigError, match="MODEL.DETR.NUM_CLASSES"):
        build_train_loader(cfg)


def test_validation_split_is_sharded_disjoint_and_apart_from_training(cfg):
    num_val = cfg.DATASETS.DEMO.NUM_VAL_SCENES
    shards = [build_val_loader(cfg, rank=r, world_size=2) for r in range(2)]
    assert sorted([*shards[0].indices, *shards[1].indices]) == list(range(num_val))
    images = [im for shard in shards for images, _ in shard for im in images]
    assert len(images) == num_val
    assert sum(len(shard) for shard in shards) == sum(1 for shard in shards for _ in shard)
    # iterable twice (periodic evaluation), same content
    assert_same_batch(next(iter(shards[0])), next(iter(shards[0])))
    val_image = build_scene_dataset(cfg, "real", split="val")[0][0]
    train_image = build_scene_dataset(cfg, "real", split="train")[0][0]
    assert not torch.equal(val_image, train_image)
    _, targets = next(iter(shards[0]))
    assert all(t["dataset_type"] == "real" and t["loss_weight"] == 1.0 for t in targets)


# --------------------------------------------------------------------------------------------
# Mixing real and synthetic
# --------------------------------------------------------------------------------------------
def test_synthetic_ratio_within_tolerance_and_some_batches_all_real():
    sampler = MultiDatasetSampler(num_real=100, num_synthetic=100, synthetic_ratio=0.3, batch_size=8, seed=0)
    plans = [sampler.plan(i) for i in range(1000)]
    flags = np.array([[kind == "synthetic" for kind, _ in plan] for plan in plans])
    # 8000 Bernoulli(0.3) draws: standard deviation 0.005, tolerance 5 of them
    assert abs(flags.mean() - 0.3) < 0.025
    all_real = (~flags.any(1)).sum()
    assert 0.02 * 1000 < all_real < 0.12 * 1000  # expected 0.7 ** 8 = 5.8 %
    assert all(0 <= index < 100 for plan in plans for _, index in plan)


@pytest.mark.parametrize("ratio, expected", [(0.0, {"real"}), (1.0, {"synthetic"})])
def test_extreme_ratios(ratio, expected):
    sampler = MultiDatasetSampler(num_real=10, num_synthetic=10, synthetic_ratio=ratio, batch_size=16, seed=3)
    assert {kind for i in range(20) for kind, _ in sampler.plan(i)} == expected


def test_stamps_follow_the_config(cfg):
    loader = build_train_loader(cfg)
    weights = {"real": cfg.DATASETS.MULTI_DATASET.REAL_LOSS_WEIGHT, "synthetic": cfg.DATASETS.MULTI_DATASET.SYNTHETIC_LOSS_WEIGHT}
    seen = set()
    for iteration in range(30):
        plan = loader.sampler.plan(iteration)
        _, targets = loader.batch(iteration)
        for (kind, index), target in zip(plan, targets):
            assert target["dataset_type"] == kind
            assert target["loss_weight"] == weights[kind] and isinstance(target["loss_weight"], float)
            # the sample really comes from the stamped dataset
            assert torch.equal(target["labels"], loader.datasets[kind][index][1]["labels"])
            seen.add(kind)
    assert seen == {"real", "synthetic"}


def test_disabled_multi_dataset_is_plain_real_training():
    cfg = load_config(CONFIG_DIR / "demo.yaml", ["DATASETS.MULTI_DATASET.ENABLED", "false"])
    loader = build_train_loader(cfg)
    assert set(loader.datasets) == {"real"}
    for iteration in range(10):
        _, targets = loader.batch(iteration)
        assert all("dataset_type" not in t and "loss_weight" not in t for t in targets)
