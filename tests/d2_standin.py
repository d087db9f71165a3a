"""What the detectron2-bridge tests share: the stand-in on ``sys.path`` and a model that returns
a scripted loss dict.

Importing this module puts ``tests/standins`` (a minimal imitation of detectron2's trainer
modules, see tests/standins/README.md) first on ``sys.path``, so ``import detectron2`` finds the
stand-in in this process and in the processes it spawns.
"""
from __future__ import annotations

import os
import sys
from typing import Dict, Iterator, Mapping

import torch

STANDINS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "standins")
if STANDINS not in sys.path:
    sys.path.insert(0, STANDINS)

COUNT = "__num_samples"


class ScriptedLossModel(torch.nn.Module):
    """A detectron2 meta-architecture in miniature: ``model(batch)`` returns the loss dict.

    ``batch`` maps names to floats; each value is returned as ``value * w`` with ``w = 1`` (so
    backward has a graph and, with ``lr = 0``, the values stay exact); ``*__num_samples`` counts
    are returned as integer tensors, as the relation criterion does.
    """

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(()))

    def forward(self, batch: Mapping[str, float]) -> Dict[str, torch.Tensor]:
        return {
            name: torch.tensor(int(value)) if name.endswith(COUNT) else torch.tensor(float(value)) * self.w
            for name, value in batch.items()
        }


def relation_loss_dict(rank: int, step: int) -> Dict[str, float]:
    """A SpeaQ-style loss dict whose keys depend on the rank (values scale with ``step + 1``).

    rank 0: a synthetic sample in every batch (``loss_relation_synthetic``);
    rank 1: none, but a ``loss_bbox_relation_synthetic`` that rank 0 lacks.
    """
    k = step + 1
    if rank == 0:
        return {
            "loss_ce": 1.0 * k, "loss_ce_0": 2.0 * k,
            "loss_relation_real": 0.2 * k, "loss_relation_real" + COUNT: 2,
            "loss_relation_synthetic": 0.5 * k, "loss_relation_synthetic" + COUNT: 1,
        }
    return {
        "loss_ce": 3.0 * k, "loss_ce_0": 4.0 * k,
        "loss_relation_real": 0.6 * k, "loss_relation_real" + COUNT: 6,
        "loss_bbox_relation_synthetic": 0.9 * k, "loss_bbox_relation_synthetic" + COUNT: 1,
    }


def expected_reduction(step: int) -> Dict[str, float]:
    """``relation_loss_dict`` of ranks 0 and 1 reduced by hand."""
    k = step + 1
    return {
        "loss_ce": 2.0 * k,
        "loss_ce_0": 3.0 * k,
        "loss_relation_real": (2 * 0.2 + 6 * 0.6) / 8 * k,  # weighted by the sample counts
        "loss_relation_synthetic": 0.5 * k,  # rank 0 only
        "loss_bbox_relation_synthetic": 0.9 * k,  # rank 1 only
        "total_loss": 5.0 * k,  # loss terms only: loss_ce + loss_ce_0
    }


def batches(rank: int, num_steps: int) -> Iterator[Dict[str, float]]:
    return iter([relation_loss_dict(rank, step) for step in range(num_steps)])
