"""Does the GNN's online learning pay? Replays finished tuning runs round by round: frozen, ridge correction, fine-tuned.

Issue #12 item 2: fine-tuning during the search must happen only when it pays. A tuning run measures
``--per-iter`` candidates per round; after each round the plugin (``GNNCostModel.update``) fine-tunes
on everything measured so far. What that buys is how well the model ranks the *next* round's
candidates, which it has not seen. This replays the measured records of finished runs
(``bench_tune``'s ``<out>/<task>/<model>-s<seed>/`` databases, any model's, in measurement order) in
rounds: before round r is revealed, each policy's cost model scores its candidates through the
plugin's own ``predict``; then the round goes through the plugin's own ``update``. Judged on round r
(r >= 1): pairwise accuracy and peak@1 / peak@4 within the round (``perfmodel.metrics``), against the
measured times; also the seconds each policy spent in ``update`` (featurizing + fine-tuning).

Policies: ``frozen`` (``gnn.frozen=true``), ``ridge`` (``gnn.online=ridge``, the default of
``perfmodel tune``: a per-task ridge correction on the network's embeddings, refitted every round),
``ridge<alpha>`` (the same with ``gnn.ridge_alpha=<alpha>``, e.g. ``ridge1000``, the default until
2026-11-27: trusts the model longer; ``ridgeauto``: the penalty picked per task at every refit by
leave-one-out), ``gp`` (``gnn.online=gp``: a Gaussian process on the same embeddings; judged by its posterior mean),
``every<k>`` (``gnn.online=finetune``: fine-tune the network after every k-th round,
``gnn.update_every=k``), ``xgb`` (TVM's XGBModel
trained on the rounds so far, what the GNN competes with: scores at random until 100 measurements).
Replay is not search: the candidates are the ones the original run's model picked, so the numbers
say how each policy ranks the same candidates, not which candidates it would have found. With
``--heldout DB`` the rounds are instead the collection-order records (random schedules) of the
dataset's tasks that the checkpoint never trained on.

Last line: JSON with ``policies`` (per policy: ``pairwise``, ``peak1``, ``peak4`` means over judged
rounds, ``update_s``, ``rounds``), ``per_run`` (the same per run), ``pays`` (per learning policy:
its pairwise and peak@1 minus frozen's), ``runs``, ``per_iter``.

    python benchmarks/bench_finetune.py [--runs DIR ...] [--policies frozen,ridge,every1,xgb] [--per-iter 16]
    python benchmarks/bench_finetune.py --heldout datasets/amd-epyc-znver3-t1 [--max-records 256] [--policies ...]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_RUNS = [REPO / "benchmarks" / "tune_full" / "runs"]


POLICY_HELP = "use frozen, ridge, ridge<alpha> (e.g. ridge10, ridgeauto), gp, every<k> (e.g. every1, every4) or xgb"


def parse_policy(name: str) -> tuple[str, float | str | None] | None:
    """(kind, its number) of a policy name -- ``("ridge", 10.0)`` for ``ridge10``, ``("every", 4)`` for
    ``every4``, ``("frozen", None)`` -- or ``None`` for a name that is no policy."""
    if name in ("frozen", "ridge", "gp", "xgb"):
        return name, None
    for kind in ("ridge", "every"):
        rest = name[len(kind):]
        if name.startswith(kind) and rest:
            if kind == "ridge" and rest == "auto":
                return kind, "auto"
            try:
                v = float(rest) if kind == "ridge" else int(rest)
            except ValueError:
                return None
            return (kind, v) if v > 0 else None
    return None


def policy_model(name: str, checkpoint: str | None) -> Any:
    """The timed plugin cost model of a policy name (see the module docstring)."""
    from perfmodel.plugin import make_cost_model

    spec = parse_policy(name)
    if spec is None:
        raise SystemExit(f"unknown policy {name!r}: {POLICY_HELP}")
    kind, v = spec
    if kind == "frozen":
        return make_cost_model("gnn", checkpoint=checkpoint, frozen=True, threads=1)
    if kind == "ridge":
        return make_cost_model("gnn", checkpoint=checkpoint, online="ridge", threads=1,
                               **({} if v is None else {"ridge_alpha": v}))
    if kind == "gp":  # its posterior mean: the ranking it learned (its optimism is for the search, not judged here)
        return make_cost_model("gnn", checkpoint=checkpoint, online="gp", gp_kappa=0.0, threads=1)
    if kind == "every":
        return make_cost_model("gnn", checkpoint=checkpoint, online="finetune", update_every=int(v), threads=1)
    return make_cost_model("xgb", num_tuning_cores=1)


def replay(task: Any, policies: list[str], per_iter: int, checkpoint: str | None) -> dict[str, dict]:
    """Per policy: the metrics of every judged round of one run's records, and its update seconds."""
    from perfmodel.metrics import pairwise_acc, peak_k

    cands = task.candidates()  # replays every record once (unreplayable ones are dropped)
    results = task.runner_results()
    times = task.times
    ctx = task.context()
    rounds = [range(i, min(i + per_iter, len(cands))) for i in range(0, len(cands), per_iter)]
    out: dict[str, dict] = {}
    for name in policies:
        cm = policy_model(name, checkpoint)
        per: dict[str, list[float]] = {"pairwise": [], "peak1": [], "peak4": []}
        for r, idx in enumerate(rounds):
            c = [cands[i] for i in idx]
            t = times[list(idx)]
            if r > 0 and len(c) >= 2:
                score = np.asarray(cm.predict(ctx, c), dtype=np.float64)
                pred = -np.nan_to_num(score, nan=-np.inf)  # lower = predicted faster; unscored = slowest
                per["pairwise"].append(pairwise_acc(pred, t))
                per["peak1"].append(peak_k(pred, t, 1))
                per["peak4"].append(peak_k(pred, t, 4))
            cm.update(ctx, c, [results[i] for i in idx])
        out[name] = {k: [float(x) for x in v] for k, v in per.items()}
        out[name]["update_s"] = float(cm.stats.update_s)
    return out


def mean(xs: list[float]) -> float | None:
    v = [x for x in xs if x is not None and not math.isnan(x)]
    return round(float(np.mean(v)), 4) if v else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", nargs="*", default=[str(p) for p in DEFAULT_RUNS],
                    help="tuning-run databases, or folders holding them (default: the committed full-run records)")
    ap.add_argument("--policies", default="frozen,ridge,every1,xgb")
    ap.add_argument("--per-iter", type=int, default=16, help="candidates per round (perfmodel tune's trials_per_iter)")
    ap.add_argument("--checkpoint", default=None, help="GNN checkpoint (default: the shipped one)")
    ap.add_argument("--heldout", default=None, metavar="DB",
                    help="instead of tuning runs: the tasks of this dataset that the checkpoint held out, their "
                         "first --max-records records in collection order (random schedules of unseen tasks)")
    ap.add_argument("--max-records", type=int, default=256, help="records per task of --heldout")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")

    from perfmodel.evaluate.records import load_tasks

    policies = [p for p in args.policies.split(",") if p]
    for p in policies:  # a typo fails before any work
        if parse_policy(p) is None:
            raise SystemExit(f"unknown policy {p!r}: {POLICY_HELP}")
    if args.heldout:
        from perfmodel.predictor import load_predictor

        held = load_predictor(args.checkpoint).heldout_tasks() or set()
        tasks = [t for t in load_tasks([args.heldout], min_records=2 * args.per_iter) if t.name in held]
        for t in tasks:
            t.records, t.times = t.records[:args.max_records], t.times[:args.max_records]
        if not tasks:
            raise SystemExit(f"{args.heldout}: none of the checkpoint's held-out tasks has {2 * args.per_iter} records")
    else:
        tasks = load_tasks(args.runs, min_records=2 * args.per_iter)
        if not tasks:
            raise SystemExit(f"no run under {args.runs} holds {2 * args.per_iter} valid records (two rounds)")
    per_run: dict[str, dict] = {}
    t0 = time.perf_counter()
    for task in tasks:
        label = f"{task.name.split('@')[0]}:{task.db.path}"  # the path: two runs' folders may share their names
        res = replay(task, policies, args.per_iter, args.checkpoint)
        per_run[label] = {p: {**{k: mean(v) for k, v in r.items() if k != "update_s"},
                              "update_s": round(r["update_s"], 2)} for p, r in res.items()}
        line = "  ".join(f"{p} {v['pairwise']}/{v['peak1']}/{v['update_s']}s" for p, v in per_run[label].items())
        print(f"{label} ({len(task.records)} records): {line}  [{time.perf_counter() - t0:.0f}s]",
              file=sys.stderr, flush=True)
        for p, r in res.items():
            per_run[label][p]["_raw"] = r
    summary: dict[str, dict] = {}
    for p in policies:
        raws = [per_run[lab][p].pop("_raw") for lab in per_run]
        summary[p] = {k: mean([x for r in raws for x in r[k]]) for k in ("pairwise", "peak1", "peak4")}
        summary[p]["update_s"] = round(sum(r["update_s"] for r in raws), 1)
        summary[p]["rounds"] = sum(len(r["pairwise"]) for r in raws)
    print(f"\n| policy | pairwise (next round) | peak@1 | peak@4 | update s (all runs) | rounds |", file=sys.stderr)
    print("|---|---:|---:|---:|---:|---:|", file=sys.stderr)
    for p, v in summary.items():
        print(f"| {p} | {v['pairwise']} | {v['peak1']} | {v['peak4']} | {v['update_s']} | {v['rounds']} |",
              file=sys.stderr)
    pays = {p: {"pairwise": round(summary[p]["pairwise"] - summary["frozen"]["pairwise"], 4),
                "peak1": round(summary[p]["peak1"] - summary["frozen"]["peak1"], 4)}
            for p in policies if p not in ("frozen", "xgb") and "frozen" in summary
            and summary[p]["pairwise"] is not None and summary["frozen"]["pairwise"] is not None}
    print(json.dumps({"policies": summary, "pays": pays, "per_run": per_run, "runs": len(per_run),
                      "per_iter": args.per_iter}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
