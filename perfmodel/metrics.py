"""Accuracy and ranking metrics of a cost model, per task and averaged over tasks (no TVM, no Lightning).

Conventions, shared by training, ``perfmodel evaluate`` and the benchmarks:

- A *prediction* is a predicted log time or any score where LOWER means FASTER (turn a
  "higher is better" throughput score into one by negating it).
- ``mape`` is a fraction (0.2 = 20%), computed on times in seconds.
- Ranking metrics are computed inside one task (times of different tasks are not comparable)
  and averaged over tasks with at least ``RANK_MIN_RECORDS`` records, each task counting once
  (TenSet's convention), or with the weights given; so is R² (``MIN_RECORDS_METRICS``); a smaller
  task still gets its own values in ``per_task``. Ties get average ranks (Spearman) and the tau-b
  correction (Kendall).
- A metric that is undefined for its input (no pair of distinct times, constant predictions,
  a single record) is ``nan``, never a made-up number; averages skip ``nan``.

The correlations, R² and MAPE are scipy's and scikit-learn's; this module adds only those
conventions, plus the two metrics no library has (``pairwise_acc``, ``peak_k``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from math import comb
from typing import Any

import numpy as np
from scipy import stats
from sklearn.metrics import mean_absolute_percentage_error, r2_score

ABSOLUTE = ("mape", "rmse_log", "r2")
RANKING = ("kendall_tau", "spearman", "pairwise_acc", "peak1", "peak5")
METRICS = ABSOLUTE + RANKING

NAN = float("nan")

# A task enters the ranking averages only with at least this many records. With fewer, peak@5 is
# 1.0 whatever the model does (its top 5 hold every schedule) and pairwise accuracy rests on a handful
# of pairs, often closer together than the labels' noise: one 2-record task (one pair 1.3% apart)
# moved a 13-task pairwise average by 0.06 (benchmarks/RESULTS.md). Its values stay in ``per_task``.
RANK_MIN_RECORDS = 6
# R² averages over the same tasks: it divides by a task's spread, and on a few records of a task that runs
# in the same time whatever the schedule (a 3-record reshape) one task's R² of -40,000 made a 17-task
# average -7,120 (benchmarks/RESULTS.md, #11). MAPE and rmse_log are per-record errors: every task counts.
MIN_RECORDS_METRICS = RANKING + ("r2",)


def _arr(x: Any) -> np.ndarray:
    return np.asarray(x, dtype=np.float64).reshape(-1)


def _pair(pred: Any, true: Any) -> tuple[np.ndarray, np.ndarray]:
    """Both sides as flat float64 arrays of the same length."""
    p, t = _arr(pred), _arr(true)
    if p.shape != t.shape:
        raise ValueError(f"prediction has {p.size} values but truth has {t.size}")
    return p, t


def _constant(x: np.ndarray) -> bool:
    return x.size < 2 or bool(np.all(x == x[0]))


def mape(pred_s: Any, true_s: Any) -> float:
    """Mean absolute percentage error of predicted times, as a fraction.

    Args:
        pred_s: predicted times in seconds, shape [N].
        true_s: measured times in seconds (> 0), shape [N].
    """
    p, t = _pair(pred_s, true_s)
    if t.size == 0:
        return NAN
    if np.any(t <= 0):
        raise ValueError(f"mape: measured times must be > 0 (got {t.min()})")
    return float(mean_absolute_percentage_error(t, p))


def rmse_log(pred_log: Any, true_log: Any) -> float:
    """Root mean squared error of log times (natural log), shape [N] each."""
    p, t = _pair(pred_log, true_log)
    return float(np.sqrt(np.mean((p - t) ** 2))) if t.size else NAN


# R² compares the error with the spread of the truth: for a task whose schedules all run within the
# labels' own measurement noise (a few %; benchmarks/bench_noise.py), the spread is noise and R² an
# arbitrarily large negative number (-600 for an element-wise task with two records 1.3% apart).
R2_MIN_STD = 0.03  # std of the measured log times below which a task's R² is undefined (nan)


def r2(pred_log: Any, true_log: Any) -> float:
    """Coefficient of determination of log times; ``nan`` when the truth is constant or its spread
    (std of log times) is below ``R2_MIN_STD``, the measurement noise."""
    p, t = _pair(pred_log, true_log)
    return NAN if _constant(t) or float(np.std(t)) < R2_MIN_STD else float(r2_score(t, p))


def spearman(pred: Any, true: Any) -> float:
    """Spearman rank correlation (ties get average ranks); ``nan`` if either side is constant."""
    p, t = _pair(pred, true)
    return NAN if _constant(p) or _constant(t) else float(stats.spearmanr(p, t).statistic)


def kendall_tau(pred: Any, true: Any) -> float:
    """Kendall's tau-b (ties corrected); ``nan`` if either side is constant or N < 2."""
    p, t = _pair(pred, true)
    if _constant(p) or _constant(t):
        return NAN
    return float(stats.kendalltau(p, t, variant="b").statistic)


def _tied_pairs(x: np.ndarray) -> int:
    """Pairs i < j with ``x[i] == x[j]``."""
    _, counts = np.unique(x, return_counts=True)
    return int(np.sum(counts * (counts - 1) // 2))


def pairwise_acc(pred: Any, true: Any) -> float:
    """Fraction of pairs ordered as measured.

    Pairs with equal measured time are left out; a pair the model ties counts 0.5.
    ``nan`` when no pair has two different measured times.

    With C concordant and D discordant pairs, the pairs judged are C + D + (tied by the model
    only), so the value is ``1/2 + (C - D) / (2 * judged)``; ``C - D`` is read off Kendall's
    tau-b (O(N log N)) instead of counting the N² pairs.
    """
    p, t = _pair(pred, true)
    n0 = p.size * (p.size - 1) // 2
    judged = n0 - _tied_pairs(t)  # pairs with two different measured times
    if judged == 0:
        return NAN
    untied_p = n0 - _tied_pairs(p)
    if untied_p == 0:  # the model ties every pair
        return 0.5
    tau_b = stats.kendalltau(p, t, variant="b").statistic  # (C - D) / sqrt(untied_p * judged)
    return float(0.5 + 0.5 * tau_b * np.sqrt(untied_p / judged))


def peak_k(pred_score_time: Any, true_s: Any, k: int) -> float:
    """Best measured time divided by the best measured time among the model's ``k`` top picks.

    The picks are the ``k`` lowest predictions (1.0 = the model's picks hold the fastest
    schedule). When predictions tie across the cut, the value is its expectation over a
    uniformly random choice among the tied ones, so a constant model scores like a random one.

    Args:
        pred_score_time: predicted log time or score (lower = faster), shape [N].
        true_s: measured times (> 0), shape [N].
        k: picks (>= 1); a task with fewer than ``k`` records uses all of them.
    """
    p, t = _pair(pred_score_time, true_s)
    if k < 1:
        raise ValueError(f"peak_k: k must be >= 1 (got {k})")
    if t.size == 0:
        return NAN
    best = float(t.min())
    k = min(k, t.size)
    cut = np.sort(p)[k - 1]
    sure = t[p < cut]  # certainly picked
    tied = np.sort(t[p == cut])  # r of these are picked, uniformly at random
    r = k - sure.size
    g = tied.size
    sure_best = float(sure.min()) if sure.size else np.inf
    # P(min of the r picked tied ones = tied[i]) = C(g-1-i, r-1) / C(g, r)
    total = comb(g, r)
    expect = 0.0
    for i in range(g - r + 1):
        prob = comb(g - 1 - i, r - 1) / total
        expect += prob * best / min(sure_best, float(tied[i]))
    return float(expect)


def task_metrics(
    pred_log: Any,
    true_log: Any,
    task_ids: Any,
    *,
    absolute: bool = True,
    task_weights: Mapping[Any, float] | None = None,
) -> dict[str, Any]:
    """Every metric per task, then averaged over tasks.

    Args:
        pred_log: predicted log seconds (or, with ``absolute=False``, any score where lower
            means faster), shape [N].
        true_log: measured log seconds, shape [N].
        task_ids: task of each record (any hashable values), shape [N].
        absolute: whether ``pred_log`` is a log time; if not, ``mape``, ``rmse_log`` and ``r2``
            are ``nan`` (a ranking-only model).
        task_weights: weight of each task in the averages (default: 1 each).

    Returns:
        ``{metric: average}`` for the names in ``METRICS``, ``n_tasks``, ``n_records``,
        ``n_tasks_ranked`` (tasks with >= ``RANK_MIN_RECORDS`` records, the ones the ranking
        averages use), ``skipped_tasks`` (tasks left out of ranking averages) and ``per_task``
        (``{task: {metric: value, "n": records}}``).
    """
    p, t = _pair(pred_log, true_log)
    ids = np.asarray(task_ids).reshape(-1)
    if ids.size != t.size:
        raise ValueError(f"task_ids has {ids.size} values but truth has {t.size}")
    per_task: dict[Any, dict[str, float]] = {}
    for task in _unique(ids):
        m = ids == task
        per_task[_key(task)] = _one_task(p[m], t[m], absolute)
    out: dict[str, Any] = {}
    for name in METRICS:
        out[name] = _average(per_task, name, task_weights, ranked_only=name in MIN_RECORDS_METRICS)
    ranked = [k for k, v in per_task.items() if v["n"] >= RANK_MIN_RECORDS]
    out.update(n_tasks=len(per_task), n_records=int(t.size), n_tasks_ranked=len(ranked),
               skipped_tasks=[k for k in per_task if k not in ranked], per_task=per_task)
    return out


def _one_task(p: np.ndarray, t: np.ndarray, absolute: bool) -> dict[str, float]:
    ts = np.exp(t)
    res: dict[str, float] = {"n": int(t.size)}
    if absolute:
        res.update(mape=mape(np.exp(p), ts), rmse_log=rmse_log(p, t), r2=r2(p, t))
    else:
        res.update(mape=NAN, rmse_log=NAN, r2=NAN)
    if t.size >= 2:
        res.update(kendall_tau=kendall_tau(p, t), spearman=spearman(p, t), pairwise_acc=pairwise_acc(p, t),
                   peak1=peak_k(p, ts, 1), peak5=peak_k(p, ts, 5))
    else:
        res.update({name: NAN for name in RANKING})
    return res


def _average(per_task: Mapping[Any, Mapping[str, float]], name: str, weights: Mapping[Any, float] | None,
             *, ranked_only: bool) -> float:
    vals, ws = [], []
    for task, m in per_task.items():
        v = m[name]
        if (ranked_only and m["n"] < RANK_MIN_RECORDS) or not np.isfinite(v):
            continue
        vals.append(v)
        ws.append(1.0 if weights is None else float(weights.get(task, 1.0)))
    if not vals or sum(ws) <= 0:
        return NAN
    return float(np.average(vals, weights=ws))


def _unique(ids: np.ndarray) -> Sequence[Any]:
    seen: dict[Any, None] = {}
    for x in ids.tolist():
        seen.setdefault(x, None)
    return list(seen)


def _key(x: Any) -> Any:
    return x.item() if isinstance(x, np.generic) else x
