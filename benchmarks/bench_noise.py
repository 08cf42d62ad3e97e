"""How well do the dataset's own timings rank schedules? Re-measure stored records and compare.

The repeats of a record are timed back to back, so their spread (the card's "noise") misses what
changes between one moment and the next (machine load, frequency, cache state of the host). This
script picks ``--n`` valid records from each of ``--tasks`` at random, replays and re-measures them
now with the collection's timing settings, and scores the *stored* times as if they were a model's
predictions of the fresh ones. The result is the ceiling any cost model can reach on the
dataset's labels: a model cannot agree with today's timings better than yesterday's timings do.

Prints a per-task table and, as its last line, a JSON object with ``pairwise_acc``, ``kendall_tau``,
``peak1``, ``mape`` (stored vs fresh median times, task-weighted), ``median_rel_diff`` (median
|fresh/stored - 1|), ``pairwise_acc_min`` / ``peak1_min`` (the same with the fastest repeat instead
of the median) and ``records``.

    python benchmarks/bench_noise.py [--n 32] [--tasks A,B,...] [--db DIR] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DB = REPO / "datasets" / "amd-epyc-t1"
# one task per family that the dataset holds, small enough to re-measure quickly
DEFAULT_TASKS = ["C1D-1", "C2D-2", "GMM-1", "GRP-2", "DEP-1", "T2D-2", "CAP-2", "NRM-1", "SFM-1", "CBR-2",
                 "resnet18-b1/fused_conv2d7_subtract3_divide3_multiply3_add8", "bert_layer-b1/layer_norm"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--db", default=str(DEFAULT_DB))
    ap.add_argument("--tasks", default=",".join(DEFAULT_TASKS))
    ap.add_argument("--n", type=int, default=32, help="records re-measured per task")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    warnings.filterwarnings("ignore")

    import tvm

    from perfmodel._tvm import load_ms
    from perfmodel.collect.database import Database
    from perfmodel.collect.measure import EvalConfig, LocalMeasurer
    from perfmodel.evaluate.metrics import task_metrics
    from perfmodel.workloads import DEFAULT_TARGET, task_of_mod

    load_ms()
    t0 = time.perf_counter()
    db = Database.open(args.db)
    by_wl = db.records_by_workload()
    names = {}
    for wl in by_wl:
        try:
            names[task_of_mod(db.workload(wl).mod)] = wl
        except Exception:  # noqa: BLE001  a workload this registry does not know
            continue
    rng = np.random.default_rng(args.seed)
    stored, fresh, tasks, rows = [], [], [], []
    stored_min, fresh_min = [], []
    cfg = EvalConfig()
    for name in [t for t in args.tasks.split(",") if t]:
        if name not in names:
            print(f"skip {name}: not in {args.db}", file=sys.stderr)
            continue
        recs = [r for r in by_wl[names[name]] if r.ok]
        pick = [recs[i] for i in sorted(rng.choice(len(recs), size=min(args.n, len(recs)), replace=False))]
        target = tvm.target.Target(pick[0].target if pick[0].target else DEFAULT_TARGET)
        items = []
        for r in pick:
            cand = db.tuning_record(r).as_measure_candidate()
            items.append((cand.sch.mod, cand.args_info))
        with LocalMeasurer(target=target, cfg=cfg) as m:
            results = m.measure(items)
        s = np.array([float(np.median(r.run_secs)) for r, res in zip(pick, results) if res.ok])
        f = np.array([float(np.median(res.run_secs)) for res in results if res.ok])
        stored_min += [float(np.log(min(r.run_secs))) for r, res in zip(pick, results) if res.ok]
        fresh_min += [float(np.log(min(res.run_secs))) for res in results if res.ok]
        stored += list(np.log(s))
        fresh += list(np.log(f))
        tasks += [name] * len(s)
        mt = task_metrics(np.log(s), np.log(f), [name] * len(s))
        rows.append((name, len(s), mt["pairwise_acc"], mt["kendall_tau"], mt["peak1"],
                     float(np.median(np.abs(f / s - 1)))))
        print(f"{name[:44]:44s} n={len(s):3d} pairwise={mt['pairwise_acc']:.3f} tau={mt['kendall_tau']:.3f} "
              f"peak1={mt['peak1']:.3f} median|fresh/stored-1|={rows[-1][-1]:.3f}", flush=True)
    if not tasks:
        print("no task of --tasks is in the database", file=sys.stderr)
        return 2
    m = task_metrics(np.array(stored), np.array(fresh), tasks)
    m_min = task_metrics(np.array(stored_min), np.array(fresh_min), tasks)
    rel = np.abs(np.exp(np.array(fresh) - np.array(stored)) - 1)
    out = {"pairwise_acc": round(float(m["pairwise_acc"]), 4), "kendall_tau": round(float(m["kendall_tau"]), 4),
           "peak1": round(float(m["peak1"]), 4), "mape": round(float(m["mape"]), 4),
           "median_rel_diff": round(float(np.median(rel)), 4),
           "pairwise_acc_min": round(float(m_min["pairwise_acc"]), 4), "peak1_min": round(float(m_min["peak1"]), 4), "records": len(tasks), "tasks": len(rows),
           "minutes": round((time.perf_counter() - t0) / 60, 1)}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
