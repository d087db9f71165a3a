"""``MODEL.DETR``: the matching and loss keys of the criteria, under IterativeSG/SpeaQ names.

The config helper mounts ``CriterionConfig`` as the ``MODEL.DETR`` node (OmegaConf structured
config); the builders in ``criterion.build`` accept that node or the dataclass itself. Model
architecture keys (hidden dim, queries, heads) belong to the model's own node, not here.

Naming follows the references, with one deliberate split: IterativeSG uses COST_CLASS,
L1_WEIGHT and GIOU_WEIGHT both as matching costs and as loss weights; here ``COST_*`` are the
matcher's costs (DETR's ``set_cost_*``) and ``*_WEIGHT`` the loss weights (DETR's ``*_loss_coef``),
with the references' values as defaults.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

__all__ = ["CriterionConfig", "check_criterion_config", "non_default_keys", "RELATION_ONLY_KEYS", "REWEIGHT_ONLY_KEYS"]


@dataclass
class CriterionConfig:
    """Defaults of ``MODEL.DETR`` (values from DETR / IterativeSG / SpeaQ on Visual Genome)."""

    # Shared with the model.
    NUM_CLASSES: int = 150  # entity classes, without no-object
    NUM_REL_CLASSES: int = 50  # predicates, without no-relation
    DEC_LAYERS: int = 6  # decoder layers; DEC_LAYERS - 1 aux layers under deep supervision
    DEEP_SUPERVISION: bool = True  # supervise every decoder layer (aux_outputs)

    # Hungarian matching costs.
    COST_CLASS: float = 1.0
    COST_BBOX: float = 5.0
    COST_GIOU: float = 2.0
    ONE2MANY_K: int = 1  # SpeaQ static one-to-many: each target matched to up to K queries

    # Loss weights (weight_dict).
    CLASS_WEIGHT: float = 1.0  # loss_ce / loss_ce_subject / loss_ce_object
    L1_WEIGHT: float = 5.0  # every loss_bbox*
    GIOU_WEIGHT: float = 2.0  # every loss_giou*
    RELATION_LOSS_WEIGHT: float = 1.0  # loss_relation (predicate classification)

    # Class weights of the cross-entropies.
    NO_OBJECT_WEIGHT: float = 0.1  # no-object class (DETR's eos_coef)
    NO_REL_WEIGHT: float = 0.1  # no-relation class, without re-weighting
    REWEIGHT_RELATIONS: bool = False  # predicate frequency re-weighting (needs predicate counts)
    REWEIGHT_REL_EOS_COEF: float = 0.1  # no-relation class, with re-weighting
    OVERSAMPLE_PARAM: float = 0.07  # t in w_c = max(sqrt(t / f_c), 1) ** p
    UNDERSAMPLE_PARAM: float = 1.0  # p in the same


# Keys only a relation criterion can use: a detection criterion rejects non-default values.
RELATION_ONLY_KEYS = (
    "NUM_REL_CLASSES",
    "RELATION_LOSS_WEIGHT",
    "NO_REL_WEIGHT",
    "REWEIGHT_RELATIONS",
    "REWEIGHT_REL_EOS_COEF",
    "OVERSAMPLE_PARAM",
    "UNDERSAMPLE_PARAM",
)
# Keys that only act when REWEIGHT_RELATIONS is on.
REWEIGHT_ONLY_KEYS = ("REWEIGHT_REL_EOS_COEF", "OVERSAMPLE_PARAM", "UNDERSAMPLE_PARAM")

_NON_NEGATIVE = (
    "COST_CLASS", "COST_BBOX", "COST_GIOU", "CLASS_WEIGHT", "L1_WEIGHT", "GIOU_WEIGHT",
    "RELATION_LOSS_WEIGHT", "NO_OBJECT_WEIGHT", "NO_REL_WEIGHT", "REWEIGHT_REL_EOS_COEF",
    "OVERSAMPLE_PARAM", "UNDERSAMPLE_PARAM",
)
_POSITIVE_INTS = ("NUM_CLASSES", "NUM_REL_CLASSES", "DEC_LAYERS", "ONE2MANY_K")


def check_criterion_config(cfg: Any) -> None:
    """One-line ``ValueError`` naming ``MODEL.DETR.<KEY>`` for a missing or out-of-range value."""
    for field in fields(CriterionConfig):
        if not hasattr(cfg, field.name):
            raise ValueError(f"MODEL.DETR.{field.name} is missing")
    for name in _POSITIVE_INTS:
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"MODEL.DETR.{name} must be an integer >= 1, got {value!r}")
    for name in _NON_NEGATIVE:
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ValueError(f"MODEL.DETR.{name} must be a finite number >= 0, got {value!r}")
    for name in ("DEEP_SUPERVISION", "REWEIGHT_RELATIONS"):
        if not isinstance(getattr(cfg, name), bool):
            raise ValueError(f"MODEL.DETR.{name} must be true or false, got {getattr(cfg, name)!r}")
    if cfg.COST_CLASS == 0 and cfg.COST_BBOX == 0 and cfg.COST_GIOU == 0:
        raise ValueError("MODEL.DETR.COST_CLASS, COST_BBOX and COST_GIOU cannot all be 0")


def non_default_keys(cfg: Any, names: tuple[str, ...]) -> list[str]:
    """The keys among ``names`` whose value differs from ``CriterionConfig``'s default."""
    defaults = CriterionConfig()
    return [name for name in names if getattr(cfg, name) != getattr(defaults, name)]
