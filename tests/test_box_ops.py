"""criterion.box_ops against hand-computed IoU / GIoU values and degenerate input."""
import pytest
import torch

from criterion.box_ops import (
    box_cxcywh_to_xyxy,
    box_iou,
    box_union,
    box_xyxy_to_cxcywh,
    generalized_box_iou,
    paired_generalized_box_iou,
)


def giou_of(a, b):
    return generalized_box_iou(torch.tensor([a], dtype=torch.float64), torch.tensor([b], dtype=torch.float64))[0, 0].item()


@pytest.mark.parametrize(
    "a, b, expected",
    [
        ([0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0], 1.0),  # identical
        ([-1.0, -1.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0], 0.25),  # inside: IoU 1/4, enclosing = union
        ([0.0, 0.0, 1.0, 1.0], [1.0, 0.0, 2.0, 1.0], 0.0),  # edge-sharing: IoU 0, enclosing = union
        ([0.0, 0.0, 1.0, 1.0], [1.0, 1.0, 2.0, 2.0], -0.5),  # corner-touching: 0 - (4 - 2) / 4
        ([0.0, 0.0, 2.0, 2.0], [1.0, 1.0, 3.0, 3.0], -5 / 63),  # 1/7 - (9 - 7) / 9
    ],
)
def test_generalized_box_iou_hand_computed(a, b, expected):
    assert giou_of(a, b) == pytest.approx(expected, abs=1e-12)
    assert giou_of(b, a) == pytest.approx(expected, abs=1e-12)


def test_box_iou_returns_iou_and_union_matrices():
    boxes1 = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 1.0, 1.0]])
    boxes2 = torch.tensor([[1.0, 1.0, 3.0, 3.0], [0.0, 0.0, 1.0, 1.0], [5.0, 5.0, 6.0, 6.0]])
    iou, union = box_iou(boxes1, boxes2)
    assert iou.shape == union.shape == (2, 3)
    expected_iou = torch.tensor([[1 / 7, 1 / 4, 0.0], [0.0, 1.0, 0.0]])
    expected_union = torch.tensor([[7.0, 4.0, 5.0], [5.0, 1.0, 2.0]])
    torch.testing.assert_close(iou, expected_iou)
    torch.testing.assert_close(union, expected_union)


def test_conversions_round_trip_and_known_values():
    cxcywh = torch.tensor([[0.5, 0.5, 0.2, 0.4], [0.1, 0.9, 0.0, 0.2]])
    xyxy = box_cxcywh_to_xyxy(cxcywh)
    torch.testing.assert_close(xyxy, torch.tensor([[0.4, 0.3, 0.6, 0.7], [0.1, 0.8, 0.1, 1.0]]))
    torch.testing.assert_close(box_xyxy_to_cxcywh(xyxy), cxcywh)
    # Batched leading dimensions work as in DETR ([batch, queries, 4]).
    assert box_cxcywh_to_xyxy(torch.rand(2, 3, 4)).shape == (2, 3, 4)


def test_paired_giou_equals_diagonal_of_pairwise():
    torch.manual_seed(0)
    boxes1 = box_cxcywh_to_xyxy(torch.rand(6, 4) * 0.5 + 0.1)
    boxes2 = box_cxcywh_to_xyxy(torch.rand(6, 4) * 0.5 + 0.1)
    torch.testing.assert_close(paired_generalized_box_iou(boxes1, boxes2), generalized_box_iou(boxes1, boxes2).diag())


def test_box_union_encloses_both_boxes():
    union = box_union(torch.tensor([[0.2, 0.2, 0.2, 0.2]]), torch.tensor([[0.7, 0.5, 0.2, 0.4]]))
    # xyxy [0.1, 0.1, 0.3, 0.3] and [0.6, 0.3, 0.8, 0.7] -> [0.1, 0.1, 0.8, 0.7]
    torch.testing.assert_close(union, torch.tensor([[0.45, 0.4, 0.7, 0.6]]))


def test_zero_area_boxes_give_defined_values_and_finite_gradients():
    point = torch.tensor([[0.5, 0.5, 0.5, 0.5]], requires_grad=True)  # zero area
    same_point = torch.tensor([[0.5, 0.5, 0.5, 0.5]], requires_grad=True)
    unit = torch.tensor([[0.0, 0.0, 1.0, 1.0]], requires_grad=True)
    iou, union = box_iou(point, same_point)
    assert iou.item() == 0.0 and union.item() == 0.0  # empty union: IoU defined as 0
    giou_points = generalized_box_iou(point, same_point)  # empty enclosing box: GIoU = IoU
    giou_point_unit = generalized_box_iou(point, unit)  # 0 - (1 - 1) / 1
    assert giou_points.item() == 0.0 and giou_point_unit.item() == 0.0
    (giou_points.sum() + giou_point_unit.sum() + iou.sum()).backward()
    for box in (point, same_point, unit):
        assert torch.isfinite(box.grad).all()


@pytest.mark.parametrize(
    "bad_box, reason",
    [([0.0, float("nan"), 1.0, 1.0], "NaN"), ([0.0, 0.0, float("inf"), 1.0], "Inf"), ([0.6, 0.0, 0.4, 1.0], "inverted")],
)
@pytest.mark.parametrize("function", [box_iou, generalized_box_iou, paired_generalized_box_iou])
def test_invalid_boxes_raise_one_line_error_naming_argument_and_row(function, bad_box, reason):
    good = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0]])
    bad = torch.tensor([[0.0, 0.0, 1.0, 1.0], bad_box])
    with pytest.raises(ValueError, match=r"boxes2: box 1 is .*x1 >= x0") as info:
        function(good, bad)
    assert "\n" not in str(info.value), reason
