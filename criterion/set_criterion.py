"""DETR's set criterion, generalized to several supervised heads ("branches") per query.

For each decoder layer (the final one and every ``aux_outputs`` entry) the queries are matched
to the targets with a Hungarian matcher, then each branch gets:

* a classification loss over ALL queries; unmatched queries are supervised as background (the
  last class) with its class weight (``eos_coef``);
* an L1 loss (summed over the 4 cxcywh coordinates) and a GIoU loss over the matched queries,
  divided by the number of targets (times ``k`` for one-to-many), averaged across ranks.

Per-sample weights ``w`` (see ``criterion.targets``) scale every term of an image:
``L = (1/N) Σ w_i L_i`` with N the (class-weighted, for classification) sample count, or,
with ``normalize_sample_weights``, ``L = Σ w_i L_i / Σ w_i``. With all weights 1 both are DETR.

Logging-only values are detached and never optimized: ``cardinality_error*`` and
``k_log_layer{n}`` for every layer; for the final layer only (DETR logs ``class_error`` there
only, and per-layer copies would multiply the logged scalars by the number of layers)
``class_error*`` and the real/synthetic split ``<loss>_real`` / ``<loss>_synthetic``: the
unweighted mean over that group's matched samples, present only when the group has matched
samples. Every statistic that averages samples comes with ``<key>__num_samples`` so a
cross-rank average can be count-weighted.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .box_ops import box_cxcywh_to_xyxy, paired_generalized_box_iou
from .keys import aux_key, count_key, k_log_key, split_key
from .matcher import DETR_BRANCH, BranchKeys, HungarianMatcher, MatchIndices
from .targets import DATASET_TYPES, SampleInfo, check_detection_targets, resolve_samples

__all__ = ["LossBranch", "SetCriterionBase", "SetCriterion", "DEFAULT_DATASET_LOSS_WEIGHTS"]

DEFAULT_DATASET_LOSS_WEIGHTS = {"real": 1.0, "synthetic": 0.5}


@dataclass(frozen=True)
class LossBranch:
    """One supervised head and the names of the values it emits."""

    keys: BranchKeys
    ce: str
    bbox: str
    giou: str
    class_error: str
    cardinality_error: str | None = None


DETR_LOSS_BRANCH = LossBranch(DETR_BRANCH, "loss_ce", "loss_bbox", "loss_giou", "class_error", "cardinality_error")


def _world_mean(values: Tensor) -> Tensor:
    """Mean of ``values`` over the ranks of the default process group (identity if none)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        values = values.clone()
        torch.distributed.all_reduce(values)
        values = values / torch.distributed.get_world_size()
    return values


def _positive_or_one(denominator: Tensor) -> Tensor:
    # A zero denominator comes with a zero numerator (no sample, or all weights 0): loss 0, not NaN.
    return torch.where(denominator > 0, denominator, torch.ones_like(denominator))


class SetCriterionBase(nn.Module):
    """Matched set losses for ``branches``; subclasses say how targets are checked and laid out.

    Args:
        branches: the supervised heads, sharing one matching per layer.
        class_weights: per branch, ``[classes + 1]`` cross-entropy class weights (last = background).
        matcher: a matcher over the same branches (``criterion.matcher``).
        weight_dict: loss name -> weight. When given, its keys must be exactly the emitted loss
            terms (a loss never optimized, or an aux layer the model lacks, is an error).
        normalize_sample_weights: ``Σ w_i L_i / Σ w_i`` instead of ``(1/N) Σ w_i L_i``.
        dataset_loss_weights: weight per ``dataset_type`` for targets without ``loss_weight``.
    """

    branches: tuple[LossBranch, ...]

    def __init__(
        self,
        branches: Sequence[LossBranch],
        class_weights: Sequence[Tensor],
        matcher: nn.Module,
        *,
        weight_dict: Mapping[str, float] | None = None,
        normalize_sample_weights: bool = False,
        dataset_loss_weights: Mapping[str, float] = DEFAULT_DATASET_LOSS_WEIGHTS,
    ) -> None:
        super().__init__()
        self.branches = tuple(branches)
        matcher_branches = getattr(matcher, "branches", None)
        if matcher_branches is not None and tuple(matcher_branches) != tuple(b.keys for b in self.branches):
            raise ValueError(f"{type(matcher).__name__} matches other heads than {type(self).__name__} supervises")
        missing = sorted(set(DATASET_TYPES) - set(dataset_loss_weights))
        if missing:
            raise ValueError(f"dataset_loss_weights lacks a weight for {missing}")
        self.matcher = matcher
        self.weight_dict = dict(weight_dict) if weight_dict is not None else None
        self.normalize_sample_weights = bool(normalize_sample_weights)
        self.dataset_loss_weights = dict(dataset_loss_weights)
        for index, weight in enumerate(class_weights):
            self.register_buffer(f"class_weight_{index}", torch.as_tensor(weight, dtype=torch.float32))

    def class_weight(self, branch_index: int) -> Tensor:
        """Cross-entropy class weights ``[classes + 1]`` of branch ``branch_index``."""
        return getattr(self, f"class_weight_{branch_index}")

    def prepare_targets(self, targets: Sequence[Mapping]) -> list[Mapping[str, Tensor]]:
        """Check ``targets`` and return them with one row per matchable target."""
        raise NotImplementedError

    # ----------------------------------------------------------------------------- forward
    def forward(self, outputs: Mapping, targets: Sequence[Mapping]) -> dict[str, Tensor]:
        """Loss dict of the final layer (no suffix) and of each aux layer ``i`` (suffix ``_i``)."""
        aux_outputs = list(outputs.get("aux_outputs", []))
        layers = [(outputs, "outputs")] + [(aux, f"outputs['aux_outputs'][{i}]") for i, aux in enumerate(aux_outputs)]
        for layer_outputs, where in layers:
            self._check_outputs(layer_outputs, where, len(targets))
        match_targets = self.prepare_targets(targets)
        samples = resolve_samples(targets, self.dataset_loss_weights)
        device = outputs[self.branches[0].keys.logits].device
        num_targets = [len(t[self.branches[0].keys.target_labels]) for t in match_targets]
        box_normalizer = self._box_normalizer(num_targets, samples, device)

        losses: dict[str, Tensor] = {}
        counts: dict[str, int] = {}
        for layer_index, (layer_outputs, _) in enumerate(layers):
            aux_index = None if layer_index == 0 else layer_index - 1
            indices = self.matcher(layer_outputs, match_targets)
            values, value_counts = self._layer_losses(
                layer_outputs, match_targets, indices, samples, box_normalizer, is_final=aux_index is None
            )
            for key, value in values.items():
                name = key if aux_index is None else aux_key(key, aux_index)
                losses[name] = value
                if key in value_counts:
                    counts[name] = value_counts[key]
            if sum(num_targets) > 0:
                # Layers are numbered from the first decoder layer (1); the final layer is the last.
                k_log = k_log_key(len(layers) if aux_index is None else aux_index + 1)
                losses[k_log] = torch.tensor(sum(len(src) for src, _ in indices) / sum(num_targets), device=device)
                counts[k_log] = sum(num_targets)
        self._check_all_losses_weighted(losses, counts)
        for key, count in counts.items():
            losses[count_key(key)] = torch.tensor(float(count), device=device)
        return losses

    # ----------------------------------------------------------------------------- checks
    def _check_outputs(self, layer_outputs: Mapping, where: str, batch: int) -> None:
        """Every branch's logits ``[batch, queries, classes + 1]`` and boxes ``[batch, queries, 4]``."""
        queries = None
        for index, branch in enumerate(self.branches):
            for key, last, meaning in (
                (branch.keys.logits, len(self.class_weight(index)), "classes + 1"),
                (branch.keys.boxes, 4, "cxcywh"),
            ):
                if key not in layer_outputs:
                    raise ValueError(f"{type(self).__name__}: {where} lacks {key!r}")
                shape = tuple(layer_outputs[key].shape)
                if queries is None and len(shape) == 3:
                    queries = shape[1]
                if shape != (batch, queries, last):
                    raise ValueError(
                        f"{type(self).__name__}: {where}[{key!r}] has shape {list(shape)}, "
                        f"expected [{batch}, {queries}, {last}] (batch, queries, {meaning})"
                    )

    def _check_all_losses_weighted(self, losses: Mapping[str, Tensor], counts: Mapping[str, int]) -> None:
        """The emitted loss terms and the ``weight_dict`` keys must be the same set.

        Every loss term is emitted for every batch (0 without targets), so a difference means the
        model's layers and the config disagree: a loss never optimized, or a layer never supervised.
        """
        if self.weight_dict is None:
            return
        emitted = [k for k in losses if k.startswith("loss") and k not in counts]
        unweighted = [k for k in emitted if k not in self.weight_dict]
        not_emitted = [k for k in self.weight_dict if k not in losses]
        for keys, problem in ((unweighted, "emitted loss terms that weight_dict does not weight"),
                              (not_emitted, "emitted no value for weight_dict keys")):
            if keys:
                raise ValueError(
                    f"{type(self).__name__} {problem}: {keys[:4]}{' ...' if len(keys) > 4 else ''} (does the "
                    "model's number of aux_outputs match MODEL.DETR.DEC_LAYERS - 1 and DEEP_SUPERVISION?)"
                )

    # ----------------------------------------------------------------------------- losses
    def _box_normalizer(self, num_targets: Sequence[int], samples: SampleInfo, device: torch.device) -> Tensor:
        """``N`` of the box losses: targets (x k) summed over the batch, averaged across ranks."""
        k = getattr(self.matcher, "one_to_many_k", 1)
        totals = torch.tensor(
            [k * sum(num_targets), k * sum(w * n for w, n in zip(samples.weights, num_targets))],
            dtype=torch.float32,
            device=device,
        )
        count, weight_sum = _world_mean(totals).unbind()
        return _positive_or_one(weight_sum) if self.normalize_sample_weights else count.clamp(min=1)

    def _layer_losses(
        self,
        outputs: Mapping[str, Tensor],
        targets: Sequence[Mapping[str, Tensor]],
        indices: MatchIndices,
        samples: SampleInfo,
        box_normalizer: Tensor,
        is_final: bool,
    ) -> tuple[dict[str, Tensor], dict[str, int]]:
        """Values (and sample counts of the statistics) of every branch for one decoder layer."""
        device = box_normalizer.device
        match_image = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)])  # host
        matched = (match_image.to(device), torch.cat([src for src, _ in indices]).to(device))
        image_weight = samples.weight_tensor(device)  # [batch]
        values: dict[str, Tensor] = {}
        counts: dict[str, int] = {}
        for branch_index, branch in enumerate(self.branches):
            logits = outputs[branch.keys.logits]  # [batch, queries, classes + 1]
            matched_labels = torch.cat([t[branch.keys.target_labels][j] for t, (_, j) in zip(targets, indices)]).to(device)
            values[branch.ce], ce = self._classification_loss(logits, matched, matched_labels, branch_index, image_weight)
            pred_boxes = outputs[branch.keys.boxes][matched]  # [matches, 4]
            matched_boxes = torch.cat([t[branch.keys.target_boxes][j] for t, (_, j) in zip(targets, indices)]).to(pred_boxes)
            l1 = (pred_boxes - matched_boxes).abs().sum(-1)  # [matches]
            giou = 1 - paired_generalized_box_iou(box_cxcywh_to_xyxy(pred_boxes), box_cxcywh_to_xyxy(matched_boxes))
            match_weight = image_weight[matched[0]]
            values[branch.bbox] = (match_weight * l1).sum() / box_normalizer
            values[branch.giou] = (match_weight * giou).sum() / box_normalizer
            if branch.cardinality_error is not None:
                values[branch.cardinality_error] = self._cardinality_error(logits, targets, branch)
            if is_final:
                per_sample = {branch.ce: ce[matched], branch.bbox: l1, branch.giou: giou}
                self._add_split_statistics(values, counts, per_sample, samples, match_image)
                if len(matched_labels) > 0:
                    correct = logits[matched].detach().argmax(-1) == matched_labels
                    values[branch.class_error] = 100.0 - 100.0 * correct.float().mean()
                    counts[branch.class_error] = len(matched_labels)
        return values, counts

    def _classification_loss(
        self,
        logits: Tensor,
        matched: tuple[Tensor, Tensor],
        matched_labels: Tensor,
        branch_index: int,
        image_weight: Tensor,
    ) -> tuple[Tensor, Tensor]:
        """Class- and sample-weighted cross-entropy over all queries, and the per-query CE ``[batch, queries]``.

        With all sample weights 1 this is ``F.cross_entropy(..., weight=class_weight)``.
        """
        target_classes = torch.full(logits.shape[:2], logits.shape[2] - 1, dtype=torch.int64, device=logits.device)
        target_classes[matched] = matched_labels
        ce = F.cross_entropy(logits.transpose(1, 2), target_classes, reduction="none")
        class_weight = self.class_weight(branch_index)[target_classes]  # [batch, queries]
        weight = class_weight * image_weight[:, None]
        denominator = weight.sum() if self.normalize_sample_weights else class_weight.sum()
        return (weight * ce).sum() / _positive_or_one(denominator), ce

    def _cardinality_error(self, logits: Tensor, targets: Sequence[Mapping[str, Tensor]], branch: LossBranch) -> Tensor:
        """Mean over images of |non-background predictions - expected matches| (DETR's metric)."""
        k = getattr(self.matcher, "one_to_many_k", 1)
        predicted = (logits.detach().argmax(-1) != logits.shape[2] - 1).sum(1).float()
        expected = torch.tensor([float(k * len(t[branch.keys.target_labels])) for t in targets], device=logits.device)
        return F.l1_loss(predicted, expected)

    @staticmethod
    def _add_split_statistics(
        values: dict[str, Tensor],
        counts: dict[str, int],
        per_sample: Mapping[str, Tensor],
        samples: SampleInfo,
        match_image: Tensor,
    ) -> None:
        """``<loss>_<group>``: unweighted, detached mean over the group's matched samples, if any."""
        for group in DATASET_TYPES:
            mask = torch.tensor([g == group for g in samples.groups], dtype=torch.bool)[match_image]
            count = int(mask.sum())  # host-side tensor: no device sync
            if count == 0:
                continue
            for name, losses in per_sample.items():
                key = split_key(name, group)
                values[key] = losses.detach()[mask.to(losses.device)].mean()
                counts[key] = count


class SetCriterion(SetCriterionBase):
    """DETR's criterion: ``loss_ce``, ``loss_bbox``, ``loss_giou`` (+ ``_i`` per aux layer).

    Metrics: ``class_error`` (final layer, %), ``cardinality_error`` (every layer),
    ``k_log_layer{n}``. Outputs ``{"pred_logits": [batch, queries, classes + 1],
    "pred_boxes": [batch, queries, 4], "aux_outputs": [...]}``; targets
    ``[{"labels": [N], "boxes": [N, 4], optional "loss_weight", "dataset_type"}]``.

    Args:
        num_classes: object classes, without the no-object class.
        eos_coef: cross-entropy weight of the no-object class (``MODEL.DETR.NO_OBJECT_WEIGHT``).
    """

    def __init__(
        self,
        num_classes: int,
        matcher: HungarianMatcher,
        weight_dict: Mapping[str, float] | None = None,
        eos_coef: float = 0.1,
        *,
        normalize_sample_weights: bool = False,
        dataset_loss_weights: Mapping[str, float] = DEFAULT_DATASET_LOSS_WEIGHTS,
    ) -> None:
        empty_weight = torch.ones(num_classes + 1)
        empty_weight[-1] = eos_coef
        super().__init__(
            (DETR_LOSS_BRANCH,),
            (empty_weight,),
            matcher,
            weight_dict=weight_dict,
            normalize_sample_weights=normalize_sample_weights,
            dataset_loss_weights=dataset_loss_weights,
        )
        self.num_classes = num_classes

    def prepare_targets(self, targets: Sequence[Mapping]) -> list[Mapping[str, Tensor]]:
        check_detection_targets(targets, self.num_classes)
        return list(targets)
