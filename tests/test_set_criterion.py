"""DETR SetCriterion against hand-computed losses; metrics, aux layers, empty and bad targets."""
import math

import pytest
import torch
import torch.nn.functional as F

from criterion import CriterionConfig, HungarianMatcher, SetCriterion, build_set_criterion, weighted_total


def criterion(num_classes=2, eos_coef=0.1, **kwargs):
    return SetCriterion(num_classes, HungarianMatcher(cost_class=1, cost_bbox=5, cost_giou=2), eos_coef=eos_coef, **kwargs)


def outputs(logits, boxes):
    return {
        "pred_logits": torch.tensor(logits, dtype=torch.float32, requires_grad=True),
        "pred_boxes": torch.tensor(boxes, dtype=torch.float32, requires_grad=True),
    }


def target(labels, boxes, **extra):
    return {"labels": torch.tensor(labels, dtype=torch.int64), "boxes": torch.tensor(boxes, dtype=torch.float32).view(-1, 4), **extra}


def test_worked_loss_ce_with_no_object_weight():
    # Q0 matches the object (same box): p = [2/4, 1/4, 1/4], CE(class 0) = ln 2, class weight 1.
    # Q1 is unmatched -> no-object: p = 1/3, CE = ln 3, class weight eos_coef = 0.1.
    out = outputs([[[math.log(2), 0.0, 0.0], [0.0, 0.0, 0.0]]], [[[0.3, 0.3, 0.2, 0.2], [0.8, 0.8, 0.1, 0.1]]])
    losses = criterion(eos_coef=0.1)(out, [target([0], [0.3, 0.3, 0.2, 0.2])])
    expected = (1.0 * math.log(2) + 0.1 * math.log(3)) / (1.0 + 0.1)
    assert losses["loss_ce"].item() == pytest.approx(expected, rel=1e-6)
    # Same as DETR's F.cross_entropy with the empty_weight vector.
    reference = F.cross_entropy(out["pred_logits"].transpose(1, 2), torch.tensor([[0, 2]]), torch.tensor([1.0, 1.0, 0.1]))
    assert losses["loss_ce"].item() == pytest.approx(reference.item(), rel=1e-6)


def test_worked_l1_and_giou_pair():
    # pred (.5,.5,.2,.2) = xyxy [.4,.4,.6,.6]; target (.6,.5,.2,.4) = xyxy [.5,.3,.7,.7].
    # L1 = .1 + 0 + 0 + .2 = .3. inter .1*.2 = .02, union .04 + .08 - .02 = .10, IoU .2,
    # enclosing .3*.4 = .12, GIoU = .2 - .02/.12 = 1/30, loss_giou = 29/30. One target: N = 1.
    out = outputs([[[0.0, 0.0, 0.0]]], [[[0.5, 0.5, 0.2, 0.2]]])
    losses = criterion()(out, [target([1], [0.6, 0.5, 0.2, 0.4])])
    assert losses["loss_bbox"].item() == pytest.approx(0.3, rel=1e-6)
    assert losses["loss_giou"].item() == pytest.approx(29 / 30, rel=1e-6)


def test_box_losses_are_divided_by_number_of_targets_in_batch():
    # Two images, one exact match each (loss 0) and one off by .3 in L1: N = 2 -> .15.
    out = outputs([[[0.0, 0.0, 0.0]], [[0.0, 0.0, 0.0]]], [[[0.5, 0.5, 0.2, 0.2]], [[0.5, 0.5, 0.2, 0.2]]])
    losses = criterion()(out, [target([0], [0.5, 0.5, 0.2, 0.2]), target([0], [0.6, 0.5, 0.2, 0.4])])
    assert losses["loss_bbox"].item() == pytest.approx(0.3 / 2, rel=1e-6)
    assert losses["loss_giou"].item() == pytest.approx((29 / 30) / 2, rel=1e-6)


def test_class_error_and_cardinality_error_are_detached_metrics():
    # Q0 matched to class 0 but predicts class 1 (error 100 %); Q1 predicts class 0, not no-object:
    # 2 non-empty predictions for 1 target -> cardinality error 1.
    out = outputs([[[0.0, 5.0, 0.0], [5.0, 0.0, 0.0]]], [[[0.3, 0.3, 0.2, 0.2], [0.8, 0.8, 0.1, 0.1]]])
    losses = criterion()(out, [target([0], [0.3, 0.3, 0.2, 0.2])])
    assert losses["class_error"].item() == pytest.approx(100.0)
    assert losses["class_error__num_samples"].item() == 1
    assert losses["cardinality_error"].item() == pytest.approx(1.0)
    for key in ("class_error", "cardinality_error", "k_log_layer1"):
        assert not losses[key].requires_grad
    assert losses["k_log_layer1"].item() == 1.0


def test_empty_targets_give_finite_losses_and_zero_box_gradients():
    out = outputs([[[0.0, 0.0, 0.0], [0.0, 0.0, 2.0]]], [[[0.3, 0.3, 0.2, 0.2], [0.8, 0.8, 0.1, 0.1]]])
    losses = criterion()(out, [target([], [])])
    assert losses["loss_bbox"].item() == 0.0 and losses["loss_giou"].item() == 0.0
    # All queries are no-object: plain mean of -log p(no-object).
    expected = -F.log_softmax(out["pred_logits"][0], -1)[:, 2].mean()
    assert losses["loss_ce"].item() == pytest.approx(expected.item(), rel=1e-6)
    # No matched sample: no class_error and no k_log (absent, not 0).
    assert "class_error" not in losses and "k_log_layer1" not in losses
    (losses["loss_ce"] + losses["loss_bbox"] + losses["loss_giou"]).backward()
    assert torch.equal(out["pred_boxes"].grad, torch.zeros(1, 2, 4))
    assert torch.isfinite(out["pred_logits"].grad).all()


def test_aux_layers_for_six_decoder_layers_and_weight_dict():
    cfg = CriterionConfig(NUM_CLASSES=3, DEC_LAYERS=6)
    built = build_set_criterion(cfg)
    torch.manual_seed(0)

    def layer():
        return {"pred_logits": torch.randn(2, 5, 4, requires_grad=True), "pred_boxes": (torch.rand(2, 5, 4) * 0.4 + 0.1).requires_grad_()}

    out = layer()
    out["aux_outputs"] = [layer() for _ in range(5)]
    targets = [target([0, 2], [[0.3, 0.3, 0.2, 0.2], [0.6, 0.6, 0.2, 0.2]]), target([1], [0.5, 0.5, 0.3, 0.3])]
    losses = built(out, targets)
    for name in ("loss_ce", "loss_bbox", "loss_giou", "cardinality_error"):
        assert name in losses
        assert all(f"{name}_{i}" in losses for i in range(5)) and f"{name}_5" not in losses
    assert "class_error" in losses and "class_error_0" not in losses  # final layer only, as DETR
    assert [f"k_log_layer{n}" for n in range(1, 7)] == sorted(k for k in losses if k.startswith("k_log_layer") and "__" not in k)
    assert set(built.weight_dict) == {f"{k}{s}" for k in ("loss_ce", "loss_bbox", "loss_giou") for s in [""] + [f"_{i}" for i in range(5)]}
    total = weighted_total(losses, built.weight_dict)
    expected = sum(losses[k].item() * w for k, w in built.weight_dict.items())
    assert total.item() == pytest.approx(expected, rel=1e-6)
    total.backward()
    for layer_outputs in [out] + out["aux_outputs"]:
        assert layer_outputs["pred_logits"].grad.abs().sum() > 0
        assert layer_outputs["pred_boxes"].grad.abs().sum() > 0


@pytest.mark.parametrize(
    "num_aux, message",
    [
        (2, r"emitted loss terms that weight_dict does not weight: \['loss_ce_1', 'loss_bbox_1', 'loss_giou_1'\]"),
        (0, r"emitted no value for weight_dict keys: \['loss_ce_0', 'loss_bbox_0', 'loss_giou_0'\]"),
    ],
)
def test_aux_layers_disagreeing_with_dec_layers_are_an_error(num_aux, message):
    built = build_set_criterion(CriterionConfig(NUM_CLASSES=3, DEC_LAYERS=2))  # expects 1 aux layer
    layer = {"pred_logits": torch.zeros(1, 3, 4), "pred_boxes": torch.full((1, 3, 4), 0.3)}
    out = dict(layer, aux_outputs=[dict(layer) for _ in range(num_aux)])
    with pytest.raises(ValueError, match=message + r" \(does the model's number of aux_outputs match MODEL.DETR.DEC_LAYERS"):
        built(out, [target([0], [0.3, 0.3, 0.3, 0.3])])


def test_sample_weights_scale_box_losses_in_set_criterion():
    # Two images, L1 .3 each, weights 1 and .5: (1 * .3 + .5 * .3) / 2.
    out = outputs([[[0.0, 0.0, 0.0]], [[0.0, 0.0, 0.0]]], [[[0.5, 0.5, 0.2, 0.2]], [[0.5, 0.5, 0.2, 0.2]]])
    targets = [target([0], [0.6, 0.5, 0.2, 0.4], loss_weight=1.0), target([0], [0.6, 0.5, 0.2, 0.4], loss_weight=0.5)]
    assert criterion()(out, targets)["loss_bbox"].item() == pytest.approx((0.3 + 0.15) / 2, rel=1e-6)


@pytest.mark.parametrize(
    "bad_target, message",
    [
        (target([0, 5], [[0.3, 0.3, 0.2, 0.2]] * 2), r"target 1: a label is outside \[0, 2\)"),
        (target([0], [0.3, math.nan, 0.2, 0.2]), "target 1: boxes must be finite"),
        (target([0], [0.3, 0.3, -0.2, 0.2]), "target 1: boxes must be finite cxcywh with w, h >= 0"),
        (target([0, 1], [0.3, 0.3, 0.2, 0.2]), "target 1: 2 labels but 1 boxes"),
        ({"labels": torch.tensor([0])}, "target 1: missing key 'boxes'"),
        (target([0], [0.3, 0.3, 0.2, 0.2], dataset_type="simulated"), "target 1: dataset_type 'simulated'"),
        (target([0], [0.3, 0.3, 0.2, 0.2], loss_weight=-1.0), "target 1: loss_weight must be a finite number >= 0"),
    ],
)
def test_bad_targets_raise_one_line_error_naming_the_image(bad_target, message):
    out = outputs([[[0.0, 0.0, 0.0]]] * 2, [[[0.5, 0.5, 0.2, 0.2]]] * 2)
    with pytest.raises(ValueError, match=message):
        criterion()(out, [target([0], [0.3, 0.3, 0.2, 0.2]), bad_target])


def test_wrong_output_shape_names_the_key():
    out = {"pred_logits": torch.zeros(1, 3, 5), "pred_boxes": torch.zeros(1, 3, 4)}
    with pytest.raises(ValueError, match=r"outputs\['pred_logits'\] has shape \[1, 3, 5\], expected \[1, 3, 3\]"):
        criterion(num_classes=2)(out, [target([0], [0.3, 0.3, 0.2, 0.2])])

