"""benchmarks/bench_tune.py: GNN-vs-XGB comparison on trials and seconds, the report, and resuming a killed benchmark."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from tests.conftest import load_benchmark

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("bench_tune")


def _run(curve: list[float | None], seconds: list[float], share: float = 0.1) -> dict:
    return {"curve": curve, "seconds": seconds, "trials": len(curve), "tune_s": seconds[-1] if seconds else 0,
            "cost_model_share": share, "best_s": curve[-1] if curve else None}


def test_compare_trials_and_seconds(bench) -> None:
    xgb = _run([5.0, 4.0, 4.0, 3.0, 3.0, 2.0, 2.0, 2.0], [10, 20, 30, 40, 50, 60, 70, 80])
    gnn = _run([3.0, 2.0, 1.5, 1.5, 1.5, 1.5, 1.5, 1.0], [15, 30, 45, 60, 75, 90, 105, 120])
    c = bench.compare(gnn, xgb)
    assert (c["xgb_trials_to_final"], c["gnn_trials_to_xgb_final"]) == (6, 2) and c["trials_saved"] == 3.0
    assert (c["xgb_seconds_to_final"], c["gnn_seconds_to_xgb_final"]) == (60, 30) and c["seconds_saved"] == 2.0
    assert c["final_ratio"] == 0.5
    # the GNN never reaches XGB's final best: its whole budget counts (an upper bound on the ratio)
    slow = _run([9.0, 8.0, 8.0, 8.0], [5, 10, 15, 20])
    c = bench.compare(slow, xgb)
    assert c["gnn_trials_to_xgb_final"] is None and c["trials_saved"] == 1.5 and c["seconds_saved"] == 3.0
    assert c["final_ratio"] == 4.0
    # XGB found nothing valid: nothing to reach; a failed GNN run has no final ratio
    assert bench.compare(gnn, _run([None, None], [1, 2])) is None
    assert bench.compare(_run([None, None], [1, 2]), xgb)["final_ratio"] is None
    assert bench.best_at_seconds([math.inf, 3.0, 2.0], [10, 20, 30], 25) == 3.0
    assert bench.best_at_seconds([3.0], [10], 5) == math.inf


def test_side_by_side_network_timing_keeps_the_runs_own_when_it_cannot_run(bench, tmp_path: Path) -> None:
    own = {"gnn": 12.0, "xgb": 13.0}
    rep = {"label": "nope-b1", "network_latency_ms": dict(own)}
    bench._time_side_by_side(rep, "nope", 1, {"gnn": tmp_path / "a"}, builds=2, overrides=[])  # one database: nothing
    assert rep == {"label": "nope-b1", "network_latency_ms": own}
    bench._time_side_by_side(rep, "nope", 1, {"gnn": tmp_path / "a", "xgb": tmp_path / "b"}, builds=2, overrides=[])
    assert rep["network_latency_ms"] == own and "same_run" not in rep and "nope" in rep["same_run_error"]


def test_network_builds_against_xgb_say_whether_the_difference_stands_out(bench) -> None:
    slow, fast = [40.0, 41.0, 42.0, 43.0, 44.0, 45.0], [30.0, 31.0, 32.0, 33.0, 34.0, 35.0]
    same = [35.0, 30.0, 34.0, 31.0, 33.0, 32.0]  # xgb's builds in another order
    out = bench.builds_vs_xgb({"gnn": slow, "xgb": fast, "random": same, "gnn-stall": [50.0]})
    assert "xgb" not in out
    assert out["gnn"]["median_ratio"] == round(42.5 / 32.5, 4) and out["gnn"]["fastest_ratio"] == round(40 / 30, 4)
    assert out["gnn"]["p"] < 0.01  # every build slower: it stands out
    assert out["random"]["p"] == 1.0 and out["random"]["mean_ratio"] == 1.0
    assert out["gnn-stall"]["p"] is None  # one build: no test
    assert bench.builds_vs_xgb({"gnn": slow}) == {}  # nothing to compare with


def test_task_report_goes_on_past_a_run_whose_every_candidate_failed(bench) -> None:
    runs = {("gnn", 1): {**_run([4.0, 2.0], [30, 70]), "guard": {"remeasured": 2, "waited_s": 3.0, "remeasure_s": 9.5}},
            ("xgb", 1): _run([None, None], [20, 40]),
            ("random", 1): {"error": "RuntimeError: boom"}}
    rep = bench.task_report("T", runs, 2)
    assert rep["failed"] == ["xgb-s1"] and rep["errors"] == {"random-s1": "RuntimeError: boom"}
    assert rep["guard_s"] == {"gnn-s1": 12.5}  # the guard's seconds inside the run's tuning seconds
    assert rep["gnn_vs_xgb"] == {} and rep["best_s"]["gnn-s1"] == {"2": 2.0}
    assert rep["best_s_at_seconds"]["gnn-s1"] == {"30": 4.0, "60": 4.0, "120": 2.0}
    assert rep["cost_model_share"] == {"gnn": 0.1, "xgb": 0.1}
    # a network run with some tasks measured has no curve yet (no estimate over all tasks) but did not fail
    assert not bench.all_failed({"tasks": {"a": 1e-3, "b": None}, "curve": [None, None]})
    assert bench.all_failed({"tasks": {"a": None, "b": None}, "curve": [None, None]})


def test_a_finished_run_is_read_back_only_with_the_same_settings(bench, tmp_path: Path) -> None:
    wd = bench.run_dir(tmp_path, "resnet18-b8/fused_matmul_add13", "gnn", 2)
    assert wd == tmp_path / "resnet18-b8__fused_matmul_add13" / "gnn-s2"
    wd.mkdir(parents=True)
    (wd / "summary.json").write_text(json.dumps({**_run([2.0], [5.0]), "overrides": ["trials=1"]}))
    assert bench.run_one(wd, ["trials=1"])["resumed"] is True  # nothing tuned: read back
    with pytest.raises(SystemExit, match="other settings"):
        bench.run_one(wd, ["trials=2"])


def test_a_finished_run_of_another_target_is_never_read_back(bench, tmp_path: Path) -> None:
    here = bench.tune_target(["trials=1"])
    assert here["kind"] == "llvm" and here["threads"] == 1 and here["mcpu"] not in (None, "generic")
    other = {**here, "mcpu": "znver3" if here["mcpu"] != "znver3" else "skylake-avx512"}
    wd = bench.run_dir(tmp_path, "GMM-0", "xgb", 1)
    wd.mkdir(parents=True)
    # an older summary without "target": its database's records say which target it was tuned for
    (wd / "summary.json").write_text(json.dumps({**_run([2.0], [5.0]), "overrides": ["trials=1"]}))
    (wd / "database_tuning_record.json").write_text(
        json.dumps([0, [[], [], {"kind": "llvm", "mcpu": other["mcpu"], "num-cores": 1, "keys": ["cpu"]}]]) + "\n")
    assert bench.run_target(wd, {}) == other
    with pytest.raises(SystemExit, match=f"tuned for llvm/{other['mcpu']}/1 thread.*this machine tunes for llvm/{here['mcpu']}"):
        bench.run_one(wd, ["trials=1"])
    # the summary's own record of the target wins over the database's
    (wd / "summary.json").write_text(json.dumps({**_run([2.0], [5.0]), "overrides": ["trials=1"], "target": here}))
    assert bench.run_one(wd, ["trials=1"])["target"] == here


def test_a_finished_gnn_run_of_other_weights_is_never_read_back(bench, tmp_path: Path) -> None:
    from perfmodel.predictor import checkpoint_id

    ckpt = tmp_path / "a.ckpt"
    ckpt.write_bytes(b"weights one")
    ov = ["task=GMM-0", "cost_model=gnn", f"checkpoint={ckpt}", "trials=1"]
    here = bench.tune_target(ov)
    wd = bench.run_dir(tmp_path, "GMM-0", "gnn", 1)
    wd.mkdir(parents=True)
    ran = checkpoint_id(ckpt)
    opts = _gnn_settings(ov)
    (wd / "summary.json").write_text(json.dumps({**_run([2.0], [5.0]), "overrides": ov, "target": here,
                                                 "checkpoint": ran, "gnn_settings": opts}))
    assert bench.run_one(wd, ov)["resumed"] is True
    ckpt.write_bytes(b"weights two")  # retrained in place: same path, other weights
    assert checkpoint_id(ckpt)["sha256"] != ran["sha256"]
    with pytest.raises(SystemExit, match=f"tuned with checkpoint {ran['sha256']}, .*a.ckpt is now .*another --out"):
        bench.run_one(wd, ov)
    # a GNN summary that does not say which weights scored it is not passed off as this checkpoint's
    (wd / "summary.json").write_text(json.dumps({**_run([2.0], [5.0]), "overrides": ov, "target": here}))
    with pytest.raises(SystemExit, match="tuned with an unrecorded checkpoint"):
        bench.run_one(wd, ov)
    # XGB runs carry no checkpoint and are read back whatever the GNN's file holds
    xd = bench.run_dir(tmp_path, "GMM-0", "xgb", 1)
    xd.mkdir(parents=True)
    xov = ["task=GMM-0", "cost_model=xgb", "trials=1"]
    (xd / "summary.json").write_text(json.dumps({**_run([2.0], [5.0]), "overrides": xov, "target": here}))
    assert bench.run_one(xd, xov)["resumed"] is True
    # ... and under any --checkpoint (an XGB run of one GNN's benchmark is the baseline of another's)
    assert bench.run_one(xd, [*xov, f"checkpoint={ckpt}"])["resumed"] is True
    # a GNN run moved with its checkpoint file: the same weights at another path are the same model
    moved = tmp_path / "moved.ckpt"
    moved.write_bytes(ckpt.read_bytes())
    (wd / "summary.json").write_text(json.dumps({**_run([2.0], [5.0]), "overrides": ov, "target": here,
                                                 "checkpoint": checkpoint_id(ckpt), "gnn_settings": opts}))
    mov = [o if not o.startswith("checkpoint=") else f"checkpoint={moved}" for o in ov]
    assert bench.run_one(wd, mov)["resumed"] is True
    with pytest.raises(SystemExit, match="tuned with other settings"):
        bench.run_one(xd, [*xov, "trials=2"])  # the search's own settings still decide


def _gnn_settings(overrides: list[str]) -> dict:
    from perfmodel.config import compose
    from perfmodel.tune import run_settings

    return run_settings(compose("tune", overrides))


def test_a_finished_gnn_run_of_other_options_is_never_read_back(bench, tmp_path: Path) -> None:
    from perfmodel.predictor import checkpoint_id

    ckpt = tmp_path / "a.ckpt"
    ckpt.write_bytes(b"weights one")
    ov = ["task=GMM-0", "cost_model=gnn", f"checkpoint={ckpt}", "trials=1"]
    here, opts = bench.tune_target(ov), _gnn_settings(ov)
    assert set(opts) >= {"frozen", "online", "ridge_alpha", "explore"}
    wd = bench.run_dir(tmp_path, "GMM-0", "gnn", 1)
    wd.mkdir(parents=True)

    def stored(overrides: list[str], gnn_settings: dict | None) -> None:
        (wd / "summary.json").write_text(json.dumps({**_run([2.0], [5.0]), "overrides": overrides, "target": here,
                                                     "checkpoint": checkpoint_id(ckpt), "gnn_settings": gnn_settings}))

    # run when the default ridge penalty was another: not this configuration's run, though no override differs
    stored(ov, {**opts, "ridge_alpha": 1000.0})
    with pytest.raises(SystemExit, match="tuned with GNN options .*ridge_alpha.*they are now .*another --out"):
        bench.run_one(wd, ov)
    stored(ov, None)  # a summary that does not say
    with pytest.raises(SystemExit, match=r"GNN options \(unrecorded\)"):
        bench.run_one(wd, ov)
    # run with the options set by overrides that today's defaults give: the same run
    stored([*ov, f"gnn.ridge_alpha={opts['ridge_alpha']}"], opts)
    assert bench.run_one(wd, ov)["resumed"] is True
    with pytest.raises(SystemExit, match="tuned with GNN options"):  # and an override that changes them is seen
        bench.run_one(wd, [*ov, "gnn.explore=2.0"])
    with pytest.raises(SystemExit, match="tuned with GNN options .*'ridge_alpha': 10.0"):  # a fixed penalty
        bench.run_one(wd, [*ov, "gnn.ridge_alpha=10"])
    # diversity is listed only when on, its rounds only when limited, so runs from before either existed still
    # read back; a run with other diversity settings is seen
    off = _gnn_settings([*ov, "gnn.diversity=0", "gnn.diversity_rounds=8"])
    assert "diversity" not in off and "diversity_rounds" not in off
    every = _gnn_settings([*ov, "gnn.diversity=0.5", "gnn.diversity_rounds=0"])
    assert every["diversity"] == 0.5 and "diversity_rounds" not in every
    assert _gnn_settings([*ov, "gnn.diversity=0.5", "gnn.diversity_rounds=8"])["diversity_rounds"] == 8
    assert "diversity_signature" not in _gnn_settings([*ov, "gnn.diversity=0.5"])  # off: runs before it read back
    sig = _gnn_settings([*ov, "gnn.diversity=0", "gnn.diversity_signature=0.2"])
    assert sig["diversity_signature"] == 0.2 and sig["diversity"] == 0.0
    # the stall only where it can act (rounds limited): a run before it existed reads back
    assert "diversity_stall" not in _gnn_settings([*ov, "gnn.diversity=0.5", "gnn.diversity_rounds=0",
                                                   "gnn.diversity_stall=3"])
    assert _gnn_settings([*ov, "gnn.diversity=0.5", "gnn.diversity_rounds=8",
                          "gnn.diversity_stall=3"])["diversity_stall"] == 3
    assert "diversity_stall" not in _gnn_settings(ov)  # the default (0)
    with pytest.raises(SystemExit, match="tuned with GNN options .*'diversity_stall': 3"):
        bench.run_one(wd, [*ov, "gnn.diversity_stall=3"])
    with pytest.raises(SystemExit, match="tuned with GNN options .*'diversity': 0.7"):
        bench.run_one(wd, [*ov, "gnn.diversity=0.7"])


def test_scoring_throughput_is_read_back_only_for_the_same_weights(bench, tmp_path: Path, monkeypatch) -> None:
    ckpt, path, calls = tmp_path / "a.ckpt", tmp_path / "throughput.json", []
    ckpt.write_bytes(b"weights one")
    monkeypatch.setattr(bench, "scoring_throughput",  # the measurement itself is the slow test's
                        lambda task, runs, c: calls.append(c) or {"gnn": 10.0 * len(calls), "xgb": 5.0})
    assert bench._throughput(path, "GMM-0", [], str(ckpt))["gnn"] == 10.0
    assert bench._throughput(path, "GMM-0", [], str(ckpt))["gnn"] == 10.0 and len(calls) == 1  # read back
    ckpt.write_bytes(b"weights two")
    assert bench._throughput(path, "GMM-0", [], str(ckpt))["gnn"] == 20.0 and len(calls) == 2  # measured again
    assert json.loads(path.read_text())["gnn"] == 20.0


def test_retimed_finals_enter_the_comparison_and_are_read_back_for_the_same_runs(bench, tmp_path: Path,
                                                                                  monkeypatch) -> None:
    path, calls = tmp_path / "retimed.json", []

    def fake(runs: dict, *, overrides: list[str], top: int) -> dict:  # the measurement itself is the slow test's
        calls.append(sorted(runs))
        return {"top": top, "passes": 2, "seconds": 1.0, "pass_median_rel": 0.01,
                "runs": {k: {"best_s": {"gnn-s1": 2.0, "xgb-s1": 2.5}.get(k, 3.0), "run_best_s": r["best_s"]}
                         for k, r in runs.items()}}

    monkeypatch.setattr(bench, "retime_finals", fake)
    runs = {"gnn-s1": _run([4.0, 3.0], [30, 70]), "xgb-s1": _run([5.0, 2.0], [20, 40])}
    rt = bench._retimed(path, runs, overrides=[], top=3)
    assert bench._retimed(path, runs, overrides=[], top=3) == rt and len(calls) == 1  # read back
    bench._retimed(path, runs, overrides=[], top=2)
    runs["random-s1"] = _run([6.0], [10])
    rt = bench._retimed(path, runs, overrides=[], top=2)  # another set of runs: all re-timed together
    assert calls == [["gnn-s1", "xgb-s1"]] * 2 + [["gnn-s1", "random-s1", "xgb-s1"]]
    rep = bench.task_report("T", {("gnn", 1): runs["gnn-s1"], ("xgb", 1): runs["xgb-s1"]}, 2)
    bench.add_retimed(rep, rt)
    # stored: the GNN's final 1.5x XGB's; re-timed side by side: 0.8x
    assert rep["gnn_vs_xgb"]["1"]["final_ratio"] == 1.5 and rep["gnn_vs_xgb"]["1"]["final_ratio_retimed"] == 0.8
    assert rep["retimed_final_s"]["random-s1"] == 3.0 and rep["retime"]["top"] == 2
    assert "within_noise" not in rep["gnn_vs_xgb"]["1"]  # no curves given: no second comparison


def test_reached_within_the_retiming_spread_counts_for_both_models(bench) -> None:
    # XGB's final 2.0 after 6 trials (2.08 after 3); the GNN's best 2.05 after 2 trials, never <= 2.02
    xgb = _run([5.0, 4.0, 2.08, 2.08, 2.08, 2.0, 2.0, 2.0], [10, 20, 30, 40, 50, 60, 70, 80])
    gnn = _run([3.0, 2.05, 2.05, 2.05, 2.05, 2.05, 2.05, 2.05], [15, 30, 45, 60, 75, 90, 105, 120])
    runs = {("gnn", 1): gnn, ("xgb", 1): xgb}

    def rt(rel: float | None) -> dict:
        return {"top": 2, "passes": 2, "seconds": 1.0, "pass_median_rel": rel,
                "runs": {"gnn-s1": {"best_s": 2.05}, "xgb-s1": {"best_s": 2.0}}}

    rep = bench.task_report("T", runs, 8)
    assert rep["gnn_vs_xgb"]["1"]["trials_saved"] == 0.75  # 1%: the GNN never reached it, its 8 trials count
    bench.add_retimed(rep, rt(0.05), runs)
    # a 5% spread: XGB reached its own final's band after 3 trials / 30 s, the GNN after 2 / 30 s
    assert rep["gnn_vs_xgb"]["1"]["within_noise"] == {"rel_tol": 0.05, "trials_saved": 1.5, "seconds_saved": 1.0}
    bench.add_retimed(rep, rt(0.001), runs)  # a spread below REACH_TOL: REACH_TOL, the headline's comparison
    assert rep["gnn_vs_xgb"]["1"]["within_noise"] == {"rel_tol": bench.REACH_TOL, "trials_saved": 0.75,
                                                      "seconds_saved": 0.5}


@pytest.mark.slow
def test_resume_skips_done_runs_and_redoes_unfinished_ones(bench, tmp_path: Path, capsys) -> None:
    from perfmodel.collect.database import Database
    from perfmodel.plugin import DEFAULT_CHECKPOINT

    if not DEFAULT_CHECKPOINT.is_file():
        pytest.skip("perfmodel/pretrained/gnn.ckpt is not trained yet")
    argv = ["--tasks", "GMM-0", "--models", "gnn,xgb", "--seeds", "1", "--trials", "4", "--per-iter", "4",
            "--population", "64", "--network", "none", "--no-guard", "--out", str(tmp_path),
            "--override", "+protocol.rounds=2", "--override", "+protocol.max_rounds=2",
            "--override", "+protocol.keep=1", "--override", "+protocol.min_repeat_ms=1"]
    res = bench.main(argv)
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last == json.loads(json.dumps(res))
    for key in ("trials_saved_vs_xgb", "seconds_saved_vs_xgb", "final_best_ratio_vs_xgb", "network_latency_ms",
                "cost_model_share", "predict_per_s_gnn", "predict_per_s_xgb", "tasks", "tune_minutes"):
        assert key in res
    assert res["compared"] == 1 and res["resumed_runs"] == 0 and res["gnn_fallback"] == 0
    assert set(res["cost_model_share"]) == {"gnn", "xgb"} and res["predict_per_s_gnn"] > 0
    rep = res["tasks"]["GMM-0"]
    assert set(rep["best_s"]) == {"gnn-s1", "xgb-s1"} and Path(rep["plot"]).is_file()
    # the finals re-timed side by side: each run's 3 fastest schedules, timed again, near their stored times
    rt = json.loads((tmp_path / "GMM-0" / "retimed.json").read_text())
    assert set(rt["runs"]) == {"gnn-s1", "xgb-s1"} and all(len(r["traces"]) == 3 for r in rt["runs"].values())
    for key, row in rt["runs"].items():
        assert row["best_s"] == min(row["retimed_s"]) and 0.2 < row["best_s"] / rep["final_best_s"][key] < 5, key
    assert res["final_best_ratio_vs_xgb_retimed"] == pytest.approx(
        rt["runs"]["gnn-s1"]["best_s"] / rt["runs"]["xgb-s1"]["best_s"], rel=1e-3)
    gnn_dir, xgb_dir = tmp_path / "GMM-0" / "gnn-s1", tmp_path / "GMM-0" / "xgb-s1"
    summary = json.loads((gnn_dir / "summary.json").read_text())
    assert len(summary["seconds"]) == len(summary["curve"]) == 4
    assert summary["target"] == res["target"] == bench.tune_target(["trials=4"])  # what it was tuned for
    from perfmodel.predictor import checkpoint_id

    assert summary["checkpoint"] == checkpoint_id(DEFAULT_CHECKPOINT)  # which weights scored it
    assert summary["gnn_settings"] == _gnn_settings(["cost_model=gnn"])  # and how (its options)
    xgb_records = (xgb_dir / "database_tuning_record.json").read_text()

    # the GNN run "killed" before its summary: its half database stays; the XGB run is done
    (gnn_dir / "summary.json").unlink()
    gnn_records = (gnn_dir / "database_tuning_record.json").read_text()
    only = bench.main([*argv, "--report-only"])  # reports what finished, tunes nothing
    assert only["missing_runs"] == ["GMM-0 gnn-s1"] and only["resumed_runs"] == 1 and only["compared"] == 0
    assert set(only["tasks"]["GMM-0"]["final_best_s"]) == {"xgb-s1"}
    assert (gnn_dir / "database_tuning_record.json").read_text() == gnn_records
    assert not (gnn_dir / "summary.json").exists()
    capsys.readouterr()
    res2 = bench.main(argv)
    printed = capsys.readouterr().out
    assert res2["resumed_runs"] == 1 and "xgb-s1: done before" in printed and "unfinished run" in printed
    assert (xgb_dir / "database_tuning_record.json").read_text() == xgb_records  # not touched
    assert len(Database.open(gnn_dir).records) == 4  # started clean: 4 new records, not 4 old + 4
    assert json.loads((gnn_dir / "summary.json").read_text())["trials"] == 4
    assert res2["tasks"]["GMM-0"]["final_best_s"]["xgb-s1"] == rep["final_best_s"]["xgb-s1"]


def test_the_exploring_gnn_is_compared_with_xgb_on_its_own(bench) -> None:
    """--models gnn-explore: its own run (cost_model=gnn, gnn.explore=w) and its own comparison with XGB."""
    assert bench.model_overrides("gnn-explore", 0.5) == ["cost_model=gnn", "gnn.explore=0.5"]
    assert bench.model_overrides("xgb", 0.5) == ["cost_model=xgb"]
    runs = {("gnn", 1): _run([4.0, 2.0], [30, 70]), ("gnn-explore", 1): _run([3.0, 1.0], [30, 70]),
            ("xgb", 1): _run([5.0, 2.0], [20, 40])}
    rep = bench.task_report("T", runs, 2)
    assert rep["gnn_vs_xgb"]["1"]["final_ratio"] == 1.0
    assert rep["explore_vs_xgb"]["1"]["final_ratio"] == 0.5
    assert rep["explore_vs_xgb"]["1"]["gnn_trials_to_xgb_final"] == 2
    # --models gnn-gp likewise (cost_model=gnn, gnn.online=gp), with its own headline keys
    assert bench.model_overrides("gnn-gp", 0.5) == ["cost_model=gnn", "gnn.online=gp"]
    runs[("gnn-gp", 1)] = _run([6.0, 4.0], [30, 70])
    rep = bench.task_report("T", runs, 2)
    assert rep["gp_vs_xgb"]["1"]["final_ratio"] == 2.0 and rep["gp_vs_xgb"]["1"]["gnn_trials_to_xgb_final"] is None
    keys = bench._saved("gp", list(rep["gp_vs_xgb"].values()))
    assert keys["gp_final_best_ratio_vs_xgb"] == pytest.approx(2.0) and set(keys) == {
        "gp_trials_saved_vs_xgb", "gp_seconds_saved_vs_xgb", "gp_final_best_ratio_vs_xgb",
        "gp_final_best_ratio_vs_xgb_retimed"}
    assert keys["gp_final_best_ratio_vs_xgb_retimed"] is None  # nothing re-timed
    # --models gnn-stall likewise (cost_model=gnn, gnn.diversity_stall=--stall), compared with XGB on its own
    assert bench.model_overrides("gnn-stall", 0.5, 4) == ["cost_model=gnn", "gnn.diversity_stall=4"]
    runs[("gnn-stall", 1)] = _run([5.0, 1.5], [30, 70])
    rep = bench.task_report("T", runs, 2)
    assert rep["stall_vs_xgb"]["1"]["final_ratio"] == 0.75
    assert rep["stall_vs_xgb"]["1"]["gnn_trials_to_xgb_final"] == 2
    bench.add_retimed(rep, {"top": 1, "passes": 2, "seconds": 1.0, "pass_median_rel": 0.01, "runs": {
        "gnn-stall-s1": {"best_s": 1.2}, "gnn-s1": {"best_s": 2.0}, "xgb-s1": {"best_s": 1.6}}})
    assert rep["stall_vs_xgb"]["1"]["final_ratio_retimed"] == 0.75
    assert rep["gnn_vs_xgb"]["1"]["final_ratio_retimed"] == 1.25
    keys = bench._saved("stall", list(rep["stall_vs_xgb"].values()))
    assert keys["stall_final_best_ratio_vs_xgb_retimed"] == pytest.approx(0.75)
