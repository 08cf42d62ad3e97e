"""train(cfg) end to end: synthetic graphs, the smoke preset on a tiny real database, overfitting real graphs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from perfmodel.config import compose
from perfmodel.predictor import CKPT_KEY, Predictor
from perfmodel.training import train

torch.set_num_threads(1)  # tiny graphs on a shared 2-core machine: more threads only contend

REPO = Path(__file__).resolve().parents[2]


def _cfg(tmp_path: Path, *overrides: str):
    if not any(o.startswith("ensemble=") for o in overrides):
        overrides = ("ensemble=1", *overrides)  # one model unless a test asks for an ensemble
    return compose("train", [
        f"paths.root_dir={REPO}", f"paths.output_dir={tmp_path}", f"paths.log_dir={tmp_path}",
        f"paths.cache_dir={tmp_path}/cache", "trainer.enable_progress_bar=false", "threads=1", *overrides])


def test_train_on_synthetic_graphs(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, "data=synthetic", "baseline=null", "trainer.max_epochs=4", "model.hidden=16")
    out = train(cfg)
    for k in ("test/pairwise_acc", "test/kendall_tau", "test/peak1", "test/peak5", "test/mape", "test/rmse_log"):
        assert k in out
    assert 0.0 <= out["test/pairwise_acc"] <= 1.0
    assert Path(out["ckpt"]).is_file()
    assert (tmp_path / "csv" / "metrics.csv").is_file()
    header = (tmp_path / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
    for k in ("train/rmse_log", "val/rmse_log", "val/mape", "val/kendall_tau", "val/pairwise_acc", "val/peak1"):
        assert k in header
    json.dumps(out)  # the last line train.py prints


def test_same_seed_same_result(tmp_path: Path) -> None:
    outs = [train(_cfg(tmp_path / str(i), "data=synthetic", "baseline=null", "trainer.max_epochs=2",
                       "model.hidden=16", "callbacks=none", "logger=none")) for i in range(2)]
    assert outs[0]["test/rmse_log"] == outs[1]["test/rmse_log"]


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    from perfmodel.training.synthetic import SyntheticDataset

    out = train(_cfg(tmp_path, "data=synthetic", "baseline=null", "trainer.max_epochs=2", "model=gat",
                     "model.hidden=16", "logger=none"))
    pred = Predictor.from_checkpoint(out["ckpt"])
    ds = SyntheticDataset()  # the synthetic data module's dataset (same seed)
    datas = [ds[i] for i in range(20)]
    a = pred.predict_data(datas)
    b = Predictor.from_checkpoint(pred.save(tmp_path / "copy.pt")).predict_data(datas)
    assert a.shape == (20,) and np.allclose(a, b)
    ck = torch.load(out["ckpt"], weights_only=True)
    assert ck[CKPT_KEY]["model"]["name"] == "gat" and len(ck[CKPT_KEY]["fingerprint"]) == 64
    assert pred.target is None  # synthetic graphs were measured on no target


@pytest.mark.slow
def test_smoke_preset_on_tiny_db(tiny_db: Path, tmp_path: Path) -> None:
    # a test fraction that leaves each of the 2 tasks >= RANK_MIN_RECORDS test records (ranking averages)
    cfg = _cfg(tmp_path, "experiment=smoke", f"data.db_paths=[{tiny_db}]", "data.split=random",
               "data.max_records=null", "data.val=0.2", "data.test=0.35", "baseline=xgb")
    out = train(cfg)
    assert Path(out["ckpt"]).is_file() and out["n_train"] > 20
    assert 0.0 <= out["test/pairwise_acc"] <= 1.0
    assert out["xgb/pairwise_acc"] is not None  # TVM's XGBModel trained on the same split
    pred = Predictor.from_checkpoint(out["ckpt"])  # real schema + FeatureNorm state load back
    assert pred.target is not None and pred.target["kind"] == "llvm" and pred.target["threads"] == 1
    assert pred.target_mismatch(pred.target) is None and "targets" not in pred.meta  # one target measured
    assert pred.heldout_tasks() is None  # a within-task split holds no task out


@pytest.mark.slow
def test_overfits_32_real_graphs(tiny_db: Path, tmp_path: Path) -> None:
    from torch_geometric.data import Batch

    from perfmodel.data import FeatureNorm, ScheduleDataset
    from perfmodel.models import build_model

    torch.manual_seed(0)
    ds = ScheduleDataset(tmp_path / "ds", [tiny_db], progress=False)
    datas = [ds[i] for i in np.random.default_rng(0).permutation(len(ds))[:32]]
    norm = FeatureNorm.fit(datas)
    b = norm.apply(Batch.from_data_list(datas))
    model = build_model({"name": "gin", "in_dim": b.x.size(1), "edge_dim": b.edge_attr.size(1), "hidden": 64})
    model.set_flops_stats(torch.log(b.flops.double()), b.y.double())  # starts at the FLOPs line
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(300):
        loss = torch.nn.functional.mse_loss(model(b), b.y)
        losses.append(float(loss.detach()))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert losses[-1] < losses[0] / 10, (losses[0], losses[-1])


def test_ensemble_trains_members_and_ships_their_mean(tmp_path: Path) -> None:
    from perfmodel.training.synthetic import SyntheticDataset

    out = train(_cfg(tmp_path, "data=synthetic", "baseline=null", "trainer.max_epochs=2", "model.hidden=16",
                     "logger=none", "ensemble=2"))
    ens = Predictor.from_checkpoint(out["ckpt"])
    assert Path(out["ckpt"]).name == "ensemble.ckpt" and ens.meta["model"]["name"] == "ensemble"
    assert [m["seed"] for m in ens.meta["members"]] == [0, 1]
    members = [Predictor.from_checkpoint(next((tmp_path / f"member{i}" / "checkpoints").glob("epoch*.ckpt")))
               for i in range(2)]
    datas = [SyntheticDataset()[i] for i in range(20)]
    preds = [m.predict_data(datas) for m in members]
    assert not np.allclose(preds[0], preds[1])  # different seeds, different members
    assert np.allclose(ens.predict_data(datas), (preds[0] + preds[1]) / 2, atol=1e-5)
    assert 0.0 <= out["test/pairwise_acc"] <= 1.0


def test_ensemble_members_train_the_same_in_a_pool_as_in_turn(tmp_path: Path) -> None:
    from perfmodel.training.synthetic import SyntheticDataset
    from perfmodel.training.train import ensemble_workers

    common = ("data=synthetic", "baseline=null", "trainer.max_epochs=2", "model.hidden=16", "logger=none",
              "ensemble=2")
    pooled = train(_cfg(tmp_path / "pool", *common, "ensemble_workers=2"))
    in_turn = train(_cfg(tmp_path / "turn", *common, "ensemble_workers=1"))
    datas = [SyntheticDataset()[i] for i in range(20)]
    a, b = (Predictor.from_checkpoint(o["ckpt"]).predict_data(datas) for o in (pooled, in_turn))
    assert np.allclose(a, b, atol=1e-6)  # a member's result does not depend on where it trained
    assert pooled["test/pairwise_acc"] == pytest.approx(in_turn["test/pairwise_acc"])
    # data-parallel or accelerator trainers keep members in turn; never more processes than members
    assert ensemble_workers(_cfg(tmp_path, "ensemble_workers=4"), 2) == 2
    assert ensemble_workers(_cfg(tmp_path, "ensemble_workers=4", "trainer=ddp"), 5) == 1
    with pytest.raises(ValueError, match="ensemble_workers"):
        ensemble_workers(_cfg(tmp_path, "ensemble_workers=0"), 2)


def test_checkpoint_records_the_split_evaluate_reads(tmp_path: Path) -> None:
    from hydra.utils import instantiate

    from perfmodel.evaluate.cli import heldout_from
    from perfmodel.training.train import build_module

    cfg = _cfg(tmp_path, "data=synthetic", "baseline=null", "model.hidden=16")
    dm = instantiate(cfg.data)
    dm.setup("fit")
    module = build_module(cfg, dm)
    pred = Predictor.from_checkpoint(Predictor(model=module.model, meta=module.meta).save(tmp_path / "m.ckpt"))
    test = {dm.task_names[int(t)] for t in np.unique(dm.task_ids[dm.splits["test"]])}
    train_tasks = {dm.task_names[int(t)] for t in np.unique(dm.task_ids[dm.splits["train"]])}
    assert test and not test & train_tasks
    assert pred.split["test_tasks"] == sorted(test) and pred.heldout_tasks() == test
    assert heldout_from(pred, [], None)() == test  # what `perfmodel evaluate` scores on the training data


def test_model_config_turns_target_input_into_the_vocabulary_size() -> None:
    from perfmodel.training.train import model_config

    base = {"_target_": "perfmodel.models.GINE", "hidden": 8}
    assert model_config({**base, "target_input": True}, in_dim=4, edge_dim=2, n_targets=3)["target_input"] == 3
    assert model_config({**base, "target_input": False}, in_dim=4, edge_dim=2, n_targets=3)["target_input"] == 0
    assert "target_input" not in model_config(base, in_dim=4, edge_dim=2)  # a config from before the option
    with pytest.raises(ValueError, match="target_id"):
        model_config({**base, "target_input": True}, in_dim=4, edge_dim=2, n_targets=0)  # e.g. synthetic graphs


@pytest.mark.slow  # measures two tiny databases (conftest.two_target_dbs)
def test_both_targets_preset_trains_on_both_folders_and_evaluates_on_one(two_target_dbs, tmp_path: Path) -> None:
    from hydra.utils import instantiate

    from perfmodel.training import ScheduleDataModule
    from perfmodel.workloads import target_summary

    native, generic = two_target_dbs  # GMM-0, NRM-0, SFM-0 in each: one task each for train, val, test
    cfg = _cfg(tmp_path, "experiment=both_targets", f"data.db_paths=[{native},{generic}]", f"data.eval_db={native}",
               "data.val=0.34", "data.test=0.34", "baseline=null", "trainer.max_epochs=2", "model.hidden=16",
               "trainer.log_every_n_steps=1")
    dm = instantiate(cfg.data)
    dm.setup("fit")
    native_rec = dm.dataset.from_databases(native)
    s = dm.splits
    assert len(s["test"]) and len(s["val"]) and native_rec[s["val"]].all() and native_rec[s["test"]].all()
    assert native_rec[s["train"]].any() and not native_rec[s["train"]].all()  # train: both folders
    held_out = set(dm.task_ids[s["test"]]) | set(dm.task_ids[s["val"]])
    assert not held_out & set(dm.task_ids[s["train"]])  # not from the other folder either
    plain = ScheduleDataModule(dataset=dm.dataset, split="task", val=0.34, test=0.34)  # without eval_db: both
    plain.setup()
    assert not native_rec[plain.splits["test"]].all() and np.array_equal(plain.splits["train"], s["train"])
    out = train(cfg)
    pred = Predictor.from_checkpoint(out["ckpt"])
    assert pred.meta["model"]["target_input"] == 2 and pred.target_input
    assert pred.target_vocab == dm.targets and len(dm.targets) == 2
    assert pred.split["eval_db"] == str(native) and out["n_test"] == len(s["test"])
    for t in dm.targets:  # a model with the target input knows both targets: no mismatch for either
        assert pred.target_mismatch(t) is None
    assert pred.target_index(target_summary({"kind": "llvm", "num-cores": 1})) == dm.targets.index(
        {"kind": "llvm", "mcpu": "generic", "threads": 1})
