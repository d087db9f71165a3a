"""Hungarian matchers: known optima, batched vs single image, empty targets, one-to-many, NaN."""
import math

import pytest
import torch

from criterion.matcher import HungarianMatcher, RelationHungarianMatcher


def box(cx, cy=0.5, w=0.2, h=0.2):
    return [cx, cy, w, h]


def detr_outputs(logits, boxes):
    return {"pred_logits": torch.tensor([logits], dtype=torch.float32), "pred_boxes": torch.tensor([boxes], dtype=torch.float32)}


def as_lists(indices):
    return [(src.tolist(), tgt.tolist()) for src, tgt in indices]


def test_l1_cost_finds_optimum_that_greedy_misses():
    # L1 costs (cx only differs): Q0->T0 .05, Q0->T1 .15, Q1->T0 .10, Q1->T1 .30, Q2 far from both.
    # Greedy takes Q0-T0 then Q1-T1 (total .35); the optimum is Q0-T1 + Q1-T0 (total .25).
    outputs = detr_outputs([[0.0, 0.0]] * 3, [box(0.35), box(0.2), box(0.9)])
    targets = [{"labels": torch.tensor([0, 0]), "boxes": torch.tensor([box(0.3), box(0.5)])}]
    indices = HungarianMatcher(cost_class=0, cost_bbox=1, cost_giou=0)(outputs, targets)
    assert as_lists(indices) == [([0, 1], [1, 0])]
    assert indices[0][0].dtype == indices[0][1].dtype == torch.int64


def test_class_cost_uses_predicted_probability_of_target_class():
    # Same boxes everywhere: only -p[class] decides. Q0 is sure of class 2, Q1 of class 0.
    outputs = detr_outputs([[0.0, 0.0, 9.0, 0.0], [9.0, 0.0, 0.0, 0.0]], [box(0.5), box(0.5)])
    targets = [{"labels": torch.tensor([0, 2]), "boxes": torch.tensor([box(0.5), box(0.5)])}]
    assert as_lists(HungarianMatcher(cost_class=1, cost_bbox=0, cost_giou=0)(outputs, targets)) == [([0, 1], [1, 0])]


def test_giou_cost_and_l1_cost_can_disagree():
    # Target xyxy [.4, .4, .6, .6]. Q0 is a tiny box at its centre: L1 .36, GIoU .0004/.04 = .01.
    # Q1 contains it: L1 .40, GIoU .04/.16 = .25. L1 alone picks Q0, GIoU alone picks Q1.
    outputs = detr_outputs([[0.0, 0.0]] * 2, [box(0.5, w=0.02, h=0.02), box(0.5, w=0.4, h=0.4)])
    targets = [{"labels": torch.tensor([0]), "boxes": torch.tensor([box(0.5)])}]
    assert as_lists(HungarianMatcher(cost_class=0, cost_bbox=1, cost_giou=0)(outputs, targets)) == [([0], [0])]
    assert as_lists(HungarianMatcher(cost_class=0, cost_bbox=0, cost_giou=1)(outputs, targets)) == [([1], [0])]


def random_batch(num_targets, queries=7, classes=4, seed=0):
    generator = torch.Generator().manual_seed(seed)
    batch = len(num_targets)
    outputs = {
        "pred_logits": torch.randn(batch, queries, classes + 1, generator=generator),
        "pred_boxes": torch.rand(batch, queries, 4, generator=generator) * 0.5 + 0.1,
    }
    targets = [
        {"labels": torch.randint(0, classes, (n,), generator=generator), "boxes": torch.rand(n, 4, generator=generator) * 0.5 + 0.1}
        for n in num_targets
    ]
    return outputs, targets


def test_batched_matching_equals_single_image_matching():
    outputs, targets = random_batch([3, 0, 5, 1])
    matcher = HungarianMatcher(cost_class=1, cost_bbox=5, cost_giou=2)
    batched = matcher(outputs, targets)
    for image, (src, tgt) in enumerate(batched):
        single = {k: v[image : image + 1] for k, v in outputs.items()}
        [(single_src, single_tgt)] = matcher(single, [targets[image]])
        assert torch.equal(src, single_src) and torch.equal(tgt, single_tgt)
        assert len(src) == len(targets[image]["labels"])
        assert src.tolist() == sorted(src.tolist())


def test_empty_targets_give_empty_int64_indices():
    outputs, targets = random_batch([0, 0])
    for src, tgt in HungarianMatcher()(outputs, targets):
        assert src.shape == tgt.shape == (0,)
        assert src.dtype == tgt.dtype == torch.int64


@pytest.mark.parametrize("queries, num_targets, k, expected_per_target", [(7, 3, 2, [2, 2, 2]), (5, 2, 3, None)])
def test_one_to_many_matches_each_target_up_to_k_queries(queries, num_targets, k, expected_per_target):
    outputs, targets = random_batch([num_targets], queries=queries)
    [(src, tgt)] = HungarianMatcher(cost_class=1, cost_bbox=5, cost_giou=2, one_to_many_k=k)(outputs, targets)
    per_target = torch.bincount(tgt, minlength=num_targets).tolist()
    assert len(set(src.tolist())) == len(src)  # a query gets at most one target
    assert len(src) == min(queries, k * num_targets)
    assert max(per_target) <= k
    if expected_per_target is not None:
        assert per_target == expected_per_target


@pytest.mark.parametrize("key", ["pred_logits", "pred_boxes"])
def test_nan_prediction_raises_error_naming_image_and_key(key):
    outputs, targets = random_batch([2, 2, 2])
    outputs[key][1, 3, 0] = math.nan
    # A FloatingPointError (a trainer stops on it as on a NaN loss) and a ValueError.
    with pytest.raises(FloatingPointError, match=rf"image 1 is NaN: non-finite values in {key}$"):
        HungarianMatcher()(outputs, targets)


def test_invalid_matcher_settings_are_rejected():
    with pytest.raises(ValueError, match="cannot all be 0"):
        HungarianMatcher(0, 0, 0)
    with pytest.raises(ValueError, match="ONE2MANY_K"):
        HungarianMatcher(one_to_many_k=0)


def relation_layer(subject_cx, object_cx, relation_cx):
    """Relation outputs for one image; boxes differ by cx only, logits uniform."""
    outputs = {}
    for branch, centres, classes in (("subject", subject_cx, 3), ("object", object_cx, 3), ("relation", relation_cx, 2)):
        outputs[f"pred_logits_{branch}"] = torch.zeros(1, len(centres), classes)
        outputs[f"pred_boxes_{branch}"] = torch.tensor([[box(cx) for cx in centres]])
    return outputs


def relation_targets(subject_cx, object_cx, relation_cx):
    n = len(subject_cx)
    target = {}
    for branch, centres in (("subject", subject_cx), ("object", object_cx), ("relation", relation_cx)):
        target[f"{branch}_labels"] = torch.zeros(n, dtype=torch.int64)
        target[f"{branch}_boxes"] = torch.tensor([box(cx) for cx in centres])
    return [target]


def test_relation_matcher_sums_subject_object_and_relation_costs():
    # Subject L1 favours the identity by .1 per pair; object L1 favours the swap by .3 per pair;
    # relation boxes are uninformative. Identity costs .0 + .6 = .6, swap .2 + .0 = .2: swap wins.
    outputs = relation_layer(subject_cx=[0.30, 0.40], object_cx=[0.6, 0.3], relation_cx=[0.5, 0.5])
    targets = relation_targets(subject_cx=[0.30, 0.40], object_cx=[0.3, 0.6], relation_cx=[0.5, 0.5])
    matcher = RelationHungarianMatcher(cost_class=0, cost_bbox=1, cost_giou=0)
    assert as_lists(matcher(outputs, targets)) == [([0, 1], [1, 0])]
    # The subject branch alone would keep the identity.
    subject_only = HungarianMatcher(cost_class=0, cost_bbox=1, cost_giou=0)
    subject = {"pred_logits": outputs["pred_logits_subject"], "pred_boxes": outputs["pred_boxes_subject"]}
    subject_targets = [{"labels": targets[0]["subject_labels"], "boxes": targets[0]["subject_boxes"]}]
    assert as_lists(subject_only(subject, subject_targets)) == [([0, 1], [0, 1])]


def test_relation_matcher_names_image_and_branch_key_with_nan():
    outputs = relation_layer([0.3, 0.4], [0.3, 0.4], [0.3, 0.4])
    outputs["pred_logits_object"][0, 1, 1] = math.nan
    with pytest.raises(ValueError, match="image 0 is NaN: non-finite values in pred_logits_object"):
        RelationHungarianMatcher()(outputs, relation_targets([0.3], [0.3], [0.3]))
