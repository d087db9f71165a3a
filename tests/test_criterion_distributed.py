"""num_boxes of the box losses is averaged across ranks (DETR), on two gloo processes."""
import pytest
import torch

from criterion import HungarianMatcher, SetCriterion
from dist_utils import run_distributed


def _box_loss_on_uneven_ranks(rank, world_size):
    """Rank 0: one image with L1 .3. Rank 1: three exact matches. N = (1 + 3) / 2 = 2 on both."""
    pred_box, off_box = [0.5, 0.5, 0.2, 0.2], [0.6, 0.5, 0.2, 0.4]
    images = 1 if rank == 0 else 3
    outputs = {"pred_logits": torch.zeros(images, 1, 3), "pred_boxes": torch.tensor([[pred_box]] * images)}
    targets = [{"labels": torch.tensor([0]), "boxes": torch.tensor([off_box if rank == 0 else pred_box])}] * images
    criterion = SetCriterion(2, HungarianMatcher(cost_class=1, cost_bbox=5, cost_giou=2))
    return criterion(outputs, targets)["loss_bbox"].item()


@pytest.mark.distributed
def test_num_boxes_is_averaged_across_ranks():
    assert run_distributed(_box_loss_on_uneven_ranks, world_size=2, timeout=90) == pytest.approx([0.3 / 2, 0.0], abs=1e-7)
