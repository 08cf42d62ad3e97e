"""`perfmodel evaluate` (offline, on stored records) and `perfmodel check` (fresh schedules, measured now)."""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import Any

from perfmodel.evaluate.evaluator import DEFAULT_CACHE, DEFAULT_TRAIN_DB
from perfmodel.predictor import DEFAULT_CHECKPOINT, load_predictor

DEFAULT_BASELINES = "xgb,mlp,xgb-latency,random"


def register(sub: Any) -> None:
    """Add the ``evaluate`` and ``check`` subcommands to ``perfmodel``'s subparsers."""
    p = sub.add_parser("evaluate", help="score a checkpoint and TVM's cost models on measured records")
    p.add_argument("--db", action="append", required=True,
                   help="database dir, or a dir holding databases (repeatable)")
    p.add_argument("--checkpoint", default=None,
                   help=f"model checkpoint (default: {DEFAULT_CHECKPOINT.name} shipped in perfmodel/pretrained; "
                        "'none' = baselines only)")
    p.add_argument("--train-db", action="append", default=None,
                   help=f"data the baselines train on (repeatable; default: {DEFAULT_TRAIN_DB.name}); tasks "
                        "being evaluated are left out of it, and an evaluated training db is cut to its held-out tasks")
    p.add_argument("--baselines", default=DEFAULT_BASELINES,
                   help=f"comma-separated, from xgb,mlp,xgb-latency,random ('' = none; default {DEFAULT_BASELINES})")
    p.add_argument("--json", default=None, help="write the results as JSON here")
    p.add_argument("--report", default=None, help="write report.md and its plots into this directory")
    p.add_argument("--seed", type=int, default=0, help="seed of the baselines")
    p.add_argument("--split-seed", type=int, default=None,
                   help="seed of the held-out-task split (default: the checkpoint's, else 0 as in training)")
    p.add_argument("--all-tasks", action="store_true",
                   help="evaluate every task even when the db is also the training db (no held-out cut)")
    p.add_argument("--train-per-task", type=int, default=None,
                   help="train the baselines on at most this many records per task (default: all)")
    p.add_argument("--quick", action="store_true", help="shorter baseline training")
    p.set_defaults(fn=cmd_evaluate)

    p = sub.add_parser("check", help="sample fresh schedules of a task, predict and measure them now")
    p.add_argument("task", help="registry task name (`perfmodel workloads` lists them)")
    p.add_argument("--n", type=int, default=64, help="schedules to sample and measure")
    p.add_argument("--seed", type=int, default=1, help="first sampling seed (>= 1)")
    p.add_argument("--checkpoint", default=None, help="model checkpoint (default: the shipped one)")
    p.add_argument("--rounds", type=int, default=None, help="timing rounds per schedule (default: the protocol's)")
    p.add_argument("--json", default=None, help="write the results as JSON here")
    p.set_defaults(fn=cmd_check)


def _predictor(path: str | None, *, required: bool) -> Any:
    """``load_predictor`` of ``--checkpoint``: ``none`` = no model; a missing default one is skipped
    (with a note) unless ``required``."""
    if path is not None and path.lower() == "none":
        return None
    predictor = load_predictor(path, required=required)
    if predictor is None:
        print(f"perfmodel evaluate: no checkpoint at {DEFAULT_CHECKPOINT}: scoring the baselines only", file=sys.stderr)
    return predictor


def heldout_from(predictor: Any, train_db: list[str], split_seed: int | None) -> Any:
    """A callable giving the held-out test task names: the checkpoint's own split when it records one."""

    def names() -> set[str]:
        held = predictor.heldout_tasks(split_seed) if predictor is not None else None
        if held is not None:
            return held
        from perfmodel.evaluate.evaluator import heldout_tasks

        seed = split_seed if split_seed is not None else int(predictor.split.get("seed", 0) if predictor else 0)
        return heldout_tasks(train_db, seed=seed, cache_dir=DEFAULT_CACHE)

    return names


def _quiet_libraries() -> None:
    """Hide the warnings that TVM, torch, xgboost... raise inside themselves; perfmodel's own (a
    database's skipped corrupt lines, say) still show."""
    warnings.filterwarnings("ignore", module=r"(tvm|tvm_ffi|torch|torch_geometric|lightning|xgboost|sklearn)(\.|$)")


def cmd_evaluate(args: argparse.Namespace) -> int:
    from perfmodel.evaluate.evaluator import evaluate
    from perfmodel.evaluate.report import table, write_report

    _quiet_libraries()
    baselines = [b.strip() for b in args.baselines.split(",") if b.strip()]
    train_db = args.train_db if args.train_db is not None else [str(DEFAULT_TRAIN_DB)]
    predictor = _predictor(args.checkpoint, required=False)
    heldout = None if args.all_tasks else heldout_from(predictor, train_db, args.split_seed)
    res = evaluate(args.db, predictor=predictor, train_db=train_db if baselines else [], baselines=baselines,
                   seed=args.seed, quick=args.quick, heldout=heldout, train_per_task=args.train_per_task,
                   log=lambda m: print(m, file=sys.stderr))
    out = res.to_json()
    print(table(out))
    for n in out["notes"]:
        print(f"note: {n}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=1))
    if args.report:
        print(f"report: {write_report(res, args.report)}")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from perfmodel.collect.measure import Protocol
    from perfmodel.evaluate.check import check
    from perfmodel.evaluate.report import _fmt
    from perfmodel.metrics import METRICS

    _quiet_libraries()
    predictor = _predictor(args.checkpoint, required=True)
    out = check(args.task, predictor=predictor, n=args.n, seed=args.seed, protocol=Protocol(rounds=args.rounds) if args.rounds else None)
    print(f"{args.task}: {out['n_measured']} of {out['n_sampled']} schedules measured "
          f"(sample {out['sample_s']}s, predict {out['predict_s']}s, measure {out['measure_s']}s)")
    for k in METRICS:
        print(f"  {k:14s} {_fmt(out[k], k == 'mape'):>10s}")
    if out["failed"]:
        print(f"  {len(out['failed'])} failed, first: {out['failed'][0]}")
    summary = {k: out[k] for k in (*METRICS, "task", "n_sampled", "n_measured")}
    from perfmodel.evaluate.evaluator import _nan_to_none

    if args.json:
        Path(args.json).write_text(json.dumps(_nan_to_none(out), indent=1))
    print(json.dumps(_nan_to_none(summary)))
    return 0
