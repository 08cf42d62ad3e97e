"""`perfmodel` command line: workloads | collect | evaluate | check | tune | show | train."""

from __future__ import annotations

import argparse
import json
import sys
import warnings

from perfmodel.config import compose
from perfmodel.evaluate.cli import register as register_evaluate
from perfmodel.show import register as register_show
from perfmodel.tune import register as register_tune


def _cmd_workloads(args: argparse.Namespace) -> int:
    from perfmodel import workloads

    if args.refresh:
        workloads.refresh_network_cache()
    tasks = workloads.registry()
    print(f"{'task':70s} {'family':12s} {'GFLOP':>10s} {'weight':>6s}")
    for t in tasks.values():
        print(f"{t.name:70s} {t.family:12s} {t.flops / 1e9:10.4f} {t.weight:6d}")
    print(f"{len(tasks)} tasks")
    return 0


def _cmd_collect(args: argparse.Namespace) -> int:
    from omegaconf import OmegaConf

    from perfmodel.collect.collector import CollectConfig, collect
    from perfmodel.collect.measure import Guard, Protocol

    cfg = OmegaConf.to_container(compose("collect", args.overrides), resolve=True)
    cfg.pop("tasks_default", None)
    cfg["protocol"] = Protocol(**cfg["protocol"])
    cfg["guard"] = Guard(**cfg["guard"])
    cfg["tasks"] = list(cfg["tasks"])
    out = collect(CollectConfig(**cfg))
    total = {k: sum(v[k] for v in out.values()) for k in ("records", "valid", "failed")}
    print(json.dumps({"tasks": len(out), **total}))
    return 0


def _cmd_card(args: argparse.Namespace) -> int:
    from perfmodel.collect.card import render_card

    print(render_card(args.db))
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from perfmodel.training import compose_train
    from perfmodel.training import main as run

    run(compose_train(args.overrides))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="perfmodel", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("workloads", help="list the registry's tasks with their FLOPs")
    p.add_argument("--refresh", action="store_true", help="re-extract the network tasks with Relax")
    p.set_defaults(fn=_cmd_workloads)
    p = sub.add_parser("collect", help="measure schedules into datasets/ (Hydra overrides follow)")
    p.add_argument("overrides", nargs="*", help="Hydra overrides of conf/collect.yaml, e.g. n_random=8")
    p.set_defaults(fn=_cmd_collect)
    p = sub.add_parser("card", help="print the Markdown dataset card of a database directory")
    p.add_argument("db", help="database directory, e.g. datasets/amd-epyc-t1")
    p.set_defaults(fn=_cmd_card)
    p = sub.add_parser("train", help="train a cost model (same as `python train.py`; Hydra overrides follow)")
    p.add_argument("overrides", nargs="*", help="Hydra overrides of conf/train.yaml, e.g. model=sage")
    p.set_defaults(fn=_cmd_train)
    for register in (register_evaluate, register_tune, register_show):  # subcommands defined beside their code
        register(sub)
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", category=FutureWarning)
    try:
        return args.fn(args)
    except (KeyError, ValueError, ConnectionError, FileNotFoundError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"perfmodel {args.cmd}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
