"""TVM's XGBoost cost model trained and tested on the same split as the GNN (glue to ``perfmodel.baselines``)."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from perfmodel.evaluate.metrics import task_metrics

log = logging.getLogger(__name__)


def split_task_records(dataset: Any, idx: np.ndarray) -> list[tuple[Any, np.ndarray]]:
    """The records of dataset positions ``idx`` as ``TaskRecords``, one per task, with their positions.

    Uses ``dataset.sources[record] = (database dir, line)`` of ``ScheduleDataset`` to find each
    item's raw record, so the baseline sees exactly the records the GNN sees.
    """
    from perfmodel.collect.database import Database
    from perfmodel.evaluate.records import TaskRecords

    dbs: dict[str, Any] = {}
    by_line: dict[str, dict[int, Any]] = {}
    groups: dict[int, list[int]] = {}
    tasks = np.asarray(dataset.task_ids)[idx]
    for pos, t in zip(idx.tolist(), tasks.tolist()):
        groups.setdefault(int(t), []).append(pos)
    out = []
    for t, positions in groups.items():
        recs, keep = [], []
        for pos in positions:
            rec = int(dataset[pos].record)
            path, line = dataset.sources[rec]
            if path not in dbs:
                dbs[path] = Database.open(path)
                by_line[path] = {r.line: r for r in dbs[path].records}
            raw = by_line[path].get(int(line))
            if raw is None:
                continue
            recs.append(raw)
            keep.append(pos)
        if not recs:
            continue
        db = dbs[dataset.sources[int(dataset[keep[0]].record)][0]]
        tr = TaskRecords(name=dataset.task_names[t], key=str(db.workloads[recs[0].workload][0]), db=db,
                         workload=recs[0].workload, records=recs,
                         times=np.array([float(np.median(r.run_secs)) for r in recs]))
        out.append((tr, np.asarray(keep)))
    return out


def xgb_test_metrics(dataset: Any, splits: dict[str, np.ndarray], *, name: str = "xgb", seed: int = 0) -> dict[str, Any]:
    """Fits baseline ``name`` (default TVM's ``XGBModel``) on the train split, scores the test split.

    Returns:
        ``task_metrics`` of its test scores (absolute metrics ``nan`` for ranking-only baselines).
    """
    from perfmodel import baselines

    import random

    random.seed(seed)  # TVM's models draw from the global generators: same split, same scores
    np.random.seed(seed)
    model = baselines.make(name, seed=seed)
    train = [t for t, _ in split_task_records(dataset, splits["train"])]
    model.fit(train)
    preds, trues, tids = [], [], []
    for t, pos in split_task_records(dataset, splits["test"]):
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
