"""Box conversions, IoU and generalized IoU under DETR's names (``util/box_ops.py``).

Boxes are ``(cx, cy, w, h)`` or ``(x0, y0, x1, y1)``; the IoU functions take ``xyxy``.
GIoU follows Rezatofighi et al. 2019: ``GIoU = IoU - (|C| - |A ∪ B|) / |C|`` with ``C`` the
smallest box enclosing both.

Degenerate input never yields a silent NaN:

* non-finite coordinates or inverted boxes (``x1 < x0`` or ``y1 < y0``) raise ``ValueError``
  naming the argument and the first bad row;
* zero-area boxes are legal and get defined values: IoU is 0 when the union is empty, and GIoU
  equals IoU when the enclosing box is empty (two identical points), with finite gradients.
"""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "box_cxcywh_to_xyxy",
    "box_xyxy_to_cxcywh",
    "box_area",
    "box_iou",
    "generalized_box_iou",
    "paired_generalized_box_iou",
    "box_union",
]


def box_cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    """``[..., 4]`` (cx, cy, w, h) -> ``[..., 4]`` (x0, y0, x1, y1)."""
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)


def box_xyxy_to_cxcywh(boxes: Tensor) -> Tensor:
    """``[..., 4]`` (x0, y0, x1, y1) -> ``[..., 4]`` (cx, cy, w, h)."""
    x0, y0, x1, y1 = boxes.unbind(-1)
    return torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], dim=-1)


def box_area(boxes: Tensor) -> Tensor:
    """``[..., 4]`` xyxy -> ``[...]`` areas."""
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def box_union(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Smallest box enclosing each pair, ``[..., 4]`` cxcywh -> ``[..., 4]`` cxcywh.

    Used as the default relation ("union") box of a subject and an object box.
    """
    a, b = box_cxcywh_to_xyxy(boxes1), box_cxcywh_to_xyxy(boxes2)
    union = torch.cat([torch.minimum(a[..., :2], b[..., :2]), torch.maximum(a[..., 2:], b[..., 2:])], -1)
    return box_xyxy_to_cxcywh(union)


def _check_xyxy(boxes: Tensor, name: str) -> None:
    """Raise a one-line ``ValueError`` for non-finite or inverted boxes (one host sync)."""
    if boxes.shape[-1] != 4:
        raise ValueError(f"{name}: expected boxes of shape [N, 4], got {list(boxes.shape)}")
    bad = ~torch.isfinite(boxes).all(-1) | (boxes[..., 2] < boxes[..., 0]) | (boxes[..., 3] < boxes[..., 1])
    if bool(bad.any()):
        row = int(bad.nonzero()[0, 0])
        raise ValueError(
            f"{name}: box {row} is {boxes[row].tolist()}; boxes must be finite xyxy with "
            "x1 >= x0 and y1 >= y0 (a NaN or negative width/height reached the box loss)"
        )


def _safe_divide(numerator: Tensor, denominator: Tensor, value_if_empty: Tensor | float) -> Tensor:
    # Dividing by a where()-guarded denominator keeps the backward pass finite too: a plain
    # where(den > 0, num / den, 0) still back-propagates NaN through the unselected branch.
    nonempty = denominator > 0
    ratio = numerator / torch.where(nonempty, denominator, torch.ones_like(denominator))
    return torch.where(nonempty, ratio, value_if_empty)


def _iou_and_union(boxes1: Tensor, boxes2: Tensor) -> tuple[Tensor, Tensor]:
    """IoU and union area of broadcastable ``[..., 4]`` xyxy boxes."""
    top_left = torch.maximum(boxes1[..., :2], boxes2[..., :2])
    bottom_right = torch.minimum(boxes1[..., 2:], boxes2[..., 2:])
    wh = (bottom_right - top_left).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = box_area(boxes1) + box_area(boxes2) - inter
    return _safe_divide(inter, union, 0.0), union


def _generalized_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """GIoU of broadcastable ``[..., 4]`` xyxy boxes."""
    iou, union = _iou_and_union(boxes1, boxes2)
    enclosing_wh = torch.maximum(boxes1[..., 2:], boxes2[..., 2:]) - torch.minimum(boxes1[..., :2], boxes2[..., :2])
    enclosing = enclosing_wh[..., 0] * enclosing_wh[..., 1]
    return iou - _safe_divide(enclosing - union, enclosing, 0.0)


def box_iou(boxes1: Tensor, boxes2: Tensor) -> tuple[Tensor, Tensor]:
    """Pairwise IoU of ``[N, 4]`` and ``[M, 4]`` xyxy boxes.

    Returns ``(iou [N, M], union [N, M])`` as DETR's ``box_iou`` does.
    """
    _check_xyxy(boxes1, "boxes1")
    _check_xyxy(boxes2, "boxes2")
    return _iou_and_union(boxes1[:, None, :], boxes2[None, :, :])


def generalized_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise GIoU ``[N, M]`` of ``[N, 4]`` and ``[M, 4]`` xyxy boxes, values in [-1, 1]."""
    _check_xyxy(boxes1, "boxes1")
    _check_xyxy(boxes2, "boxes2")
    return _generalized_iou(boxes1[:, None, :], boxes2[None, :, :])


def paired_generalized_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """GIoU ``[N]`` of row-aligned ``[N, 4]`` xyxy pairs.

    Equals ``generalized_box_iou(boxes1, boxes2).diag()`` without building the ``[N, N]`` matrix;
    the box losses need only matched pairs.
    """
    if boxes1.shape != boxes2.shape:
        raise ValueError(f"paired boxes must have equal shapes, got {list(boxes1.shape)} and {list(boxes2.shape)}")
    _check_xyxy(boxes1, "boxes1")
    _check_xyxy(boxes2, "boxes2")
    return _generalized_iou(boxes1, boxes2)
