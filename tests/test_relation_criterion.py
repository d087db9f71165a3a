"""RelationCriterion: hand-computed weighted losses, real/synthetic split, aux layers, k_log,
predicate re-weighting, gradients, and the emitted key set."""
import math

import pytest
import torch
import torch.nn.functional as F

from criterion import (
    NUM_SAMPLES_SUFFIX,
    CriterionConfig,
    RelationCriterion,
    RelationHungarianMatcher,
    build_relation_criterion,
    expand_relation_targets,
    predicate_frequency_weights,
    weighted_total,
)

BRANCHES = ("subject", "object", "relation")
LOSS_TERMS = (
    "loss_ce_subject", "loss_bbox_subject", "loss_giou_subject",
    "loss_ce_object", "loss_bbox_object", "loss_giou_object",
    "loss_relation", "loss_bbox_relation", "loss_giou_relation",
)


def make_criterion(num_classes=2, num_rel_classes=1, k=1, **kwargs):
    matcher = RelationHungarianMatcher(cost_class=1, cost_bbox=5, cost_giou=2, one_to_many_k=k)
    return RelationCriterion(num_classes, num_rel_classes, matcher, **kwargs)


def logit_for_ce(loss):
    """Logit x such that cross_entropy([x, 0], 0) = log(1 + e^-x) = loss."""
    return -math.log(math.exp(loss) - 1)


def one_query_per_image(per_sample_losses, num_classes=2):
    """Each image: one query and one relation; every branch's CE and L1 equal that image's loss.

    Boxes are .2 x .2; the target is shifted by loss/2 in cx and cy (L1 = loss, no overlap).
    """
    outputs, targets = {}, []
    logits = {b: [] for b in BRANCHES}
    pred_boxes = []
    for loss in per_sample_losses:
        x = logit_for_ce(loss)
        for branch in ("subject", "object"):
            logits[branch].append([[x, 0.0] + [-40.0] * (num_classes - 1)])  # target class 0
        logits["relation"].append([[x, 0.0]])  # one predicate + no-relation
        pred_boxes.append([[0.2, 0.2, 0.2, 0.2]])
        shifted = [0.2 + loss / 2, 0.2 + loss / 2, 0.2, 0.2]
        targets.append({
            "labels": torch.tensor([0, 0]),
            "boxes": torch.tensor([shifted, shifted]),
            "relations": torch.tensor([[0, 1, 0]]),
            "relation_boxes": torch.tensor([shifted]),
        })
    for branch in BRANCHES:
        outputs[f"pred_logits_{branch}"] = torch.tensor(logits[branch], requires_grad=True)
        outputs[f"pred_boxes_{branch}"] = torch.tensor(pred_boxes, requires_grad=True)
    return outputs, targets


def giou_loss_of_shift(loss):
    """1 - GIoU of two .2 x .2 boxes shifted by loss/2 in x and y (disjoint): 1 + (C - U) / C."""
    enclosing = (0.2 + loss / 2) ** 2
    return 1 + (enclosing - 0.08) / enclosing


SAMPLE_LOSSES = [0.8, 1.2, 0.9, 0.7]
SAMPLE_WEIGHTS = [1.0, 1.0, 0.5, 0.5]


@pytest.mark.parametrize("weights_from", ["dataset_type", "loss_weight"])
def test_documented_example_weights_1_1_half_half_give_0_7(weights_from):
    outputs, targets = one_query_per_image(SAMPLE_LOSSES)
    for t, group, weight in zip(targets, ["real", "real", "synthetic", "synthetic"], SAMPLE_WEIGHTS):
        if weights_from == "dataset_type":
            t["dataset_type"] = group  # default weights: real 1.0, synthetic 0.5
        else:
            t["loss_weight"] = weight
    losses = make_criterion()(outputs, targets)
    # L = (1/N) Σ w_i L_i = (.8 + 1.2 + .45 + .35) / 4 = .7, for every branch.
    for name in LOSS_TERMS:
        if "giou" not in name:
            assert losses[name].item() == pytest.approx(0.7, rel=1e-5), name
    expected_giou = sum(w * giou_loss_of_shift(l) for w, l in zip(SAMPLE_WEIGHTS, SAMPLE_LOSSES)) / 4
    for name in ("loss_giou_subject", "loss_giou_object", "loss_giou_relation"):
        assert losses[name].item() == pytest.approx(expected_giou, rel=1e-5), name


def test_normalized_form_divides_by_sum_of_weights():
    outputs, targets = one_query_per_image(SAMPLE_LOSSES)
    for t, weight in zip(targets, SAMPLE_WEIGHTS):
        t["loss_weight"] = weight
    losses = make_criterion(normalize_sample_weights=True)(outputs, targets)
    for name in ("loss_relation", "loss_bbox_relation", "loss_ce_subject", "loss_bbox_object"):
        assert losses[name].item() == pytest.approx(2.8 / 3, rel=1e-5), name


def test_split_keys_are_unweighted_group_means_with_counts_and_no_grad():
    outputs, targets = one_query_per_image(SAMPLE_LOSSES)
    for t, group in zip(targets, ["real", "real", "synthetic", "synthetic"]):
        t["dataset_type"] = group
    losses = make_criterion()(outputs, targets)
    # real: (.8 + 1.2) / 2 = 1.0; synthetic: (.9 + .7) / 2 = .8 -- sample weights not applied.
    for name in ("loss_relation", "loss_bbox_relation", "loss_ce_subject", "loss_bbox_object"):
        assert losses[f"{name}_real"].item() == pytest.approx(1.0, rel=1e-5)
        assert losses[f"{name}_synthetic"].item() == pytest.approx(0.8, rel=1e-5)
        assert losses[f"{name}_real{NUM_SAMPLES_SUFFIX}"].item() == 2
        assert losses[f"{name}_synthetic{NUM_SAMPLES_SUFFIX}"].item() == 2
    split = [k for k in losses if k.endswith(("_real", "_synthetic"))]
    assert len(split) == 2 * len(LOSS_TERMS)
    for key in split:
        assert not losses[key].requires_grad and losses[key].grad_fn is None, key


@pytest.mark.parametrize(
    "groups, relations_per_image, present",
    [
        (["real", "real"], [1, 1], {"real"}),
        (["synthetic"], [1], {"synthetic"}),
        (["real", "synthetic"], [1, 1], {"real", "synthetic"}),
        (["real", "synthetic"], [1, 0], {"real"}),  # a group without matched samples is absent
        ([None, None], [1, 1], set()),  # unlabelled images: no split at all
    ],
)
def test_split_keys_present_only_for_groups_in_the_batch(groups, relations_per_image, present):
    outputs, targets = one_query_per_image([0.5] * len(groups))
    for t, group, n in zip(targets, groups, relations_per_image):
        if group is not None:
            t["dataset_type"] = group
        t["relations"] = t["relations"][:n]
        t["relation_boxes"] = t["relation_boxes"][:n]
    losses = make_criterion()(outputs, targets)
    for group in ("real", "synthetic"):
        keys = [f"{name}_{group}" for name in LOSS_TERMS]
        if group in present:
            assert all(k in losses and k + NUM_SAMPLES_SUFFIX in losses for k in keys)
        else:
            assert not any(k in losses or k + NUM_SAMPLES_SUFFIX in losses for k in keys)


def test_unmatched_queries_are_supervised_as_background_with_its_weight():
    # One relation; Q0 predicts it exactly, Q1 is far and unmatched.
    # relation: Q0 logits [ln 3, 0] -> CE(pred 0) = ln(4/3); Q1 logits [0, 0] -> CE(no-rel) = ln 2.
    # subject: Q0 logits [0, 0, 0] -> ln 3 for class 0; Q1 -> ln 3 for no-object.
    boxes = [[[0.3, 0.3, 0.2, 0.2], [0.8, 0.8, 0.1, 0.1]]]
    outputs = {
        "pred_logits_subject": torch.zeros(1, 2, 3),
        "pred_logits_object": torch.tensor([[[0.0, math.log(2), 0.0], [0.0, 0.0, math.log(2)]]]),
        "pred_logits_relation": torch.tensor([[[math.log(3), 0.0], [0.0, 0.0]]]),
    }
    for branch in BRANCHES:
        outputs[f"pred_boxes_{branch}"] = torch.tensor(boxes)
    target = {"labels": torch.tensor([0, 1]), "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2]] * 2), "relations": torch.tensor([[0, 1, 0]])}
    losses = make_criterion(eos_coef=0.2, rel_eos_coef=0.1)(outputs, [target])
    assert losses["loss_relation"].item() == pytest.approx((math.log(4 / 3) + 0.1 * math.log(2)) / 1.1, rel=1e-6)
    assert losses["loss_ce_subject"].item() == pytest.approx((math.log(3) + 0.2 * math.log(3)) / 1.2, rel=1e-6)
    # object: Q0 p(class 1) = 2/4 -> ln 2; Q1 p(no-object) = 2/4 -> ln 2.
    assert losses["loss_ce_object"].item() == pytest.approx(math.log(2), rel=1e-6)
    # The split CE covers matched queries only: absent here (no dataset_type), class_error present.
    assert losses["class_error_relation"].item() == 0.0


def test_predicate_frequency_weights_hand_computed():
    # f = [.9, .09, .01], t = .07: sqrt(t/f) = [.279, .882, 2.6458] -> max(., 1) = [1, 1, sqrt 7].
    torch.testing.assert_close(predicate_frequency_weights([90, 9, 1], 0.07, 1.0), torch.tensor([1.0, 1.0, math.sqrt(7)]))
    torch.testing.assert_close(predicate_frequency_weights([90, 9, 1], 0.07, 2.0), torch.tensor([1.0, 1.0, 7.0]))
    with pytest.raises(ValueError, match="counts > 0"):
        predicate_frequency_weights([3, 0, 1], 0.07, 1.0)


def test_reweighted_relation_loss_uses_frequency_and_background_weights():
    cfg = CriterionConfig(NUM_CLASSES=2, NUM_REL_CLASSES=3, DEEP_SUPERVISION=False, REWEIGHT_RELATIONS=True,
                          UNDERSAMPLE_PARAM=2.0, REWEIGHT_REL_EOS_COEF=0.2)
    criterion = build_relation_criterion(cfg, predicate_counts=[90, 9, 1])
    torch.testing.assert_close(criterion.class_weight(2), torch.tensor([1.0, 1.0, 7.0, 0.2]))
    # Q0 -> predicate 0, Q1 -> predicate 2 (boxes decide), Q2 unmatched.
    torch.manual_seed(0)
    boxes = torch.tensor([[[0.2, 0.2, 0.2, 0.2], [0.7, 0.7, 0.2, 0.2], [0.5, 0.9, 0.05, 0.05]]])
    outputs = {f"pred_boxes_{b}": boxes for b in BRANCHES}
    outputs.update({"pred_logits_subject": torch.randn(1, 3, 3), "pred_logits_object": torch.randn(1, 3, 3),
                    "pred_logits_relation": torch.randn(1, 3, 4)})
    target = {"labels": torch.tensor([0, 1]), "boxes": torch.tensor([[0.2, 0.2, 0.2, 0.2], [0.7, 0.7, 0.2, 0.2]]),
              "relations": torch.tensor([[0, 0, 0], [1, 1, 2]]), "relation_boxes": boxes[0, :2]}
    losses = criterion(outputs, [target])
    ce = -F.log_softmax(outputs["pred_logits_relation"][0], -1)
    expected = (1.0 * ce[0, 0] + 7.0 * ce[1, 2] + 0.2 * ce[2, 3]) / (1.0 + 7.0 + 0.2)
    assert losses["loss_relation"].item() == pytest.approx(expected.item(), rel=1e-6)


def random_layer(batch, queries, num_classes, num_rel_classes, generator):
    layer = {}
    for branch, classes in (("subject", num_classes), ("object", num_classes), ("relation", num_rel_classes)):
        layer[f"pred_logits_{branch}"] = torch.randn(batch, queries, classes + 1, generator=generator).requires_grad_()
        layer[f"pred_boxes_{branch}"] = (torch.rand(batch, queries, 4, generator=generator) * 0.4 + 0.1).requires_grad_()
    return layer


def random_targets(relations_per_image, groups, num_classes, num_rel_classes, generator):
    targets = []
    for n, group in zip(relations_per_image, groups):
        entities = 4
        targets.append({
            "labels": torch.randint(0, num_classes, (entities,), generator=generator),
            "boxes": torch.rand(entities, 4, generator=generator) * 0.4 + 0.1,
            "relations": torch.stack([
                torch.randint(0, entities, (n,), generator=generator),
                torch.randint(0, entities, (n,), generator=generator),
                torch.randint(0, num_rel_classes, (n,), generator=generator),
            ], 1),
            "dataset_type": group,
        })
    return targets


def expected_relation_keys(num_layers):
    """Every key RelationCriterion emits for a batch with matched real and synthetic relations."""
    final_statistics = [f"class_error_{b}" for b in BRANCHES]
    final_statistics += [f"{name}_{group}" for name in LOSS_TERMS for group in ("real", "synthetic")]
    k_log = [f"k_log_layer{n}" for n in range(1, num_layers + 1)]
    loss_terms = list(LOSS_TERMS) + [f"{name}_{i}" for i in range(num_layers - 1) for name in LOSS_TERMS]
    counted = final_statistics + k_log
    return set(loss_terms), set(counted), set(loss_terms + counted + [k + NUM_SAMPLES_SUFFIX for k in counted])


def test_six_layer_keys_weight_dict_weighted_total_and_gradients():
    cfg = CriterionConfig(NUM_CLASSES=5, NUM_REL_CLASSES=4, DEC_LAYERS=6)
    criterion = build_relation_criterion(cfg)
    generator = torch.Generator().manual_seed(0)
    outputs = random_layer(3, 8, 5, 4, generator)
    outputs["aux_outputs"] = [random_layer(3, 8, 5, 4, generator) for _ in range(5)]
    targets = random_targets([2, 3, 1], ["real", "synthetic", "real"], 5, 4, generator)
    losses = criterion(outputs, targets)

    loss_terms, counted, every_key = expected_relation_keys(6)
    assert set(losses) == every_key
    assert set(criterion.weight_dict) == loss_terms  # exactly the optimized keys
    for key in set(losses) - loss_terms:
        assert not losses[key].requires_grad, key
    for n in range(1, 7):
        assert losses[f"k_log_layer{n}"].item() == 1.0  # one-to-one
        assert losses[f"k_log_layer{n}{NUM_SAMPLES_SUFFIX}"].item() == 6

    total = weighted_total(losses, criterion.weight_dict)
    by_hand = sum(criterion.weight_dict[k] * losses[k].item() for k in loss_terms)
    assert total.item() == pytest.approx(by_hand, rel=1e-6)
    total.backward()
    for index, layer in enumerate([outputs] + outputs["aux_outputs"]):
        for key in (f"pred_{kind}_{branch}" for kind in ("logits", "boxes") for branch in BRANCHES):
            assert layer[key].grad is not None and layer[key].grad.abs().sum() > 0, (index, key)


@pytest.mark.parametrize("queries, expected_k", [(8, 2.0), (5, 5 / 3)])
def test_one_to_many_k_log_and_normalizer(queries, expected_k):
    generator = torch.Generator().manual_seed(1)
    outputs = random_layer(1, queries, 3, 2, generator)
    outputs["aux_outputs"] = [random_layer(1, queries, 3, 2, generator)]
    targets = random_targets([3], ["real"], 3, 2, generator)
    criterion = make_criterion(num_classes=3, num_rel_classes=2, k=2)
    losses = criterion(outputs, targets)
    assert losses["k_log_layer1"].item() == pytest.approx(expected_k)
    assert losses["k_log_layer2"].item() == pytest.approx(expected_k)
    # N = k * targets = 6 even when fewer queries than 6 exist; real count = matches.
    indices = criterion.matcher(outputs, expand_relation_targets(targets))
    matches = len(indices[0][0])
    assert losses[f"loss_bbox_relation_real{NUM_SAMPLES_SUFFIX}"].item() == matches
    assert losses["loss_bbox_relation"].item() == pytest.approx(losses["loss_bbox_relation_real"].item() * matches / 6, rel=1e-5)


def test_images_without_relations_give_finite_losses_and_no_k_log():
    generator = torch.Generator().manual_seed(2)
    outputs = random_layer(2, 4, 3, 2, generator)
    losses = make_criterion(num_classes=3, num_rel_classes=2)(outputs, random_targets([0, 0], ["real", "synthetic"], 3, 2, generator))
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_bbox_relation"].item() == 0.0
    assert not any(k.startswith(("k_log", "class_error")) or k.endswith(("_real", "_synthetic")) for k in losses)
    weighted_total(losses, {name: 1.0 for name in LOSS_TERMS}).backward()
    assert all(torch.isfinite(t.grad).all() for t in outputs.values())


def test_relation_boxes_default_to_union_of_subject_and_object():
    target = {"labels": torch.tensor([0, 1]), "boxes": torch.tensor([[0.2, 0.2, 0.2, 0.2], [0.7, 0.5, 0.2, 0.4]]),
              "relations": torch.tensor([[0, 1, 3]])}
    [expanded] = expand_relation_targets([target])
    torch.testing.assert_close(expanded["relation_boxes"], torch.tensor([[0.45, 0.4, 0.7, 0.6]]))
    assert expanded["subject_labels"].tolist() == [0] and expanded["object_labels"].tolist() == [1]
    assert expanded["relation_labels"].tolist() == [3]


@pytest.mark.parametrize(
    "change, message",
    [
        ({"relations": torch.tensor([[0, 2, 0]])}, "target 1: a relation's subject/object index is outside"),
        ({"relations": torch.tensor([[0, 1, 1]])}, r"target 1: a predicate is outside \[0, 1\) \(NUM_REL_CLASSES=1\)"),
        ({"relations": torch.tensor([0, 1, 0])}, r"target 1: 'relations' must be a tensor of shape \[N, 3\]"),
        ({"relation_boxes": torch.zeros(2, 4)}, r"target 1: 'relation_boxes' must have shape \[1, 4\]"),
        ({"relation_boxes": torch.tensor([[0.5, 0.5, math.nan, 0.1]])}, "target 1: relation_boxes must be finite"),
    ],
)
def test_bad_relation_targets_name_the_image(change, message):
    outputs, targets = one_query_per_image([0.5, 0.5])
    targets[1].update(change)
    with pytest.raises(ValueError, match=message):
        make_criterion()(outputs, targets)


def test_missing_output_key_is_named():
    outputs, targets = one_query_per_image([0.5])
    del outputs["pred_boxes_relation"]
    with pytest.raises(ValueError, match=r"RelationCriterion: outputs lacks 'pred_boxes_relation'"):
        make_criterion()(outputs, targets)
