"""Which dataset and which scene each training sample comes from, for one rank.

Every sample makes its own Bernoulli draw (synthetic with probability ``synthetic_ratio``), so a
batch may hold no synthetic sample at all (or no real one) and the criterion's ``*_synthetic``
keys are then really absent. The plan for iteration ``i`` is a pure function of
``(seed, rank, i)``: resuming at iteration ``i`` replays exactly the same stream, and ranks
draw independent streams.
"""
from __future__ import annotations

import numpy as np

__all__ = ["REAL", "SYNTHETIC", "MultiDatasetSampler"]

REAL = "real"
SYNTHETIC = "synthetic"


class MultiDatasetSampler:
    """Plans each batch of one rank as ``[(dataset_type, scene_index), ...]``.

    Args:
        num_real: scenes in the real dataset.
        num_synthetic: scenes in the synthetic dataset (may be 0 when ``synthetic_ratio`` is 0).
        synthetic_ratio: probability that a sample is synthetic, in ``[0, 1]``.
        batch_size: samples per batch on this rank.
        seed: non-negative base seed shared by all ranks.
        rank, world_size: this process's place; rank ``r`` draws its own stream.
    """

    def __init__(
        self,
        num_real: int,
        num_synthetic: int,
        synthetic_ratio: float,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if not 0.0 <= synthetic_ratio <= 1.0:
            raise ValueError(f"synthetic_ratio must be in [0, 1], got {synthetic_ratio}")
        if num_real <= 0 and synthetic_ratio < 1.0:
            raise ValueError("the real dataset is empty but real samples are requested")
        if num_synthetic <= 0 and synthetic_ratio > 0.0:
            raise ValueError("the synthetic dataset is empty but synthetic samples are requested")
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if seed < 0:
            raise ValueError(f"seed must be non-negative, got {seed}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world size {world_size}")
        self.num_real = num_real
        self.num_synthetic = num_synthetic
        self.synthetic_ratio = synthetic_ratio
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size

    def plan(self, iteration: int) -> list[tuple[str, int]]:
        """The ``batch_size`` samples of ``iteration`` on this rank, in batch order."""
        rng = np.random.default_rng([self.seed, self.rank, iteration])
        synthetic = rng.random(self.batch_size) < self.synthetic_ratio
        real_index = rng.integers(0, max(self.num_real, 1), size=self.batch_size)
        synthetic_index = rng.integers(0, max(self.num_synthetic, 1), size=self.batch_size)
        return [
            (SYNTHETIC, int(s)) if is_synthetic else (REAL, int(r))
            for is_synthetic, r, s in zip(synthetic, real_index, synthetic_index)
        ]
