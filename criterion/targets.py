"""Target checking and the per-sample side of the targets: loss weights and dataset groups.

A target dict may carry ``"loss_weight"`` (float >= 0) and ``"dataset_type"`` (one of
``DATASET_TYPES``). The weight of an image is its ``loss_weight`` if given, else the weight
configured for its ``dataset_type`` (``DATASETS.MULTI_DATASET.{REAL,SYNTHETIC}_LOSS_WEIGHT``),
else 1.0. Only images with a ``dataset_type`` take part in the real/synthetic split logging.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
from torch import Tensor

from .box_ops import box_union

__all__ = [
    "DATASET_TYPES",
    "SampleInfo",
    "resolve_samples",
    "check_detection_targets",
    "check_relation_targets",
    "expand_relation_targets",
]

DATASET_TYPES = ("real", "synthetic")


@dataclass(frozen=True)
class SampleInfo:
    """Per-image loss weights and dataset groups of one batch (host-side values)."""

    weights: tuple[float, ...]  # [batch]
    groups: tuple[str | None, ...]  # [batch], None = not labelled

    def weight_tensor(self, device: torch.device) -> Tensor:
        return torch.tensor(self.weights, dtype=torch.float32, device=device)


def resolve_samples(targets: Sequence[Mapping], dataset_loss_weights: Mapping[str, float]) -> SampleInfo:
    """Read ``loss_weight`` / ``dataset_type`` of every target, with one-line errors naming the image."""
    weights, groups = [], []
    for image, target in enumerate(targets):
        group = target.get("dataset_type")
        if group is not None and group not in DATASET_TYPES:
            raise ValueError(f"target {image}: dataset_type {group!r} is not one of {DATASET_TYPES}")
        if "loss_weight" in target:
            weight = float(target["loss_weight"])
        else:
            weight = float(dataset_loss_weights[group]) if group is not None else 1.0
        if not math.isfinite(weight) or weight < 0:
            raise ValueError(f"target {image}: loss_weight must be a finite number >= 0, got {weight}")
        weights.append(weight)
        groups.append(group)
    return SampleInfo(tuple(weights), tuple(groups))


def _require(target: Mapping, image: int, key: str, dims: int, last: int | None = None) -> Tensor:
    if key not in target:
        raise ValueError(f"target {image}: missing key {key!r}")
    value = target[key]
    if not isinstance(value, Tensor) or value.dim() != dims or (last is not None and value.shape[-1] != last):
        shape = list(value.shape) if isinstance(value, Tensor) else type(value).__name__
        expected = f"[N, {last}]" if last is not None else "[N]" if dims == 1 else f"{dims}-d"
        raise ValueError(f"target {image}: {key!r} must be a tensor of shape {expected}, got {shape}")
    return value


def _raise_for_first_bad(flags: Sequence[Tensor], message: str) -> None:
    """``flags[i]``: 0-dim bool, True when image ``i`` is bad. One host sync for the whole batch."""
    if not flags:
        return
    bad = torch.stack(list(flags)).cpu()
    if bool(bad.any()):
        raise ValueError(message.format(image=int(bad.nonzero()[0, 0])))


def _bad_cxcywh(boxes: Tensor) -> Tensor:
    return (~torch.isfinite(boxes)).any() | (boxes[:, 2:] < 0).any()


def check_detection_targets(targets: Sequence[Mapping], num_classes: int) -> None:
    """Check ``labels`` ``[N]`` in ``[0, num_classes)`` and ``boxes`` ``[N, 4]`` cxcywh (finite, w, h >= 0)."""
    labels = [_require(t, i, "labels", 1) for i, t in enumerate(targets)]
    boxes = [_require(t, i, "boxes", 2, 4) for i, t in enumerate(targets)]
    for image, (image_labels, image_boxes) in enumerate(zip(labels, boxes)):
        if len(image_labels) != len(image_boxes):
            raise ValueError(f"target {image}: {len(image_labels)} labels but {len(image_boxes)} boxes")
    _raise_for_first_bad(
        [((l < 0) | (l >= num_classes)).any() for l in labels],
        f"target {{image}}: a label is outside [0, {num_classes}) (NUM_CLASSES={num_classes})",
    )
    _raise_for_first_bad(
        [_bad_cxcywh(b) for b in boxes],
        "target {image}: boxes must be finite cxcywh with w, h >= 0",
    )


def check_relation_targets(targets: Sequence[Mapping], num_classes: int, num_rel_classes: int) -> None:
    """Check entity targets plus ``relations`` ``[T, 3]`` (subject, object, predicate)."""
    check_detection_targets(targets, num_classes)
    relations = [_require(t, i, "relations", 2, 3) for i, t in enumerate(targets)]
    _raise_for_first_bad(
        [((r[:, :2] < 0) | (r[:, :2] >= len(t["labels"]))).any() for r, t in zip(relations, targets)],
        "target {image}: a relation's subject/object index is outside its labels/boxes",
    )
    _raise_for_first_bad(
        [((r[:, 2] < 0) | (r[:, 2] >= num_rel_classes)).any() for r in relations],
        f"target {{image}}: a predicate is outside [0, {num_rel_classes}) (NUM_REL_CLASSES={num_rel_classes})",
    )
    union_boxes = [(i, t["relation_boxes"]) for i, t in enumerate(targets) if "relation_boxes" in t]
    for image, boxes in union_boxes:
        if not isinstance(boxes, Tensor) or list(boxes.shape) != [len(relations[image]), 4]:
            raise ValueError(f"target {image}: 'relation_boxes' must have shape [{len(relations[image])}, 4]")
    _raise_for_first_bad(
        [_bad_cxcywh(boxes) for _, boxes in union_boxes],
        "target {image}: relation_boxes must be finite cxcywh with w, h >= 0",
    )


def expand_relation_targets(targets: Sequence[Mapping]) -> list[dict[str, Tensor]]:
    """One row per relation: ``{subject,object,relation}_{labels [T], boxes [T, 4]}`` per image.

    ``relation_boxes`` defaults to the smallest box enclosing subject and object.
    """
    expanded = []
    for target in targets:
        relations = target["relations"].long()
        subject, obj = relations[:, 0], relations[:, 1]
        subject_boxes, object_boxes = target["boxes"][subject], target["boxes"][obj]
        union = target.get("relation_boxes")
        expanded.append({
            "subject_labels": target["labels"][subject].long(),
            "subject_boxes": subject_boxes,
            "object_labels": target["labels"][obj].long(),
            "object_boxes": object_boxes,
            "relation_labels": relations[:, 2],
            "relation_boxes": union if union is not None else box_union(subject_boxes, object_boxes),
        })
    return expanded
