"""How fast is the stage-graph featurizer, against TVM's PerStoreFeature on the same schedules?

Samples random schedules from the design spaces of the registry's single-operator (TE suite) tasks,
then times, on the same candidates in the same run, (a) ``perfmodel.featurize.featurize`` (schedule ->
PyG Data) and (b) ``ms.feature_extractor.PerStoreFeature().extract_from``. Sampling is not timed.
Last line: JSON with ``schedules``, ``failures``, ``graphs_per_s``, ``per_store_feature_per_s``,
``ratio_vs_per_store_feature``.

    python benchmarks/bench_featurize.py [--quick] [--per-task N] [--granularity stage|loop]
"""

from __future__ import annotations

import argparse
import json
import time
import warnings


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="10 schedules per task (520 in all)")
    ap.add_argument("--per-task", type=int, default=None, help="schedules per task (default 30, quick 10)")
    ap.add_argument("--granularity", default="stage", choices=["stage", "loop"])
    ap.add_argument("--tasks", default=None, help="comma-separated task names (default: the TE suite)")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    per_task = args.per_task or (10 if args.quick else 30)

    import tvm

    from perfmodel._tvm import load_ms
    from perfmodel import workloads
    from perfmodel.collect.sampler import TaskSpace
    from perfmodel.featurize import FeaturizeError, featurize

    ms = load_ms()
    target = tvm.target.Target(workloads.DEFAULT_TARGET)
    names = args.tasks.split(",") if args.tasks else [n for n, t in workloads.registry().items() if t.source == "te"]
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

    featurize(batches[0][2][0], granularity=args.granularity)  # warm-up (imports)
    failures = 0
    first_error = None
    t_ours = cpu_ours = 0.0
    nodes = edges = 0
    for name, _, schs in batches:
        t1, c1 = time.perf_counter(), time.process_time()
        for s in schs:
            try:
                d = featurize(s, granularity=args.granularity)
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
    print(f"stage graphs ({args.granularity}): {n - failures} in {t_ours:.2f} s = {graphs_per_s:.0f} graphs/s "
          f"({1e3 * t_ours / n:.2f} ms each; {nodes / max(n - failures, 1):.1f} nodes, "
          f"{edges / max(n - failures, 1):.1f} edges per graph), {failures} failures")
    if first_error:
        print(f"  first failure: {first_error}")
    print(f"PerStoreFeature: {n} in {t_psf:.2f} s = {psf_per_s:.0f} schedules/s ({1e3 * t_psf / n:.2f} ms each)")
    print(f"ratio (ours / PerStoreFeature throughput): {graphs_per_s / psf_per_s:.2f}")
    print(f"per CPU-second of this process (less sensitive to other load on the machine): "
          f"{(n - failures) / cpu_ours:.0f} graphs vs {n / cpu_psf:.0f} PerStoreFeature")
    print(json.dumps({"schedules": n, "failures": failures, "graphs_per_s": round(graphs_per_s, 1),
                      "per_store_feature_per_s": round(psf_per_s, 1),
                      "ratio_vs_per_store_feature": round(graphs_per_s / psf_per_s, 3),
                      "graphs_per_cpu_s": round((n - failures) / cpu_ours, 1),
                      "per_store_feature_per_cpu_s": round(n / cpu_psf, 1), "granularity": args.granularity}))


if __name__ == "__main__":
    main()
