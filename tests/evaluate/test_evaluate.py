"""`perfmodel evaluate` / `check` on real databases: bad input, the tiny measured db, a plain ms.tune_tir db."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from perfmodel.cli import main
from perfmodel.collect.database import Database, DatabaseError, RawRecord
from perfmodel.evaluate.records import load_tasks
from perfmodel.metrics import METRICS
from conftest import matmul_mod


def _db(tmp_path: Path, run_secs: list[list[float]], *, workload: list[str] | None = None) -> Path:
    db = Database.open(tmp_path / "db", create=True)
    if workload is None:
        db.add_workload(matmul_mod(16))
    else:
        (db.path / "database_workload.json").write_text(json.dumps(workload) + "\n")
        db = Database.open(db.path)
    db.append([RawRecord(line=0, workload=0, trace=[[], []], run_secs=s, target=None, args_info=None)
               for s in run_secs])
    return db.path


def test_missing_empty_failed_and_foreign_databases_name_the_path(tmp_path: Path, capsys) -> None:
    with pytest.raises(DatabaseError, match="no such file"):
        load_tasks([tmp_path / "nope"])
    empty = _db(tmp_path / "e", [])
    with pytest.raises(DatabaseError, match=f"{empty}: database is empty"):
        load_tasks([empty])
    failed = _db(tmp_path / "f", [[1e10], [1e10]])
    with pytest.raises(DatabaseError, match=f"{failed}: all 2 records are failed"):
        load_tasks([failed])
    foreign = _db(tmp_path / "v", [[1e-3]], workload=["123", "bm90IGEgVFZNIG1vZHVsZQ=="])
    with pytest.raises(DatabaseError, match=f"{foreign}: workload line 1 cannot be read by this TVM"):
        load_tasks([foreign])
    # the command line turns each into one line on stderr and exit status 2
    assert main(["evaluate", "--db", str(failed), "--checkpoint", "none", "--baselines", ""]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(failed) in err[0]


@pytest.mark.slow
def test_evaluate_tiny_db_held_out_task(tiny_db: Path, tmp_path: Path) -> None:
    """Baselines trained on GMM-0, scored on NRM-0 of the same db; the MLP needs 5 tasks and says so."""
    from perfmodel.evaluate.evaluator import evaluate
    from perfmodel.evaluate.report import write_report

    res = evaluate([tiny_db], train_db=[tiny_db], baselines=["xgb", "mlp", "xgb-latency", "random"],
                   heldout={"NRM-0"}, quick=True, log=lambda m: None)
    j = res.to_json()
    assert list(j["tasks"]) == ["NRM-0"]
    assert set(j["models"]) == {"xgb", "mlp", "xgb-latency", "random"}
    assert "needs >= 5 training tasks" in j["models"]["mlp"]["error"]
    for name in ("xgb", "random"):  # ranking-only models: no absolute metrics
        m = j["models"][name]
        assert m["mape"] is None and m["rmse_log"] is None and m["r2"] is None
        assert 0.0 <= m["pairwise_acc"] <= 1.0 and 0.0 < m["peak1"] <= 1.0
    lat = j["models"]["xgb-latency"]
    assert lat["mape"] is not None and lat["mape"] >= 0 and set(METRICS) <= set(lat)
    assert j["tasks"]["NRM-0"]["n"] >= 2 and j["tasks"]["NRM-0"]["family"] == "reduce"
    assert "batch-size view skipped" in " ".join(j["notes"])
    json.dumps(j, allow_nan=False)  # strict JSON: nan written as null
    md = write_report(res, tmp_path / "rep")
    text = md.read_text()
    assert "| xgb-latency |" in text and "kendall_tau" in text
    assert (tmp_path / "rep" / "kendall_tau.png").stat().st_size > 0
    assert (tmp_path / "rep" / "pred_vs_measured.png").stat().st_size > 0


@pytest.fixture(scope="module")
def tuned_db(tmp_path_factory) -> Path:
    """A database written by plain ``ms.tune_tir`` on a 64x64 matmul (8 trials)."""
    import tvm

    from perfmodel._tvm import load_ms
    ms = load_ms()

    work = tmp_path_factory.mktemp("tune")
    # generous timeouts: a builder worker spends ~20 s importing TVM on a busy 2-core machine
    runner = ms.runner.LocalRunner(timeout_sec=120)
    try:
        ms.tune_tir(matmul_mod(64), target=tvm.target.Target({"kind": "llvm", "num-cores": 1}), work_dir=str(work),
                    max_trials_global=8, num_trials_per_iter=8, cost_model="random", seed=1,
                    builder=ms.builder.LocalBuilder(max_workers=1, timeout_sec=300), runner=runner)
    finally:
        runner.pool.shutdown()  # TVM's LocalRunner keeps its worker process: else it outlives the test session
    return work


@pytest.mark.slow
def test_evaluate_cli_on_a_tune_tir_database(tuned_db: Path, tiny_db: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    rc = main(["evaluate", "--db", str(tuned_db), "--train-db", str(tiny_db), "--baselines", "xgb,mlp,random",
               "--checkpoint", "none", "--quick", "--json", str(out)])
    assert rc == 0
    j = json.loads(out.read_text())
    (task,) = j["tasks"].values()
    assert task["n"] >= 2
    assert j["models"]["xgb"]["n_records"] == task["n"] and 0 <= j["models"]["xgb"]["pairwise_acc"] <= 1
    assert j["models"]["mlp"]["error"]  # only 2 training tasks
    assert set(METRICS) <= set(j["models"]["random"])


def _tiny_predictor(tiny_db: Path, path: Path) -> Path:
    """A small GNN fine-tuned for a few steps on the tiny db's GMM-0 records, saved as a checkpoint."""
    import numpy as np

    from perfmodel.featurize import EDGE_FEATURES, NODE_FEATURES, SCHEMA_VERSION
    from perfmodel.models import build_model
    from perfmodel.predictor import Predictor

    cfg = {"name": "gcn", "in_dim": len(NODE_FEATURES), "edge_dim": len(EDGE_FEATURES), "hidden": 16,
           "num_layers": 2}
    pred = Predictor(model=build_model(cfg), meta={"schema_version": SCHEMA_VERSION, "model": cfg,
                                                   "granularity": "stage"})
    (task,) = [t for t in load_tasks([tiny_db]) if t.name == "GMM-0"]
    datas = pred.featurize(task.schedules())
    ok = [i for i, d in enumerate(datas) if d is not None]
    pred.fine_tune([datas[i] for i in ok], np.log(task.times[ok]), steps=5)
    return pred.save(path)


@pytest.mark.slow
def test_check_gmm0_with_a_tiny_checkpoint(tiny_db: Path, tmp_path: Path, capsys) -> None:
    ckpt = _tiny_predictor(tiny_db, tmp_path / "tiny.ckpt")
    rc = main(["check", "GMM-0", "--n", "8", "--checkpoint", str(ckpt), "--rounds", "3"])
    assert rc == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last["task"] == "GMM-0" and last["n_sampled"] == 8 and last["n_measured"] >= 2
    assert last["mape"] is not None and last["mape"] >= 0
    assert last["pairwise_acc"] is None or 0 <= last["pairwise_acc"] <= 1
    # and evaluate scores the same checkpoint offline
    res_json = tmp_path / "g.json"
    assert main(["evaluate", "--db", str(tiny_db), "--checkpoint", str(ckpt), "--baselines", "",
                 "--all-tasks", "--json", str(res_json)]) == 0
    g = json.loads(res_json.read_text())["models"]["gnn"]
    assert g["n_tasks"] == 2 and not math.isnan(g["rmse_log"])


def test_batch_view_error_by_batch_and_friction() -> None:
    """Two batch sizes of one network operator: measured and predicted r(b) = T(b) / (b T(1))."""
    import numpy as np

    from perfmodel.evaluate.evaluator import ModelRun, batch_view
    from perfmodel.evaluate.records import TaskRecords

    def task(b: int, times: list[float]) -> TaskRecords:
        return TaskRecords(name=f"resnet18-b{b}/fused_conv2d", key=str(b), db=None, workload=0, records=[],
                           times=np.array(times), batch=b, family="conv")

    # six records per task (RANK_MIN_RECORDS: fewer would leave the ranking averages undefined)
    t1, t8 = task(1, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]), task(8, [4.0, 6.0, 7.0, 8.0, 9.0, 10.0])
    run = ModelRun(name="gnn", absolute=True, preds={t1.name: np.log([1.0, 2.0, 3.0, 4.0, 5.0, 6.0]),
                                                     t8.name: np.log([16.0, 15.0, 12.0, 11.0, 9.0, 8.0])})
    out = batch_view([t1, t8], [run])
    assert out["sizes"] == [1, 8]
    curve = out["friction"]["resnet18/fused_conv2d"]
    assert curve["1"] == {"measured": 1.0, "gnn": 1.0}
    assert curve["8"]["measured"] == pytest.approx(4.0 / 8) and curve["8"]["gnn"] == pytest.approx(8.0 / 8)
    assert out["by_batch"]["gnn"]["8"]["pairwise_acc"] == pytest.approx(0.0) and out["by_batch"]["gnn"]["1"]["mape"] == 0.0
    assert "note" in batch_view([t1], [run])  # one batch size: skipped with a note


def test_evaluation_says_when_the_checkpoint_was_trained_for_another_target(tiny_db: Path) -> None:
    """A checkpoint for another CPU than the tiny db's records gets one note naming it; its own CPU none."""
    from perfmodel.evaluate.evaluator import evaluate
    from perfmodel.featurize import EDGE_FEATURES, NODE_FEATURES, SCHEMA_VERSION
    from perfmodel.models import build_model
    from perfmodel.predictor import Predictor
    from perfmodel.workloads import target_summary

    (task, *_) = load_tasks([tiny_db])
    theirs = target_summary(task.records[0].target)
    cfg = {"name": "gcn", "in_dim": len(NODE_FEATURES), "edge_dim": len(EDGE_FEATURES), "hidden": 8, "num_layers": 1}
    meta = {"schema_version": SCHEMA_VERSION, "model": cfg, "granularity": "stage"}
    other = Predictor(model=build_model(cfg), meta={**meta, "target": {**theirs, "mcpu": "some-other-cpu"}})
    notes = evaluate([tiny_db], predictor=other, heldout={"NRM-0", "GMM-0"}, log=lambda m: None).notes
    said = [n for n in notes if n.startswith("gnn: checkpoint trained for")]
    assert len(said) == 1 and "some-other-cpu" in said[0] and "2 task(s)" in said[0], notes
    same = Predictor(model=build_model(cfg), meta={**meta, "target": theirs})
    notes = evaluate([tiny_db], predictor=same, heldout={"NRM-0", "GMM-0"}, log=lambda m: None).notes
    assert not [n for n in notes if "checkpoint trained for" in n], notes


def _split_runs(tiny_db: Path, runs: Path) -> None:
    """The tiny db's records dealt into two "runs" of one benchmark task; the second lists the workloads in
    reverse order (its records' workload indices remapped), so a record replayed in the wrong database fails."""
    wl = (tiny_db / "database_workload.json").read_text().splitlines()
    recs = [json.loads(line) for line in (tiny_db / "database_tuning_record.json").read_text().splitlines()]
    for i, name in enumerate(("gnn-s1", "xgb-s1")):
        d = runs / "T" / name
        d.mkdir(parents=True)
        order = wl if i == 0 else wl[::-1]
        (d / "database_workload.json").write_text("\n".join(order) + "\n")
        mine = [[r[0] if i == 0 else len(wl) - 1 - r[0], r[1]] for r in recs[i::2]]
        (d / "database_tuning_record.json").write_text("".join(json.dumps(r) + "\n" for r in mine))


def test_pooled_runs_are_one_task_each_record_replayed_from_its_own_database(tiny_db: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    _split_runs(tiny_db, runs)
    whole = {t.name: t for t in load_tasks([tiny_db])}
    apart = load_tasks([runs])
    assert sorted(t.name for t in apart) == sorted(f"{n}@{r}" for n in whole for r in ("gnn-s1", "xgb-s1"))
    pooled = {t.name: t for t in load_tasks([runs], pool=True)}
    assert set(pooled) == set(whole)
    for name, t in pooled.items():
        parts = [a for a in apart if a.key == t.key]
        assert sorted(t.times) == sorted(whole[name].times) and t.n_failed == whole[name].n_failed
        assert [s.path.name for s in t.sources] == [p.db.path.name for p in parts for _ in p.records]
        mods = [c.sch.mod.script() for c in t.candidates()]
        assert t.n_unreplayable == 0
        assert mods == [c.sch.mod.script() for p in parts for c in p.candidates()]
        t.subsample(7)  # the records' databases stay aligned with them
        assert len(t.records) == len(t.times) == len(t.sources) == len(t.candidates()) == 7
        assert t.candidates()[0].sch.mod.script() == mods[0]


def test_unseen_scores_only_the_tasks_the_training_databases_lack(tiny_db: Path, tmp_path: Path) -> None:
    from perfmodel.evaluate.evaluator import evaluate

    runs = tmp_path / "runs"
    _split_runs(tiny_db, runs)
    gmm = [t for t in load_tasks([tiny_db]) if t.name == "GMM-0"][0]
    train = tmp_path / "train"
    train.mkdir()
    shutil.copy(tiny_db / "database_workload.json", train)
    lines = (tiny_db / "database_tuning_record.json").read_text().splitlines()
    (train / "database_tuning_record.json").write_text(
        "".join(line + "\n" for line in lines if json.loads(line)[0] == gmm.workload))
    res = evaluate([runs], train_db=[train], pool=True, unseen=True, log=lambda m: None)
    assert [t.name for t in res.tasks] == ["NRM-0"], [t.name for t in res.tasks]
    assert any("left out 1 evaluated task(s) of 2" in n for n in res.notes), res.notes
    assert res.config["pool"] and res.config["unseen"]
    with pytest.raises(ValueError, match="nothing unseen to evaluate"):
        evaluate([runs], train_db=[tiny_db], pool=True, unseen=True, log=lambda m: None)


def test_a_pooled_task_with_records_of_the_training_database_is_held_out_by_name(tiny_db: Path,
                                                                                  tmp_path: Path) -> None:
    from perfmodel.evaluate.evaluator import evaluate

    runs = tmp_path / "runs"
    _split_runs(tiny_db, runs)
    # the second run is also the training database: its tasks count as trained on, though each pooled
    # task's first database (gnn-s1) is not a training one
    res = evaluate([runs], train_db=[runs / "T" / "xgb-s1"], baselines=(), pool=True, heldout={"NRM-0"},
                   log=lambda m: None)
    assert [t.name for t in res.tasks] == ["NRM-0"], [t.name for t in res.tasks]
    assert any("scoring its 1 held-out tasks of 2" in n for n in res.notes), res.notes
