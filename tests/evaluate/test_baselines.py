"""Baselines on real records: the training hook on a ScheduleDataset split, random scores, bad names."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from perfmodel.evaluate import baselines as B


def test_make_rejects_unknown_names() -> None:
    with pytest.raises(ValueError, match="unknown baseline 'svm'"):
        B.make("svm")


@pytest.mark.slow
def test_baselines_on_a_dataset_split(tiny_db: Path, tmp_path: Path) -> None:
    from perfmodel.data import ScheduleDataset
    from perfmodel.metrics import ABSOLUTE

    ds = ScheduleDataset(tmp_path / "cache", [tiny_db], progress=False)
    tasks = ds.task_ids
    splits = {"train": np.flatnonzero(tasks == tasks[0]), "test": np.flatnonzero(tasks != tasks[0])}
    m = B.split_metrics(ds, splits)
    assert 0 <= m["pairwise_acc"] <= 1 and m["n_records"] == len(splits["test"])
    assert all(math.isnan(m[k]) for k in ABSOLUTE)  # TVM's XGBModel ranks: it predicts no time
    lat = B.split_metrics(ds, splits, name="xgb-latency")
    assert math.isfinite(lat["mape"]) and lat["rmse_log"] < 10  # log seconds, not a score
    r1, r2 = (B.split_metrics(ds, splits, name="random") for _ in range(2))
    assert r1["pairwise_acc"] == r2["pairwise_acc"]  # seeded
