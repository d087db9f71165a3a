"""Hungarian matchers: DETR's ``HungarianMatcher`` and a relation matcher.

The matching cost between a prediction and a target, for one supervised head (a *branch*), is
DETR's::

    cost = cost_class * (-p[target class]) + cost_bbox * L1(cxcywh) + cost_giou * (-GIoU)

The relation matcher sums that cost over the subject, object and relation (predicate) branches
of each relation query, so a query matches the relation whose three parts it predicts best.
``scipy.optimize.linear_sum_assignment`` solves each image.

One-to-many matching (SpeaQ's static scheme, ``MODEL.DETR.ONE2MANY_K``): every target is
repeated ``k`` times in the cost matrix, so each target gets up to ``k`` queries and each query
at most one target. ``k = 1`` is DETR's one-to-one matching.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from .box_ops import box_cxcywh_to_xyxy, generalized_box_iou

__all__ = ["BranchKeys", "HungarianMatcher", "RelationHungarianMatcher", "MatchIndices"]

# Per image: (indices of the matched predictions, indices of their targets), both int64 [M].
MatchIndices = list[tuple[Tensor, Tensor]]


@dataclass(frozen=True)
class BranchKeys:
    """Where one supervised head lives: its output keys and its per-target keys."""

    logits: str  # outputs[logits]: [batch, queries, classes + 1]
    boxes: str  # outputs[boxes]: [batch, queries, 4] cxcywh
    target_labels: str  # target[target_labels]: [targets] int64
    target_boxes: str  # target[target_boxes]: [targets, 4] cxcywh


DETR_BRANCH = BranchKeys("pred_logits", "pred_boxes", "labels", "boxes")
RELATION_BRANCHES = (
    BranchKeys("pred_logits_subject", "pred_boxes_subject", "subject_labels", "subject_boxes"),
    BranchKeys("pred_logits_object", "pred_boxes_object", "object_labels", "object_boxes"),
    BranchKeys("pred_logits_relation", "pred_boxes_relation", "relation_labels", "relation_boxes"),
)


class NonFiniteCostError(FloatingPointError, ValueError):
    """Predictions with NaN/Inf (diverged weights): no matching exists. A ``FloatingPointError``
    like a non-finite loss, so a trainer stops on it the same way."""


class _BranchSumMatcher(nn.Module):
    """Hungarian matching on the sum of DETR costs over ``branches``."""

    def __init__(
        self,
        branches: Sequence[BranchKeys],
        cost_class: float = 1.0,
        cost_bbox: float = 1.0,
        cost_giou: float = 1.0,
        one_to_many_k: int = 1,
    ) -> None:
        super().__init__()
        if cost_class == 0 and cost_bbox == 0 and cost_giou == 0:
            raise ValueError("matcher costs cannot all be 0 (COST_CLASS, COST_BBOX, COST_GIOU)")
        if int(one_to_many_k) != one_to_many_k or one_to_many_k < 1:
            raise ValueError(f"one_to_many_k (ONE2MANY_K) must be an integer >= 1, got {one_to_many_k}")
        self.branches = tuple(branches)
        self.cost_class = float(cost_class)
        self.cost_bbox = float(cost_bbox)
        self.cost_giou = float(cost_giou)
        self.one_to_many_k = int(one_to_many_k)

    def _check_finite_outputs(self, outputs: Mapping[str, Tensor]) -> None:
        """Name the first image whose predictions are NaN/Inf: its costs would be NaN."""
        per_key = {
            key: torch.isfinite(outputs[key]).flatten(1).all(1)
            for branch in self.branches
            for key in (branch.logits, branch.boxes)
        }
        finite = torch.stack(list(per_key.values())).all(0)  # [batch]
        if bool(finite.all()):
            return
        image = int((~finite).nonzero()[0, 0])
        keys = [key for key, ok in per_key.items() if not bool(ok[image])]
        raise NonFiniteCostError(
            f"{type(self).__name__}: matching cost of image {image} is NaN: non-finite values in {', '.join(keys)}"
        )

    def _branch_cost(self, outputs: Mapping[str, Tensor], targets: Sequence[Mapping[str, Tensor]], branch: BranchKeys) -> Tensor:
        """Cost ``[batch * queries, total targets]`` of one branch, all images at once."""
        probs = outputs[branch.logits].flatten(0, 1).softmax(-1)
        boxes = outputs[branch.boxes].flatten(0, 1)
        target_labels = torch.cat([t[branch.target_labels] for t in targets]).long()
        target_boxes = torch.cat([t[branch.target_boxes] for t in targets]).to(boxes.dtype)
        # 1 - p[class] approximates the NLL; the constant 1 does not change the assignment.
        cost = -self.cost_class * probs[:, target_labels]
        cost = cost + self.cost_bbox * torch.cdist(boxes, target_boxes, p=1)
        giou = generalized_box_iou(box_cxcywh_to_xyxy(boxes), box_cxcywh_to_xyxy(target_boxes))
        return cost - self.cost_giou * giou

    @torch.no_grad()
    def forward(self, outputs: Mapping[str, Tensor], targets: Sequence[Mapping[str, Tensor]]) -> MatchIndices:
        """Match the queries of each image to its targets.

        Args:
            outputs: each branch's ``logits`` ``[batch, queries, classes + 1]`` and ``boxes``
                ``[batch, queries, 4]`` (cxcywh).
            targets: one dict per image with each branch's ``target_labels`` ``[targets]`` and
                ``target_boxes`` ``[targets, 4]``; images may have no target.

        Returns:
            Per image ``(pred_idx, tgt_idx)``, int64 ``[matches]``, ``pred_idx`` ascending; with
            ``one_to_many_k = k`` a target index appears up to ``k`` times.
        """
        first = outputs[self.branches[0].logits]
        batch, queries = first.shape[:2]
        if len(targets) != batch:
            raise ValueError(f"{type(self).__name__}: {batch} images in outputs but {len(targets)} targets")
        self._check_finite_outputs(outputs)
        sizes = [len(t[self.branches[0].target_labels]) for t in targets]
        cost = sum(self._branch_cost(outputs, targets, branch) for branch in self.branches)
        cost = cost.view(batch, queries, -1).float().cpu()
        indices = []
        for image, image_cost in enumerate(cost.split(sizes, -1)):
            image_cost = image_cost[image].numpy()
            num_targets = image_cost.shape[1]
            pred_idx, copy_idx = linear_sum_assignment(np.tile(image_cost, (1, self.one_to_many_k)))
            tgt_idx = copy_idx % num_targets if num_targets else copy_idx
            indices.append((torch.as_tensor(pred_idx, dtype=torch.int64), torch.as_tensor(tgt_idx, dtype=torch.int64)))
        return indices


class HungarianMatcher(_BranchSumMatcher):
    """DETR's matcher.

    ``outputs``: ``{"pred_logits": [batch, queries, classes + 1], "pred_boxes": [batch, queries, 4]}``;
    ``targets``: ``[{"labels": [targets], "boxes": [targets, 4]}, ...]`` (boxes cxcywh).
    """

    def __init__(self, cost_class: float = 1.0, cost_bbox: float = 1.0, cost_giou: float = 1.0, one_to_many_k: int = 1) -> None:
        super().__init__((DETR_BRANCH,), cost_class, cost_bbox, cost_giou, one_to_many_k)


class RelationHungarianMatcher(_BranchSumMatcher):
    """Matches relation queries to relations; the cost sums subject, object and predicate costs.

    ``outputs``: ``pred_{logits,boxes}_{subject,object,relation}`` (see ``criterion`` docs);
    ``targets``: per image ``{subject,object,relation}_{labels,boxes}``, one row per relation, as
    made by ``criterion.relation_criterion.expand_relation_targets``.
    """

    def __init__(self, cost_class: float = 1.0, cost_bbox: float = 1.0, cost_giou: float = 1.0, one_to_many_k: int = 1) -> None:
        super().__init__(RELATION_BRANCHES, cost_class, cost_bbox, cost_giou, one_to_many_k)
