"""Does the pretrained GNN cut the trials and the seconds MetaSchedule needs to reach a fast kernel, next to TVM's XGBoost model?

On tasks the shipped checkpoint never saw (not in conf/collect.yaml ``tasks_default``) and on one
whole network, runs one ``perfmodel tune`` per (task, cost model, search seed) -- the pretrained
GNN, TVM's XGBModel (from scratch, its default) and random -- all in this one run, with the same
budget, timing protocol and native target. The network (default ``bert_layer`` batch 1) is tuned
with a global budget over all its tasks by TVM's gradient task scheduler, one seed, then compiled
with each model's database and timed end to end (beside its untuned build and PyTorch eager).

Reports per task and for the network: best latency against trials and against wall-clock seconds
(the time each record was measured, from the runner, relative to the run's start; a picture per
task, ``<out>/<task>/best_latency.png``), the trials and seconds the GNN needs to reach XGB's final
best (within 1%: re-timing one schedule varies that much), the final bests, each cost model's share of the tuning time (seconds in predict + update /
total), the GNN's fallback counter, and the scoring throughput of the GNN and of XGB on the same
candidates (the task's measured schedules; featurization included; XGB trained on them first, since
during tuning it scores at random until it has 100 measurements). A run whose every candidate fails
is reported and the benchmark goes on; a run that raises is reported and redone by the next start.
Since every run times its candidates in its own minutes, a slow phase of the machine during one run shifts
its whole curve (on the Zen 3 the four NRM-3 runs measured the same 60 schedules 0.53-1.9x apart), so each
task's finals are also re-timed side by side (``--retime``: the fastest 3 schedules of every finished run,
all in one batch, two passes; stored as ``<out>/<task>/retimed.json`` and read back for the same runs).

Resumable: each (task, model, seed) tunes into its own ``<out>/<task>/<model>-s<seed>/`` (its
MetaSchedule database and logs) and, once finished, writes ``summary.json`` there. A run with a
``summary.json`` is read back, not redone. A run killed before its summary (a half database, no
summary) is started clean on the next start: its directory is removed and the run redone from
scratch, since a search continued from a half database would have neither its own curve nor its
own clock. So a killed benchmark is restarted with the same command and loses at most the run in
progress; ``--report-only`` tunes nothing and reports the finished runs (``missing_runs`` lists the rest).
A finished run tuned for another target (``mcpu``, threads: the machine under this session may change between
sessions) stops the benchmark with one line: kernels of two CPUs are never compared; give each machine its own
``--out``.

Last line: JSON with ``trials_saved_vs_xgb`` (median over tasks and seeds of the trials XGB took to
reach its final best / the trials the GNN took to reach it; the GNN's whole budget when it never
did, an upper bound), ``seconds_saved_vs_xgb`` (the same with seconds), ``final_best_ratio_vs_xgb``
(geometric mean over tasks and seeds of GNN final best / XGB final best; lower is better),
``final_best_ratio_vs_xgb_retimed`` (the same with the finals re-timed side by side; ``None`` with ``--retime 0``),
``trials_saved_vs_xgb_within_noise`` / ``seconds_saved_vs_xgb_within_noise`` (the first two with "reached"
meaning within the task's re-timing spread of XGB's final instead of 1%, for both models; ``None`` without
re-timing),
``network_latency_ms`` (per model, measured end to end: every model's database built ``--network-builds``
times and timed in this one process, alternated, since timings of two processes are not comparable here;
each run's own timing, taken after its tuning, is ``network.network_latency_ms_own_run``),
``cost_model_share`` (per model),
``predict_per_s_gnn``, ``predict_per_s_xgb``, ``network`` (the network's details) and ``tasks``
(per task: best latency at each budget of trials and of seconds, per model and seed). GNN modes
that ``--models`` may add beside ``gnn`` (each its own runs and comparison with XGB, and its own
``<prefix>_trials_saved_vs_xgb`` / ``_seconds_saved_vs_xgb`` / ``_final_best_ratio_vs_xgb`` keys):
``gnn-explore`` (``gnn.explore=--explore``, prefix ``explore``), ``gnn-gp`` (``gnn.online=gp``,
prefix ``gp``) and ``gnn-stall`` (``gnn.diversity_stall=--stall``, prefix ``stall``).

A search "seed" pins MetaSchedule's evolutionary search only on one search thread
(``--override search_threads=1``, ~+10 s per round); with the default (the physical cores) two runs
with one seed and one model draw different candidates from the first round on, so seeds are
independent replicates, not paired runs (RESULTS.md). ``--override`` enters every run's settings, which
the resume check compares: use a fresh ``--out`` for it.

    python benchmarks/bench_tune.py [--quick] [--tasks A,B|none]
        [--models gnn,gnn-explore,gnn-gp,gnn-stall,xgb,random] [--trials N] [--seeds 1,2]
        [--network bert_layer|resnet18|none] [--network-trials N] [--network-builds N]
        [--stall N] [--checkpoint PATH] [--no-guard] [--retime N] [--override KEY=VALUE ...] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
# Not in the pretrained model's training data (conf/collect.yaml tasks_default); small enough to afford.
TASKS = ["GRP-3", "SFM-3", "TBG-3", "mobilenetv2-b8/fused_conv2d14_subtract9_divide9_multiply9_add17",
         "CAP-1", "NRM-3", "DIL-3", "resnet18-b8/fused_matmul_add13"]
QUICK_TASKS = ["GRP-3", "TBG-3", "resnet18-b8/fused_matmul_add13"]  # their bad candidates are still fast to time
MODELS = ["gnn", "xgb", "random"]
EXPLORE = "gnn-explore"  # also in --models: the GNN scoring with exploration from doubt (gnn.explore=--explore)
GP = "gnn-gp"  # also in --models: the GNN learning each task by a Gaussian process (gnn.online=gp)
STALL = "gnn-stall"  # also in --models: the GNN spreading its rounds again once stalled (gnn.diversity_stall)
# GNN modes compared with XGB like "gnn": name -> prefix of their keys
VARIANTS = {EXPLORE: "explore", GP: "gp", STALL: "stall"}
TARGET_SAVED = 4.0
REACH_TOL = 0.01  # "reached XGB's final best": within 1% of it (re-timing the same schedule differs by ~1-4%)
SUMMARY = "summary.json"  # written last by a finished run: its presence alone marks the run done


def budgets(max_trials: int) -> list[int]:
    """32, 64, 128, ... up to ``max_trials`` (and ``max_trials`` itself)."""
    out, b = [], 32
    while b < max_trials:
        out.append(b)
        b *= 2
    return out + [max_trials]


def time_marks(max_s: float) -> list[int]:
    """30, 60, 120, ... seconds up to the first mark at or past ``max_s``."""
    out, t = [], 30
    while True:
        out.append(t)
        if t >= max_s:
            return out
        t *= 2


def run_dir(out_dir: Path, label: str, model: str, seed: int) -> Path:
    """Where the (task or network ``label``, ``model``, ``seed``) run keeps its database and summary."""
    return out_dir / label.replace("/", "__") / f"{model}-s{seed}"


def run_one(wd: Path, overrides: list[str]) -> dict[str, Any]:
    """One ``perfmodel tune`` run into ``wd``, or its stored summary when it finished before.

    A finished run (``wd/summary.json``) is read back with ``resumed: True``; one finished with other
    settings, for another target, or (a GNN run) with other checkpoint weights or other scoring options
    (``gnn_settings``: compared as they were and are, whether set by an override or by a default) raises
    (a restart must use the same flags and model, or another ``--out``). Anything else in ``wd`` is an
    unfinished run's: removed, and the run done from scratch. The summary is written atomically, after
    the run. A run that raises returns ``{"error": ...}`` and writes no summary.
    """
    from perfmodel.config import compose
    from perfmodel.tune import run_checkpoint, run_settings, tune

    summary = wd / SUMMARY
    if summary.is_file():
        done = json.loads(summary.read_text())
        if _run_settings(done.get("overrides") or []) != _run_settings(overrides):
            raise SystemExit(f"{wd} was tuned with other settings ({done.get('overrides')}, now {overrides}): "
                             "restart with the same flags, or use another --out")
        from perfmodel.workloads import describe_target, targets_match

        have, want = run_target(wd, done), tune_target(overrides)
        if have is not None and not targets_match(have, want):
            raise SystemExit(f"{wd} was tuned for {describe_target(have)}, this machine tunes for {describe_target(want)}: "
                             "runs of two targets are never compared; use another --out")
        if _option(overrides, "cost_model") == "gnn":  # a GNN run: same weights and options, or not this model's
            cfg = compose("tune", overrides)
            now, ran = run_checkpoint(cfg), (done.get("checkpoint") or {}).get("sha256")
            if ran != now["sha256"]:
                raise SystemExit(f"{wd} was tuned with {f'checkpoint {ran}' if ran else 'an unrecorded checkpoint'}, "
                                 f"{now['path']} is now {now['sha256']}: runs of two models are never compared under "
                                 "one name; move the run aside (e.g. to gnn-<sha>-s1) or use another --out")
            if done.get("gnn_settings") != run_settings(cfg):
                raise SystemExit(f"{wd} was tuned with GNN options {done.get('gnn_settings') or '(unrecorded)'}, they are "
                                 f"now {run_settings(cfg)}: move the run aside (e.g. to gnn-<what differs>-s1) or use "
                                 "another --out")
        return {**done, "target": have or want, "resumed": True}
    if wd.exists():
        print(f"  {wd}: an unfinished run (no {SUMMARY}): starting it clean", flush=True)
        shutil.rmtree(wd)
    try:
        out = tune(compose("tune", [*overrides, f"work_dir={wd}"]))
    except Exception as e:  # noqa: BLE001  reported; the benchmark goes on, the next start redoes it
        traceback.print_exc()
        return {"error": f"{type(e).__name__}: {e}".strip().splitlines()[0][:300], "work_dir": str(wd)}
    out = {**out, "overrides": overrides}
    _write_json(summary, out)
    return {**out, "resumed": False}


def _write_json(path: Path, obj: Any) -> None:
    """``obj`` as JSON at ``path``, atomically (a killed benchmark leaves the old file or the new one)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def _run_settings(overrides: list[str]) -> list[str]:
    """``overrides`` without the GNN's: its ``gnn.*`` options (a GNN run's are compared as ``gnn_settings``) and
    ``checkpoint=`` (a GNN run's weights are compared by digest, wherever the file lies; XGB and random never
    read it, so their runs are read back under any ``--checkpoint``)."""
    return [o for o in overrides if not o.startswith(("gnn.", "checkpoint="))]


def _option(overrides: list[str], key: str) -> str | None:
    """The value of ``key=...`` among ``overrides`` (the last one wins), ``None`` when absent."""
    vals = [o.split("=", 1)[1] for o in overrides if o.startswith(f"{key}=")]
    return vals[-1] if vals else None


def tune_target(overrides: list[str]) -> dict[str, Any]:
    """``{kind, mcpu, threads}`` that ``perfmodel tune`` with ``overrides`` tunes for on this machine."""
    from perfmodel import tune
    from perfmodel.config import compose
    from perfmodel.workloads import target_summary

    return target_summary(tune.tune_target(compose("tune", overrides)))


def run_target(wd: Path, done: dict) -> dict[str, Any] | None:
    """The target a finished run was tuned for: its summary's, else its database's first record's
    (runs from before the summary recorded it); ``None`` when neither says."""
    if done.get("target"):
        return done["target"]
    from perfmodel.workloads import target_summary

    path = wd / "database_tuning_record.json"
    try:
        with path.open() as f:
            for line in f:
                if line.strip():
                    return target_summary(json.loads(line)[1][2])
    except (OSError, ValueError, IndexError, TypeError, KeyError):
        return None
    return None


def curve_of(run: dict) -> list[float]:
    """A run's best-so-far latency per trial, ``inf`` where there is none yet."""
    return [math.inf if v is None else float(v) for v in run.get("curve") or []]


def all_failed(run: dict) -> bool:
    """No valid measurement at all in a finished run (for a network: in none of its tasks)."""
    tasks = run.get("tasks") or {}
    if len(tasks) > 1:
        return all(v is None for v in tasks.values())
    return not any(v is not None for v in run.get("curve") or [])


def best_at_seconds(curve: list[float], seconds: list[float] | None, t: float) -> float:
    """Best latency among the trials measured within ``t`` seconds of the run's start."""
    best = math.inf
    for v, s in zip(curve, seconds or []):
        if s > t:
            break
        best = v
    return best


def compare(gnn: dict, xgb: dict, *, rel_tol: float = REACH_TOL) -> dict[str, Any] | None:
    """GNN against XGB in one (task, seed): trials and seconds each needs to reach XGB's final best.

    A curve reaches it at the first trial within ``rel_tol`` of it (XGB's own first such trial too).
    Returns ``None`` when XGB has no valid measurement (nothing to reach). The GNN never reaching it
    counts as its whole budget (trials, seconds), which bounds its ratios from above.
    """
    from perfmodel.plugin.search import trials_to_reach

    xc, gc = curve_of(xgb), curve_of(gnn)
    if not xc or not math.isfinite(xc[-1]) or not gc:
        return None
    target = xc[-1]
    x_trials = trials_to_reach(xc, target, rel_tol=rel_tol)
    g_trials = trials_to_reach(gc, target, rel_tol=rel_tol)
    xs, gs = xgb.get("seconds"), gnn.get("seconds")
    x_secs = xs[x_trials - 1] if xs else None
    g_secs = (gs[g_trials - 1] if g_trials else gs[-1]) if gs else None
    out = {
        "xgb_final_s": target, "gnn_final_s": _fin(gc[-1]),
        "xgb_trials_to_final": x_trials, "gnn_trials_to_xgb_final": g_trials,
        "xgb_seconds_to_final": x_secs, "gnn_seconds_to_xgb_final": g_secs if g_trials else None,
        "trials_saved": round(x_trials / (g_trials or len(gc)), 4),
        "seconds_saved": round(x_secs / g_secs, 4) if x_secs and g_secs else None,
        "final_ratio": round(gc[-1] / target, 4) if math.isfinite(gc[-1]) else None,
    }
    return out


def task_report(label: str, runs: dict[tuple[str, int], dict], trials: int) -> dict[str, Any]:
    """Per-task numbers from its runs (keyed by (model, seed)): curves at budgets, GNN vs XGB per seed."""
    ok = {k: r for k, r in runs.items() if "error" not in r}
    bs = budgets(trials)
    max_s = max((r["seconds"][-1] for r in ok.values() if r.get("seconds")), default=30.0)
    ts = time_marks(max_s)
    rep: dict[str, Any] = {"best_s": {}, "best_s_at_seconds": {}, "final_best_s": {}, "tune_s": {}, "failed": [],
                           "errors": {f"{m}-s{s}": r["error"] for (m, s), r in runs.items() if "error" in r}}
    for (m, s), r in ok.items():
        key, c = f"{m}-s{s}", curve_of(r)
        rep["best_s"][key] = {str(b): _fin(_best_at(c, b)) for b in bs}
        rep["best_s_at_seconds"][key] = {str(t): _fin(best_at_seconds(c, r.get("seconds"), t)) for t in ts}
        rep["final_best_s"][key] = _fin(c[-1]) if c else None
        rep["tune_s"][key] = r.get("tune_s")
        if all_failed(r):
            rep["failed"].append(key)
    for gnn, key in (("gnn", "gnn_vs_xgb"), *((v, f"{p}_vs_xgb") for v, p in VARIANTS.items())):
        rep[key] = {}
        for (m, s), r in ok.items():
            if m == gnn and ("xgb", s) in ok:
                cmp = compare(r, ok[("xgb", s)])
                if cmp is not None:
                    rep[key][str(s)] = cmp
    rep["cost_model_share"] = {m: _mean([r["cost_model_share"] for (mm, _), r in ok.items()
                                         if mm == m and r.get("cost_model_share") is not None])
                               for m in sorted({m for m, _ in ok})}
    # the busy-machine guard's seconds inside each run's tuning seconds (runs from before it was recorded: absent)
    rep["guard_s"] = {f"{m}-s{s}": round(g["waited_s"] + g["remeasure_s"], 1)
                      for (m, s), r in ok.items() if (g := r.get("guard"))}
    rep["gnn_fallback"] = sum(int((r.get("gnn") or {}).get("fallback", 0)) for (m, _), r in ok.items()
                              if m == "gnn" or m in VARIANTS)
    rep["seconds_marks"] = ts
    return rep


def scoring_throughput(task: str, runs: list[dict], checkpoint: str | None, *, max_cands: int = 512) -> dict[str, float]:
    """Candidates scored per second by the GNN and by a trained XGBModel on the task's measured schedules."""
    import numpy as np

    from perfmodel import workloads
    from perfmodel._tvm import load_ms
    from perfmodel.collect.collector import make_target
    from perfmodel.collect.database import Database
    from perfmodel.plugin import GNNCostModel
    from perfmodel.tune import physical_cores

    ms = load_ms()
    mod = workloads.get_task(task).mod
    ctx = ms.TuneContext(mod=mod, target=make_target("native", 1), space_generator="post-order-apply",
                         search_strategy="evolutionary", task_name="main")
    cands, results = [], []
    for r in runs:
        db = Database.open(r["work_dir"])
        for raw in db.records:
            if len(cands) >= max_cands:
                break
            try:
                cands.append(db.tuning_record(raw).as_measure_candidate())
            except Exception:  # noqa: BLE001  a record that does not replay is skipped
                continue
            results.append(ms.runner.RunnerResult(raw.run_secs if raw.ok else None, None if raw.ok else "failed"))
    if len(cands) < 8:
        return {"gnn": 0.0, "xgb": 0.0, "n": len(cands)}
    xgb = ms.cost_model.XGBModel(num_warmup_samples=0, num_tuning_cores=physical_cores())
    xgb.update(ctx, cands, results)
    # no feature cache: the loop below scores the same candidates again, which a cache would turn into
    # lookups (the search hands in new schedules; only ~11% come back): featurize on every pass, as XGB does
    gnn = GNNCostModel.from_checkpoint(checkpoint, frozen=True, threads=1, feature_cache=0,
                                      featurize_workers=physical_cores())  # XGB's cores, as in tuning
    out: dict[str, float] = {"n": len(cands)}
    for name, model in (("gnn", gnn), ("xgb", xgb)):
        model.predict(ctx, cands[:8])  # warm-up
        n, t0 = 0, time.perf_counter()
        while n == 0 or time.perf_counter() - t0 < 2.0:
            scores = model.predict(ctx, cands)
            n += len(cands)
        out[name] = n / (time.perf_counter() - t0)
        assert np.isfinite(scores).all()
    return out


def retime_finals(runs: dict[str, dict], *, overrides: list[str], top: int, passes: int = 2) -> dict[str, Any]:
    """Each finished run's ``top`` fastest distinct schedules (by their stored time) timed again, every run's
    together: one batch per pass (the protocol interleaves its rounds over the batch), ``passes`` passes
    (the batch reversed every other one), each schedule's fastest pass kept. A run's final best is then
    the fastest of its ``top``, all measured in the same minutes: a slow phase of the machine during one
    run (the Zen 3's NRM-3 runs measured the same 60 schedules 0.53-1.9x apart) no longer decides a ratio.

    Returns ``{top, passes, seconds, pass_median_rel (|pass 2 / pass 1 - 1|, median), runs: {key:
    {traces, stored_s, retimed_s, best_s, run_best_s}}}`` (``retimed_s`` ``None`` where every pass failed).
    """
    import numpy as np

    from perfmodel import tune
    from perfmodel.collect.database import Database, trace_hash
    from perfmodel.collect.measure import LocalMeasurer, label_secs
    from perfmodel.config import compose

    cfg = compose("tune", overrides)
    protocol, guard = tune.measure_settings(cfg)
    target = tune.tune_target(cfg)
    picked: list[tuple[str, str, float, tuple[Any, Any]]] = []  # run key, trace id, stored s, (module, args)
    for key, r in runs.items():
        db = Database.open(r["work_dir"])
        fastest: dict[str, tuple[float, Any]] = {}
        for raw in (x for x in db.records if x.ok):
            t = label_secs(raw.run_secs)
            if t < fastest.get(raw.key, (math.inf,))[0]:
                fastest[raw.key] = (t, raw)
        n = 0
        for t, raw in sorted(fastest.values(), key=lambda x: x[0]):
            if n == top:
                break
            try:
                c = db.tuning_record(raw).as_measure_candidate()
            except Exception:  # noqa: BLE001  a record that does not replay is skipped
                continue
            picked.append((key, trace_hash(raw.key), t, (c.sch.mod, c.args_info)))
            n += 1
    times, t0 = np.full((passes, len(picked)), np.nan), time.perf_counter()
    for p in range(passes if picked else 0):
        order = list(range(len(picked)))[::-1] if p % 2 else list(range(len(picked)))
        with LocalMeasurer(target=target, protocol=protocol, guard=guard) as m:
            res = m.measure([picked[i][3] for i in order])
        for i, rr in zip(order, res):
            if rr.ok:
                times[p, i] = label_secs(rr.run_secs)
    out: dict[str, Any] = {"top": top, "passes": passes, "seconds": round(time.perf_counter() - t0, 1),
                           "runs": {k: {"traces": [], "stored_s": [], "retimed_s": [], "run_best_s": r.get("best_s")}
                                    for k, r in runs.items()}}
    for i, (key, h, t, _) in enumerate(picked):
        row = out["runs"][key]
        col = times[:, i][np.isfinite(times[:, i])]
        row["traces"].append(h)
        row["stored_s"].append(t)
        row["retimed_s"].append(float(col.min()) if len(col) else None)
    for row in out["runs"].values():
        ok = [v for v in row["retimed_s"] if v is not None]
        row["best_s"] = min(ok) if ok else None
    both = np.isfinite(times).all(0) if passes > 1 else np.zeros(len(picked), bool)
    out["pass_median_rel"] = (round(float(np.median(np.abs(times[1, both] / times[0, both] - 1))), 4)
                              if both.any() else None)
    return out


def add_retimed(rep: dict[str, Any], rt: dict[str, Any], runs: dict[tuple[str, int], dict] | None = None) -> None:
    """Puts :func:`retime_finals`' bests into a task report: ``retimed_final_s`` per run, and
    ``final_ratio_retimed`` (GNN / XGB, re-timed side by side) into each comparison with XGB.

    With the task's ``runs`` (keyed (model, seed)), each comparison also gets ``within_noise``: the
    comparison again with "reached" meaning within the re-timing's pass to pass spread of XGB's final
    (``pass_median_rel``, at least ``REACH_TOL``), for both curves: ``{rel_tol, trials_saved, seconds_saved}``.
    A final best that two passes of the same schedule put 3-8% apart is a band, not a point.
    """
    rep["retimed_final_s"] = {k: row["best_s"] for k, row in rt["runs"].items()}
    rep["retime"] = {k: rt[k] for k in ("top", "passes", "seconds", "pass_median_rel")}
    tol = rt.get("pass_median_rel")
    for gnn, key in (("gnn", "gnn_vs_xgb"), *((v, f"{p}_vs_xgb") for v, p in VARIANTS.items())):
        for seed, c in rep.get(key, {}).items():
            g, x = rep["retimed_final_s"].get(f"{gnn}-s{seed}"), rep["retimed_final_s"].get(f"xgb-s{seed}")
            c["final_ratio_retimed"] = round(g / x, 4) if g and x else None
            pair = (runs or {}).get((gnn, int(seed))), (runs or {}).get(("xgb", int(seed)))
            if tol is not None and all(pair) and (n := compare(*pair, rel_tol=max(REACH_TOL, tol))) is not None:
                c["within_noise"] = {"rel_tol": round(max(REACH_TOL, tol), 4), "trials_saved": n["trials_saved"],
                                     "seconds_saved": n["seconds_saved"]}


def _retimed(path: Path, runs: dict[str, dict], *, overrides: list[str], top: int) -> dict[str, Any]:
    """:func:`retime_finals`, stored beside the task's runs and read back on a restart when it re-timed the
    same finished runs (keys and final bests) with the same ``top``; else measured again, all runs together."""
    want = {k: r.get("best_s") for k, r in runs.items()}
    if path.is_file():
        rt = json.loads(path.read_text())
        if rt.get("top") == top and {k: row.get("run_best_s") for k, row in rt.get("runs", {}).items()} == want:
            return rt
    print(f"\n=== re-timing the {top} fastest schedules of {len(runs)} runs side by side", flush=True)
    rt = retime_finals(runs, overrides=overrides, top=top)
    _write_json(path, rt)
    return rt


def model_overrides(model: str, explore: float, stall: int = 3) -> list[str]:
    """The conf/tune.yaml overrides that make ``model`` (a --models entry) the run's cost model."""
    if model == EXPLORE:
        return ["cost_model=gnn", f"gnn.explore={explore}"]
    if model == STALL:
        return ["cost_model=gnn", f"gnn.diversity_stall={stall}"]
    if model == GP:
        return ["cost_model=gnn", "gnn.online=gp"]
    return [f"cost_model={model}"]


def common_overrides(args: argparse.Namespace) -> list[str]:
    """Overrides of conf/tune.yaml shared by every run of this benchmark."""
    ov = [f"trials_per_iter={args.per_iter}", f"population={args.population}", "plot=false"]
    if args.checkpoint:
        ov.append(f"checkpoint={args.checkpoint}")
    if args.frozen:
        ov.append("gnn.frozen=true")
    if args.run_timeout:
        ov.append(f"+protocol.timeout_s={args.run_timeout}")
    if args.no_guard:
        ov.append("guard.enabled=false")
    return ov + list(args.override)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help=f"{len(QUICK_TASKS)} tasks, 64 trials, one seed, population 256, run timeout 5 s, no network")
    ap.add_argument("--tasks", default=None,
                    help="comma-separated registry tasks (default: the unseen set; none: only the network)")
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated cost models (default gnn,xgb,random)")
    ap.add_argument("--trials", type=int, default=None, help="budget per task (default 256, quick 64)")
    ap.add_argument("--seeds", default=None, help="comma-separated search seeds (default 1,2; quick 1)")
    ap.add_argument("--network", default=None, help="bert_layer | resnet18 | mobilenetv2 | none (default bert_layer, quick none)")
    ap.add_argument("--network-batch", type=int, default=1)
    ap.add_argument("--network-trials", type=int, default=512, help="global budget over the network's tasks")
    ap.add_argument("--network-builds", type=int, default=10,
                    help="builds of each model's network database, timed alternated in one process "
                         "(0: each run's own timing)")
    ap.add_argument("--per-iter", type=int, default=16, help="candidates measured per search round")
    ap.add_argument("--population", type=int, default=None, help="evolutionary population (default 512, quick 256)")
    ap.add_argument("--checkpoint", default=None, help="GNN checkpoint (default: the shipped one)")
    ap.add_argument("--frozen", action="store_true", help="the GNN learns nothing online (gnn.frozen=true)")
    ap.add_argument("--explore", type=float, default=1.0,
                    help=f"gnn.explore of the {EXPLORE} model (score mean - explore * std of the members)")
    ap.add_argument("--stall", type=int, default=3,
                    help=f"gnn.diversity_stall of the {STALL} model (measured rounds without a new best before "
                         "its rounds are spread out again)")
    ap.add_argument("--run-timeout", type=float, default=None,
                    help="seconds a candidate's timing round may take before it counts as failed "
                         "(default: the protocol's, 20; quick 5)")
    ap.add_argument("--no-guard", action="store_true", help="time whatever the machine's load (guard.enabled=false)")
    ap.add_argument("--retime", type=int, default=3, help="re-time this many fastest schedules of every finished run "
                    "of a task side by side, for final bests free of the machine's slow phases (0: off)")
    ap.add_argument("--override", action="append", default=[], help="extra conf/tune.yaml override for every run")
    ap.add_argument("--report-only", action="store_true", help="tune nothing: report the finished runs (read back, "
                    "re-timed, throughput) and list the others under missing_runs")
    ap.add_argument("--out", default=str(REPO / "runs" / "bench_tune"), help="runs (databases, summaries, plots) go here")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    args.trials = args.trials or (64 if args.quick else 256)
    args.population = args.population or (256 if args.quick else 512)
    args.run_timeout = args.run_timeout or (5.0 if args.quick else None)
    seeds = [int(s) for s in (args.seeds or ("1" if args.quick else "1,2")).split(",")]
    models = args.models.split(",")
    network = args.network or ("none" if args.quick else "bert_layer")
    tasks = QUICK_TASKS if args.quick else TASKS
    if args.tasks:
        tasks = [] if args.tasks == "none" else args.tasks.split(",")
    os.environ.setdefault("TVM_NUM_THREADS", "1")

    from perfmodel.plugin import DEFAULT_CHECKPOINT
    from perfmodel.plugin.cost_model import load_predictor
    from perfmodel.plugin.search import plot_curves

    if {"gnn", *VARIANTS} & set(models):
        load_predictor(args.checkpoint or DEFAULT_CHECKPOINT)  # a bad checkpoint fails before any tuning
    seen = [t for t in tasks if t in set(_train_tasks())]
    if seen:
        print(f"warning: {seen} are in the training data (conf/collect.yaml tasks_default)", file=sys.stderr)
    out_dir = Path(args.out)
    common = common_overrides(args)
    t_start = time.perf_counter()
    per_task: dict[str, dict] = {}
    all_runs: dict[tuple[str, str, int], dict] = {}
    thr: dict[str, list[float]] = {"gnn": [], "xgb": []}
    missing: list[str] = []  # --report-only: the runs not finished, not tuned
    for task in tasks:
        runs = {}
        for seed in seeds:
            for model in models:
                wd = run_dir(out_dir, task, model, seed)
                if args.report_only and not (wd / SUMMARY).is_file():
                    missing.append(f"{task} {model}-s{seed}")
                    continue
                print(f"\n=== {task}: {model}, seed {seed}, {args.trials} trials", flush=True)
                ov = model_overrides(model, args.explore, args.stall)
                runs[(model, seed)] = r = run_one(wd, [f"task={task}", *ov, f"trials={args.trials}", f"seed={seed}",
                                                      *common])
                all_runs[(task, model, seed)] = r
                _print_run(task, model, seed, r)
        if not runs:  # --report-only and nothing finished
            continue
        rep = per_task[task] = task_report(task, runs, args.trials)
        done = [r for r in runs.values() if "error" not in r]
        if {"gnn", "xgb"} <= set(models) and done:
            tp = _throughput(out_dir / task.replace("/", "__") / "throughput.json", task, done, args.checkpoint)
            rep["predict_per_s"] = {m: round(tp[m], 1) for m in ("gnn", "xgb")}
            for m in ("gnn", "xgb"):
                if tp[m] > 0:
                    thr[m].append(tp[m])
        finished = {f"{m}-s{s}": r for (m, s), r in runs.items() if "error" not in r and not all_failed(r)}
        if args.retime > 0 and {"gnn", "xgb"} <= {k.rsplit("-s", 1)[0] for k in finished}:
            add_retimed(rep, _retimed(out_dir / task.replace("/", "__") / "retimed.json", finished,
                                      overrides=[f"task={task}", *common], top=args.retime), runs)
        rep["plot"] = str(plot_curves({f"{m} s{s}": curve_of(r) for (m, s), r in runs.items() if "error" not in r},
                                      out_dir / task.replace("/", "__") / "best_latency.png",
                                      title=f"{task}: best latency vs trials and seconds",
                                      seconds={f"{m} s{s}": r.get("seconds") or [] for (m, s), r in runs.items()
                                               if "error" not in r}))
        _print_task(task, rep)

    net_rep: dict[str, Any] = {}
    if network != "none":
        label = f"{network}-b{args.network_batch}"
        runs = {}
        for model in models:
            wd = run_dir(out_dir, label, model, seeds[0])
            if args.report_only and not (wd / SUMMARY).is_file():
                missing.append(f"{label} {model}-s{seeds[0]}")
                continue
            print(f"\n=== {label}: {model}, seed {seeds[0]}, {args.network_trials} trials over its tasks", flush=True)
            runs[(model, seeds[0])] = r = run_one(wd, [f"network={network}", f"batch={args.network_batch}",
                                                       *model_overrides(model, args.explore, args.stall),
                                                       f"trials={args.network_trials}",
                                                       f"seed={seeds[0]}", *common])
            all_runs[(label, model, seeds[0])] = r
            _print_run(label, model, seeds[0], r)
    if network != "none" and runs:
        net_rep = task_report(label, runs, args.network_trials)
        net_rep["label"] = label
        for key in ("network_latency_ms", "untuned_latency_ms", "torch_eager_ms", "estimate_ms", "untuned_tasks",
                    "scheduled_funcs", "prim_funcs", "network_error"):
            net_rep[key] = {m: r.get(key) for (m, _), r in runs.items() if "error" not in r}
        if args.network_builds > 0:
            _time_side_by_side(net_rep, network, args.network_batch, {
                m: run_dir(out_dir, label, m, seeds[0]) for (m, _), r in runs.items()
                if "error" not in r and not all_failed(r)}, builds=args.network_builds, overrides=common)
        net_rep["plot"] = str(plot_curves({m: curve_of(r) for (m, _), r in runs.items() if "error" not in r},
                                          out_dir / label / "best_latency.png",
                                          title=f"{label}: network estimate vs trials and seconds",
                                          seconds={m: r.get("seconds") or [] for (m, _), r in runs.items()
                                                   if "error" not in r}))
        _print_network(net_rep)

    cmps = [c for rep in per_task.values() for c in rep["gnn_vs_xgb"].values()]
    res = {
        "trials_saved_vs_xgb": _median([c["trials_saved"] for c in cmps]),
        "seconds_saved_vs_xgb": _median([c["seconds_saved"] for c in cmps if c["seconds_saved"] is not None]),
        "final_best_ratio_vs_xgb": _gmean([c["final_ratio"] for c in cmps if c["final_ratio"] is not None]),
        "final_best_ratio_vs_xgb_retimed": _gmean([c["final_ratio_retimed"] for c in cmps
                                                   if c.get("final_ratio_retimed") is not None]),
        "trials_saved_vs_xgb_within_noise": _median([c["within_noise"]["trials_saved"] for c in cmps
                                                     if "within_noise" in c]),
        "seconds_saved_vs_xgb_within_noise": _median([c["within_noise"]["seconds_saved"] for c in cmps
                                                      if (c.get("within_noise") or {}).get("seconds_saved")]),
        "network_latency_ms": net_rep.get("network_latency_ms", {}),
        "cost_model_share": {m: _mean([r["cost_model_share"] for (t, mm, _), r in all_runs.items()
                                       if t in per_task and mm == m and r.get("cost_model_share") is not None])
                             for m in models},  # over the tasks' runs; the network's are in "network"
        "predict_per_s_gnn": round(_gmean(thr["gnn"]) or 0.0, 1),
        "predict_per_s_xgb": round(_gmean(thr["xgb"]) or 0.0, 1),
        "gnn_fallback": sum(rep["gnn_fallback"] for rep in per_task.values()) + net_rep.get("gnn_fallback", 0),
        "compared": len(cmps),
        **({"explore": args.explore} if EXPLORE in models else {}),
        **({"stall": args.stall} if STALL in models else {}),
        **{k: v for name, p in VARIANTS.items() if name in models
           for k, v in _saved(p, [c for rep in per_task.values() for c in rep[f"{p}_vs_xgb"].values()]).items()},
        "failed_runs": [f"{t} {m}-s{s}" for (t, m, s), r in all_runs.items() if "error" not in r and all_failed(r)],
        "errors": {f"{t} {m}-s{s}": r["error"] for (t, m, s), r in all_runs.items() if "error" in r},
        "resumed_runs": sum(1 for r in all_runs.values() if r.get("resumed")),
        **({"missing_runs": missing} if args.report_only else {}),
        "tune_minutes": {m: round(sum(r.get("tune_s") or 0 for (_, mm, _), r in all_runs.items() if mm == m) / 60, 1)
                         for m in models},
        "budgets": budgets(args.trials), "trials": args.trials, "seeds": seeds, "quick": args.quick,
        "population": args.population, "trials_per_iter": args.per_iter, "frozen": args.frozen,
        "checkpoint": str(args.checkpoint or DEFAULT_CHECKPOINT), "out": str(out_dir),
        "target": tune_target(common),
        "minutes": round((time.perf_counter() - t_start) / 60, 1),
        "network": net_rep, "tasks": per_task,
    }
    _print_summary(res, len(tasks), seeds)
    print(json.dumps(res))
    return res


def _time_side_by_side(net_rep: dict, network: str, batch: int, work_dirs: dict[str, Path], *, builds: int,
                       overrides: list[str]) -> None:
    """Replaces ``net_rep["network_latency_ms"]`` (each run's own timing, kept as ``network_latency_ms_own_run``)
    by the models' databases timed side by side in this process (:func:`perfmodel.plugin.network.time_databases`,
    kept as ``same_run``); with fewer than two databases, or when that fails (``same_run_error``), it stays."""
    from perfmodel import tune
    from perfmodel.config import compose
    from perfmodel.plugin.network import time_databases

    if len(work_dirs) < 2:
        return
    print(f"\n=== {net_rep['label']}: {', '.join(work_dirs)} databases, {builds} builds each, timed alternated in this "
          "process", flush=True)
    try:
        same = time_databases(network, batch, target=tune.tune_target(compose("tune", overrides)),
                              work_dirs=work_dirs, builds=builds)
    except Exception as e:  # noqa: BLE001  the runs' own timings stay
        net_rep["same_run_error"] = f"{type(e).__name__}: {e}".strip().splitlines()[0][:300]
        print(f"side-by-side timing failed ({net_rep['same_run_error']}): each run's own timing stays", flush=True)
        return
    net_rep["network_latency_ms_own_run"] = net_rep["network_latency_ms"]
    net_rep["network_latency_ms"] = {m: same["latency_ms"].get(m) for m in net_rep["network_latency_ms"]}
    same["vs_xgb"] = builds_vs_xgb(same["builds_ms"])
    net_rep["same_run"] = same


def builds_vs_xgb(builds_ms: dict[str, list[float]]) -> dict[str, dict[str, float | None]]:
    """Each model's builds of the network against XGB's, timed side by side: ``median_ratio``, ``mean_ratio``
    and ``fastest_ratio`` (model / XGB), and ``p`` (two-sided Mann-Whitney U over the builds: how likely
    samples this far apart are when the two databases are equally fast). A build's own code and data
    placement moves the BERT layer between ~30 and ~44 ms (RESULTS), so a median alone can flip with a
    few builds; ``p`` says whether the difference stands out of that spread."""
    import numpy as np
    from scipy import stats

    x = np.asarray(builds_ms.get("xgb") or [], dtype=np.float64)
    out: dict[str, dict[str, float | None]] = {}
    for m, b in builds_ms.items():
        g = np.asarray(b, dtype=np.float64)
        if m == "xgb" or not len(g) or not len(x):
            continue
        p = float(stats.mannwhitneyu(g, x).pvalue) if len(g) > 1 and len(x) > 1 else None
        out[m] = {"median_ratio": round(float(np.median(g) / np.median(x)), 4),
                  "mean_ratio": round(float(g.mean() / x.mean()), 4),
                  "fastest_ratio": round(float(g.min() / x.min()), 4), "p": None if p is None else round(p, 4)}
    return out


def _saved(prefix: str, cmps: list[dict]) -> dict[str, Any]:
    """The headline keys of a GNN mode (``<prefix>_trials_saved_vs_xgb`` ...) from its comparisons with XGB."""
    return {f"{prefix}_trials_saved_vs_xgb": _median([c["trials_saved"] for c in cmps]),
            f"{prefix}_seconds_saved_vs_xgb": _median([c["seconds_saved"] for c in cmps if c["seconds_saved"] is not None]),
            f"{prefix}_final_best_ratio_vs_xgb": _gmean([c["final_ratio"] for c in cmps
                                                         if c["final_ratio"] is not None]),
            f"{prefix}_final_best_ratio_vs_xgb_retimed": _gmean([c["final_ratio_retimed"] for c in cmps
                                                                 if c.get("final_ratio_retimed") is not None])}


def _throughput(path: Path, task: str, runs: list[dict], checkpoint: str | None) -> dict[str, float]:
    """:func:`scoring_throughput`, stored beside the task's runs and read back on a restart when the
    same checkpoint weights were measured (``checkpoint_sha256``; else measured again)."""
    from perfmodel.predictor import checkpoint_id

    sha = checkpoint_id(checkpoint)["sha256"]
    if path.is_file():
        tp = json.loads(path.read_text())
        if tp.get("checkpoint_sha256") == sha:
            return tp
    tp = {**scoring_throughput(task, runs, checkpoint), "checkpoint_sha256": sha}
    path.write_text(json.dumps(tp))
    return tp


def _print_run(label: str, model: str, seed: int, r: dict) -> None:
    if "error" in r:
        print(f"--- {label} {model}-s{seed}: FAILED to run ({r['error']}); redone on the next start")
    elif r.get("resumed"):
        best = r.get("best_s")
        print(f"--- {label} {model}-s{seed}: done before ({r['trials']} trials, best "
              f"{'-' if best is None else f'{best * 1e3:.4f} ms'}), read from {r['work_dir']}")
    if "error" not in r and all_failed(r):
        print(f"--- {label} {model}-s{seed}: every candidate failed ({r.get('trials', 0)} trials): reported, going on")


def _print_task(task: str, rep: dict) -> None:
    bs = list(next(iter(rep["best_s"].values()), {}).keys())
    ts = [str(t) for t in rep["seconds_marks"]]
    for title, table, cols, unit in (("trials", rep["best_s"], bs, ""), ("seconds", rep["best_s_at_seconds"], ts, "s")):
        print(f"\n--- {task}: best latency (ms) vs {title}")
        print(f"{'run':10s}" + "".join(f"{c + unit:>10s}" for c in cols))
        for key, row in table.items():
            print(f"{key:10s}" + "".join(f"{'-' if row[c] is None else f'{row[c] * 1e3:.4f}':>10s}" for c in cols))
    for seed, c, who in [(s, c, "GNN") for s, c in rep["gnn_vs_xgb"].items()] + \
            [(s, c, f"GNN-{p}") for p in VARIANTS.values() for s, c in rep.get(f"{p}_vs_xgb", {}).items()]:
        g = c["gnn_trials_to_xgb_final"]
        g_final = "-" if c["gnn_final_s"] is None else f"{c['gnn_final_s'] * 1e3:.4f} ms"
        ratio = "-" if c["final_ratio"] is None else f"{c['final_ratio']:.3f}"
        print(f"seed {seed}: XGB's final best {c['xgb_final_s'] * 1e3:.4f} ms after {c['xgb_trials_to_final']} trials / "
              f"{_s(c['xgb_seconds_to_final'])}; {who} "
              + (f"reached it after {g} trials / {_s(c['gnn_seconds_to_xgb_final'])}" if g
                 else "never reached it (counted as its whole budget)")
              + f": {c['trials_saved']:.2f}x trials, {c['seconds_saved'] or 0:.2f}x seconds; {who} final best "
              f"{g_final} ({ratio}x XGB's)")
    if rep.get("retimed_final_s"):
        rt, ms_ = rep["retime"], lambda v: "-" if v is None else f"{v * 1e3:.4f}"  # noqa: E731
        spread = "-" if rt["pass_median_rel"] is None else f"{100 * rt['pass_median_rel']:.1f}%"
        print(f"final bests re-timed side by side (fastest {rt['top']} of each run, {rt['passes']} passes, "
              f"pass to pass {spread}, {rt['seconds']:.0f} s): "
              + ", ".join(f"{k} {ms_(v)}" for k, v in rep["retimed_final_s"].items()) + " ms; GNN / XGB "
              + ", ".join(f"s{s} {c.get('final_ratio_retimed') or '-'}" for s, c in rep["gnn_vs_xgb"].items()))
        print("reached within that spread of XGB's final (both models): "
              + ", ".join(f"s{s} {w['trials_saved']:.2f}x trials, {w['seconds_saved'] or 0:.2f}x seconds"
                          for s, c in rep["gnn_vs_xgb"].items() if (w := c.get("within_noise"))))
    print("cost model share: " + ", ".join(f"{m} {100 * v:.1f}%" for m, v in rep["cost_model_share"].items() if v is not None)
          + f"; GNN fallback scores: {rep['gnn_fallback']}"
          + (f"; scoring: GNN {rep['predict_per_s']['gnn']:.0f}/s, XGB {rep['predict_per_s']['xgb']:.0f}/s"
             if "predict_per_s" in rep else ""))
    if any(rep.get("guard_s", {}).values()):
        print("guard seconds inside the tuning seconds (waiting + re-timing disturbed batches): "
              + ", ".join(f"{k} {v:.0f} s" for k, v in rep["guard_s"].items() if v))
    if rep["failed"]:
        print(f"every candidate failed in: {', '.join(rep['failed'])}")
    if rep.get("plot"):
        print(f"plot: {rep['plot']}")


def _print_network(rep: dict) -> None:
    _print_task(rep["label"], rep)
    print(f"{'model':8s}{'estimate':>12s}{'tuned':>12s}{'untuned':>12s}{'torch':>12s}  (ms, measured end to end)")
    for m, est in rep["estimate_ms"].items():
        row = [est, rep["network_latency_ms"].get(m), rep["untuned_latency_ms"].get(m), rep["torch_eager_ms"].get(m)]
        print(f"{m:8s}" + "".join(f"{'-' if v is None else f'{v:.3f}':>12s}" for v in row)
              + (f"  untuned tasks: {len(rep['untuned_tasks'][m])}" if rep["untuned_tasks"].get(m) else "")
              + (f"  error: {rep['network_error'][m]}" if rep["network_error"].get(m) else ""))
    if "same_run" in rep:
        same = rep["same_run"]
        print(f"tuned: every database built {len(next(iter(same['builds_ms'].values())))} times, timed alternated in "
              f"one process ({same['seconds']:.0f} s, other processes {same['foreign_cores']:.2f} cores); "
              "each run's own timing: " + ", ".join(
                  f"{m} {'-' if v is None else f'{v:.3f}'}" for m, v in rep["network_latency_ms_own_run"].items()))
        for m, b in same["builds_ms"].items():
            print(f"  {m:8s} builds: " + ", ".join(f"{v:.3f}" for v in b) + " ms")
        for m, c in same.get("vs_xgb", {}).items():
            p = "-" if c["p"] is None else f"{c['p']:.2f}"
            print(f"  {m} / xgb: median {c['median_ratio']:.3f}, mean {c['mean_ratio']:.3f}, fastest "
                  f"{c['fastest_ratio']:.3f}; Mann-Whitney p = {p}")


def _print_summary(res: dict, n_tasks: int, seeds: list[int]) -> None:
    print("\n=== summary")
    ts = res["trials_saved_vs_xgb"]
    print(f"trials saved vs XGB (median over {res['compared']} task-seed pairs of {n_tasks} tasks x {len(seeds)} seeds): "
          + ("-" if ts is None else f"{ts:.2f}x (target >= {TARGET_SAVED:g}: {'met' if ts >= TARGET_SAVED else 'NOT met'})"))
    ss, fr = res["seconds_saved_vs_xgb"], res["final_best_ratio_vs_xgb"]
    fr2 = res["final_best_ratio_vs_xgb_retimed"]
    print(f"seconds saved vs XGB (median): {'-' if ss is None else f'{ss:.2f}x'}; "
          f"final best GNN / XGB (geometric mean): {'-' if fr is None else f'{fr:.3f}'}"
          + ("" if fr2 is None else f"; re-timed side by side: {fr2:.3f}"))
    tn, sn = res["trials_saved_vs_xgb_within_noise"], res["seconds_saved_vs_xgb_within_noise"]
    if tn is not None:
        print(f"the same with 'reached' = within the task's re-timing spread of XGB's final (both models): "
              f"trials {tn:.2f}x, seconds {'-' if sn is None else f'{sn:.2f}x'} (median)")
    if res["predict_per_s_xgb"]:  # measured on the tasks' runs (none: only a network was tuned)
        print(f"scoring throughput: GNN {res['predict_per_s_gnn']:.0f}/s, XGB {res['predict_per_s_xgb']:.0f}/s "
              f"({'met' if res['predict_per_s_gnn'] >= res['predict_per_s_xgb'] else 'NOT met'}: GNN >= XGB)")
    print("cost model share of the tasks' tuning time: " + ", ".join(
        f"{m} {'-' if v is None else f'{100 * v:.1f}%'}" for m, v in res["cost_model_share"].items()))
    if res["network_latency_ms"]:
        print("network latency (tuned, end to end): " + ", ".join(
            f"{m} {'-' if v is None else f'{v:.3f} ms'}" for m, v in res["network_latency_ms"].items()))
    print(f"GNN fallback scores: {res['gnn_fallback']}")
    if res["failed_runs"]:
        print(f"runs where every candidate failed: {', '.join(res['failed_runs'])}")
    if res["errors"]:
        print(f"runs that raised (redone on the next start): {', '.join(res['errors'])}")
    print("tuning wall time: " + ", ".join(f"{m} {v:.1f} min" for m, v in res["tune_minutes"].items())
          + f"; total {res['minutes']} min ({res['resumed_runs']} runs read back from {res['out']})")


def _best_at(curve: list[float], trials: int) -> float:
    from perfmodel.plugin.search import best_at

    return best_at(curve, trials)


def _s(x: float | None) -> str:
    return "-" if x is None else f"{x:.0f} s"


def _mean(xs: list[float]) -> float | None:
    return round(sum(xs) / len(xs), 4) if xs else None


def _median(xs: list[float]) -> float | None:
    return round(statistics.median(xs), 3) if xs else None


def _gmean(xs: list[float]) -> float | None:
    xs = [x for x in xs if x > 0]
    return round(math.exp(sum(map(math.log, xs)) / len(xs)), 4) if xs else None


def _train_tasks() -> list[str]:
    from omegaconf import OmegaConf

    return list(OmegaConf.load(REPO / "conf" / "collect.yaml").tasks_default)


def _fin(v: float) -> float | None:
    return float(v) if v is not None and math.isfinite(v) else None


if __name__ == "__main__":
    main()
