"""Does the guard's reference kernel speak for the candidates? Its slow batches, and the candidates' times in them.

The guard (``perfmodel.collect.measure.Guard``) times a fixed 64x64 matmul once per round of a batch and
re-measures the whole batch when even the fastest of those timings is more than ``ref_tolerance`` slower
than the fastest this runner has seen. That is right only if a slow reference means slow candidates. This
script replays ``--n`` stored schedules of each of ``--tasks``, builds them once, and times them as one
batch again and again for ``--minutes`` with the guard watching but deciding nothing (every batch is kept,
``Guard(max_attempts=0)``). Per batch it keeps the reference's drift and each candidate's time; a candidate's
base is its median time over the batches whose drift is below ``--calm``; a batch's slowdown is the median,
over its candidates, of time / base - 1.

Prints the drift histogram, the slowdown of the batches above ``--slow`` (the guard's verdict: re-measure)
against the calm ones, and as the last line a JSON object with ``batches``, ``calm_batches``,
``slow_batches``, ``between_batches``, ``ref_tolerance``, ``drift_quantiles`` (10/50/90/99%),
``drift_histogram`` (5%-wide bins), ``slowdown_calm`` / ``slowdown_slow`` / ``slowdown_between`` (medians
over batches), ``slowdown_slow_max``, ``spearman_drift_slowdown``, ``minutes``.

    python benchmarks/bench_guard.py [--db DIR] [--tasks A,B] [--n 4] [--minutes 8] [--calm 0.15] [--slow 0.25]
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
sys.path.insert(0, str(REPO))
# compute-bound, memory-bound and reduction kernels of a few hundred microseconds each
DEFAULT_TASKS = ["GMM-1", "C2D-2", "NRM-1", "SFM-1"]


def slowdowns(times: np.ndarray, drift: np.ndarray, calm: float) -> np.ndarray:
    """Per batch, the median over candidates of time / (the candidate's median over calm batches) - 1.

    Args:
        times: [batches, candidates] seconds (``nan`` where a timing failed).
        drift: [batches] the reference's drift of each batch.
        calm: batches with a drift below this give the candidates' base times.
    """
    base = np.nanmedian(times[drift < calm], axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.nanmedian(times / base[None, :], axis=1) - 1.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--db", default=None, help="database to replay schedules from (default: the default dataset)")
    ap.add_argument("--tasks", default=",".join(DEFAULT_TASKS))
    ap.add_argument("--n", type=int, default=4, help="schedules per task")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--minutes", type=float, default=8.0, help="how long to keep timing the batch")
    ap.add_argument("--calm", type=float, default=0.15, help="drift below which a batch gives the base times")
    ap.add_argument("--slow", type=float, default=0.25, help="drift above which a batch counts as slow")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")

    import tempfile

    import tvm

    from perfmodel.collect.database import Database
    from perfmodel.collect.measure import Guard, LocalMeasurer, build, label_secs, one_line
    from perfmodel.metrics import spearman
    from perfmodel.workloads import DEFAULT_DB, native_target

    db = Database.open(args.db or DEFAULT_DB)
    items = [(c.sch.mod, c.args_info) for _, _, c in db.sample([t for t in args.tasks.split(",") if t], args.n,
                                                               seed=args.seed)]
    if not items:
        print(f"none of --tasks ({args.tasks}) is in {db.path}", file=sys.stderr)
        return 2
    target = tvm.target.Target(native_target())
    rows, drifts = [], []
    with tempfile.TemporaryDirectory(prefix="bench-guard-") as tmp:
        timed = []
        for mod, a in items:  # built once, before any timing
            try:
                timed.append((build(mod, target, tmp), a))
            except Exception as e:  # noqa: BLE001  a schedule that no longer builds is left out
                print(f"skip a schedule: {one_line(e)}", file=sys.stderr)
        print(f"{len(items)} schedules, {len(timed)} built; timing them as one batch for {args.minutes:g} min")
        t0 = time.perf_counter()
        with LocalMeasurer(target=target, guard=Guard(max_attempts=0), log=lambda _: None) as m:
            while timed and time.perf_counter() - t0 < args.minutes * 60:
                res = m.measure_built(timed)
                ref_s = next((r.info.get("ref_s") for r in res if r.info.get("ref_s")), None)
                if ref_s is None:
                    continue
                drifts.append(ref_s)
                rows.append([label_secs(r.run_secs) if r.ok else np.nan for r in res])
    if not drifts:
        print("no batch was timed with the reference (nothing built, or the reference kernel failed)", file=sys.stderr)
        return 1
    # a batch's drift as the guard would see it at the end: its fastest reference against the run's fastest
    times, drift = np.array(rows, dtype=np.float64), np.array(drifts, dtype=np.float64)
    drift = drift / drift.min() - 1.0
    slow_d = slowdowns(times, drift, args.calm)
    calm, slow = drift < args.calm, drift > args.slow
    between = ~calm & ~slow
    bins, counts = np.unique(np.floor(drift * 20).astype(int), return_counts=True)
    hist = {f"{int(b) * 5}%": int(n) for b, n in zip(bins, counts)}
    print("reference drift, batches per 5% bin:", hist)

    ok = np.isfinite(slow_d)
    rho = spearman(drift[ok], slow_d[ok]) if ok.sum() >= 3 else float("nan")  # nan: a side is constant

    def med(mask: np.ndarray) -> float | None:
        v = slow_d[mask]
        v = v[np.isfinite(v)]
        return round(float(np.median(v)), 4) if len(v) else None

    out = {"batches": int(len(drift)), "calm_batches": int(calm.sum()), "slow_batches": int(slow.sum()),
           "between_batches": int(between.sum()), "ref_tolerance": Guard().ref_tolerance,
           "drift_quantiles": {q: round(float(np.quantile(drift, q / 100)), 4) for q in (10, 50, 90, 99)},
           "drift_histogram": hist, "slowdown_calm": med(calm), "slowdown_slow": med(slow),
           "slowdown_between": med(between),
           "slowdown_slow_max": round(float(np.nanmax(slow_d[slow])), 4) if slow.any() else None,
           "spearman_drift_slowdown": round(rho, 4) if np.isfinite(rho) else None, "schedules": len(timed),
           "minutes": round((time.perf_counter() - t0) / 60, 1)}
    print(f"batches: {out['batches']} ({out['calm_batches']} calm < {args.calm:.0%}, {out['slow_batches']} slow > "
          f"{args.slow:.0%}); candidates' median slowdown: calm {out['slowdown_calm']}, slow {out['slowdown_slow']}, "
          f"between {out['slowdown_between']}")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
