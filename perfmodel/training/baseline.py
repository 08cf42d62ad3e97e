"""TVM's XGBoost cost model trained and tested on the same split as the GNN (glue to ``perfmodel.evaluate.baselines``)."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from perfmodel.metrics import task_metrics

log = logging.getLogger(__name__)


def xgb_test_metrics(dataset: Any, splits: dict[str, np.ndarray], *, name: str = "xgb", seed: int = 0) -> dict[str, Any]:
    """Fits baseline ``name`` (default TVM's ``XGBModel``) on the train split, scores the test split.

    Returns:
        ``task_metrics`` of its test scores (absolute metrics ``nan`` for ranking-only baselines).
    """
    from perfmodel.evaluate import baselines

    import random

    random.seed(seed)  # TVM's models draw from the global generators: same split, same scores
    np.random.seed(seed)
    model = baselines.make(name, seed=seed)
    train, _ = baselines.dataset_tasks(dataset, splits["train"])
    model.fit(train)
    preds, trues, tids = [], [], []
    for t, pos in zip(*baselines.dataset_tasks(dataset, splits["test"])):
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
