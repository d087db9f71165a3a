"""weight_dict from MODEL.DETR, weighted_total, and config keys a criterion cannot use."""
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf

from criterion import (
    CriterionConfig,
    build_relation_criterion,
    build_set_criterion,
    detection_weight_dict,
    relation_weight_dict,
    weighted_total,
    with_aux_copies,
)

RELATION_BASE = {
    "loss_ce_subject": 2.0, "loss_bbox_subject": 5.0, "loss_giou_subject": 3.0,
    "loss_ce_object": 2.0, "loss_bbox_object": 5.0, "loss_giou_object": 3.0,
    "loss_relation": 0.5, "loss_bbox_relation": 5.0, "loss_giou_relation": 3.0,
}


def test_relation_weight_dict_expanded_for_six_layers():
    cfg = CriterionConfig(DEC_LAYERS=6, CLASS_WEIGHT=2.0, L1_WEIGHT=5.0, GIOU_WEIGHT=3.0, RELATION_LOSS_WEIGHT=0.5)
    weights = relation_weight_dict(cfg)
    expected = dict(RELATION_BASE)
    for i in range(5):
        expected.update({f"{k}_{i}": v for k, v in RELATION_BASE.items()})
    assert weights == expected
    assert len(weights) == 9 * 6


def test_no_aux_copies_without_deep_supervision():
    cfg = CriterionConfig(DEC_LAYERS=6, DEEP_SUPERVISION=False)
    assert detection_weight_dict(cfg) == {"loss_ce": 1.0, "loss_bbox": 5.0, "loss_giou": 2.0}
    assert with_aux_copies({"loss_a": 3.0}, 2) == {"loss_a": 3.0, "loss_a_0": 3.0, "loss_a_1": 3.0}


def test_weighted_total_equals_hand_computed_sum_over_weight_dict_keys_only():
    loss_dict = {
        "loss_ce": torch.tensor(2.0),
        "loss_bbox": torch.tensor(3.0),
        "loss_bbox_0": torch.tensor(4.0),
        "class_error": torch.tensor(50.0),
        "k_log_layer1": torch.tensor(1.0),
        "loss_bbox_real": torch.tensor(7.0),
        "loss_bbox_real__num_samples": torch.tensor(3.0),
    }
    weights = {"loss_ce": 2.0, "loss_bbox": 0.5, "loss_bbox_0": 0.25, "loss_giou": 9.0}  # loss_giou absent
    assert weighted_total(loss_dict, weights).item() == pytest.approx(2 * 2.0 + 0.5 * 3.0 + 0.25 * 4.0)


@pytest.mark.parametrize("key", ["class_error", "k_log_layer1", "loss_bbox_real"])
def test_weighted_total_refuses_to_optimize_logging_only_values(key):
    loss_dict = {"loss_bbox": torch.tensor(1.0), "class_error": torch.tensor(5.0), "k_log_layer1": torch.tensor(1.0),
                 "loss_bbox_real": torch.tensor(2.0), "loss_bbox_real__num_samples": torch.tensor(4.0)}
    with pytest.raises(ValueError, match=f"logging-only values \\['{key}'\\]"):
        weighted_total(loss_dict, {"loss_bbox": 1.0, key: 1.0})


def test_weighted_total_with_no_common_key_is_an_error():
    with pytest.raises(ValueError, match="no weight_dict key is in the loss dict"):
        weighted_total({"loss_ce": torch.tensor(1.0)}, {"loss_relation": 1.0})


def test_builders_accept_an_omegaconf_node_and_multi_dataset_settings():
    node = OmegaConf.structured(CriterionConfig)
    node.merge_with({"NUM_CLASSES": 7, "NUM_REL_CLASSES": 3, "DEC_LAYERS": 2})
    multi = OmegaConf.create({"ENABLED": True, "REAL_LOSS_WEIGHT": 1.0, "SYNTHETIC_LOSS_WEIGHT": 0.25, "NORMALIZE_LOSS_WEIGHTS": True})
    criterion = build_relation_criterion(node, multi_dataset=multi)
    assert criterion.num_classes == 7 and criterion.num_rel_classes == 3
    assert criterion.dataset_loss_weights == {"real": 1.0, "synthetic": 0.25}
    assert criterion.normalize_sample_weights is True
    assert criterion.matcher.cost_bbox == 5.0 and criterion.matcher.one_to_many_k == 1
    assert set(criterion.weight_dict) == set(RELATION_BASE) | {f"{k}_0" for k in RELATION_BASE}
    assert criterion.class_weight(2)[-1].item() == pytest.approx(0.1)  # NO_REL_WEIGHT


@pytest.mark.parametrize(
    "builder, overrides, kwargs, message",
    [
        (build_set_criterion, {"REWEIGHT_RELATIONS": True}, {}, "MODEL.DETR.REWEIGHT_RELATIONS: set but SetCriterion"),
        (build_set_criterion, {"NO_REL_WEIGHT": 0.3}, {}, "MODEL.DETR.NO_REL_WEIGHT: set but SetCriterion"),
        (build_relation_criterion, {"OVERSAMPLE_PARAM": 0.1}, {}, "MODEL.DETR.OVERSAMPLE_PARAM: set but MODEL.DETR.REWEIGHT_RELATIONS is off"),
        (build_relation_criterion, {"REWEIGHT_RELATIONS": True}, {}, "REWEIGHT_RELATIONS is on but no predicate_counts"),
        (build_relation_criterion, {"REWEIGHT_RELATIONS": True, "NO_REL_WEIGHT": 0.3}, {"predicate_counts": [1.0] * 50},
         "MODEL.DETR.NO_REL_WEIGHT: set but REWEIGHT_RELATIONS uses REWEIGHT_REL_EOS_COEF"),
        (build_relation_criterion, {}, {"predicate_counts": [1.0] * 50}, "predicate_counts given but MODEL.DETR.REWEIGHT_RELATIONS is off"),
        (build_relation_criterion, {"REWEIGHT_RELATIONS": True}, {"predicate_counts": [1.0] * 3}, "predicate_counts has 3 entries"),
        (build_relation_criterion, {"L1_WEIGHT": -1.0}, {}, r"MODEL.DETR.L1_WEIGHT must be a finite number >= 0, got -1.0"),
        (build_relation_criterion, {"ONE2MANY_K": 0}, {}, "MODEL.DETR.ONE2MANY_K must be an integer >= 1"),
        (build_relation_criterion, {"COST_CLASS": 0.0, "COST_BBOX": 0.0, "COST_GIOU": 0.0}, {}, "cannot all be 0"),
        (build_relation_criterion, {}, {"multi_dataset": SimpleNamespace(REAL_LOSS_WEIGHT=1.0, SYNTHETIC_LOSS_WEIGHT=float("nan"), NORMALIZE_LOSS_WEIGHTS=False)},
         "DATASETS.MULTI_DATASET.SYNTHETIC_LOSS_WEIGHT must be a finite number"),
    ],
)
def test_config_a_criterion_cannot_use_is_an_error(builder, overrides, kwargs, message):
    with pytest.raises(ValueError, match=message):
        builder(CriterionConfig(**overrides), **kwargs)


def test_missing_config_key_is_named():
    node = SimpleNamespace(**{k: v for k, v in vars(CriterionConfig()).items() if k != "GIOU_WEIGHT"})
    with pytest.raises(ValueError, match="MODEL.DETR.GIOU_WEIGHT is missing"):
        build_relation_criterion(node)
