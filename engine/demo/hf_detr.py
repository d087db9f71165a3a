"""Hugging Face transformers' ``DetrForObjectDetection``, built tiny in code, on the demo's scenes.

A DETR that nobody here wrote, for ``tools/train_hf_detr.py``: its loss dict (``loss_ce``,
``loss_bbox``, ``loss_giou``, ``cardinality_error`` and the ``_i`` copies of the aux decoder
layers) goes through the plain-loop telemetry unchanged. Nothing is downloaded: the backbone is a
small randomly initialised ``ResNetConfig`` (``use_timm_backbone=False``,
``use_pretrained_backbone=False``).

The config keeps DETR's names where they exist (``MODEL.DETR.*``: classes, decoder layers, hidden
size, heads, matcher costs, loss weights) and adds what transformers needs beyond them under
``MODEL.HF_DETR``. ``transformers`` is an optional extra (``pip install 'detr-telemetry[hf]'``),
imported only when a model is built.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Sequence

import torch
from omegaconf import DictConfig

from criterion.config import RELATION_ONLY_KEYS, non_default_keys
from criterion.weight_dict import detection_weight_dict
from engine.config import Config, ConfigError, ModelConfig, at_least, each_at_least, key
from events.writer_guard import describe_exception, import_optional

__all__ = [
    "HfDetrConfig",
    "HfDetrTrainConfig",
    "check_hf_detr_config",
    "build_hf_detr_config",
    "build_hf_detr",
    "hf_detr_weight_dict",
    "to_hf_labels",
]


@dataclass
class HfDetrConfig:
    """``MODEL.HF_DETR``: transformers' DETR settings that ``MODEL.DETR`` has no key for."""

    NUM_QUERIES: int = key(12, at_least(1))
    ENC_LAYERS: int = key(1, at_least(1))
    # The ResNet backbone: stem width, then one width and one depth per stage (stride 32 overall).
    BACKBONE_EMBEDDING_SIZE: int = key(16, at_least(1))
    BACKBONE_HIDDEN_SIZES: List[int] = field(
        default_factory=lambda: [16, 32, 64, 128], metadata={"checks": (each_at_least(1),)}
    )
    BACKBONE_DEPTHS: List[int] = field(default_factory=lambda: [1, 1, 1, 1], metadata={"checks": (each_at_least(1),)})


@dataclass
class HfDetrModelConfig(ModelConfig):
    HF_DETR: HfDetrConfig = field(default_factory=HfDetrConfig)


@dataclass
class HfDetrTrainConfig(Config):
    """Every key of ``tools/train_hf_detr.py``: :class:`engine.config.Config` plus ``MODEL.HF_DETR``."""

    MODEL: HfDetrModelConfig = field(default_factory=HfDetrModelConfig)


def check_hf_detr_config(cfg: DictConfig) -> None:
    """Refuse ``MODEL.DETR`` values that transformers' DETR cannot honour (one-line ConfigError)."""
    detr, hf = cfg.MODEL.DETR, cfg.MODEL.HF_DETR
    unused = non_default_keys(detr, RELATION_ONLY_KEYS + ("ONE2MANY_K",))
    if unused:
        raise ConfigError(
            f"MODEL.DETR.{unused[0]}: transformers' DETR is a detection model with one-to-one "
            "matching; leave the relation and one-to-many keys at their defaults"
        )
    if detr.CLASS_WEIGHT != 1.0:
        raise ConfigError(
            f"MODEL.DETR.CLASS_WEIGHT={detr.CLASS_WEIGHT}: transformers' DETR weights loss_ce by 1 "
            "in its loss; only 1.0 keeps total_loss_weighted equal to the loss it optimizes"
        )
    if len(hf.BACKBONE_HIDDEN_SIZES) != len(hf.BACKBONE_DEPTHS):
        raise ConfigError(
            f"MODEL.HF_DETR.BACKBONE_HIDDEN_SIZES ({len(hf.BACKBONE_HIDDEN_SIZES)} stages) and "
            f"BACKBONE_DEPTHS ({len(hf.BACKBONE_DEPTHS)} stages) must have one entry per stage"
        )


def _whole(value: float) -> Any:
    """``5.0`` -> ``5``: transformers 5 declares the matcher costs and loss coefficients as int."""
    return int(value) if float(value).is_integer() else float(value)


def build_hf_detr_config(cfg: DictConfig) -> Any:
    """transformers' ``DetrConfig`` for ``cfg`` (checked first; see :func:`check_hf_detr_config`).

    Raises:
        ConfigError: one line, when a key is out of range or transformers rejects a value.
        events.writer_guard.MissingExtraError: when transformers is not installed.
    """
    check_hf_detr_config(cfg)
    transformers = import_optional("transformers", "hf", "transformers' DETR")
    detr, hf = cfg.MODEL.DETR, cfg.MODEL.HF_DETR
    try:
        backbone = transformers.ResNetConfig(
            num_channels=3,
            embedding_size=hf.BACKBONE_EMBEDDING_SIZE,
            hidden_sizes=list(hf.BACKBONE_HIDDEN_SIZES),
            depths=list(hf.BACKBONE_DEPTHS),
            layer_type="basic",
            out_features=[f"stage{len(hf.BACKBONE_DEPTHS)}"],
        )
        return transformers.DetrConfig(
            use_timm_backbone=False,
            use_pretrained_backbone=False,
            backbone=None,  # transformers 4.x defaults to a timm "resnet50" next to backbone_config
            backbone_config=backbone,
            num_labels=detr.NUM_CLASSES,
            num_queries=hf.NUM_QUERIES,
            d_model=detr.HIDDEN_DIM,
            encoder_layers=hf.ENC_LAYERS,
            decoder_layers=detr.DEC_LAYERS,
            encoder_attention_heads=detr.NHEADS,
            decoder_attention_heads=detr.NHEADS,
            encoder_ffn_dim=detr.DIM_FEEDFORWARD,
            decoder_ffn_dim=detr.DIM_FEEDFORWARD,
            dropout=detr.DROPOUT,
            auxiliary_loss=detr.DEEP_SUPERVISION,
            class_cost=_whole(detr.COST_CLASS),
            bbox_cost=_whole(detr.COST_BBOX),
            giou_cost=_whole(detr.COST_GIOU),
            bbox_loss_coefficient=_whole(detr.L1_WEIGHT),
            giou_loss_coefficient=_whole(detr.GIOU_WEIGHT),
            eos_coefficient=float(detr.NO_OBJECT_WEIGHT),
        )
    except (TypeError, ValueError) as e:  # transformers validates types and ranges itself
        raise ConfigError(f"MODEL.DETR / MODEL.HF_DETR: transformers rejected the model config: {describe_exception(e)}") from None


def build_hf_detr(cfg: DictConfig) -> torch.nn.Module:
    """A randomly initialised ``DetrForObjectDetection`` for ``cfg`` (nothing is downloaded).

    ``model(pixel_values=[B, 3, S, S], labels=to_hf_labels(targets))`` returns ``loss``,
    ``loss_dict`` (0-dim tensors: the loss terms and ``cardinality_error``, each also per aux
    layer) and ``logits`` ``[B, queries, classes + 1]``.
    """
    config = build_hf_detr_config(cfg)
    transformers = import_optional("transformers", "hf", "transformers' DETR")
    return transformers.DetrForObjectDetection(config)


def hf_detr_weight_dict(cfg: DictConfig) -> Dict[str, float]:
    """The weights transformers' DETR sums its ``loss_dict`` with: ``loss_ce`` 1, ``loss_bbox``
    ``MODEL.DETR.L1_WEIGHT``, ``loss_giou`` ``GIOU_WEIGHT``, and the same for each aux layer.

    This is DETR's own ``weight_dict`` (``criterion.detection_weight_dict``); with it,
    ``total_loss_weighted`` equals the model's ``outputs.loss``.
    """
    check_hf_detr_config(cfg)
    return detection_weight_dict(cfg.MODEL.DETR)


def to_hf_labels(targets: Sequence[Mapping[str, Any]], device: torch.device | str = "cpu") -> List[Dict[str, torch.Tensor]]:
    """The demo's targets as transformers' DETR wants them: ``class_labels`` ``[N]`` int64 and
    ``boxes`` ``[N, 4]`` (cx, cy, w, h) normalized to [0, 1], which is already the demo's box format."""
    return [{"class_labels": t["labels"].to(device), "boxes": t["boxes"].to(device)} for t in targets]
