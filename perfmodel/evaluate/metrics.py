"""Accuracy and ranking metrics of a cost model, per task and averaged over tasks (numpy only, no TVM).

Conventions, shared by training, ``perfmodel evaluate`` and the benchmarks:

- A *prediction* is a predicted log time or any score where LOWER means FASTER (turn a
  "higher is better" throughput score into one by negating it).
- ``mape`` is a fraction (0.2 = 20%), computed on times in seconds.
- Ranking metrics are computed inside one task (times of different tasks are not comparable)
  and averaged over tasks with at least two records, each task counting once (TenSet's
  convention), or with the weights given.
- A metric that is undefined for its input (no pair of distinct times, constant predictions,
  a single record) is ``nan``, never a made-up number; averages skip ``nan``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from math import comb
from typing import Any

import numpy as np

ABSOLUTE = ("mape", "rmse_log", "r2")
RANKING = ("kendall_tau", "spearman", "pairwise_acc", "peak1", "peak5")
METRICS = ABSOLUTE + RANKING

_PAIR_CHUNK = 2048  # rows of the pair matrix held at once by pairwise_acc


def _arr(x: Any) -> np.ndarray:
    return np.asarray(x, dtype=np.float64).reshape(-1)


def _check(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape:
        raise ValueError(f"prediction has {a.size} values but truth has {b.size}")


def mape(pred_s: Any, true_s: Any) -> float:
    """Mean absolute percentage error of predicted times, as a fraction.

    Args:
        pred_s: predicted times in seconds, shape [N].
        true_s: measured times in seconds (> 0), shape [N].
    """
    p, t = _arr(pred_s), _arr(true_s)
    _check(p, t)
    if t.size == 0:
        return float("nan")
    if np.any(t <= 0):
        raise ValueError(f"mape: measured times must be > 0 (got {t.min()})")
    return float(np.mean(np.abs(p - t) / t))


def rmse_log(pred_log: Any, true_log: Any) -> float:
    """Root mean squared error of log times (natural log), shape [N] each."""
    p, t = _arr(pred_log), _arr(true_log)
    _check(p, t)
    if t.size == 0:
        return float("nan")
    return float(np.sqrt(np.mean((p - t) ** 2)))


def r2(pred_log: Any, true_log: Any) -> float:
    """Coefficient of determination of log times; ``nan`` when the truth is constant."""
    p, t = _arr(pred_log), _arr(true_log)
    _check(p, t)
    ss_tot = float(np.sum((t - t.mean()) ** 2)) if t.size else 0.0
    if ss_tot == 0.0:
        return float("nan")
    return float(1.0 - np.sum((p - t) ** 2) / ss_tot)


def _rank(x: np.ndarray) -> np.ndarray:
    """Ranks 1..N with ties given their average rank."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    # first index of each run of equal values, and the run lengths
    starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])
    ends = np.r_[starts[1:], xs.size]
    avg = (starts + ends - 1) / 2.0 + 1.0
    ranks = np.empty(x.size)
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def spearman(pred: Any, true: Any) -> float:
    """Spearman rank correlation (ties get average ranks); ``nan`` if either side is constant."""
    p, t = _arr(pred), _arr(true)
    _check(p, t)
    if p.size < 2:
        return float("nan")
    rp, rt = _rank(p), _rank(t)
    rp -= rp.mean()
    rt -= rt.mean()
    den = np.sqrt(np.sum(rp**2) * np.sum(rt**2))
    return float(np.sum(rp * rt) / den) if den > 0 else float("nan")


def _pair_counts(p: np.ndarray, t: np.ndarray) -> tuple[float, float, float, float]:
    """Over pairs i < j: (concordant, discordant, tied in pred only, tied in true only)."""
    conc = disc = tie_p = tie_t = 0.0
    n = p.size
    for lo in range(0, n, _PAIR_CHUNK):
        hi = min(n, lo + _PAIR_CHUNK)
        dp = np.sign(p[lo:hi, None] - p[None, :])
        dt = np.sign(t[lo:hi, None] - t[None, :])
        upper = np.arange(lo, hi)[:, None] < np.arange(n)[None, :]  # each pair once
        prod = (dp * dt)[upper]
        conc += float(np.sum(prod > 0))
        disc += float(np.sum(prod < 0))
        zp, zt = (dp == 0)[upper], (dt == 0)[upper]
        tie_p += float(np.sum(zp & ~zt))
        tie_t += float(np.sum(zt & ~zp))
    return conc, disc, tie_p, tie_t


def kendall_tau(pred: Any, true: Any) -> float:
    """Kendall's tau-b (ties corrected); ``nan`` if either side is constant or N < 2."""
    p, t = _arr(pred), _arr(true)
    _check(p, t)
    if p.size < 2:
        return float("nan")
    conc, disc, tie_p, tie_t = _pair_counts(p, t)
    den = np.sqrt((conc + disc + tie_p) * (conc + disc + tie_t))
    return float((conc - disc) / den) if den > 0 else float("nan")


def pairwise_acc(pred: Any, true: Any) -> float:
    """Fraction of pairs ordered as measured.

    Pairs with equal measured time are left out; a pair the model ties counts 0.5.
    ``nan`` when no pair has two different measured times.
    """
    p, t = _arr(pred), _arr(true)
    _check(p, t)
    if p.size < 2:
        return float("nan")
    conc, disc, tie_p, _ = _pair_counts(p, t)
    total = conc + disc + tie_p
    return float((conc + 0.5 * tie_p) / total) if total > 0 else float("nan")


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
    p, t = _arr(pred_score_time), _arr(true_s)
    _check(p, t)
    if k < 1:
        raise ValueError(f"peak_k: k must be >= 1 (got {k})")
    if t.size == 0:
        return float("nan")
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
        ``n_tasks_ranked`` (tasks with >= 2 records, the ones the ranking averages use),
        ``skipped_tasks`` (tasks left out of ranking metrics) and ``per_task``
        (``{task: {metric: value, "n": records}}``).
    """
    p, t = _arr(pred_log), _arr(true_log)
    ids = np.asarray(task_ids).reshape(-1)
    _check(p, t)
    if ids.size != t.size:
        raise ValueError(f"task_ids has {ids.size} values but truth has {t.size}")
    per_task: dict[Any, dict[str, float]] = {}
    for task in _unique(ids):
        m = ids == task
        per_task[_key(task)] = _one_task(p[m], t[m], absolute)
    out: dict[str, Any] = {}
    for name in METRICS:
        out[name] = _average(per_task, name, task_weights, ranked_only=name in RANKING)
    ranked = [k for k, v in per_task.items() if v["n"] >= 2]
    out.update(n_tasks=len(per_task), n_records=int(t.size), n_tasks_ranked=len(ranked),
               skipped_tasks=[k for k, v in per_task.items() if v["n"] < 2], per_task=per_task)
    return out


def _one_task(p: np.ndarray, t: np.ndarray, absolute: bool) -> dict[str, float]:
    nan = float("nan")
    ts = np.exp(t)
    res: dict[str, float] = {"n": int(t.size)}
    if absolute:
        res.update(mape=mape(np.exp(p), ts), rmse_log=rmse_log(p, t), r2=r2(p, t))
    else:
        res.update(mape=nan, rmse_log=nan, r2=nan)
    if t.size >= 2:
        res.update(kendall_tau=kendall_tau(p, t), spearman=spearman(p, t), pairwise_acc=pairwise_acc(p, t),
                   peak1=peak_k(p, ts, 1), peak5=peak_k(p, ts, 5))
    else:
        res.update({name: nan for name in RANKING})
    return res


def _average(per_task: Mapping[Any, Mapping[str, float]], name: str, weights: Mapping[Any, float] | None,
             *, ranked_only: bool) -> float:
    vals, ws = [], []
    for task, m in per_task.items():
        v = m[name]
        if (ranked_only and m["n"] < 2) or not np.isfinite(v):
            continue
        vals.append(v)
        ws.append(1.0 if weights is None else float(weights.get(task, 1.0)))
    if not vals or sum(ws) <= 0:
        return float("nan")
    return float(np.average(vals, weights=ws))


def _unique(ids: np.ndarray) -> Sequence[Any]:
    seen: dict[Any, None] = {}
    for x in ids.tolist():
        seen.setdefault(x, None)
    return list(seen)


def _key(x: Any) -> Any:
    return x.item() if isinstance(x, np.generic) else x
