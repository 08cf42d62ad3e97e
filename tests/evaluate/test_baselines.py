"""Baselines on real records: the training hook on a ScheduleDataset split, random scores, bad names."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from perfmodel import baselines as B


def test_make_rejects_unknown_names() -> None:
    with pytest.raises(ValueError, match="unknown baseline 'svm'"):
        B.make("svm")


@pytest.mark.slow
def test_fit_predict_on_a_dataset_split(tiny_db: Path, tmp_path: Path) -> None:
    from perfmodel.data import ScheduleDataset
    from perfmodel.evaluate.metrics import task_metrics

    ds = ScheduleDataset(tmp_path / "cache", [tiny_db], progress=False)
    tasks = ds.task_ids
    train = np.flatnonzero(tasks == tasks[0])
    test = np.flatnonzero(tasks != tasks[0])
    pred = B.xgb_fit_predict(ds, train, test)
    assert pred.shape == (len(test),) and np.isfinite(pred).all()
    assert not B.XGB_PREDICTS_LOG_TIME
    y = np.array([float(ds[int(i)].y) for i in test])
    m = task_metrics(pred, y, tasks[test], absolute=False)
    assert 0 <= m["pairwise_acc"] <= 1 and m["n_records"] == len(test)
    lat = B.fit_predict("xgb-latency", ds, train, test, quick=True)
    assert np.isfinite(lat).all() and np.abs(lat - y).mean() < 10  # log seconds, not a score
    r1 = B.fit_predict("random", ds, train, test)
    assert np.array_equal(r1, B.fit_predict("random", ds, train, test))  # seeded
