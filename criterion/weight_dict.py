"""Loss weights from ``MODEL.DETR`` and the weighted total that ``backward()`` sees."""
from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import Tensor

from .keys import aux_key, count_key

__all__ = [
    "detection_weight_dict",
    "relation_weight_dict",
    "with_aux_copies",
    "num_aux_layers",
    "weighted_total",
]


def num_aux_layers(cfg: Any) -> int:
    """Aux decoder layers supervised: ``DEC_LAYERS - 1`` under ``DEEP_SUPERVISION``, else 0."""
    return cfg.DEC_LAYERS - 1 if cfg.DEEP_SUPERVISION else 0


def with_aux_copies(weights: Mapping[str, float], num_aux: int) -> dict[str, float]:
    """``weights`` plus a copy ``<key>_<i>`` for each aux layer ``i`` in ``range(num_aux)``."""
    expanded = dict(weights)
    for index in range(num_aux):
        expanded.update({aux_key(key, index): weight for key, weight in weights.items()})
    return expanded


def detection_weight_dict(cfg: Any) -> dict[str, float]:
    """DETR's ``weight_dict``: ``loss_ce``, ``loss_bbox``, ``loss_giou`` and their aux copies."""
    weights = {"loss_ce": cfg.CLASS_WEIGHT, "loss_bbox": cfg.L1_WEIGHT, "loss_giou": cfg.GIOU_WEIGHT}
    return with_aux_copies({k: float(v) for k, v in weights.items()}, num_aux_layers(cfg))


def relation_weight_dict(cfg: Any) -> dict[str, float]:
    """Relation criterion weights per branch (as IterativeSG) and their aux copies."""
    weights = {}
    for branch in ("subject", "object"):
        weights[f"loss_ce_{branch}"] = cfg.CLASS_WEIGHT
        weights[f"loss_bbox_{branch}"] = cfg.L1_WEIGHT
        weights[f"loss_giou_{branch}"] = cfg.GIOU_WEIGHT
    weights["loss_relation"] = cfg.RELATION_LOSS_WEIGHT
    weights["loss_bbox_relation"] = cfg.L1_WEIGHT
    weights["loss_giou_relation"] = cfg.GIOU_WEIGHT
    return with_aux_copies({k: float(v) for k, v in weights.items()}, num_aux_layers(cfg))


def weighted_total(loss_dict: Mapping[str, Tensor], weight_dict: Mapping[str, float]) -> Tensor:
    """``Σ weight_dict[k] * loss_dict[k]`` over the keys of ``weight_dict`` present in ``loss_dict``.

    Metrics (keys not starting with ``loss``: ``class_error``, ``k_log_layer*``, ...) and group
    statistics (keys with a ``__num_samples`` count, e.g. ``loss_relation_real``) never enter
    it: weighting one of them is an error, as is a ``weight_dict`` sharing no key with the loss dict.
    """
    not_losses = [key for key in weight_dict if not key.startswith("loss") or count_key(key) in loss_dict]
    if not_losses:
        raise ValueError(f"weight_dict weights logging-only values {not_losses}; only loss terms may be optimized")
    present = [key for key in weight_dict if key in loss_dict]
    if not present:
        raise ValueError(f"no weight_dict key is in the loss dict (loss keys: {sorted(loss_dict)[:6]} ...)")
    return torch.stack([loss_dict[key] * weight_dict[key] for key in present]).sum()
