"""Score a checkpoint and the baselines on the measured records of databases: per task, overall, by batch.

``evaluate`` is the whole of ``perfmodel evaluate`` without the command line: it picks the
evaluation tasks (the held-out tasks of the training split when the evaluated database is also
the training one), trains the baselines on the other tasks, predicts every record with every
model and returns an :class:`EvalResult` (metrics, predictions, notes) that turns into the JSON
of the issue and into the Markdown report.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from perfmodel.config import REPO
from perfmodel.evaluate.records import TaskRecords, load_tasks
from perfmodel.metrics import METRICS, RANK_MIN_RECORDS, task_metrics
from perfmodel.workloads import DEFAULT_DB

DEFAULT_TRAIN_DB = DEFAULT_DB  # the default dataset (perfmodel.workloads: one home)
# the cache training uses: conf/data/default.yaml's data.root (tests/training/test_train_config.py holds them equal)
DEFAULT_CACHE = REPO / ".cache" / "dataset"


@dataclass
class ModelRun:
    """Predictions of one model on the evaluation tasks.

    Attributes:
        name: model name (``gnn``, ``xgb``...).
        absolute: whether predictions are log seconds (else ranking scores, lower = faster).
        preds: predictions per task name, aligned with the task's records.
        error: why the model could not be scored (then ``preds`` is empty).
        seconds: wall time spent training and predicting.
    """

    name: str
    absolute: bool
    preds: dict[str, np.ndarray] = field(default_factory=dict)
    error: str | None = None
    seconds: float = 0.0


@dataclass
class EvalResult:
    """Everything an evaluation found: tasks, per-model predictions, metrics and notes."""

    tasks: list[TaskRecords]
    runs: list[ModelRun]
    metrics: dict[str, dict[str, Any]]
    notes: list[str]
    batch: dict[str, Any]
    config: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        """``{"models": {model: {metric: value}}, "tasks": {...}, ...}``; ``nan`` becomes ``null``."""
        models = {}
        for run in self.runs:
            m = self.metrics.get(run.name, {})
            models[run.name] = {k: m.get(k, math.nan) for k in METRICS} | {
                "n_tasks": m.get("n_tasks", 0), "n_records": m.get("n_records", 0),
                "n_tasks_ranked": m.get("n_tasks_ranked", 0), "absolute": run.absolute,
                "error": run.error, "seconds": round(run.seconds, 2)}
        tasks = {}
        for t in self.tasks:
            tasks[t.name] = {
                "n": len(t.times), "n_failed": t.n_failed, "n_unreplayable": t.n_unreplayable,
                "family": t.family, "batch": t.batch, "db": str(t.db.path),
                "best_s": float(t.times.min()) if len(t.times) else None,
                "models": {r.name: {k: self.metrics[r.name]["per_task"][t.name][k] for k in METRICS}
                           for r in self.runs if r.name in self.metrics and t.name in self.metrics[r.name]["per_task"]},
            }
        skipped = sorted(t.name for t in self.tasks if len(t.times) < RANK_MIN_RECORDS)
        return _nan_to_none({"models": models, "tasks": tasks, "skipped_tasks": skipped, "batch": self.batch,
                             "notes": self.notes, "config": self.config})


def heldout_tasks(train_db: Sequence[str | os.PathLike], *, seed: int = 0, cache_dir: str | os.PathLike = DEFAULT_CACHE,
                  val: float = 0.1, test: float = 0.2) -> set[str]:
    """Names of the test tasks of the training split (``make_split(kind="task", seed=seed)``)."""
    from perfmodel.data import ScheduleDataset, make_split

    ds = ScheduleDataset(str(cache_dir), [str(p) for p in train_db], progress=False)
    split = make_split(ds, kind="task", seed=seed, val=val, test=test)
    return {ds.task_names[int(ds[int(i)].task)] for i in split["test"]}


def evaluate(
    db: Sequence[str | os.PathLike],
    *,
    predictor: Any = None,
    train_db: Sequence[str | os.PathLike] = (),
    baselines: Sequence[str] = (),
    seed: int = 0,
    quick: bool = False,
    heldout: set[str] | None | Callable[[], set[str]] = None,
    train_per_task: int | None = None,
    pool: bool = False,
    unseen: bool = False,
    log: Callable[[str], None] = print,
) -> EvalResult:
    """Score ``predictor`` and the named baselines on every task of the databases ``db``.

    Args:
        db: databases (or directories holding databases) to evaluate on.
        predictor: a ``perfmodel.predictor.Predictor`` (``None``: baselines only).
        train_db: databases the baselines are trained on; their tasks that also appear in the
            evaluation set are left out of the training set.
        baselines: names from ``perfmodel.evaluate.baselines.NAMES``.
        seed: seed of the baselines.
        quick: shorter baseline training (tests, ``--quick`` benchmarks).
        heldout: when a database is both evaluated and trained on, only these task names are
            evaluated (the held-out tasks of the training split); a callable is called only if
            needed. ``None`` evaluates every task.
        train_per_task: train the baselines on at most this many records per task (``None``: all).
        pool: a task held by several evaluated databases (a tuning benchmark's runs) is scored as one
            task over all their records (``load_tasks(pool=True)``).
        unseen: leave out the evaluated tasks that the training databases hold (same workload), so
            that every scored task is one the models never trained on.
        log: progress messages.
    """
    from perfmodel.evaluate import baselines as B

    for name in baselines:
        if name not in B.NAMES:
            raise ValueError(f"unknown baseline {name!r} (choose from {', '.join(B.NAMES)})")
    notes: list[str] = []
    eval_tasks = load_tasks(db, pool=pool)
    train_tasks = load_tasks(train_db) if train_db and (baselines or unseen) else []
    if unseen:
        seen = {t.key for t in train_tasks}
        before = len(eval_tasks)
        eval_tasks = [t for t in eval_tasks if t.key not in seen]
        if not eval_tasks:
            raise ValueError(f"{', '.join(map(str, db))}: every task is one the training databases "
                             f"({', '.join(map(str, train_db))}) hold: nothing unseen to evaluate")
        notes.append(f"left out {before - len(eval_tasks)} evaluated task(s) of {before} that the training "
                     "databases hold")
    shared = {p.resolve() for p in _db_dirs(db)} & {p.resolve() for p in _db_dirs(train_db)} if train_db else set()
    if shared and heldout is not None:
        names = heldout() if callable(heldout) else heldout
        before = len(eval_tasks)
        # a pooled task is a training task when any of its databases is a training one
        eval_tasks = [t for t in eval_tasks if t.name in names
                      or not {d.path.resolve() for d in t.databases()} & shared]
        notes.append(f"evaluated database is also the training database: scoring its {len(eval_tasks)} "
                     f"held-out tasks of {before}")
    # replay every record once (drops the unreplayable ones) before any model sees the task
    t0 = time.perf_counter()
    for t in eval_tasks:
        t.candidates()
    eval_tasks = [t for t in eval_tasks if len(t.times)]
    if not eval_tasks:
        raise ValueError(f"{', '.join(map(str, db))}: no task with a valid, replayable record to evaluate")
    log(f"evaluating {len(eval_tasks)} tasks, {sum(len(t.times) for t in eval_tasks)} records "
        f"(replayed in {time.perf_counter() - t0:.1f}s)")
    runs: list[ModelRun] = []
    if predictor is not None:
        runs.append(_run_gnn(predictor, eval_tasks, notes, log))
    if baselines:
        eval_keys = {t.key for t in eval_tasks}
        train_tasks = [t for t in train_tasks if t.key not in eval_keys]
        if train_per_task:
            for t in train_tasks:
                t.subsample(train_per_task)
        t0 = time.perf_counter()
        for t in train_tasks:
            t.candidates()
        log(f"baselines train on {len(train_tasks)} tasks, {sum(len(t.times) for t in train_tasks)} records "
            f"(replayed in {time.perf_counter() - t0:.1f}s)")
    for name in baselines:
        runs.append(_run_baseline(B.make(name, seed=seed, quick=quick), train_tasks, eval_tasks, log))
    for r in runs:
        if r.error:
            notes.append(f"{r.name}: not scored: {r.error}")
    for t in eval_tasks:
        if len(t.times) < RANK_MIN_RECORDS:
            notes.append(f"{t.name}: only {len(t.times)} valid record(s) (< {RANK_MIN_RECORDS}): "
                         "left out of the ranking averages")
    metrics = {r.name: _metrics(r, eval_tasks) for r in runs if not r.error}
    batch = batch_view(eval_tasks, runs)
    if "note" in batch:
        notes.append(batch["note"])
    config = {"db": [str(p) for p in db], "train_db": [str(p) for p in train_db], "baselines": list(baselines),
              "seed": seed, "quick": quick, "train_per_task": train_per_task, "pool": pool, "unseen": unseen}
    return EvalResult(tasks=eval_tasks, runs=runs, metrics=metrics, notes=notes, batch=batch, config=config)


def _db_dirs(paths: Sequence[str | os.PathLike]) -> list[Path]:
    from perfmodel.collect.database import iter_databases

    return [d for p in paths for d in iter_databases(p)]


def _run_gnn(predictor: Any, tasks: list[TaskRecords], notes: list[str], log: Callable[[str], None]) -> ModelRun:
    run = ModelRun(name="gnn", absolute=True)
    mismatch: dict[str, list[str]] = {}  # the checkpoint's target against the records' (one note per kind)
    for t in tasks:
        line = predictor.target_mismatch(t.records[0].target) if t.records and t.records[0].target else None
        if line:
            mismatch.setdefault(line, []).append(t.name)
    for line, names in mismatch.items():
        notes.append(f"gnn: {line} ({len(names)} task(s), e.g. {names[0]})")
    t0 = time.perf_counter()
    for t in tasks:
        schs = t.schedules()
        target = t.records[0].target if t.records else None  # what a model with the target input scores for
        try:
            pred = np.asarray(predictor.predict_schedules(schs, target=target), dtype=np.float64).reshape(-1)
        except Exception:  # noqa: BLE001  find the schedules the featurizer rejects, one by one
            pred = np.full(len(schs), np.nan)
            errors = []
            for i, s in enumerate(schs):
                try:
                    pred[i] = float(np.asarray(predictor.predict_schedules([s], target=target)).reshape(-1)[0])
                except Exception as e:  # noqa: BLE001
                    errors.append(f"line {t.records[i].line}: {type(e).__name__}: {str(e).strip()[:200]}")
            if errors:
                notes.append(f"{t.name}: gnn could not score {len(errors)} record(s), left out of its metrics "
                             f"(first: {errors[0]})")
        run.preds[t.name] = pred
    run.seconds = time.perf_counter() - t0
    log(f"gnn: predicted in {run.seconds:.1f}s")
    return run


def _run_baseline(model: Any, train: list[TaskRecords], tasks: list[TaskRecords],
                  log: Callable[[str], None]) -> ModelRun:
    from perfmodel.evaluate.baselines import BaselineError

    run = ModelRun(name=model.name, absolute=model.absolute)
    t0 = time.perf_counter()
    try:
        model.fit(train)
        for t in tasks:
            run.preds[t.name] = np.asarray(model.predict(t), dtype=np.float64).reshape(-1)
    except BaselineError as e:
        run.error = str(e)
        run.preds = {}
    run.seconds = time.perf_counter() - t0
    log(f"{model.name}: {'failed: ' + run.error if run.error else 'trained and predicted'} in {run.seconds:.1f}s")
    return run


def _metrics(run: ModelRun, tasks: list[TaskRecords]) -> dict[str, Any]:
    """``task_metrics`` of one model; records it could not score (nan) are left out of its metrics."""
    pred, true, ids = [], [], []
    for t in tasks:
        p = run.preds[t.name]
        ok = np.isfinite(p)
        pred.append(p[ok])
        true.append(t.log_times[ok])
        ids.extend([t.name] * int(ok.sum()))
    return task_metrics(np.concatenate(pred), np.concatenate(true), np.array(ids, dtype=object),
                        absolute=run.absolute)


def batch_view(tasks: list[TaskRecords], runs: list[ModelRun]) -> dict[str, Any]:
    """Error by batch size, and the friction curve ``r(b) = T(b) / (b T(1))`` of the best schedule.

    Network tasks of one operator at several batch sizes (``resnet18-b1/op``, ``resnet18-b8/op``)
    are compared. Measured ``T(b)`` is the best measured time at batch ``b``; a model's is its
    lowest predicted time (absolute models only).

    Returns:
        ``{"by_batch": {model: {b: {metric: value}}}, "friction": {op: {b: {"measured": r,
        model: r}}}}``, or ``{"note": ...}`` when fewer than two batch sizes are present.
    """
    with_batch = [t for t in tasks if t.batch is not None and t.op is not None]
    sizes = sorted({t.batch for t in with_batch})
    if len(sizes) < 2:
        return {"note": f"batch-size view skipped: {len(sizes)} batch size(s) among the evaluated network tasks"}
    by_batch: dict[str, Any] = {}
    for r in runs:
        if r.error:
            continue
        by_batch[r.name] = {}
        for b in sizes:
            sub = [t for t in with_batch if t.batch == b]
            m = _metrics(ModelRun(name=r.name, absolute=r.absolute, preds={t.name: r.preds[t.name] for t in sub}), sub)
            by_batch[r.name][str(b)] = {k: m[k] for k in METRICS} | {"n_tasks": m["n_tasks"]}
    friction: dict[str, Any] = {}
    ops: dict[str, dict[int, TaskRecords]] = {}
    for t in with_batch:
        ops.setdefault(t.op, {})[t.batch] = t
    for op, per_b in sorted(ops.items()):
        if 1 not in per_b or len(per_b) < 2:
            continue
        base = per_b[1]
        curve: dict[str, Any] = {}
        for b, t in sorted(per_b.items()):
            entry = {"measured": float(t.times.min() / (b * base.times.min()))}
            for r in runs:
                if r.error or not r.absolute:
                    continue
                pb, p1 = r.preds[t.name], r.preds[base.name]
                if np.isfinite(pb).any() and np.isfinite(p1).any():
                    entry[r.name] = float(np.exp(np.nanmin(pb) - np.nanmin(p1)) / b)
            curve[str(b)] = entry
        friction[op] = curve
    out: dict[str, Any] = {"sizes": sizes, "by_batch": by_batch, "friction": friction}
    if not friction:
        out["note"] = "friction curve skipped: no operator measured at batch 1 and another batch size"
    return out


def _nan_to_none(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_nan_to_none(v) for v in obj]
    if isinstance(obj, np.generic):
        return _nan_to_none(obj.item())
    return obj
