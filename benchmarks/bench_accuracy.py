"""How accurate is the shipped cost model on tasks it never saw, next to TVM's own cost models?

Evaluates the shipped checkpoint and the baselines (TVM's XGBModel and MLPModel, an XGBoost
latency regressor, random) on the held-out tasks of the shipped dataset: the test tasks of
``make_split(kind="task", seed=0)``, the split training uses (conf/data/default.yaml); the
baselines are trained on the other tasks. Prints the table and the targets, then, as the last
line, the JSON of ``perfmodel evaluate`` (``{"models": ..., "tasks": ...}``).

With ``--lofo`` it also reports the unseen-family view: for every operator family of the dataset,
one model (``ensemble=1``) is trained without any task of that family (``data.split=family``) and
scored on that family; the JSON then has ``lofo`` (per family: pairwise, tau, peak1, peak5, n) and
``lofo_min_pairwise``.

With ``--pool --unseen`` it scores the runs of a tuning benchmark instead (``--db`` its output,
e.g. ``benchmarks/tune_full/znver3``): every schedule any cost model measured for a task is one
ranking, and tasks that the training databases hold are left out (only unseen operators are scored).
``--chosen-by gnn`` (or ``xgb``, ...) scores only the databases of runs tuned with that cost model (the
``cost_model_name`` of the run's ``tune_summary.json``): a pool of one model's choices holds that model's own
false positives, so a fair comparison looks at each chooser's pool apart (RESULTS, "The Zen 4, sixth session").

    python benchmarks/bench_accuracy.py [--quick] [--checkpoint PATH] [--db DIR] [--train-db DIR,DIR]
                                        [--lofo [--lofo-epochs N]] [--pool] [--unseen] [--chosen-by MODEL,...]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

from perfmodel.collect.database import DatabaseError, iter_databases
from perfmodel.evaluate.cli import heldout_from, load_predictor
from perfmodel.evaluate.evaluator import DEFAULT_TRAIN_DB, evaluate
from perfmodel.evaluate.report import table
from perfmodel.metrics import RANKING
from perfmodel.tune import TUNE_SUMMARY

# issue #11's targets on the held-out tasks of the native folder
TARGETS = {"pairwise_acc": 0.88, "peak1": 0.85, "peak5": 0.95, "mape": 0.25, "r2": 0.80, "mape_vs_xgb_latency": 3.0,
           "lofo_min_pairwise": 0.80}


def chosen_by(db: str, models: list[str]) -> list[str]:
    """The databases at or under ``db`` whose run was tuned with one of ``models`` (the ``cost_model_name``
    of the ``tune_summary.json`` that ``perfmodel tune`` writes beside the database).

    Raises:
        DatabaseError: one line naming ``db``, when none of its databases is such a run.
    """
    out, unknown = [], 0
    for d in iter_databases(db):
        try:
            name = json.loads((Path(d) / TUNE_SUMMARY).read_text()).get("cost_model_name")
        except (OSError, ValueError, AttributeError):
            unknown += 1
            continue
        if name in models:
            out.append(str(d))
    if not out:
        raise DatabaseError(f"{db}: no database of a run tuned with {','.join(models)} (cost_model_name in its "
                            f"{TUNE_SUMMARY}; {unknown} database(s) without a readable summary)")
    return out


def targets(models: dict[str, dict], lofo_min_pairwise: float | None = None) -> list[tuple[str, bool]]:
    """(description, met) of every target of issue #11, for the ``gnn`` model."""
    g = models.get("gnn")
    if not g or g.get("error"):
        return [("gnn scored", False)]
    out = [(f"gnn {k} >= {TARGETS[k]}", (g.get(k) or 0) >= TARGETS[k]) for k in ("pairwise_acc", "peak1", "peak5")]
    out.append((f"gnn mape <= {TARGETS['mape']:.0%}", g.get("mape") is not None and g["mape"] <= TARGETS["mape"]))
    out.append((f"gnn r2 >= {TARGETS['r2']}", g.get("r2") is not None and g["r2"] >= TARGETS["r2"]))
    lat = models.get("xgb-latency")
    if lat and not lat.get("error") and lat.get("mape") and g.get("mape"):
        f = TARGETS["mape_vs_xgb_latency"]
        out.append((f"gnn mape >= {f:g}x lower than xgb-latency's ({lat['mape'] / g['mape']:.2f}x)",
                    lat["mape"] >= f * g["mape"]))
    for base, b in models.items():
        if base == "gnn" or not b or b.get("error"):
            continue
        worse = [k for k in RANKING if b.get(k) is not None and (g.get(k) is None or g[k] < b[k])]
        out.append((f"gnn >= {base} on every ranking metric" + (f" (below on {', '.join(worse)})" if worse else ""),
                    not worse))
    if lofo_min_pairwise is not None:
        out.append((f"leave-one-family-out pairwise >= {TARGETS['lofo_min_pairwise']} for every family "
                    f"(min {lofo_min_pairwise:.3f})", lofo_min_pairwise >= TARGETS["lofo_min_pairwise"]))
    return out


def leave_one_family_out(db: str, *, epochs: int) -> dict:
    """Train without each family in turn (one model, ``epochs`` epochs) and score that family."""
    from perfmodel.collect.database import Database
    from perfmodel.data.dataset import task_identity
    from perfmodel.training.train import compose_train
    from perfmodel.training.train import train as run_train

    d = Database.open(db)
    families = sorted({task_identity(d.workload(w).mod)[1] for w in d.records_by_workload()})
    per: dict[str, dict] = {}
    for fam in families:
        t0 = time.perf_counter()
        cfg = compose_train([f"data.db_paths=[{db}]", "data.split=family", f"data.holdout_family={fam}", "ensemble=1",
                             "baseline=null", f"trainer.max_epochs={epochs}", f"task_name=lofo-{fam}"])
        try:
            m = run_train(cfg)
        except ValueError as e:  # e.g. a family with a single task has no pairs
            print(f"lofo {fam}: skipped ({e})", file=sys.stderr)
            continue
        per[fam] = {k: m.get(f"test/{k}") for k in ("pairwise_acc", "kendall_tau", "peak1", "peak5", "mape")}
        per[fam]["n_tasks"] = m.get("test/n_tasks")
        per[fam]["n_records"] = m.get("n_test")
        print(f"lofo {fam:12s} pairwise={per[fam]['pairwise_acc']} peak1={per[fam]['peak1']} "
              f"({time.perf_counter() - t0:.0f}s)", file=sys.stderr, flush=True)
    return {"lofo": per, "lofo_min_pairwise": lofo_min_pairwise(per)}


LOFO_MIN_RECORDS = 32  # a family held out with fewer records has too few pairs to judge (e.g. element-wise
                       # operators: one or two distinct schedules per task)


def lofo_min_pairwise(per: dict[str, dict]) -> float | None:
    """The lowest pairwise accuracy over the families held out with at least ``LOFO_MIN_RECORDS`` records."""
    pw = [v["pairwise_acc"] for v in per.values()
          if v.get("pairwise_acc") is not None and (v.get("n_records") or 0) >= LOFO_MIN_RECORDS]
    return min(pw) if pw else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="baselines on <= 64 records per task, shorter training")
    ap.add_argument("--checkpoint", default=None, help="default: perfmodel/pretrained/gnn.ckpt")
    ap.add_argument("--db", default=str(DEFAULT_TRAIN_DB), help="the dataset (evaluated and trained on)")
    ap.add_argument("--train-db", default=None,
                    help="comma-separated databases the baselines train on (default: --db); give every folder "
                         "the checkpoint trained on, e.g. with a target-input model trained on two folders")
    ap.add_argument("--baselines", default="xgb,mlp,xgb-latency,random")
    ap.add_argument("--pool", action="store_true",
                    help="a task held by several databases under --db (a tuning benchmark's runs) is one task")
    ap.add_argument("--unseen", action="store_true", help="score only the tasks that --train-db does not hold")
    ap.add_argument("--chosen-by", default=None,
                    help="comma-separated cost models (gnn, xgb, ...): score only the databases of runs tuned with "
                         "them (their tune_summary.json's cost_model_name)")
    ap.add_argument("--lofo", action="store_true", help="also the leave-one-family-out view (one training per family)")
    ap.add_argument("--lofo-epochs", type=int, default=15, help="epochs of each leave-one-family-out training")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    t0 = time.perf_counter()
    predictor = load_predictor(args.checkpoint, required=False)
    baselines = [b for b in args.baselines.split(",") if b]
    train_db = [p for p in (args.train_db or args.db).split(",") if p]
    try:
        dbs = chosen_by(args.db, args.chosen_by.split(",")) if args.chosen_by else [args.db]
    except DatabaseError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    res = evaluate(dbs, predictor=predictor, train_db=train_db, baselines=baselines, seed=0,
                   quick=args.quick, heldout=heldout_from(predictor, train_db, None),
                   train_per_task=64 if args.quick else None, pool=args.pool, unseen=args.unseen,
                   log=lambda m: print(m, file=sys.stderr))
    out = res.to_json()
    print(f"{'unseen' if args.unseen else 'held-out'} tasks of {args.db}: {len(out['tasks'])} tasks, "
          f"{sum(t['n'] for t in out['tasks'].values())} records ({time.perf_counter() - t0:.0f}s)")
    print(table(out))
    for n in out["notes"]:
        print(f"note: {n}")
    result = {"models": out["models"], "tasks": out["tasks"]}
    if args.lofo:
        result.update(leave_one_family_out(args.db, epochs=args.lofo_epochs))
    for desc, ok in targets(out["models"], result.get("lofo_min_pairwise")):
        print(f"target {'MET ' if ok else 'MISS'} {desc}")
    print(json.dumps(result, allow_nan=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
