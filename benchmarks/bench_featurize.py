"""How fast is the stage-graph featurizer (against TVM's PerStoreFeature), and how fast does the GNN score candidates (against TVM's XGB path)?

Samples random schedules from the design spaces of the registry's single-operator (TE suite) tasks,
then times, on the same candidates in the same run, (a) ``perfmodel.featurize.featurize`` (schedule ->
PyG Data) and (b) ``ms.feature_extractor.PerStoreFeature().extract_from``. Sampling is not timed.

``--scoring`` (issue #11 item 5) also times the two cost models as MetaSchedule's evolutionary search
calls them, one ``predict(context, candidates)`` per population of ``--population`` candidates of a
task: (c) the GNN path of ``perfmodel tune`` (``GNNCostModel.predict``: featurize -> ``Predictor`` with
the shipped checkpoint, every member -> float64 scores) and (d) TVM's XGB path (``XGBModel.predict``:
``PerStoreFeature.extract_from`` + the booster's predict), its ``XGBModel`` (TVM's default config)
first trained through ``update`` on measured records of ``--xgb-db``, so that predict runs a real tree
ensemble. Both with ``--threads`` threads (torch, xgboost and the extraction's tune context; the GNN's
featurization forks as many workers, whose CPU time counts as the GNN's); every
population is timed ``--repeats`` times, GNN and XGB interleaved, and the fastest time of each counts
(the machine may be shared). Breakdowns: the GNN's featurization (``Predictor.features``) and network
(``Predictor.predict_features``: batching, normalization, every member), XGB's extraction and booster.

Last line: JSON with ``schedules``, ``failures``, ``graphs_per_s``, ``per_store_feature_per_s``,
``ratio_vs_per_store_feature``, ``graphs_per_cpu_s``, ``per_store_feature_per_cpu_s``, ``granularity``;
with ``--scoring`` also ``score_per_s_gnn``, ``score_per_s_xgb``, ``score_ratio_vs_xgb`` (candidates per
wall second of ``predict``, and GNN / XGB), ``score_per_cpu_s_gnn``, ``score_per_cpu_s_xgb``,
``score_cpu_ratio_vs_xgb``, ``featurize_per_s``, ``predict_per_s``, ``xgb_extract_per_s``,
``xgb_predict_per_s``, ``population``, ``scoring_tasks``, ``threads``, ``repeats``, ``gnn_members``,
``xgb_trees``, ``xgb_train_records``.

    python benchmarks/bench_featurize.py [--quick] [--per-task N] [--granularity stage|loop]
    python benchmarks/bench_featurize.py --scoring [--quick] [--population 512] [--tasks A,B] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import resource
import time
import warnings
from typing import Any

SCORING_TASKS = ("C2D-1", "GMM-1", "DEP-1", "T2D-1", "NRM-1", "SFM-2", "CBR-1", "TBG-1")  # 1-7 stages, 6 families
SCORING_TASKS_QUICK = ("C2D-1", "GMM-1", "SFM-2", "TBG-1")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="10 schedules per task (520 in all); with --scoring "
                    "4 tasks x 256 candidates")
    ap.add_argument("--per-task", type=int, default=None, help="schedules per task (default 30, quick 10; "
                    "with --scoring: --population)")
    ap.add_argument("--granularity", default="stage", choices=["stage", "loop"])
    ap.add_argument("--tasks", default=None, help="comma-separated task names (default: the TE suite; "
                    f"with --scoring {','.join(SCORING_TASKS)})")
    ap.add_argument("--scoring", action="store_true", help="also time GNN vs XGB scoring (predict) per population")
    ap.add_argument("--population", type=int, default=None, help="candidates per predict call (default 512, quick 256)")
    ap.add_argument("--repeats", type=int, default=3, help="timings of each population (the fastest counts)")
    ap.add_argument("--threads", type=int, default=1, help="threads of torch, xgboost and PerStoreFeature, "
                    "and the GNN's featurizing workers")
    ap.add_argument("--checkpoint", default=None, help="GNN checkpoint (default: the shipped one)")
    ap.add_argument("--xgb-db", default="datasets/amd-epyc-znver3-t1", help="measured records to train XGBModel on")
    ap.add_argument("--xgb-records", type=int, default=64, help="records per task of --xgb-db (at most 8 tasks)")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")

    import tvm

    from perfmodel import workloads
    from perfmodel.collect.sampler import TaskSpace

    target = tvm.target.Target(workloads.DEFAULT_TARGET)
    if args.scoring:
        per_task = args.population or args.per_task or (256 if args.quick else 512)
        names = args.tasks.split(",") if args.tasks else list(SCORING_TASKS_QUICK if args.quick else SCORING_TASKS)
    else:
        per_task = args.per_task or (10 if args.quick else 30)
        names = (args.tasks.split(",") if args.tasks
                 else [n for n, t in workloads.registry().items() if t.source == "te"])
    print(f"sampling {per_task} schedules from each of {len(names)} tasks ...", flush=True)
    t0 = time.perf_counter()
    batches = []
    for name in names:
        space = TaskSpace(mod=workloads.get_task(name).mod, target=target)
        schs = []
        for _, sch in space.random_stream(1):
            schs.append(sch)
            if len(schs) >= per_task:
                break
        batches.append((name, space, schs))
    n = sum(len(b[2]) for b in batches)
    print(f"  {n} schedules sampled in {time.perf_counter() - t0:.1f} s", flush=True)

    res = featurizer_vs_per_store_feature(batches, args.granularity)
    if args.scoring:
        res.update(scoring(batches, target, args))
    print(json.dumps(res))


def featurizer_vs_per_store_feature(batches: list[tuple[str, Any, list[Any]]], granularity: str) -> dict[str, Any]:
    """Times our featurizer and PerStoreFeature on the same schedules; prints and returns the numbers."""
    from perfmodel._tvm import load_ms
    from perfmodel.featurize import FeaturizeError, featurize

    ms = load_ms()
    n = sum(len(b[2]) for b in batches)
    featurize(batches[0][2][0], granularity=granularity)  # warm-up (imports)
    failures = 0
    first_error = None
    t_ours = cpu_ours = 0.0
    nodes = edges = 0
    for name, _, schs in batches:
        t1, c1 = time.perf_counter(), time.process_time()
        for s in schs:
            try:
                d = featurize(s, granularity=granularity)
                nodes += d.num_nodes
                edges += d.num_edges
            except FeaturizeError as e:
                failures += 1
                first_error = first_error or f"{name}: {e}"
        t_ours += time.perf_counter() - t1
        cpu_ours += time.process_time() - c1

    extractor = ms.feature_extractor.PerStoreFeature()
    t_psf = cpu_psf = 0.0
    for _, space, schs in batches:
        cands = [ms.MeasureCandidate(s, space.args_info) for s in schs]
        t1, c1 = time.perf_counter(), time.process_time()
        extractor.extract_from(space.ctx, cands)
        t_psf += time.perf_counter() - t1
        cpu_psf += time.process_time() - c1

    graphs_per_s = (n - failures) / t_ours
    psf_per_s = n / t_psf
    print(f"stage graphs ({granularity}): {n - failures} in {t_ours:.2f} s = {graphs_per_s:.0f} graphs/s "
          f"({1e3 * t_ours / n:.2f} ms each; {nodes / max(n - failures, 1):.1f} nodes, "
          f"{edges / max(n - failures, 1):.1f} edges per graph), {failures} failures")
    if first_error:
        print(f"  first failure: {first_error}")
    print(f"PerStoreFeature: {n} in {t_psf:.2f} s = {psf_per_s:.0f} schedules/s ({1e3 * t_psf / n:.2f} ms each)")
    print(f"ratio (ours / PerStoreFeature throughput): {graphs_per_s / psf_per_s:.2f}")
    print(f"per CPU-second of this process (less sensitive to other load on the machine): "
          f"{(n - failures) / cpu_ours:.0f} graphs vs {n / cpu_psf:.0f} PerStoreFeature", flush=True)
    return {"schedules": n, "failures": failures, "graphs_per_s": round(graphs_per_s, 1),
            "per_store_feature_per_s": round(psf_per_s, 1),
            "ratio_vs_per_store_feature": round(graphs_per_s / psf_per_s, 3),
            "graphs_per_cpu_s": round((n - failures) / cpu_ours, 1),
            "per_store_feature_per_cpu_s": round(n / cpu_psf, 1), "granularity": granularity}


def train_xgb(db: str, *, per_task: int, threads: int) -> tuple[Any, int]:
    """TVM's ``XGBModel`` (default config, ``threads`` threads) trained through ``update`` on measured
    records of ``db`` (at most 8 tasks, ``per_task`` records each); returns it and the record count."""
    from perfmodel._tvm import load_ms
    from perfmodel.evaluate.records import load_tasks

    ms = load_ms()
    model = ms.cost_model.XGBModel(config=ms.cost_model.xgb_model.XGBConfig(nthread=threads), verbose_eval=10**9)
    tasks = [t for t in load_tasks([db], min_records=16)][:8]
    n = 0
    for i, t in enumerate(tasks):
        t.subsample(per_task)
        model.last_train_size = 0 if i == len(tasks) - 1 else 10**15  # train once, on the last update
        model.update(t.context(), t.candidates(), t.runner_results())
        n += len(t.candidates())
    if model.booster is None or model.data_size < model.num_warmup_samples:
        raise SystemExit(f"XGBModel got {model.data_size} records from {db}: too few to leave its warm-up "
                         f"({model.num_warmup_samples}); give --xgb-db a folder with more")
    return model, n


def scoring(batches: list[tuple[str, Any, list[Any]]], target: Any, args: argparse.Namespace) -> dict[str, Any]:
    """Times GNN and XGB ``predict`` per population, interleaved; prints and returns the numbers."""
    import numpy as np
    import torch

    from perfmodel._tvm import load_ms
    from perfmodel.plugin.cost_model import GNNCostModel

    ms = load_ms()
    torch.set_num_threads(args.threads)
    # no feature cache: every timing featurizes (tuning reuses the features of repeated schedule objects)
    gnn = GNNCostModel(path=args.checkpoint, frozen=True, threads=args.threads, feature_cache=0,
                       featurize_workers=args.threads)  # the cores XGB's extraction gets
    members = len(gnn.predictor.meta["model"].get("members") or [1])
    t0 = time.perf_counter()
    xgb, n_train = train_xgb(args.xgb_db, per_task=args.xgb_records, threads=args.threads)
    trees = int(xgb.booster.num_boosted_rounds())
    print(f"XGBModel trained on {n_train} measured records of {args.xgb_db}: {trees} trees "
          f"({time.perf_counter() - t0:.1f} s)", flush=True)

    pops = []
    for name, space, schs in batches:
        ctx = ms.TuneContext(mod=space.mod, target=target, task_name=name, num_threads=args.threads)
        pops.append((name, ctx, [ms.MeasureCandidate(s, space.args_info) for s in schs]))
    for _, ctx, cands in pops:  # warm-up: imports, first calls, the GNN's per-task FLOPs
        gnn.predict(ctx, cands[:8])
        xgb.predict(ctx, cands[:8])

    def cpu() -> float:  # this process and its reaped children (the GNN's featurizing workers)
        ru = resource.getrusage(resource.RUSAGE_CHILDREN)
        return time.process_time() + ru.ru_utime + ru.ru_stime

    def timed(fn: Any) -> tuple[float, float, Any]:
        t, c = time.perf_counter(), cpu()
        out = fn()
        return time.perf_counter() - t, cpu() - c, out

    names = ["gnn", "xgb", "featurize", "network", "extract", "booster"]
    best = {k: [float("inf")] * len(pops) for k in names}
    best_cpu = {k: [float("inf")] * len(pops) for k in names}
    not_scored = 0
    for rep in range(args.repeats):
        for i, (name, ctx, cands) in enumerate(pops):
            schs = [c.sch for c in cands]
            flops = gnn._task(ctx)["flops"]
            runs = {
                "gnn": lambda: gnn.predict(ctx, cands),
                "xgb": lambda: xgb.predict(ctx, cands),
                "featurize": lambda: gnn.predictor.features(schs),
                "extract": lambda: [x.numpy().astype("float32") for x in xgb.extractor.extract_from(ctx, cands)],
            }
            order = ["gnn", "xgb", "featurize", "extract"] if rep % 2 == 0 else ["xgb", "gnn", "extract", "featurize"]
            outs = {}
            for k in order:
                w, c, outs[k] = timed(runs[k])
                best[k][i], best_cpu[k][i] = min(best[k][i], w), min(best_cpu[k][i], c)
            feats = [f for f in outs["featurize"] if f is not None]
            for k, fn in (("network", lambda: gnn.predictor.predict_features(feats, [flops] * len(feats),
                                                                              batch_size=gnn.batch_size)),
                          ("booster", lambda: xgb._predict(outs["extract"]))):
                w, c, _ = timed(fn)
                best[k][i], best_cpu[k][i] = min(best[k][i], w), min(best_cpu[k][i], c)
            if rep == 0:
                not_scored += int((~np.isfinite(outs["gnn"])).sum())
                print(f"  {name}: {len(cands)} candidates, GNN {1e3 * best['gnn'][i] / len(cands):.2f} ms each "
                      f"(featurize {1e3 * best['featurize'][i] / len(cands):.2f}, network "
                      f"{1e3 * best['network'][i] / len(cands):.2f}), XGB {1e3 * best['xgb'][i] / len(cands):.2f} "
                      f"(extract {1e3 * best['extract'][i] / len(cands):.2f}, booster "
                      f"{1e3 * best['booster'][i] / len(cands):.2f})", flush=True)
    n = sum(len(c) for _, _, c in pops)
    rate = {k: n / sum(v) for k, v in best.items()}
    rate_cpu = {k: n / sum(v) for k, v in best_cpu.items()}
    print(f"scoring ({n} candidates, {len(pops)} populations of up to {max(len(c) for _, _, c in pops)}, "
          f"{args.threads} thread(s), fastest of {args.repeats}):")
    print(f"  GNN ({members} member(s)): {rate['gnn']:.0f} candidates/s = featurize {rate['featurize']:.0f}/s "
          f"+ network {rate['network']:.0f}/s; {not_scored} not scored")
    print(f"  XGB ({trees} trees): {rate['xgb']:.0f} candidates/s = PerStoreFeature {rate['extract']:.0f}/s "
          f"+ booster {rate['booster']:.0f}/s")
    print(f"  ratio GNN / XGB: {rate['gnn'] / rate['xgb']:.2f} (wall), {rate_cpu['gnn'] / rate_cpu['xgb']:.2f} "
          f"(CPU time of this process and its workers)")
    return {"score_per_s_gnn": round(rate["gnn"], 1), "score_per_s_xgb": round(rate["xgb"], 1),
            "score_ratio_vs_xgb": round(rate["gnn"] / rate["xgb"], 3),
            "score_per_cpu_s_gnn": round(rate_cpu["gnn"], 1), "score_per_cpu_s_xgb": round(rate_cpu["xgb"], 1),
            "score_cpu_ratio_vs_xgb": round(rate_cpu["gnn"] / rate_cpu["xgb"], 3),
            "featurize_per_s": round(rate["featurize"], 1), "predict_per_s": round(rate["network"], 1),
            "xgb_extract_per_s": round(rate["extract"], 1), "xgb_predict_per_s": round(rate["booster"], 1),
            "gnn_not_scored": not_scored, "population": max(len(c) for _, _, c in pops),
            "scoring_tasks": [p[0] for p in pops], "threads": args.threads, "repeats": args.repeats,
            "gnn_members": members, "xgb_trees": trees, "xgb_train_records": n_train}


if __name__ == "__main__":
    main()
