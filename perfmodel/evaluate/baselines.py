"""Baseline cost models scored next to ours: TVM's XGBModel and MLPModel, an XGBoost latency regressor, random.

Every baseline is trained on the tasks of one set of databases (``fit``) and then scores the
records of other tasks (``predict``), returning one value per record where LOWER means FASTER.
``absolute`` says whether that value is a predicted log time (then MAPE, RMSE and R² apply) or
only a ranking score:

- ``xgb``, ``mlp``: MetaSchedule's stock models, driven through their own ``update`` /
  ``predict`` with one ``TuneContext`` per task. They predict normalized throughput (higher is
  better) relative to the best schedule of a task, so there is no absolute time to compare:
  the score is the negated prediction and the absolute metrics are ``nan`` (``null`` in JSON).
- ``xgb-latency``: an XGBoost regressor of log seconds on TVM's per-store features
  (``PerStoreFeature``, one row per buffer store) summed per schedule: the absolute-time baseline.
- ``random``: uniform random scores (the floor every model must beat).
"""

from __future__ import annotations

import contextlib
import logging
import random as _random
import zlib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from perfmodel.collect.measure import label_secs
from perfmodel.metrics import task_metrics

if TYPE_CHECKING:
    from perfmodel.evaluate.records import TaskRecords

NAMES = ("xgb", "mlp", "xgb-latency", "random")

log = logging.getLogger(__name__)


class BaselineError(ValueError):
    """A baseline that cannot be trained on the data given (one line saying why)."""


class Baseline:
    """A cost model trained on some tasks and scoring the records of others.

    Attributes:
        name: short name used in tables and JSON.
        absolute: whether ``predict`` returns log seconds (else only a ranking score).
    """

    name = "baseline"
    absolute = False

    def fit(self, tasks: Sequence[TaskRecords]) -> None:
        """Train on every valid record of ``tasks``."""

    def predict(self, task: TaskRecords) -> np.ndarray:
        """One value per (replayable) record of ``task``, shape [N]; lower = faster."""
        raise NotImplementedError


class RandomBaseline(Baseline):
    """Uniform random scores, seeded per task so a run is reproducible."""

    name = "random"

    def __init__(self, *, seed: int = 0) -> None:
        self.seed = seed

    def predict(self, task: TaskRecords) -> np.ndarray:
        rng = np.random.default_rng([self.seed, zlib.crc32(task.key.encode())])
        return rng.uniform(size=len(task.candidates()))


class TVMXGBBaseline(Baseline):
    """MetaSchedule's ``XGBModel`` (per-store features, normalized-throughput target).

    Records are fed task by task through ``update``; its booster is trained once, by the last
    ``update``, on all of them (the model's adaptive schedule would otherwise retrain it after
    every task of the training set, with the same end result but many times the work).

    Args:
        seed: xgboost seed.
        threads: xgboost threads.
    """

    name = "xgb"

    def __init__(self, *, seed: int = 43, threads: int = 1) -> None:
        from perfmodel._tvm import load_ms
        ms = load_ms()

        self.model = ms.cost_model.XGBModel(
            config=ms.cost_model.xgb_model.XGBConfig(seed=seed, nthread=threads),
            num_warmup_samples=0, verbose_eval=10**9)

    def fit(self, tasks: Sequence[TaskRecords]) -> None:
        tasks = [t for t in tasks if t.candidates()]
        if not tasks:
            raise BaselineError("xgb: no training records")
        for i, t in enumerate(tasks):
            # defer training to the last update: a huge last_train_size makes update skip it
            self.model.last_train_size = 0 if i == len(tasks) - 1 else 10**15
            self.model.update(t.context(), t.candidates(), t.runner_results())

    def predict(self, task: TaskRecords) -> np.ndarray:
        if not task.candidates():
            return np.zeros(0)
        return -np.asarray(self.model.predict(task.context(), task.candidates()), dtype=np.float64)


class TVMMLPBaseline(Baseline):
    """MetaSchedule's ``MLPModel`` (segment-sum MLP on per-store + workload features, rank loss).

    Records are fed task by task through ``update`` with the trainer frozen (it only stores
    them), then the model's own full training runs once on all of them. That training holds out
    a fifth of the workloads for model selection, so it needs at least 5 training tasks.

    Args:
        seed: seed of Python's and torch's generators during training.
        epochs: epochs of the full training (TVM's default is 50).
    """

    name = "mlp"
    min_tasks = 5

    def __init__(self, *, seed: int = 0, epochs: int = 50) -> None:
        from perfmodel._tvm import load_ms

        load_ms()
        from tvm.s_tir.meta_schedule.cost_model import mlp_model as mlp  # not imported by the package

        self.seed = seed
        cfg = mlp.TrainerConfig(num_epoch_full=epochs, frozen=True, train_verbose=10**9)
        self.model = mlp.MLPModel(trainer=mlp.SegmentSumMLPTrainer(train_config=cfg))

    def fit(self, tasks: Sequence[TaskRecords]) -> None:
        import torch

        tasks = [t for t in tasks if t.candidates()]
        if len(tasks) < self.min_tasks:
            raise BaselineError(f"mlp: TVM's MLPModel needs >= {self.min_tasks} training tasks, got {len(tasks)}")
        for t in tasks:
            self.model.update(t.context(), t.candidates(), t.runner_results())
        trainer = self.model.trainer
        trainer.frozen = False
        _random.seed(self.seed)
        torch.manual_seed(self.seed)
        with _quiet_steplr():
            trainer.train_full()
        trainer.frozen = True  # predict only from here on

    def predict(self, task: TaskRecords) -> np.ndarray:
        if not task.candidates():
            return np.zeros(0)
        return -np.asarray(self.model.predict(task.context(), task.candidates()), dtype=np.float64)


class XGBLatencyBaseline(Baseline):
    """XGBoost regression of log seconds on per-store features summed over each schedule.

    Args:
        seed: xgboost seed.
        threads: xgboost threads.
        n_estimators: boosting rounds.
        max_depth: tree depth.
        learning_rate: shrinkage.
    """

    name = "xgb-latency"
    absolute = True

    def __init__(self, *, seed: int = 0, threads: int = 1, n_estimators: int = 400, max_depth: int = 8,
                 learning_rate: float = 0.05) -> None:
        import xgboost as xgb

        self.reg = xgb.XGBRegressor(n_estimators=n_estimators, max_depth=max_depth, learning_rate=learning_rate,
                                    subsample=0.8, colsample_bytree=0.8, random_state=seed, n_jobs=threads)

    def fit(self, tasks: Sequence[TaskRecords]) -> None:
        xs = [store_features(t) for t in tasks]
        ys = [t.log_times for t in tasks]
        if not xs or sum(len(y) for y in ys) == 0:
            raise BaselineError("xgb-latency: no training records")
        self.reg.fit(np.concatenate(xs), np.concatenate(ys))

    def predict(self, task: TaskRecords) -> np.ndarray:
        x = store_features(task)
        return self.reg.predict(x).astype(np.float64) if len(x) else np.zeros(0)


def store_features(task: TaskRecords) -> np.ndarray:
    """TVM's per-store features of every record, summed per schedule: shape [N, 164] float32."""
    from perfmodel._tvm import load_ms
    ms = load_ms()

    cands = task.candidates()
    if not cands:
        return np.zeros((0, 164), dtype=np.float32)
    feats = ms.feature_extractor.PerStoreFeature().extract_from(task.context(), cands)
    return np.stack([f.numpy().astype(np.float32).sum(axis=0) for f in feats])


def make(name: str, *, seed: int = 0, quick: bool = False) -> Baseline:
    """The baseline called ``name`` (one of ``NAMES``); ``quick`` shortens training (tests)."""
    if name == "xgb":
        return TVMXGBBaseline()
    if name == "mlp":
        return TVMMLPBaseline(seed=seed, epochs=10 if quick else 50)
    if name == "xgb-latency":
        return XGBLatencyBaseline(seed=seed, n_estimators=100 if quick else 400)
    if name == "random":
        return RandomBaseline(seed=seed)
    raise ValueError(f"unknown baseline {name!r} (choose from {', '.join(NAMES)})")


@contextlib.contextmanager
def _quiet_steplr() -> Iterator[None]:
    """Let TVM's trainer build its ``StepLR`` on a torch that no longer takes ``verbose=``."""
    import torch

    original = torch.optim.lr_scheduler.StepLR

    class StepLR(original):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, verbose: Any = None, **kwargs: Any) -> None:  # noqa: ARG002
            super().__init__(*args, **kwargs)

    torch.optim.lr_scheduler.StepLR = StepLR
    try:
        yield
    finally:
        torch.optim.lr_scheduler.StepLR = original


# ---- the comparison of training: a baseline on the split of a ScheduleDataset -------------------
def split_metrics(dataset: Any, splits: dict[str, np.ndarray], *, name: str = "xgb", seed: int = 0) -> dict[str, Any]:
    """Fits baseline ``name`` (default TVM's ``XGBModel``) on ``splits["train"]``, scores ``splits["test"]``.

    Args:
        dataset: a ``ScheduleDataset`` (its ``sources`` lead back to the raw records).
        splits: record indices of ``dataset`` under ``train`` and ``test``, as the data module made them.
        name: one of ``NAMES``.
        seed: seed of the baseline and of the global generators TVM's models draw from.

    Returns:
        ``task_metrics`` of its test scores (absolute metrics ``nan`` for ranking-only baselines).
    """
    _random.seed(seed)  # TVM's models draw from the global generators: same split, same scores
    np.random.seed(seed)
    model = make(name, seed=seed)
    train, _ = dataset_tasks(dataset, splits["train"])
    model.fit(train)
    preds, trues, tids = [], [], []
    for t, pos in zip(*dataset_tasks(dataset, splits["test"])):
        p = model.predict(t)
        if len(p) != len(pos):  # a record that no longer replays: align on what is left
            log.warning("baseline %s: task %s scored %d of %d records; skipped", name, t.name, len(p), len(pos))
            continue
        preds.append(p)
        trues.append(np.log(t.times))
        tids.append(np.full(len(p), t.name, dtype=object))
    if not preds:
        raise ValueError(f"baseline {name}: no test record could be scored")
    return task_metrics(np.concatenate(preds), np.concatenate(trues), np.concatenate(tids),
                        absolute=bool(getattr(model, "absolute", False)))




def dataset_tasks(dataset: Any, idx: Any) -> tuple[list[TaskRecords], list[np.ndarray]]:
    """The records of ``dataset[idx]`` as ``TaskRecords`` (one per task), via ``dataset.sources``.

    Returns:
        The tasks, and for each the positions in ``idx`` of its records (in the task's order).
    """
    from perfmodel.collect.database import Database
    from perfmodel.evaluate.records import TaskRecords

    idx = np.asarray(idx, dtype=np.int64).reshape(-1)
    dbs: dict[str, Database] = {}
    by_line: dict[str, dict[int, Any]] = {}
    groups: dict[tuple[int, str, int], list[int]] = {}
    recs: dict[tuple[int, str, int], list[Any]] = {}
    for pos, i in enumerate(idx.tolist()):
        path, line = dataset.sources[i]
        if path not in dbs:
            dbs[path] = Database.open(path)
            by_line[path] = {r.line: r for r in dbs[path].records}
        raw = by_line[path].get(int(line))
        if raw is None:
            raise ValueError(f"{path}: no tuning record at line {line} (dataset cache out of date?)")
        key = (int(dataset.task_ids[i]), path, raw.workload)
        groups.setdefault(key, []).append(pos)
        recs.setdefault(key, []).append(raw)
    tasks, positions = [], []
    for (task, path, wl), pos in groups.items():
        db = dbs[path]
        rs = recs[(task, path, wl)]
        tasks.append(TaskRecords(
            name=str(dataset.task_names[task]), key=str(db.workloads[wl][0]), db=db, workload=wl, records=rs,
            times=np.array([label_secs(r.run_secs) for r in rs], dtype=np.float64)))
        positions.append(np.asarray(pos, dtype=np.int64))
    return tasks, positions

