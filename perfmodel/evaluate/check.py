"""Close the loop on the hardware in hand: sample fresh schedules of a task, predict them, measure them, score."""

from __future__ import annotations

import itertools
import time
from typing import Any

import numpy as np

from perfmodel.metrics import task_metrics


def check(task_name: str, *, predictor: Any, n: int = 64, seed: int = 1, protocol: Any = None,
          target: Any = None) -> dict[str, Any]:
    """Predict and measure ``n`` random schedules of a registry task; the metrics of the predictions.

    Args:
        task_name: registry task name (``perfmodel workloads`` lists them).
        predictor: a ``perfmodel.predictor.Predictor``.
        n: schedules to sample (distinct seeds ``seed, seed+1, ...``; rejected samples are skipped).
        seed: first sampling seed (>= 1).
        protocol: ``perfmodel.collect.measure.Protocol`` of the timings (default: the project's).
        target: a ``tvm.target.Target`` (default: the predictor's training target, else this CPU's native one).

    Returns:
        ``task_metrics`` of the predictions (``mape``... ``peak5``, ``per_task``) plus ``task``,
        ``n_sampled``, ``n_measured``, ``failed`` (error lines), ``pred_s`` / ``true_s`` (per
        schedule, ``None`` where the measurement failed) and timings.
    """
    import tvm

    from perfmodel.collect.measure import LocalMeasurer, label_secs
    from perfmodel.collect.sampler import TaskSpace
    from perfmodel.workloads import get_task, native_target, target_of_summary

    if n < 1:
        raise ValueError(f"check: --n must be >= 1 (got {n})")
    if seed < 1:
        raise ValueError(f"check: --seed must be >= 1 (got {seed})")
    task = get_task(task_name)
    trained = getattr(predictor, "target", None)
    target = target or tvm.target.Target(target_of_summary(trained) if trained else native_target())
    t0 = time.perf_counter()
    space = TaskSpace(mod=task.mod, target=target)
    schs = [s for _, s in itertools.islice(space.random_stream(seed), n)]
    if not schs:
        raise ValueError(f"check: {task_name}: the design space gave no valid schedule")
    t1 = time.perf_counter()
    pred = np.asarray(predictor.predict_schedules(schs, target=target), dtype=np.float64).reshape(-1)
    t2 = time.perf_counter()
    with LocalMeasurer(target=target, protocol=protocol) as m:
        results = m.measure([(s.mod, space.args_info) for s in schs])
    t3 = time.perf_counter()
    ok = np.array([r.ok for r in results])
    true = np.array([label_secs(r.run_secs) if r.ok else np.nan for r in results])
    if not ok.any():
        raise ValueError(f"check: {task_name}: all {len(schs)} measurements failed (first: {results[0].error})")
    out = task_metrics(pred[ok], np.log(true[ok]), [task_name] * int(ok.sum()))
    out.update(task=task_name, n_sampled=len(schs), n_measured=int(ok.sum()),
               failed=[r.error for r in results if not r.ok],
               pred_s=[float(np.exp(p)) for p in pred], true_s=[float(t) if np.isfinite(t) else None for t in true],
               sample_s=round(t1 - t0, 2), predict_s=round(t2 - t1, 2), measure_s=round(t3 - t2, 2))
    return out
