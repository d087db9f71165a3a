"""The demo's datasets: a "real" and a "synthetic" domain of rectangle scenes, and their loaders.

Both domains draw the same kind of scene (:mod:`engine.demo.scenes`); the synthetic one is
cluttered (grey distractors, colour jitter, pixel noise) per ``DATASETS.DEMO.SYNTHETIC``.
Scene ``i`` of a domain and split is a pure function of ``(DATASETS.DEMO.SEED, domain, split, i)``,
so a dataset is fixed without being stored.

A batch is ``(images, targets)``: ``images`` is ``[B, 3, S, S]`` float32 in ``[0, 1]``, ``targets``
a list of ``B`` dicts in the target format of the ``criterion`` package::

    {"labels": [N] int64, "boxes": [N, 4] float32 cxcywh in [0, 1], "relations": [T, 3] int64,
     "dataset_type": "real" | "synthetic", "loss_weight": float}

The last two keys are stamped only when ``DATASETS.MULTI_DATASET.ENABLED``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch
from omegaconf import DictConfig
from torch import Tensor

from engine.config import ConfigError
from engine.demo.sampler import REAL, SYNTHETIC, MultiDatasetSampler
from engine.demo.scenes import PALETTE, PREDICATES, Scene, generate_scene, render_scene

__all__ = [
    "Sample",
    "Batch",
    "SceneDataset",
    "MultiDatasetLoader",
    "ValidationLoader",
    "predicate_counts",
    "build_scene_dataset",
    "build_train_loader",
    "build_val_loader",
]

Sample = tuple[Tensor, dict]
Batch = tuple[Tensor, list[dict]]

_DOMAIN_IDS = {REAL: 0, SYNTHETIC: 1}
_SPLIT_IDS = {"train": 0, "val": 1}


@dataclass(frozen=True)
class SceneDataset:
    """A fixed set of ``num_scenes`` scenes of one domain and split, drawn on demand.

    ``dataset[i]`` -> ``(image [3, S, S], {"labels", "boxes", "relations"})``.
    """

    dataset_type: str
    split: str
    num_scenes: int
    seed: int
    image_size: int
    num_classes: int
    min_objects: int
    max_objects: int
    near_distance: float
    noise: float = 0.0
    color_jitter: float = 0.0
    num_distractors: int = 0

    def __len__(self) -> int:
        return self.num_scenes

    def _rng(self, index: int) -> np.random.Generator:
        if not 0 <= index < self.num_scenes:
            raise IndexError(f"scene {index} outside the {self.num_scenes} scenes of {self.dataset_type}/{self.split}")
        return np.random.default_rng([self.seed, _DOMAIN_IDS[self.dataset_type], _SPLIT_IDS[self.split], index])

    def _layout(self, rng: np.random.Generator) -> Scene:
        return generate_scene(
            rng,
            image_size=self.image_size,
            num_classes=self.num_classes,
            min_objects=self.min_objects,
            max_objects=self.max_objects,
            near_px=self.near_distance * self.image_size,
            num_distractors=self.num_distractors,
        )

    def layout(self, index: int) -> Scene:
        """Scene ``index`` without its pixels (cheap): objects, relations, clutter."""
        return self._layout(self._rng(index))

    def __getitem__(self, index: int) -> Sample:
        rng = self._rng(index)
        scene = self._layout(rng)
        image = render_scene(
            scene, rng, image_size=self.image_size, noise=self.noise, color_jitter=self.color_jitter
        )
        x0, y0, x1, y1 = (scene.boxes.astype(np.float32) / self.image_size).T
        boxes = np.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], axis=-1)
        target = {
            "labels": torch.from_numpy(scene.labels),
            "boxes": torch.from_numpy(boxes.reshape(-1, 4)),
            "relations": torch.from_numpy(scene.relations),
        }
        return torch.from_numpy(image), target


def predicate_counts(datasets: Iterable[SceneDataset], num_rel_classes: int) -> Tensor:
    """``[num_rel_classes]`` int64 predicate counts over the datasets' scenes.

    What ``build_relation_criterion(..., predicate_counts=...)`` needs when
    ``MODEL.DETR.REWEIGHT_RELATIONS`` is on; reads layouts only, no pixels are drawn.
    """
    counts = np.zeros(num_rel_classes, dtype=np.int64)
    for dataset in datasets:
        for index in range(len(dataset)):
            counts += np.bincount(dataset.layout(index).relations[:, 2], minlength=num_rel_classes)
    return torch.from_numpy(counts)


def _collate(samples: Sequence[Sample], stamps: Sequence[dict]) -> Batch:
    """Stack images to ``[B, 3, S, S]``; add each sample's stamps to its target."""
    images = torch.stack([image for image, _ in samples])
    targets = [{**target, **stamp} for (_, target), stamp in zip(samples, stamps)]
    return images, targets


class MultiDatasetLoader:
    """Endless training batches of one rank, mixing real and synthetic scenes.

    Iterating yields the batches of iterations ``start_iter, start_iter + 1, ...``; batch ``i`` is
    the same whenever it is asked for (see :class:`MultiDatasetSampler`), so resuming at ``i``
    continues the exact stream.

    Args:
        datasets: ``{"real": SceneDataset, "synthetic": SceneDataset}`` (synthetic optional when
            the sampler never asks for it).
        sampler: plans each batch.
        loss_weights: ``{"real": w, "synthetic": w}`` stamped as ``loss_weight`` together with
            ``dataset_type``; ``None`` stamps nothing (single-dataset training).
        start_iter: first iteration yielded.
        delay: seconds this loader sleeps before each batch (``DATASETS.DEMO.SLOW_RANK``: a
            straggling rank, for the per-rank figures).
    """

    def __init__(
        self,
        datasets: Mapping[str, SceneDataset],
        sampler: MultiDatasetSampler,
        loss_weights: Mapping[str, float] | None,
        start_iter: int = 0,
        delay: float = 0.0,
    ) -> None:
        self.datasets = dict(datasets)
        self.sampler = sampler
        self.loss_weights = dict(loss_weights) if loss_weights is not None else None
        self.start_iter = start_iter
        self.delay = delay

    def batch(self, iteration: int) -> Batch:
        plan = self.sampler.plan(iteration)
        samples = [self.datasets[dataset_type][index] for dataset_type, index in plan]
        if self.loss_weights is None:
            stamps = [{} for _ in plan]
        else:
            stamps = [
                {"dataset_type": dataset_type, "loss_weight": float(self.loss_weights[dataset_type])}
                for dataset_type, _ in plan
            ]
        return _collate(samples, stamps)

    def __iter__(self) -> Iterator[Batch]:
        iteration = self.start_iter
        while True:
            if self.delay > 0:
                time.sleep(self.delay)
            yield self.batch(iteration)
            iteration += 1


class ValidationLoader:
    """One pass over a dataset in order, this rank's share only (scenes ``rank::world_size``).

    Re-iterable, so a periodic evaluation hook can run it again.
    """

    def __init__(
        self,
        dataset: SceneDataset,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        stamp: Mapping[str, object] | None = None,
    ) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.dataset = dataset
        self.batch_size = batch_size
        self.indices = range(rank, len(dataset), world_size)
        self.stamp = dict(stamp or {})

    def __len__(self) -> int:
        return -(-len(self.indices) // self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        for start in range(0, len(self.indices), self.batch_size):
            chunk = self.indices[start : start + self.batch_size]
            yield _collate([self.dataset[i] for i in chunk], [self.stamp] * len(chunk))


# --------------------------------------------------------------------------------------------
# Builders from the config
# --------------------------------------------------------------------------------------------
def _check_scene_config(cfg: DictConfig) -> None:
    detr, demo = cfg.MODEL.DETR, cfg.DATASETS.DEMO
    if detr.NUM_CLASSES > len(PALETTE):
        raise ConfigError(
            f"MODEL.DETR.NUM_CLASSES={detr.NUM_CLASSES}: the demo scenes have {len(PALETTE)} "
            "object classes (one colour each); use at most that"
        )
    if detr.NUM_REL_CLASSES < len(PREDICATES):
        raise ConfigError(
            f"MODEL.DETR.NUM_REL_CLASSES={detr.NUM_REL_CLASSES}: the demo scenes use "
            f"{len(PREDICATES)} predicates ({', '.join(PREDICATES)})"
        )
    if not 1 <= demo.MIN_OBJECTS <= demo.MAX_OBJECTS:
        raise ConfigError(
            f"DATASETS.DEMO.MIN_OBJECTS={demo.MIN_OBJECTS} / MAX_OBJECTS={demo.MAX_OBJECTS}: "
            "need 1 <= MIN_OBJECTS <= MAX_OBJECTS"
        )
    if cfg.INPUT.IMAGE_SIZE < 16:
        raise ConfigError(f"INPUT.IMAGE_SIZE={cfg.INPUT.IMAGE_SIZE}: the demo scenes need at least 16 pixels")


def build_scene_dataset(cfg: DictConfig, dataset_type: str, split: str = "train") -> SceneDataset:
    """The ``dataset_type`` ("real" / "synthetic") scenes of ``split`` ("train" / "val")."""
    _check_scene_config(cfg)
    demo = cfg.DATASETS.DEMO
    domain = demo.REAL if dataset_type == REAL else demo.SYNTHETIC
    return SceneDataset(
        dataset_type=dataset_type,
        split=split,
        num_scenes=domain.NUM_SCENES if split == "train" else demo.NUM_VAL_SCENES,
        seed=demo.SEED,
        image_size=cfg.INPUT.IMAGE_SIZE,
        num_classes=cfg.MODEL.DETR.NUM_CLASSES,
        min_objects=demo.MIN_OBJECTS,
        max_objects=demo.MAX_OBJECTS,
        near_distance=demo.NEAR_DISTANCE,
        noise=domain.NOISE,
        color_jitter=domain.COLOR_JITTER,
        num_distractors=domain.NUM_DISTRACTORS,
    )


def _per_rank_batch_size(cfg: DictConfig, world_size: int) -> int:
    total = cfg.SOLVER.IMS_PER_BATCH
    if total <= 0 or total % world_size:
        raise ConfigError(
            f"SOLVER.IMS_PER_BATCH={total} must be a positive multiple of the world size {world_size}"
        )
    return total // world_size


def build_train_loader(
    cfg: DictConfig, rank: int = 0, world_size: int = 1, start_iter: int = 0, seed: int | None = None
) -> MultiDatasetLoader:
    """This rank's endless training batches (``SOLVER.IMS_PER_BATCH / world_size`` per batch).

    Args:
        seed: base seed of the sampling stream; default ``cfg.SEED``, or a fresh random one
            when that is negative. Ranks derive their own streams from it.
    """
    multi = cfg.DATASETS.MULTI_DATASET
    if seed is None:
        seed = cfg.SEED if cfg.SEED >= 0 else int(np.random.SeedSequence().entropy % 2**31)
    datasets = {REAL: build_scene_dataset(cfg, REAL)}
    if multi.ENABLED:
        if not 0.0 <= multi.SYNTHETIC_RATIO <= 1.0:
            raise ConfigError(f"DATASETS.MULTI_DATASET.SYNTHETIC_RATIO={multi.SYNTHETIC_RATIO} must be in [0, 1]")
        datasets[SYNTHETIC] = build_scene_dataset(cfg, SYNTHETIC)
        loss_weights = {REAL: multi.REAL_LOSS_WEIGHT, SYNTHETIC: multi.SYNTHETIC_LOSS_WEIGHT}
    else:
        loss_weights = None
    sampler = MultiDatasetSampler(
        num_real=len(datasets[REAL]),
        num_synthetic=len(datasets.get(SYNTHETIC, ())),
        synthetic_ratio=multi.SYNTHETIC_RATIO if multi.ENABLED else 0.0,
        batch_size=_per_rank_batch_size(cfg, world_size),
        seed=seed,
        rank=rank,
        world_size=world_size,
    )
    demo = cfg.DATASETS.DEMO
    delay = float(demo.SLOW_RANK_SECONDS) if demo.SLOW_RANK == rank else 0.0
    return MultiDatasetLoader(datasets, sampler, loss_weights, start_iter=start_iter, delay=delay)


def build_val_loader(cfg: DictConfig, rank: int = 0, world_size: int = 1) -> ValidationLoader:
    """This rank's share of the real validation scenes (``DATASETS.DEMO.NUM_VAL_SCENES``)."""
    multi = cfg.DATASETS.MULTI_DATASET
    stamp = {"dataset_type": REAL, "loss_weight": float(multi.REAL_LOSS_WEIGHT)} if multi.ENABLED else None
    return ValidationLoader(
        build_scene_dataset(cfg, REAL, split="val"),
        batch_size=_per_rank_batch_size(cfg, world_size),
        rank=rank,
        world_size=world_size,
        stamp=stamp,
    )
