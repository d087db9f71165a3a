"""Relation criterion (Iterative Scene Graph Generation / SpeaQ): subject, object and relation
branches supervised on the same relation queries, with one matching per decoder layer."""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import Tensor

from .matcher import RELATION_BRANCHES, RelationHungarianMatcher
from .set_criterion import DEFAULT_DATASET_LOSS_WEIGHTS, LossBranch, SetCriterionBase
from .targets import check_relation_targets, expand_relation_targets

__all__ = ["RelationCriterion", "RELATION_LOSS_BRANCHES", "predicate_frequency_weights"]

_subject_keys, _object_keys, _relation_keys = RELATION_BRANCHES
RELATION_LOSS_BRANCHES = (
    LossBranch(_subject_keys, "loss_ce_subject", "loss_bbox_subject", "loss_giou_subject", "class_error_subject"),
    LossBranch(_object_keys, "loss_ce_object", "loss_bbox_object", "loss_giou_object", "class_error_object"),
    LossBranch(_relation_keys, "loss_relation", "loss_bbox_relation", "loss_giou_relation", "class_error_relation"),
)


def predicate_frequency_weights(counts: Sequence[float] | Tensor, oversample_param: float, undersample_param: float) -> Tensor:
    """SpeaQ's predicate re-weighting ``w_c = max(sqrt(t / f_c), 1) ** p``.

    Args:
        counts: ``[predicates]`` training-set count of each predicate (all > 0).
        oversample_param: ``t`` (``MODEL.DETR.OVERSAMPLE_PARAM``): predicates rarer than this
            fraction are up-weighted.
        undersample_param: ``p`` (``MODEL.DETR.UNDERSAMPLE_PARAM``), a power on the weights.

    Returns:
        ``[predicates]`` float weights, >= 1 for ``p >= 0``.
    """
    counts = torch.as_tensor(counts, dtype=torch.float64)
    if counts.dim() != 1 or not bool(torch.isfinite(counts).all()) or bool((counts <= 0).any()):
        raise ValueError(f"predicate_counts must be a 1-d sequence of finite counts > 0, got {counts.tolist()}")
    frequency = counts / counts.sum()
    weights = torch.clamp((oversample_param / frequency).sqrt(), min=1.0) ** undersample_param
    return weights.float()


class RelationCriterion(SetCriterionBase):
    """Losses of a relation-query model (see ``criterion`` for the output/target format).

    Per layer: ``loss_ce_subject``, ``loss_bbox_subject``, ``loss_giou_subject``, the same for
    ``_object``, and ``loss_relation``, ``loss_bbox_relation``, ``loss_giou_relation``; aux layer
    ``i`` adds suffix ``_i``. Unmatched queries are supervised as no-object (subject/object,
    weight ``eos_coef``) and no-relation (predicate, weight ``rel_eos_coef``).

    Args:
        num_classes: entity classes, without no-object.
        num_rel_classes: predicates, without no-relation.
        matcher: a ``RelationHungarianMatcher``.
        eos_coef: no-object class weight (``MODEL.DETR.NO_OBJECT_WEIGHT``).
        rel_eos_coef: no-relation class weight (``NO_REL_WEIGHT``, or ``REWEIGHT_REL_EOS_COEF``
            when re-weighting).
        predicate_weights: ``[num_rel_classes]`` foreground predicate weights (default all 1),
            e.g. from ``predicate_frequency_weights``.
    """

    def __init__(
        self,
        num_classes: int,
        num_rel_classes: int,
        matcher: RelationHungarianMatcher,
        weight_dict: Mapping[str, float] | None = None,
        eos_coef: float = 0.1,
        rel_eos_coef: float = 0.1,
        predicate_weights: Sequence[float] | Tensor | None = None,
        *,
        normalize_sample_weights: bool = False,
        dataset_loss_weights: Mapping[str, float] = DEFAULT_DATASET_LOSS_WEIGHTS,
    ) -> None:
        entity_weight = torch.ones(num_classes + 1)
        entity_weight[-1] = eos_coef
        foreground = torch.ones(num_rel_classes) if predicate_weights is None else torch.as_tensor(predicate_weights, dtype=torch.float32)
        if foreground.shape != (num_rel_classes,):
            raise ValueError(f"predicate_weights must have {num_rel_classes} entries, got {list(foreground.shape)}")
        predicate_weight = torch.cat([foreground, torch.tensor([float(rel_eos_coef)])])
        super().__init__(
            RELATION_LOSS_BRANCHES,
            (entity_weight, entity_weight.clone(), predicate_weight),
            matcher,
            weight_dict=weight_dict,
            normalize_sample_weights=normalize_sample_weights,
            dataset_loss_weights=dataset_loss_weights,
        )
        self.num_classes = num_classes
        self.num_rel_classes = num_rel_classes

    def prepare_targets(self, targets: Sequence[Mapping]) -> list[Mapping[str, Tensor]]:
        check_relation_targets(targets, self.num_classes, self.num_rel_classes)
        return expand_relation_targets(targets)
