"""Build the criteria from ``MODEL.DETR`` (and ``DATASETS.MULTI_DATASET`` for sample weights).

A key the built criterion cannot use is an error rather than silently ignored: a detection
criterion rejects non-default relation keys, a relation criterion without re-weighting rejects
non-default re-weighting keys (and with re-weighting, a non-default ``NO_REL_WEIGHT``).
"""
from __future__ import annotations

import math
from typing import Any, Sequence

from torch import Tensor

from .config import RELATION_ONLY_KEYS, REWEIGHT_ONLY_KEYS, check_criterion_config, non_default_keys
from .matcher import HungarianMatcher, RelationHungarianMatcher
from .relation_criterion import RelationCriterion, predicate_frequency_weights
from .set_criterion import DEFAULT_DATASET_LOSS_WEIGHTS, SetCriterion
from .weight_dict import detection_weight_dict, relation_weight_dict

__all__ = ["build_set_criterion", "build_relation_criterion"]


def _reject(keys: list[str], reason: str) -> None:
    if keys:
        raise ValueError(f"{', '.join('MODEL.DETR.' + k for k in keys)}: set but {reason}; remove it from the config")


def _sample_weighting(multi_dataset: Any | None) -> dict[str, Any]:
    """Keyword arguments for per-sample weighting from ``DATASETS.MULTI_DATASET`` (or defaults)."""
    if multi_dataset is None:
        return {"normalize_sample_weights": False, "dataset_loss_weights": DEFAULT_DATASET_LOSS_WEIGHTS}
    weights = {"real": multi_dataset.REAL_LOSS_WEIGHT, "synthetic": multi_dataset.SYNTHETIC_LOSS_WEIGHT}
    for group, weight in weights.items():
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight < 0:
            raise ValueError(f"DATASETS.MULTI_DATASET.{group.upper()}_LOSS_WEIGHT must be a finite number >= 0, got {weight!r}")
    return {
        "normalize_sample_weights": bool(multi_dataset.NORMALIZE_LOSS_WEIGHTS),
        "dataset_loss_weights": {group: float(weight) for group, weight in weights.items()},
    }


def build_set_criterion(cfg: Any, *, multi_dataset: Any | None = None) -> SetCriterion:
    """DETR ``SetCriterion`` (with its ``HungarianMatcher`` and ``weight_dict``) from ``MODEL.DETR``.

    Args:
        cfg: the ``MODEL.DETR`` node (``criterion.config.CriterionConfig`` fields).
        multi_dataset: the ``DATASETS.MULTI_DATASET`` node (``REAL_LOSS_WEIGHT``,
            ``SYNTHETIC_LOSS_WEIGHT``, ``NORMALIZE_LOSS_WEIGHTS``); None = 1.0 / 0.5, unnormalized.
    """
    check_criterion_config(cfg)
    _reject(non_default_keys(cfg, RELATION_ONLY_KEYS), "SetCriterion (object detection) has no relation branch")
    matcher = HungarianMatcher(cfg.COST_CLASS, cfg.COST_BBOX, cfg.COST_GIOU, one_to_many_k=cfg.ONE2MANY_K)
    return SetCriterion(
        cfg.NUM_CLASSES,
        matcher,
        weight_dict=detection_weight_dict(cfg),
        eos_coef=cfg.NO_OBJECT_WEIGHT,
        **_sample_weighting(multi_dataset),
    )


def build_relation_criterion(
    cfg: Any,
    *,
    multi_dataset: Any | None = None,
    predicate_counts: Sequence[float] | Tensor | None = None,
) -> RelationCriterion:
    """``RelationCriterion`` (with its matcher and ``weight_dict``) from ``MODEL.DETR``.

    Args:
        cfg: the ``MODEL.DETR`` node; ``NUM_CLASSES`` and ``NUM_REL_CLASSES`` size the heads.
        multi_dataset: see ``build_set_criterion``.
        predicate_counts: ``[NUM_REL_CLASSES]`` training-set predicate counts; required exactly
            when ``REWEIGHT_RELATIONS`` is on.
    """
    check_criterion_config(cfg)
    if cfg.REWEIGHT_RELATIONS:
        _reject(non_default_keys(cfg, ("NO_REL_WEIGHT",)), "REWEIGHT_RELATIONS uses REWEIGHT_REL_EOS_COEF for no-relation")
        if predicate_counts is None:
            raise ValueError("MODEL.DETR.REWEIGHT_RELATIONS is on but no predicate_counts were given")
        if len(predicate_counts) != cfg.NUM_REL_CLASSES:
            raise ValueError(f"predicate_counts has {len(predicate_counts)} entries, MODEL.DETR.NUM_REL_CLASSES is {cfg.NUM_REL_CLASSES}")
        predicate_weights = predicate_frequency_weights(predicate_counts, cfg.OVERSAMPLE_PARAM, cfg.UNDERSAMPLE_PARAM)
        rel_eos_coef = cfg.REWEIGHT_REL_EOS_COEF
    else:
        _reject(non_default_keys(cfg, REWEIGHT_ONLY_KEYS), "MODEL.DETR.REWEIGHT_RELATIONS is off")
        if predicate_counts is not None:
            raise ValueError("predicate_counts given but MODEL.DETR.REWEIGHT_RELATIONS is off")
        predicate_weights, rel_eos_coef = None, cfg.NO_REL_WEIGHT
    matcher = RelationHungarianMatcher(cfg.COST_CLASS, cfg.COST_BBOX, cfg.COST_GIOU, one_to_many_k=cfg.ONE2MANY_K)
    return RelationCriterion(
        cfg.NUM_CLASSES,
        cfg.NUM_REL_CLASSES,
        matcher,
        weight_dict=relation_weight_dict(cfg),
        eos_coef=cfg.NO_OBJECT_WEIGHT,
        rel_eos_coef=rel_eos_coef,
        predicate_weights=predicate_weights,
        **_sample_weighting(multi_dataset),
    )
