"""Predictor: checkpoint loading (weights_only, schema check), predicting schedules, fine-tuning, saving."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from perfmodel.featurize.schema import EDGE_FEATURES, NODE_FEATURES, SCHEMA_VERSION
from perfmodel.models import build_model
from perfmodel.predictor import CheckpointError, Predictor
from perfmodel.training.synthetic import SyntheticDataset

torch.set_num_threads(1)  # tiny graphs on a shared 2-core machine: more threads only contend


def _predictor(in_dim: int = 16, edge_dim: int = 4, **meta) -> Predictor:
    torch.manual_seed(0)
    cfg = {"name": "gin", "in_dim": in_dim, "edge_dim": edge_dim, "hidden": 16}
    return Predictor(model=build_model(cfg), meta={"model": cfg, "schema_version": SCHEMA_VERSION, "norm": None,
                                                   "granularity": "stage", **meta})


def test_save_and_load(tmp_path: Path) -> None:
    p = _predictor(fingerprint="abc")
    ds = SyntheticDataset(n_tasks=2, per_task=5)
    datas = [ds[i] for i in range(len(ds))]
    q = Predictor.from_checkpoint(p.save(tmp_path / "m.pt"))
    assert np.allclose(p.predict_data(datas), q.predict_data(datas))
    assert q.meta["fingerprint"] == "abc"


def test_schema_mismatch_is_refused(tmp_path: Path) -> None:
    path = _predictor(schema_version=SCHEMA_VERSION + 1).save(tmp_path / "old.pt")
    with pytest.raises(CheckpointError) as e:
        Predictor.from_checkpoint(path)
    msg = str(e.value)
    assert f"schema version {SCHEMA_VERSION + 1}" in msg and f"schema version {SCHEMA_VERSION}" in msg
    assert "\n" not in msg


def test_not_a_checkpoint(tmp_path: Path) -> None:
    torch.save({"state_dict": {}}, tmp_path / "x.pt")
    with pytest.raises(CheckpointError, match="not a perfmodel checkpoint"):
        Predictor.from_checkpoint(tmp_path / "x.pt")
    with pytest.raises(FileNotFoundError):
        Predictor.from_checkpoint(tmp_path / "missing.pt")


def test_fine_tune_reduces_the_loss() -> None:
    p = _predictor()
    ds = SyntheticDataset(n_tasks=2, per_task=16)
    datas = [ds[i] for i in range(len(ds))]
    y = np.array([float(d.y) for d in datas])
    before = np.mean((p.predict_data(datas) - y) ** 2)
    losses = p.fine_tune(datas, y, steps=60, task_ids=[int(d.task) for d in datas], lr=1e-2)
    after = np.mean((p.predict_data(datas) - y) ** 2)
    assert len(losses) == 60 and after < before / 2
    assert not p.model.training and p.meta["fine_tuned_steps"] == 60


def test_predict_schedules_of_a_real_task(target) -> None:
    from perfmodel.collect.sampler import TaskSpace
    from conftest import matmul_mod

    space = TaskSpace(mod=matmul_mod(), target=target)
    schs = [s for _, s in zip(range(4), (s for _, s in space.random_stream()))]
    p = _predictor(in_dim=len(NODE_FEATURES), edge_dim=len(EDGE_FEATURES))
    out = p.predict_schedules(schs)
    assert out.shape == (4,) and np.isfinite(out).all()
    assert np.allclose(out, p.predict_schedules(schs, flops=2 * 64**3), atol=1e-4)


def test_ensemble_predicts_the_members_mean_and_round_trips(tmp_path: Path) -> None:
    a = _predictor()
    torch.manual_seed(1)
    b = Predictor(model=build_model(a.meta["model"]), meta=dict(a.meta))
    ens = Predictor.ensemble([a, b])
    ds = SyntheticDataset(n_tasks=2, per_task=5)
    datas = [ds[i] for i in range(len(ds))]
    want = (a.predict_data(datas) + b.predict_data(datas)) / 2
    assert not np.allclose(a.predict_data(datas), b.predict_data(datas))
    assert np.allclose(ens.predict_data(datas), want, atol=1e-6)
    back = Predictor.from_checkpoint(ens.save(tmp_path / "ens.pt"))
    assert np.allclose(back.predict_data(datas), want, atol=1e-6)
    # an ensemble of an ensemble and a model flattens to three members
    assert len(Predictor.ensemble([back, a]).model.members) == 3
    # it fine-tunes like any model
    y = np.array([float(d.y) for d in datas])
    assert len(back.fine_tune(datas, y, steps=3)) == 3


def test_ensemble_refuses_members_of_other_splits() -> None:
    from perfmodel.data import FeatureNorm

    a = _predictor()
    b = _predictor()
    b.meta = {**b.meta, "norm": FeatureNorm(x_mean=torch.zeros(16), x_std=torch.ones(16), e_mean=torch.zeros(4),
                                              e_std=torch.ones(4)).state_dict()}
    with pytest.raises(CheckpointError, match="member 1 normalizes features differently"):
        Predictor.ensemble([a, b])
    c = _predictor(granularity="loop")
    with pytest.raises(CheckpointError, match="member 1 has granularity='loop'"):
        Predictor.ensemble([a, c])
    with pytest.raises(CheckpointError, match="no members"):
        Predictor.ensemble([])
