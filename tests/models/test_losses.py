"""Losses: MSE, within-task RankNet and LambdaRank, their combination."""

from __future__ import annotations

import torch

from perfmodel.models import CombinedLoss, LambdaRankLoss, MSELoss, RankNetLoss

torch.set_num_threads(1)  # tiny graphs on a shared 2-core machine: more threads only contend

TRUE = torch.tensor([0.0, 1.0, 2.0, 5.0, 6.0])
TASK = torch.tensor([0, 0, 0, 1, 1])


def test_ranknet_prefers_correct_order_within_task() -> None:
    loss = RankNetLoss()
    good = loss(TRUE.clone(), TRUE, TASK)
    bad = loss(-TRUE, TRUE, TASK)
    assert good < bad


def test_ranknet_ignores_pairs_across_tasks() -> None:
    loss = RankNetLoss()
    # task 1 is slower overall; predicting it faster than task 0 costs nothing
    pred = torch.tensor([10.0, 11.0, 12.0, 0.0, 1.0])
    assert torch.isclose(loss(pred, TRUE, TASK), loss(TRUE + torch.tensor([0, 0, 0, -5.0, -5.0]), TRUE, TASK))


def test_ranknet_no_pairs_is_zero_with_grad() -> None:
    pred = torch.tensor([1.0, 2.0], requires_grad=True)
    out = RankNetLoss()(pred, torch.tensor([1.0, 1.0]), torch.tensor([0, 1]))
    assert float(out) == 0.0
    out.backward()
    assert pred.grad is not None


def test_lambdarank_weighs_top_errors_more() -> None:
    loss = LambdaRankLoss()
    true = torch.tensor([0.0, 1.0, 2.0, 3.0])
    task = torch.zeros(4, dtype=torch.long)
    swap_top = loss(torch.tensor([1.0, 0.0, 2.0, 3.0]), true, task)  # two fastest swapped
    swap_bottom = loss(torch.tensor([0.0, 1.0, 3.0, 2.0]), true, task)  # two slowest swapped
    assert swap_top > swap_bottom


def test_gradients_push_the_faster_record_down() -> None:
    for loss in (RankNetLoss(), LambdaRankLoss()):
        pred = torch.zeros(5, requires_grad=True)
        loss(pred, TRUE, TASK).backward()
        assert pred.grad[0] > 0 > pred.grad[2]  # descent lowers the fastest, raises the slowest


def test_combined_is_the_weighted_sum() -> None:
    pred = torch.tensor([0.5, 0.1, 2.5, 4.0, 7.0])
    c = CombinedLoss(mse_weight=2.0, rank_weight=0.5)
    want = 2.0 * MSELoss()(pred, TRUE, TASK) + 0.5 * RankNetLoss()(pred, TRUE, TASK)
    assert torch.isclose(c(pred, TRUE, TASK), want)


def test_lambdarank_sharpness_moves_the_weight_to_the_fast_corner() -> None:
    true = torch.log(torch.tensor([1.0, 1.3, 1.7, 2.2, 3.0]))  # seconds of one task's five schedules
    task = torch.zeros(5, dtype=torch.long)
    swap_top = torch.tensor([1.0, 0.0, 2.0, 3.0, 4.0])  # the two fastest swapped
    swap_low = torch.tensor([0.0, 1.0, 2.0, 4.0, 3.0])  # the two slowest swapped
    ratios = []
    for sharpness in (1.0, 4.0):
        loss = LambdaRankLoss(sharpness=sharpness)
        ratios.append(float(loss(swap_top, true, task) / loss(swap_low, true, task)))
    assert ratios[1] > 1.5 * ratios[0] > 1.5  # the fast pair's error counts more, more so when sharper (2.0 -> 3.3)
    assert torch.isclose(LambdaRankLoss(sharpness=1.0)(swap_top, true, task), LambdaRankLoss()(swap_top, true, task))


def test_lambdarank_rejects_a_non_positive_sharpness() -> None:
    import pytest

    with pytest.raises(ValueError, match="sharpness"):
        LambdaRankLoss(sharpness=0.0)
