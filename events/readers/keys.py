"""Which logged names are training scalars, validation metrics or x axes, and what to call them.

Logs mark validation in many ways: a prefix (``val/``, ``validation/``, ``val_``, DETR's
``test_``), a separate record (MMDetection's ``"mode": "val"``; readers then add ``val/``), or
only the metric's name (detectron2 flattens ``{"bbox": {"AP": ...}}`` to ``bbox/AP`` inside the
training stream). Training names lose a ``train_`` / ``train/`` prefix, so that DETR's
``train_loss`` and ``test_loss`` pair up as train and validation ``loss``.
"""
from __future__ import annotations

import re
from functools import lru_cache
from typing import Tuple

__all__ = ["classify_key", "VAL_PREFIXES", "TRAIN", "VAL", "AXIS", "META"]

TRAIN, VAL, AXIS, META = "train", "val", "axis", "meta"

VAL_PREFIXES = (
    "val/", "val_", "valid/", "valid_", "validation/", "validation_",
    "test/", "test_", "eval/", "eval_", "evaluation/",
)
_TRAIN_PREFIXES = ("train/", "train_")
# Evaluation metrics recognised by name alone (the last path segment): COCO AP/AR, mmdet's
# bbox_mAP_50, segmentation IoUs, panoptic quality, scene-graph recalls (SGMeanRecall@20).
_METRIC_NAME = re.compile(
    r"^(?:m?AP|AR)(?:\d+|[sml]|_\w+|@[\w.]+)?$"
    r"|^(?:bbox|segm|keypoints?|mask)_mAP\w*$"
    r"|^(?:mIoU|fwIoU|mACC|pACC|PQ|SQ|RQ)(?:_\w+)?$"
    r"|^\w*(?:Recall|Precision)(?:@\d+)?$"
)
# PyTorch Lightning's LearningRateMonitor logs the learning rate as lr-<optimizer> (lr-SGD, lr-AdamW);
# with one optimizer that is the run's "lr" (a second one keeps its own name, see _display_names).
_LIGHTNING_LR = re.compile(r"^lr-[A-Za-z]\w*$")
_AXIS_NAMES = {"epoch": "epoch", "wall_time": "time", "walltime": "time", "timestamp": "time", "_timestamp": "time"}
_META_NAMES = frozenset({"n_parameters", "seed", "_runtime", "_step"})


@lru_cache(maxsize=None)
def classify_key(name: str) -> Tuple[str, str]:
    """``(kind, display name)`` of a logged name; kind is TRAIN, VAL, AXIS or META.

    >>> classify_key("test_loss_ce_0")
    ('val', 'loss_ce_0')
    >>> classify_key("bbox/AP50")
    ('val', 'bbox/AP50')
    >>> classify_key("fast_rcnn/cls_accuracy")
    ('train', 'fast_rcnn/cls_accuracy')
    """
    if name in _AXIS_NAMES:
        return AXIS, _AXIS_NAMES[name]
    if name in _META_NAMES:
        return META, name
    if _LIGHTNING_LR.match(name):
        return TRAIN, "lr"
    for prefix in VAL_PREFIXES:
        if name.startswith(prefix) and len(name) > len(prefix):
            return VAL, name[len(prefix):]
    for prefix in _TRAIN_PREFIXES:
        if name.startswith(prefix) and len(name) > len(prefix):
            return TRAIN, name[len(prefix):]
    if _METRIC_NAME.match(name.rsplit("/", 1)[-1]):
        return VAL, name
    return TRAIN, name
