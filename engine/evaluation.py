"""Validation loss: the criterion's loss dict averaged over a loader and across ranks."""
from __future__ import annotations

from collections import defaultdict
from typing import Callable, Dict, Iterable, Mapping, Optional

import torch

from engine.metrics import NUM_SAMPLES_SUFFIX, LossDictReducer


@torch.no_grad()
def evaluate_loss(
    model: torch.nn.Module,
    criterion: Callable[[object, object], Mapping[str, torch.Tensor]],
    loader: Iterable,
    weight_dict: Optional[Mapping[str, float]] = None,
    reducer: Optional[LossDictReducer] = None,
    iteration: int = 0,
) -> Dict[str, float]:
    """Mean of every loss-dict key over the batches of ``loader`` (each ``(inputs, targets)``),
    then across ranks, with ``total_loss`` / ``total_loss_weighted`` as in training.

    Keys that carry a ``__num_samples`` count (e.g. ``loss_relation_real``) are averaged weighted
    by it, so the result is the mean over samples, not a mean of batch means. The model is put in
    eval mode for the pass and restored afterwards.
    """
    was_training = model.training
    model.eval()
    sums: Dict[str, float] = defaultdict(float)
    weights: Dict[str, float] = defaultdict(float)
    counted = set()
    try:
        for inputs, targets in loader:
            loss_dict = criterion(model(inputs), targets)
            # One host transfer per batch, as in training.
            flat = torch.stack([torch.as_tensor(v, dtype=torch.float64).reshape(()).cpu() for v in loss_dict.values()])
            values = dict(zip(loss_dict, flat.tolist()))
            for name, value in values.items():
                if name.endswith(NUM_SAMPLES_SUFFIX):
                    continue
                weight = values.get(name + NUM_SAMPLES_SUFFIX)
                if weight is not None:
                    counted.add(name)
                sums[name] += value * (1.0 if weight is None else weight)
                weights[name] += 1.0 if weight is None else weight
    finally:
        model.train(was_training)
    means: Dict[str, float] = {}
    for name, total in sums.items():
        if weights[name] > 0:
            means[name] = total / weights[name]
            if name in counted:
                means[name + NUM_SAMPLES_SUFFIX] = weights[name]
    reducer = reducer if reducer is not None else LossDictReducer(weight_dict)
    reduced = reducer.reduce(means, data_time=0.0, iteration=iteration)
    return {name: value for name, value in reduced.items() if "data_time" not in name}
