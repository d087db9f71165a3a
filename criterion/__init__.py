"""Losses of DETR-like models: box ops, Hungarian matchers, DETR's set criterion and a relation
criterion (subject / object / relation branches, deep supervision, per-sample weights and the
real/synthetic split), the ``weight_dict`` and the weighted total. No logging, no files.

Boxes are ``(cx, cy, w, h)`` normalized to [0, 1]; the last logit of every head is background.
``B`` images, ``Q`` queries, ``C`` entity classes (``MODEL.DETR.NUM_CLASSES``), ``R`` predicates
(``MODEL.DETR.NUM_REL_CLASSES``).

Relation model outputs (``RelationCriterion``)::

    {
        "pred_logits_subject":  [B, Q, C + 1],   "pred_boxes_subject":  [B, Q, 4],
        "pred_logits_object":   [B, Q, C + 1],   "pred_boxes_object":   [B, Q, 4],
        "pred_logits_relation": [B, Q, R + 1],   "pred_boxes_relation": [B, Q, 4],  # union box
        "aux_outputs": [dict with the six keys above, one per decoder layer except the last,
                        first layer first]       # present iff MODEL.DETR.DEEP_SUPERVISION
    }

Relation targets, one dict per image::

    {
        "labels":    int64 [N],       # entity classes in [0, C)
        "boxes":     float [N, 4],    # entity boxes
        "relations": int64 [T, 3],    # (subject index, object index, predicate in [0, R)); T may be 0
        "relation_boxes": [T, 4],     # optional; default: smallest box enclosing subject and object
        "dataset_type": "real" | "synthetic",  # optional; enables the split keys
        "loss_weight": float,         # optional; default by dataset_type
                                      # (DATASETS.MULTI_DATASET.*_LOSS_WEIGHT), else 1.0
    }

DETR (``SetCriterion``): outputs ``{"pred_logits": [B, Q, C + 1], "pred_boxes": [B, Q, 4],
"aux_outputs": [...]}``, targets ``[{"labels": [N], "boxes": [N, 4], optional "loss_weight",
"dataset_type"}]``.

Usage::

    criterion = build_relation_criterion(cfg.MODEL.DETR, multi_dataset=cfg.DATASETS.MULTI_DATASET)
    loss_dict = criterion(outputs, targets)
    loss = weighted_total(loss_dict, criterion.weight_dict)   # what backward() sees

Keys of the loss dict (``L`` decoder layers, aux layer ``i`` in ``0 .. L-2`` adds ``_i``):
loss terms ``loss_{ce,bbox,giou}_{subject,object}``, ``loss_relation``,
``loss_{bbox,giou}_relation`` (optimized, in ``weight_dict``); metrics
``class_error_{subject,object,relation}`` (final layer), ``k_log_layer{1..L}``; split statistics
``<loss term>_{real,synthetic}`` (final layer, only for a group with matched relations). Every metric and split key ``K`` that averages samples comes
with ``K + NUM_SAMPLES_SUFFIX`` (``"__num_samples"``, the same string as
``engine.metrics.NUM_SAMPLES_SUFFIX``) holding its sample count.
"""
from .box_ops import (
    box_cxcywh_to_xyxy,
    box_iou,
    box_union,
    box_xyxy_to_cxcywh,
    generalized_box_iou,
    paired_generalized_box_iou,
)
from .build import build_relation_criterion, build_set_criterion
from .config import CriterionConfig, check_criterion_config
from .keys import NUM_SAMPLES_SUFFIX
from .matcher import HungarianMatcher, RelationHungarianMatcher
from .relation_criterion import RelationCriterion, predicate_frequency_weights
from .set_criterion import SetCriterion, SetCriterionBase
from .targets import DATASET_TYPES, expand_relation_targets
from .weight_dict import detection_weight_dict, relation_weight_dict, weighted_total, with_aux_copies

__all__ = [
    "box_cxcywh_to_xyxy",
    "box_xyxy_to_cxcywh",
    "box_iou",
    "generalized_box_iou",
    "paired_generalized_box_iou",
    "box_union",
    "HungarianMatcher",
    "RelationHungarianMatcher",
    "SetCriterionBase",
    "SetCriterion",
    "RelationCriterion",
    "predicate_frequency_weights",
    "expand_relation_targets",
    "DATASET_TYPES",
    "NUM_SAMPLES_SUFFIX",
    "CriterionConfig",
    "check_criterion_config",
    "build_set_criterion",
    "build_relation_criterion",
    "detection_weight_dict",
    "relation_weight_dict",
    "with_aux_copies",
    "weighted_total",
]
