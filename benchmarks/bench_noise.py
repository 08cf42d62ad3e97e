"""Do our timings agree with themselves, with TVM's own runner's, and with the stored labels, even under load?

Picks ``--n`` valid records from each of ``--tasks`` (seeded), replays them, and times them in
independent passes (each pass its own processes, minutes apart):

- ``ours`` x2: :class:`perfmodel.collect.measure.LocalMeasurer` with the project's protocol;
- ``ungated`` x2: ours without the reference gate (``Protocol.gate=0``, protocol version 2);
- ``tvm`` x2: TVM's ``LocalBuilder`` + ``LocalRunner`` with ``EvaluatorConfig(number=3,
  repeat=5, min_repeat_ms=50)``, a fresh pool per pass, all builds before the runs (the reference);
- ``loaded``: ours again while a process this script starts burns CPU in bursts (5 s on, 5 s off);
- ``niced``: ours again while a ``nice -n 19`` process burns CPU all the time (what the guard lets
  run beside a collection: tests or training started with ``nice``);
- the stored labels against the first ``ours`` pass.

Each comparison is scored like a cost model: per-task pairwise agreement of the two time vectors,
and the median |t2/t1 - 1|. Prints one line per task and comparison, and as the last line a
JSON object with ``pass_pairwise``, ``pass_median_rel``, ``ungated_pass_pairwise``,
``ungated_pass_median_rel``, ``tvm_pass_pairwise``,
``tvm_pass_median_rel``, ``stored_pairwise``, ``stored_median_rel``, ``loaded_pairwise``,
``loaded_median_rel``, ``niced_pairwise``, ``niced_median_rel``, ``records``, ``tasks`` (and the
protocol used, minutes taken).

    python benchmarks/bench_noise.py [--db DIR] [--n 24] [--tasks A,B,...] [--passes ours,ungated,tvm,loaded,niced]
                                     [--target stored|native] [--protocol rounds=3,placement=shift,...]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import time
import warnings
from dataclasses import asdict, fields, replace
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
# six kinds of operator from five families (conv2d, depthwise conv, matmul, reduction, softmax, pooling),
# small enough to re-measure quickly; element-wise and layout tasks hold too few distinct schedules
DEFAULT_TASKS = ["C2D-2", "DEP-1", "GMM-1", "NRM-1", "SFM-1", "resnet18-b1/max_pool2d"]


def _burn(stop: mp.Event, on_s: float, off_s: float, nice: int = 0) -> None:
    """Busy-loop ``on_s`` seconds, sleep ``off_s``, until ``stop`` is set (at niceness ``nice``)."""
    import os

    os.nice(nice)
    x = 0
    while not stop.is_set():
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < on_s and not stop.is_set():
            x = (x * 1103515245 + 12345) % 2147483648
        stop.wait(off_s)


def pair_scores(a: np.ndarray, b: np.ndarray, groups: list[str]) -> tuple[float, float]:
    """Mean per-task pairwise agreement of two time vectors, and the median |b/a - 1|."""
    from perfmodel.metrics import task_metrics

    m = task_metrics(np.log(a), np.log(b), groups)
    return float(m["pairwise_acc"]), float(np.median(np.abs(b / a - 1)))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--db", default=None, help="database (default: the default dataset)")
    ap.add_argument("--tasks", default=",".join(DEFAULT_TASKS))
    ap.add_argument("--n", type=int, default=24, help="records per task")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--passes", default="ours,tvm,loaded,niced")
    ap.add_argument("--target", default="stored", help="stored: each record's own target; native: this CPU")
    ap.add_argument("--protocol", default="", help="overrides of Protocol fields, e.g. rounds=1,placement=same")
    ap.add_argument("--no-guard", action="store_true", help="time without the guard (to see what it buys)")
    ap.add_argument("--pause", type=float, default=30.0, help="seconds between passes")
    ap.add_argument("--save", default=None, help="write every pass's times to this .npz")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")

    import tvm

    from perfmodel._tvm import load_ms
    from perfmodel.collect.database import Database
    from perfmodel.collect.measure import Guard, LocalMeasurer, Protocol, label_secs
    from perfmodel.workloads import DEFAULT_DB, native_target

    ms = load_ms()
    proto = Protocol()
    for kv in filter(None, args.protocol.split(",")):
        k, v = kv.split("=")
        ftype = {f.name: f.type for f in fields(Protocol)}[k]
        proto = replace(proto, **{k: (v.lower() in ("1", "true")) if ftype == "bool" else
                                  int(v) if ftype == "int" else float(v) if ftype == "float" else v})
    guard = Guard(enabled=not args.no_guard)
    t_start = time.perf_counter()
    db = Database.open(args.db or DEFAULT_DB)
    picked = db.sample([t for t in args.tasks.split(",") if t], args.n, seed=args.seed)  # (task, record, candidate)
    if not picked:
        print("no task of --tasks is in the database", file=sys.stderr)
        return 2
    tasks_in = list(dict.fromkeys(n for n, _, _ in picked))  # the order of `picked`: every pass lines up with it
    target_of = {}
    for name, rec, _ in picked:
        target_of[name] = tvm.target.Target(native_target() if args.target == "native" else rec.target)

    refs: dict[str, np.ndarray] = {}  # fastest reference-kernel time of each record's batch, per pass

    def ours(label: str) -> np.ndarray:
        out, ref = [], []
        pr = replace(proto, gate=0.0) if label.startswith("ungated") else proto
        for name in tasks_in:
            items = [(c.sch.mod, c.args_info) for n, _, c in picked if n == name]
            with LocalMeasurer(target=target_of[name], protocol=pr, guard=guard) as m:
                res = m.measure(items)
            out += [label_secs(r.run_secs) if r.ok else np.nan for r in res]
            ref += [r.info.get("ref_s") or np.nan for r in res]
        refs[label] = np.array(ref, dtype=np.float64)
        return np.array(out)

    def tvm_pass() -> np.ndarray:
        builder = ms.builder.LocalBuilder(initializer=load_ms, timeout_sec=120)
        runner = ms.runner.LocalRunner(timeout_sec=60, evaluator_config=ms.runner.EvaluatorConfig(
            number=3, repeat=5, min_repeat_ms=50, enable_cpu_cache_flush=False))
        out = []
        for name in tasks_in:
            cands = [c for n, _, c in picked if n == name]
            built = builder.build([ms.builder.BuilderInput(c.sch.mod, target_of[name]) for c in cands])
            inputs = [ms.runner.RunnerInput(b.artifact_path, "cpu", c.args_info) for b, c in zip(built, cands)
                      if b.error_msg is None]
            results = [f.result() for f in runner.run(inputs)]
            it = iter(results)
            for b in built:
                r = next(it) if b.error_msg is None else None
                out.append(float(np.median([float(x) for x in r.run_secs])) if r is not None and r.error_msg is None
                           else np.nan)
        return np.array(out)

    groups = [n for n, _, _ in picked]
    stored = np.array([label_secs(r.run_secs) for _, r, _ in picked])
    passes: dict[str, np.ndarray] = {}
    wanted = args.passes.split(",")
    plan = [("ours1", ours), ("ours2", ours)] if "ours" in wanted else []
    if "ungated" in wanted:  # the same protocol without the reference gate (protocol version 2)
        plan += [("ungated1", ours), ("ungated2", ours)]
    if "tvm" in wanted:
        plan += [("tvm1", tvm_pass), ("tvm2", tvm_pass)]
    if "loaded" in wanted:
        plan.append(("loaded", None))
    if "niced" in wanted:
        plan.append(("niced", None))
    for i, (label, fn) in enumerate(plan):
        if i:
            time.sleep(args.pause)
        t0 = time.perf_counter()
        if label in ("loaded", "niced"):
            stop = mp.Event()
            burner = mp.Process(target=_burn, args=(stop, 5.0, 5.0) if label == "loaded" else (stop, 1e9, 0.0, 19),
                                daemon=True)
            burner.start()
            try:
                passes[label] = ours(label)
            finally:
                stop.set()
                burner.join(10)
        elif label.startswith(("ours", "ungated")):
            passes[label] = fn(label)
        else:
            passes[label] = fn()
        print(f"pass {label}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)

    def score(a_name: str, a: np.ndarray, b_name: str) -> tuple[float, float]:
        b = passes[b_name]
        ok = np.isfinite(a) & np.isfinite(b)
        g = [x for x, k in zip(groups, ok) if k]
        for t in tasks_in:
            sel = np.array([x == t for x in g])
            if sel.sum() > 1:
                pa, mr = pair_scores(a[ok][sel], b[ok][sel], [t] * int(sel.sum()))
                print(f"{a_name:>6s} vs {b_name:<6s} {t[:50]:50s} n={int(sel.sum()):3d} pairwise={pa:.3f} "
                      f"median|rel|={mr:.3f}")
        return pair_scores(a[ok], b[ok], g)

    out: dict = {}
    if "ours1" in passes:
        out["pass_pairwise"], out["pass_median_rel"] = score("ours1", passes["ours1"], "ours2")
        out["stored_pairwise"], out["stored_median_rel"] = score("stored", stored, "ours1")
    if "ungated1" in passes:
        out["ungated_pass_pairwise"], out["ungated_pass_median_rel"] = score("ung1", passes["ungated1"], "ungated2")
    if "tvm1" in passes:
        out["tvm_pass_pairwise"], out["tvm_pass_median_rel"] = score("tvm1", passes["tvm1"], "tvm2")
    if "loaded" in passes and "ours1" in passes:
        out["loaded_pairwise"], out["loaded_median_rel"] = score("ours1", passes["ours1"], "loaded")
    if "niced" in passes and "ours1" in passes:
        out["niced_pairwise"], out["niced_median_rel"] = score("ours1", passes["ours1"], "niced")
    if "ours1" in passes and np.isfinite(refs["ours1"]).all() and np.isfinite(refs["ours2"]).all():
        # the same comparison with each time divided by its batch's fastest reference-kernel time:
        # how much of the pass-to-pass difference is the whole machine being slower or faster
        base = np.nanmin(np.r_[refs["ours1"], refs["ours2"]])
        passes["ours1_ref"] = passes["ours1"] / refs["ours1"] * base
        passes["ours2_ref"] = passes["ours2"] / refs["ours2"] * base
        out["refnorm_pass_pairwise"], out["refnorm_pass_median_rel"] = score("ours1r", passes["ours1_ref"], "ours2_ref")
    out = {k: round(v, 4) for k, v in out.items()}
    out.update(records=len(picked), tasks=len(tasks_in), db=str(db.path), target=args.target,
               protocol=asdict(proto), guard=guard.enabled,
               minutes=round((time.perf_counter() - t_start) / 60, 1))
    if args.db and "pass_pairwise" in out and "stored_pairwise" in out:  # the folder's card shows it
        from perfmodel.collect.card import NOISE_FILE

        (Path(args.db) / NOISE_FILE).write_text(json.dumps({**out, "date": time.strftime("%Y-%m-%d")}, indent=1) + "\n")
    if args.save:
        np.savez(args.save, groups=np.array(groups), stored=stored, **passes, **{f"ref_{k}": v for k, v in refs.items()})
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
