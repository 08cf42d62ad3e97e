"""Valid records per hour: our collector against plain ``ms.tune_tir`` on the same tasks and trial budget.

Both time every candidate with the project's one protocol (perfmodel.collect.measure: build first,
interleaved adaptive rounds, the guard), ``tune_tir`` through :class:`perfmodel.collect.runner.ProtocolRunner`,
on the same native target (this CPU's mcpu, 1 thread), in this one run.
Usage: ``python benchmarks/bench_collect.py [--quick]``. Last line JSON: ``collector_records_per_hour``,
``tune_tir_records_per_hour``, ``ratio_vs_tune_tir``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

from perfmodel.collect.collector import CollectConfig, collect
from perfmodel.workloads import get_task, native_target


def run_collector(tasks: list[str], trials: int, out: str) -> tuple[int, float]:
    t0 = time.perf_counter()
    res = collect(CollectConfig(out_dir=out, hardware="bench", tasks=tasks, n_random=trials // 2,
                                n_evolve=trials - trials // 2, batch=16, progress=False))
    return sum(v["valid"] for v in res.values()), time.perf_counter() - t0


def run_tune_tir(tasks: list[str], trials: int, out: str) -> tuple[int, float]:
    import os

    import tvm

    from perfmodel._tvm import load_ms
    from perfmodel.collect.runner import ProtocolRunner

    ms = load_ms()
    os.environ["TVM_NUM_THREADS"] = "1"
    target = tvm.target.Target(native_target())
    n = 0
    t0 = time.perf_counter()
    for i, name in enumerate(tasks):
        # Stock builder/runner, given the same fast TVM import as ours: with TVM's defaults every
        # build worker spends ~20 s importing tensor intrinsics and times out (30 s) on this machine.
        builder = ms.builder.LocalBuilder(timeout_sec=120, initializer=load_ms)
        runner = ProtocolRunner(target=target)
        try:
            db = ms.tune_tir(get_task(name).mod, target=target, work_dir=f"{out}/tune{i}", max_trials_global=trials,
                             num_trials_per_iter=16, builder=builder, runner=runner, seed=1)
        finally:
            runner.close()
        n += sum(1 for r in db.get_all_tuning_records() if r.run_secs and min(float(x) for x in r.run_secs) < 1e9)
    return n, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="2 small tasks, 32 trials each")
    args = ap.parse_args()
    tasks = ["GMM-0", "C1D-1"] if args.quick else ["GMM-0", "C1D-1", "DEP-2", "NRM-1"]
    trials = 32 if args.quick else 64
    with tempfile.TemporaryDirectory() as d:
        n_c, s_c = run_collector(tasks, trials, d)
        n_t, s_t = run_tune_tir(tasks, trials, d)
    rc, rt = n_c / s_c * 3600, n_t / s_t * 3600
    print(f"tasks {tasks}, {trials} trials each")
    print(f"collector  {n_c:5d} records in {s_c:7.1f} s  -> {rc:8.0f} records/h")
    print(f"tune_tir   {n_t:5d} records in {s_t:7.1f} s  -> {rt:8.0f} records/h")
    print(f"ratio {rc / rt:.2f}x")
    print(json.dumps({"collector_records_per_hour": round(rc), "tune_tir_records_per_hour": round(rt),
                      "ratio_vs_tune_tir": round(rc / rt, 2), "tasks": tasks, "trials_per_task": trials}))


if __name__ == "__main__":
    main()
