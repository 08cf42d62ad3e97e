"""`perfmodel tune`: config, task resolution, clear errors, and real tiny runs (a task, a network, the CLI)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from perfmodel.cli import compose, main

torch.set_num_threads(1)  # tiny graphs on a shared 2-core machine: more threads only contend


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    """The shipped checkpoint once it exists; until then an untrained one of the featurizer's widths."""
    from perfmodel.featurize.schema import EDGE_FEATURES, NODE_FEATURES, SCHEMA_VERSION
    from perfmodel.models import build_model
    from perfmodel.predictor import Predictor
    from perfmodel.tvm import DEFAULT_CHECKPOINT

    if DEFAULT_CHECKPOINT.is_file():
        return DEFAULT_CHECKPOINT
    torch.manual_seed(0)
    cfg = {"name": "gin", "in_dim": len(NODE_FEATURES), "edge_dim": len(EDGE_FEATURES), "hidden": 16}
    meta = {"model": cfg, "schema_version": SCHEMA_VERSION, "norm": None, "granularity": "stage"}
    return Predictor(model=build_model(cfg), meta=meta).save(tmp_path_factory.mktemp("ckpt") / "tiny.ckpt")


def _small(tmp_path: Path, ckpt: Path, *overrides: str):
    return compose("tune", [f"checkpoint={ckpt}", f"work_dir={tmp_path}", "population=64", "trials_per_iter=4",
                            "eval.repeat=1", "eval.min_repeat_ms=1", *overrides])


def test_config_defaults() -> None:
    cfg = compose("tune", [])
    assert cfg.cost_model == "gnn" and cfg.checkpoint is None and cfg.threads == 1
    assert dict(cfg.target) == {"kind": "llvm", "num-cores": 1}
    assert (cfg.eval.number, cfg.eval.repeat, cfg.eval.min_repeat_ms) == (1, 3, 20)


def test_resolve_tasks() -> None:
    from perfmodel.tune import resolve_tasks

    label, tasks = resolve_tasks(compose("tune", ["task=GMM-0"]))
    assert label == "GMM-0" and [t.name for t in tasks] == ["GMM-0"]
    label, tasks = resolve_tasks(compose("tune", ["network=bert_layer", "batch=1"]))
    assert label == "bert_layer-b1" and len(tasks) > 3 and all(t.name.startswith("bert_layer-b1/") for t in tasks)
    assert sum(t.weight for t in tasks) > len(tasks)  # repeated layers weigh more
    with pytest.raises(ValueError, match="unknown network 'vgg'"):
        resolve_tasks(compose("tune", ["network=vgg"]))


def test_errors_before_tuning(tmp_path: Path, capsys) -> None:
    assert main(["tune", "task=NOPE-9", f"work_dir={tmp_path}"]) == 2
    assert "unknown task 'NOPE-9'" in capsys.readouterr().err
    assert main(["tune", "task=GMM-0", f"checkpoint={tmp_path}/missing.ckpt", f"work_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert "missing.ckpt does not exist" in err and err.count("\n") == 1
    (tmp_path / "junk.ckpt").write_text("junk")
    assert main(["tune", "task=GMM-0", f"checkpoint={tmp_path}/junk.ckpt", f"work_dir={tmp_path}"]) == 2
    assert "junk.ckpt" in capsys.readouterr().err
    assert main(["tune", "task=GMM-0", "cost_model=ansor", f"work_dir={tmp_path}"]) == 2
    assert "unknown cost model 'ansor'" in capsys.readouterr().err
    assert not (tmp_path / "database_tuning_record.json").exists()  # nothing was tuned


@pytest.mark.slow
def test_tune_a_task_from_the_cli(tmp_path: Path, ckpt: Path, capsys) -> None:
    rc = main(["tune", "task=GMM-0", "cost_model=gnn", "trials=8", f"checkpoint={ckpt}", f"work_dir={tmp_path}",
               "population=64", "trials_per_iter=4", "eval.repeat=1", "eval.min_repeat_ms=1"])
    out = capsys.readouterr().out
    assert rc == 0 and "GMM-0: best latency" in out
    last = json.loads(out.strip().splitlines()[-1])
    assert last["trials"] == 8 and 0 < last["best_s"] < 1 and Path(last["plot"]).is_file()
    assert (tmp_path / "database_tuning_record.json").is_file()
    summary = json.loads((tmp_path / "tune_summary.json").read_text())
    curve = summary["curve"]
    assert len(curve) == 8 and all(a >= b for a, b in zip(curve, curve[1:]) if a is not None and b is not None)
    assert summary["cost_model"]["scored"] > 0 and summary["cost_model"]["update_calls"] >= 1
    assert summary["gnn"]["fallback"] == 0 and 0 < last["cost_model_share"] < 1
    # again in the same work dir: the search starts from the stored records, the report counts only the new ones
    assert main(["tune", "task=GMM-0", "trials=4", f"checkpoint={ckpt}", f"work_dir={tmp_path}", "population=64",
                 "trials_per_iter=4", "eval.repeat=1", "eval.min_repeat_ms=1", "plot=false"]) == 0
    out = capsys.readouterr().out
    assert "already holds 8 records" in out and json.loads(out.strip().splitlines()[-1])["trials"] == 4


@pytest.mark.slow
def test_tune_a_small_network(tmp_path: Path, ckpt: Path) -> None:
    from perfmodel.tune import resolve_tasks, tune

    cfg = _small(tmp_path, ckpt, "network=bert_layer", "batch=1", "trials=18", "trials_per_iter=1",
                 "max_trials_per_task=1")
    _, tasks = resolve_tasks(cfg)
    assert len(tasks) == 18
    out = tune(cfg)  # the gradient scheduler gives every task one round first: one trial each
    assert out["trials"] == 18 and set(out["tasks"]) == {t.name for t in tasks}
    assert all(v is not None for v in out["tasks"].values())
    weights = {t.name: t.weight for t in tasks}
    assert math.isclose(out["best_s"], sum(weights[k] * v for k, v in out["tasks"].items()), rel_tol=1e-9)
    assert out["cost_model"]["predict_calls"] >= 1 and out["gnn"]["fallback"] == 0
    assert Path(out["plot"]).is_file()
