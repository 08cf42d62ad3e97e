"""Does the pretrained GNN cut the trials MetaSchedule needs to reach a fast kernel, next to TVM's XGBoost model?

On tasks the shipped checkpoint never saw (not in conf/collect.yaml ``tasks_default``), runs one
``perfmodel tune`` per cost model -- the pretrained GNN, TVM's XGBModel (from scratch, its
default) and random -- with the largest budget, in this one run, and reads the best-so-far curve
at 32, 64, 128, ... trials from each database in record order. Reports per task the best latency
against trials, the trials the GNN needs to reach XGB's final best, each cost model's share of the
tuning wall time (seconds in predict + update / total), and the scoring throughput of the GNN and of
XGB on the same candidates (the task's measured schedules; featurization included; XGB trained on
them first, since during tuning it scores at random until it has 100 measurements).

Last line: JSON with ``trials_saved_vs_xgb`` (XGB's budget / trials the GNN needed to match XGB's
final best, averaged over tasks; the GNN's full budget when it never matched), ``predict_per_s_gnn``,
``predict_per_s_xgb`` and ``tasks`` (per task and model: best latency in seconds at each budget).

    python benchmarks/bench_tune.py [--quick] [--tasks A,B] [--trials N] [--checkpoint PATH] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Not in the pretrained model's training data (conf/collect.yaml tasks_default); small enough to afford.
TASKS = ["GRP-3", "SFM-3", "TBG-3", "mobilenetv2-b8/fused_conv2d14_subtract9_divide9_multiply9_add17",
         "CAP-1", "NRM-3", "DIL-3", "resnet18-b8/fused_matmul_add13"]
QUICK_TASKS = TASKS[:4]
MODELS = ["gnn", "xgb", "random"]
TARGET_SAVED = 4.0


def budgets(max_trials: int) -> list[int]:
    """32, 64, 128, ... up to ``max_trials`` (and ``max_trials`` itself)."""
    out, b = [], 32
    while b < max_trials:
        out.append(b)
        b *= 2
    return out + [max_trials]


def run_task(task: str, args: argparse.Namespace, out_dir: Path) -> dict:
    """One tuning run per cost model on ``task``; returns their curves, stats and work dirs."""
    from perfmodel.cli import compose
    from perfmodel.tune import tune

    runs = {}
    for model in MODELS:
        wd = out_dir / task.replace("/", "__") / model
        if wd.exists():
            import shutil

            shutil.rmtree(wd)
        overrides = [f"task={task}", f"cost_model={model}", f"trials={args.trials}", f"work_dir={wd}",
                     f"trials_per_iter={args.per_iter}", f"population={args.population}", f"seed={args.seed}",
                     f"eval.timeout_s={args.run_timeout}", "plot=false"]
        if args.checkpoint:
            overrides.append(f"checkpoint={args.checkpoint}")
        if args.frozen:
            overrides.append("gnn.frozen=true")
        print(f"\n=== {task}: {model}, {args.trials} trials", flush=True)
        runs[model] = tune(compose("tune", overrides))
    return runs


def scoring_throughput(task: str, runs: dict, checkpoint: str | None) -> dict[str, float]:
    """Candidates scored per second by the GNN and by a trained XGBModel on the task's measured schedules."""
    import numpy as np
    import tvm

    from perfmodel import workloads
    from perfmodel._tvm import load_ms
    from perfmodel.collect.database import Database
    from perfmodel.tvm import GNNCostModel

    ms = load_ms()
    mod = workloads.get_task(task).mod
    target = tvm.target.Target(workloads.DEFAULT_TARGET)
    ctx = ms.TuneContext(mod=mod, target=target, space_generator="post-order-apply",
                         search_strategy="evolutionary", task_name="main")
    cands, results = [], []
    for r in runs.values():
        db = Database.open(r["work_dir"])
        for raw in db.records:
            try:
                cands.append(db.tuning_record(raw).as_measure_candidate())
            except Exception:  # noqa: BLE001  a record that does not replay is skipped
                continue
            results.append(ms.runner.RunnerResult(raw.run_secs if raw.ok else None, None if raw.ok else "failed"))
    if len(cands) < 8:
        return {"gnn": 0.0, "xgb": 0.0, "n": len(cands)}
    xgb = ms.cost_model.XGBModel(num_warmup_samples=0, num_tuning_cores=_physical_cores())
    xgb.update(ctx, cands, results)
    gnn = GNNCostModel.from_checkpoint(checkpoint, frozen=True, threads=1)
    out = {"n": len(cands)}
    for name, model in (("gnn", gnn), ("xgb", xgb)):
        model.predict(ctx, cands[:8])  # warm-up
        n, t0 = 0, time.perf_counter()
        while n == 0 or time.perf_counter() - t0 < 2.0:
            scores = model.predict(ctx, cands)
            n += len(cands)
        out[name] = n / (time.perf_counter() - t0)
        assert np.isfinite(scores).all()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help=f"{len(QUICK_TASKS)} tasks, 64 trials, population 256")
    ap.add_argument("--tasks", default=None, help="comma-separated registry tasks (default: the unseen set)")
    ap.add_argument("--trials", type=int, default=None, help="largest budget (default 512, quick 64)")
    ap.add_argument("--per-iter", type=int, default=16, help="candidates measured per search round")
    ap.add_argument("--population", type=int, default=None, help="evolutionary population (default 512, quick 256)")
    ap.add_argument("--checkpoint", default=None, help="GNN checkpoint (default: the shipped one)")
    ap.add_argument("--frozen", action="store_true", help="no online fine-tuning of the GNN")
    ap.add_argument("--run-timeout", type=float, default=None,
                    help="seconds a candidate's timing may take before it counts as failed (default 20, quick 10)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", default=str(REPO / "runs" / "bench_tune"), help="work dirs go here")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    args.trials = args.trials or (64 if args.quick else 512)
    args.population = args.population or (256 if args.quick else 512)
    args.run_timeout = args.run_timeout or (10.0 if args.quick else 20.0)
    tasks = args.tasks.split(",") if args.tasks else (QUICK_TASKS if args.quick else TASKS)
    os.environ.setdefault("TVM_NUM_THREADS", "1")

    from perfmodel.tvm import DEFAULT_CHECKPOINT
    from perfmodel.tvm.cost_model import load_predictor
    from perfmodel.tvm.search import best_at, trials_to_reach

    load_predictor(args.checkpoint or DEFAULT_CHECKPOINT)  # a bad checkpoint fails before any tuning
    train_tasks = set(_train_tasks())
    seen = [t for t in tasks if t in train_tasks]
    if seen:
        print(f"warning: {seen} are in the training data (conf/collect.yaml tasks_default)", file=sys.stderr)
    out_dir = Path(args.out)
    bs = budgets(args.trials)
    t_start = time.perf_counter()
    per_task, saved, thr = {}, [], {"gnn": [], "xgb": []}
    shares = {m: [] for m in MODELS}
    tune_s = {m: 0.0 for m in MODELS}
    for task in tasks:
        runs = run_task(task, args, out_dir)
        curves = {m: [math.inf if v is None else v for v in runs[m]["curve"]] for m in MODELS}
        xgb_final = best_at(curves["xgb"], args.trials)
        need = trials_to_reach(curves["gnn"], xgb_final) if math.isfinite(xgb_final) else 1
        s = args.trials / (need or args.trials)
        saved.append(s)
        tp = scoring_throughput(task, runs, args.checkpoint)
        for m in ("gnn", "xgb"):
            thr[m].append(tp[m])
        for m in MODELS:
            shares[m].append(runs[m]["cost_model_share"] or 0.0)
            tune_s[m] += runs[m]["tune_s"]
        per_task[task] = {
            "best_s": {m: {str(b): _fin(best_at(curves[m], b)) for b in bs} for m in MODELS},
            "gnn_trials_to_xgb_final": need, "trials_saved_vs_xgb": round(s, 3),
            "cost_model_share": {m: runs[m]["cost_model_share"] for m in MODELS},
            "predict_per_s": {m: round(tp[m], 1) for m in ("gnn", "xgb")},
            "predict_per_s_in_tuning": {m: round(runs[m]["cost_model"]["predict_per_s"], 1) for m in MODELS},
            "tune_s": {m: runs[m]["tune_s"] for m in MODELS},
            "gnn_fallback": runs["gnn"].get("gnn", {}).get("fallback", 0),
        }
        _print_task(task, per_task[task], bs)

    def gmean(xs: list[float]) -> float:
        xs = [x for x in xs if x > 0]
        return math.exp(sum(map(math.log, xs)) / len(xs)) if xs else 0.0

    res = {
        "trials_saved_vs_xgb": round(sum(saved) / len(saved), 3),
        "predict_per_s_gnn": round(gmean(thr["gnn"]), 1),
        "predict_per_s_xgb": round(gmean(thr["xgb"]), 1),
        "cost_model_share": {m: round(sum(v) / len(v), 4) for m, v in shares.items()},
        "tune_minutes": {m: round(v / 60, 1) for m, v in tune_s.items()},
        "budgets": bs, "quick": args.quick, "population": args.population, "trials_per_iter": args.per_iter,
        "frozen": args.frozen, "checkpoint": str(args.checkpoint or DEFAULT_CHECKPOINT),
        "minutes": round((time.perf_counter() - t_start) / 60, 1),
        "tasks": per_task,
    }
    print("\n=== summary")
    print(f"trials saved vs XGB (mean over {len(tasks)} tasks): {res['trials_saved_vs_xgb']:.2f}x "
          f"(target >= {TARGET_SAVED:g}: {'met' if res['trials_saved_vs_xgb'] >= TARGET_SAVED else 'NOT met'})")
    print(f"scoring throughput: GNN {res['predict_per_s_gnn']:.0f}/s, XGB {res['predict_per_s_xgb']:.0f}/s "
          f"({'met' if res['predict_per_s_gnn'] >= res['predict_per_s_xgb'] else 'NOT met'}: GNN >= XGB)")
    print("cost model share of tuning time: " + ", ".join(f"{m} {100 * v:.1f}%" for m, v in res["cost_model_share"].items()))
    print("tuning wall time: " + ", ".join(f"{m} {v:.1f} min" for m, v in res["tune_minutes"].items())
          + f"; total {res['minutes']} min")
    print(json.dumps(res))


def _print_task(task: str, r: dict, bs: list[int]) -> None:
    print(f"\n--- {task}: best latency (ms) vs trials")
    print(f"{'model':8s}" + "".join(f"{b:>10d}" for b in bs) + f"{'share':>8s}{'pred/s':>9s}")
    for m in MODELS:
        row = "".join(f"{'-' if v is None else f'{v * 1e3:.4f}':>10s}" for v in r["best_s"][m].values())
        ps = r["predict_per_s"].get(m)
        print(f"{m:8s}{row}{100 * (r['cost_model_share'][m] or 0):7.1f}%{'' if ps is None else f'{ps:9.0f}'}")
    print(f"GNN reached XGB's final best after {r['gnn_trials_to_xgb_final'] or 'never (-> full budget)'} trials: "
          f"{r['trials_saved_vs_xgb']:.2f}x")


def _train_tasks() -> list[str]:
    from omegaconf import OmegaConf

    return list(OmegaConf.load(REPO / "conf" / "collect.yaml").tasks_default)


def _fin(v: float) -> float | None:
    return float(v) if math.isfinite(v) else None


def _physical_cores() -> int:
    import psutil

    return int(psutil.cpu_count(logical=False) or 1)


if __name__ == "__main__":
    main()
