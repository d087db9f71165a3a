"""The optimizer and learning-rate schedule of the ``SOLVER.*`` keys (DETR-style training)."""
from __future__ import annotations

from typing import Tuple

import torch
from omegaconf import DictConfig

__all__ = ["build_optimizer"]


def build_optimizer(
    cfg: DictConfig, model: torch.nn.Module
) -> Tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW with linear warmup then step decay at ``SOLVER.STEPS`` (DETR-style training)."""
    solver = cfg.SOLVER
    optimizer = torch.optim.AdamW(model.parameters(), lr=solver.BASE_LR, weight_decay=solver.WEIGHT_DECAY)

    def lr_factor(iteration: int) -> float:
        warmup = 1.0
        if iteration < solver.WARMUP_ITERS:
            alpha = iteration / max(solver.WARMUP_ITERS, 1)
            warmup = solver.WARMUP_FACTOR * (1 - alpha) + alpha
        return warmup * solver.GAMMA ** sum(iteration >= step for step in solver.STEPS)

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
