"""Metric functions against hand-computed values (ties, single-record tasks, undefined cases)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from perfmodel import metrics as M


def test_perfect_and_reversed_ranking() -> None:
    t = [1.0, 2.0, 3.0, 4.0]
    assert M.kendall_tau(t, t) == pytest.approx(1.0)
    assert M.spearman(t, t) == pytest.approx(1.0)
    assert M.pairwise_acc(t, t) == 1.0
    assert M.peak_k(t, t, 1) == 1.0
    rev = t[::-1]
    assert M.kendall_tau(rev, t) == pytest.approx(-1.0)
    assert M.spearman(rev, t) == pytest.approx(-1.0)
    assert M.pairwise_acc(rev, t) == 0.0
    assert M.peak_k(rev, t, 1) == pytest.approx(1 / 4)  # picks the 4 s schedule, best is 1 s
    assert M.peak_k(rev, t, 4) == 1.0


def test_ties_in_prediction() -> None:
    pred, true = [1.0, 1.0, 2.0], [1.0, 2.0, 3.0]
    # pairs: (0,1) tied by the model -> 0.5, (0,2) and (1,2) right
    assert M.pairwise_acc(pred, true) == pytest.approx(2.5 / 3)
    # tau-b: C=2, D=0, one pair tied in pred only -> 2 / sqrt(3 * 2)
    assert M.kendall_tau(pred, true) == pytest.approx(2 / math.sqrt(6))
    # ranks [1.5, 1.5, 3] vs [1, 2, 3]: 1.5 / sqrt(1.5 * 2)
    assert M.spearman(pred, true) == pytest.approx(1.5 / math.sqrt(3))


def test_ties_in_truth_are_left_out_of_pairs() -> None:
    pred, true = [1.0, 2.0, 3.0], [1.0, 1.0, 2.0]
    assert M.pairwise_acc(pred, true) == 1.0  # the (0,1) pair has equal times: not counted
    assert M.kendall_tau(pred, true) == pytest.approx(2 / math.sqrt(6))
    assert math.isnan(M.pairwise_acc([1.0, 2.0], [3.0, 3.0]))  # no pair to judge


def test_rank_metrics_match_scipy_with_many_ties() -> None:
    rng = np.random.default_rng(0)
    p = rng.integers(0, 6, 300).astype(float)
    t = p + rng.integers(-3, 4, 300)
    assert M.kendall_tau(p, t) == pytest.approx(stats.kendalltau(p, t).statistic)
    assert M.spearman(p, t) == pytest.approx(stats.spearmanr(p, t).statistic)


def _pairs_by_hand(pred: np.ndarray, true: np.ndarray) -> float:
    """pairwise_acc by its definition, over every pair (O(N^2))."""
    right = judged = 0.0
    for i in range(len(true)):
        for j in range(i + 1, len(true)):
            if true[i] == true[j]:
                continue
            judged += 1
            s = np.sign(pred[i] - pred[j]) * np.sign(true[i] - true[j])
            right += 1.0 if s > 0 else 0.5 if s == 0 else 0.0
    return right / judged if judged else math.nan


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pairwise_acc_matches_counting_every_pair(seed: int) -> None:
    rng = np.random.default_rng(seed)
    p = rng.integers(0, 5, 120).astype(float)  # many ties on both sides
    t = p + rng.integers(-2, 3, 120)
    assert M.pairwise_acc(p, t) == pytest.approx(_pairs_by_hand(p, t))
    p, t = rng.normal(size=60), rng.normal(size=60)
    assert M.pairwise_acc(p, t) == pytest.approx(_pairs_by_hand(p, t))
    assert M.pairwise_acc(np.zeros(10), t[:10]) == 0.5  # a constant model is a coin toss


def test_peak_with_tied_predictions_is_the_expectation() -> None:
    # the model ties the 2 s and the 1 s schedule for first place: half the time it picks 1 s
    assert M.peak_k([0.0, 0.0, 1.0], [2.0, 1.0, 4.0], 1) == pytest.approx(0.5 * 1 + 0.5 * 0.5)
    assert M.peak_k([0.0, 0.0, 1.0], [2.0, 1.0, 4.0], 2) == 1.0
    const, t = [0.0] * 4, [1.0, 2.0, 3.0, 4.0]
    assert M.peak_k(const, t, 1) == pytest.approx((1 + 1 / 2 + 1 / 3 + 1 / 4) / 4)
    # 6 pairs: 3 hold the 1 s one, {2,3} and {2,4} give 1/2, {3,4} gives 1/3
    assert M.peak_k(const, t, 2) == pytest.approx((3 + 0.5 + 0.5 + 1 / 3) / 6)
    assert M.peak_k([5.0, 1.0], [1.0, 2.0], 5) == 1.0  # k above N uses every record
    with pytest.raises(ValueError, match="k must be"):
        M.peak_k([1.0], [1.0], 0)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_peak_matches_every_tie_breaking(seed: int) -> None:
    import itertools

    rng = np.random.default_rng(seed)
    p = rng.integers(0, 3, 6).astype(float)  # ties across the cut
    t = rng.uniform(1.0, 5.0, 6)
    for k in (1, 2, 3, 5):
        # the expectation over every order of the records that sorts the predictions
        vals = [t.min() / t[sorted(range(6), key=lambda i: (p[i], perm[i]))[:k]].min()
                for perm in itertools.permutations(range(6))]
        assert M.peak_k(p, t, k) == pytest.approx(np.mean(vals)), k


def test_absolute_errors() -> None:
    assert M.mape([1.1, 0.8], [1.0, 1.0]) == pytest.approx(0.15)
    assert M.rmse_log([0.0, 0.0], [3.0, 4.0]) == pytest.approx(math.sqrt(12.5))
    assert M.r2([1.0, 2.0, 3.0], [1.0, 2.0, 3.0]) == 1.0
    assert M.r2([2.0, 2.0, 2.0], [1.0, 2.0, 3.0]) == pytest.approx(0.0)
    assert math.isnan(M.r2([1.0, 2.0], [5.0, 5.0]))
    # two schedules 1.3% apart: the spread is measurement noise, R² would be about -600
    assert math.isnan(M.r2([-5.60, -5.45], [-5.542, -5.529]))
    assert M.r2([-5.60, -5.45], [-5.6, -5.4]) > 0.5
    with pytest.raises(ValueError, match="must be > 0"):
        M.mape([1.0], [0.0])
    with pytest.raises(ValueError, match="2 values but truth has 3"):
        M.rmse_log([1.0, 2.0], [1.0, 2.0, 3.0])


def test_single_record_metrics_are_nan() -> None:
    for f in (M.kendall_tau, M.spearman, M.pairwise_acc):
        assert math.isnan(f([1.0], [1.0]))
    assert M.peak_k([1.0], [2.0], 1) == 1.0


def test_task_metrics_averages_over_tasks_and_reports_small_tasks() -> None:
    n = M.RANK_MIN_RECORDS
    ta = np.log(np.arange(1.0, n + 1))  # task a: perfect order, every time predicted x2
    tb = np.log(np.arange(1.0, n + 1))  # task b: reversed order, exact times on the ends
    true_log = np.r_[ta, tb, np.log([1.0, 2.0]), math.log(3.0)]
    # task c: two records ordered wrongly (too small to rank); task d: one record
    pred_log = np.r_[ta + math.log(2.0), tb[::-1], np.log([2.0, 1.0]), math.log(3.0)]
    ids = ["a"] * n + ["b"] * n + ["c", "c", "d"]
    out = M.task_metrics(pred_log, true_log, ids)
    assert out["n_tasks"] == 4 and out["n_records"] == 2 * n + 3 and out["n_tasks_ranked"] == 2
    assert out["skipped_tasks"] == ["c", "d"]
    assert out["per_task"]["a"]["pairwise_acc"] == 1.0 and out["per_task"]["b"]["pairwise_acc"] == pytest.approx(0.0)
    assert out["per_task"]["c"]["pairwise_acc"] == 0.0  # its own value is kept ...
    assert math.isnan(out["per_task"]["d"]["kendall_tau"])
    assert out["pairwise_acc"] == pytest.approx(0.5)  # ... but only a and b are averaged: (1 + 0) / 2
    assert out["kendall_tau"] == pytest.approx(0.0)
    assert out["peak1"] == pytest.approx((1.0 + 1.0 / n) / 2)
    # MAPE averages every task: mape a = 1.0 (x2), c = (1 + 0.5) / 2, d = 0, b below
    mape_b = float(np.mean(np.abs(np.arange(n, 0, -1) / np.arange(1.0, n + 1) - 1)))
    assert out["mape"] == pytest.approx((1.0 + mape_b + 0.75 + 0.0) / 4)
    # ... but R² divides by a task's spread: only the ranked tasks a and b (c: -3, kept in per_task)
    assert out["per_task"]["c"]["r2"] == pytest.approx(-3.0)
    assert out["r2"] == pytest.approx((out["per_task"]["a"]["r2"] + out["per_task"]["b"]["r2"]) / 2)
    assert out["per_task"]["d"]["n"] == 1
    assert set(M.METRICS) <= set(out)


def test_a_task_below_the_minimum_cannot_move_the_ranking_average() -> None:
    n = M.RANK_MIN_RECORDS
    true_log = np.log(np.r_[np.arange(1.0, n + 1), np.arange(1.0, n)])
    ids = ["big"] * n + ["small"] * (n - 1)
    right = M.task_metrics(true_log, true_log, ids)
    wrong_small = M.task_metrics(np.r_[true_log[:n], true_log[n:][::-1]], true_log, ids)
    assert right["pairwise_acc"] == wrong_small["pairwise_acc"] == 1.0
    assert wrong_small["per_task"]["small"]["pairwise_acc"] == pytest.approx(0.0)


def test_task_metrics_weights_and_ranking_only_models() -> None:
    n = M.RANK_MIN_RECORDS
    true_log = np.log(np.r_[np.arange(1.0, n + 1), np.arange(1.0, n + 1)])
    score = np.r_[np.arange(n), np.arange(n)[::-1]].astype(float)  # right on task 0, wrong on task 1
    out = M.task_metrics(score, true_log, [0] * n + [1] * n, absolute=False, task_weights={0: 3.0, 1: 1.0})
    assert out["pairwise_acc"] == pytest.approx(0.75)
    assert all(math.isnan(out[k]) for k in M.ABSOLUTE)
    with pytest.raises(ValueError, match="task_ids has 3 values"):
        M.task_metrics(score, true_log, [0, 0, 1])
