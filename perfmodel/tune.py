"""`perfmodel tune`: tune a registry task or a whole network with MetaSchedule, guided by a chosen cost model."""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

TUNE_SUMMARY = "tune_summary.json"  # what every run writes into its work_dir last (the keys of `tune`'s result)

REPO = Path(__file__).resolve().parents[1]


def register(sub: Any) -> None:
    """Add the ``tune`` subcommand to ``perfmodel``'s subparsers."""
    p = sub.add_parser("tune", help="tune a task or network with MetaSchedule and a cost model "
                                    "(Hydra overrides of conf/tune.yaml follow)")
    p.add_argument("overrides", nargs="*",
                   help="e.g. task=GMM-0 cost_model=gnn trials=64 work_dir=runs/tune/gmm0, "
                        "or network=bert_layer batch=1 trials=32")
    p.set_defaults(fn=_cmd_tune)


def _cmd_tune(args: argparse.Namespace) -> int:
    from perfmodel.config import compose

    out = tune(compose("tune", args.overrides))
    print(json.dumps({k: out[k] for k in ("best_s", "trials", "work_dir", "plot", "cost_model_share")}))
    return 0


def resolve_tasks(cfg: Any) -> tuple[str, list[Any], list[str]]:
    """The run's label, its ``TuneTask``s and the tasks left out: the registry task ``cfg.task``, or the tasks of
    ``cfg.network`` that its build runs (a network's tasks that Relax lowers to a VM builtin, so that its build
    never calls them, are left out: :func:`perfmodel.plugin.network.called_prim_funcs`).

    Raises:
        KeyError: an unknown task (``UnknownTaskError``).
        ValueError: an unknown network, or a network without tasks at that batch size.
    """
    from perfmodel import workloads
    from perfmodel.plugin.search import TuneTask

    if cfg.get("network"):
        from perfmodel.plugin.network import called_prim_funcs
        from perfmodel.reference_networks import NETWORKS

        net, batch = str(cfg.network), int(cfg.batch)
        if net not in NETWORKS:
            raise ValueError(f"unknown network {net!r}: choose from {', '.join(NETWORKS)}")
        if batch in workloads.NETWORK_BATCHES:  # extracted once by workloads.extract_network_tasks, cached
            tasks = [TuneTask(name=n, mod=workloads.get_task(n).mod, weight=float(t.weight))
                     for n, t in workloads.registry().items() if t.source == net and t.batch == batch]
        else:  # the same PyTorch -> Relax -> extract_tasks pipeline, run now
            import tvm

            tasks = [TuneTask(name=e["name"], mod=tvm.ir.load_json(e["mod"]), weight=float(e["weight"]))
                     for e in workloads.extract_network_tasks(net, batch)]
        called = called_prim_funcs(workloads.network_relax_mod(net, batch)[0])
        skipped = [t.name for t in tasks if t.name.split("/", 1)[1] not in called]
        tasks = [t for t in tasks if t.name not in skipped]
        if not tasks:
            raise ValueError(f"network {net} at batch {batch} has no tuning tasks")
        return f"{net}-b{batch}", tasks, skipped
    name = str(cfg.task)
    task = workloads.get_task(name)
    return name, [TuneTask(name=name, mod=task.mod, weight=1.0)], []


def build_cost_model(cfg: Any) -> Any:
    """The configured cost model, wrapped to be timed and guarded; checkpoint problems raise here.

    Raises:
        FileNotFoundError / CheckpointError: the GNN checkpoint is missing or does not fit.
        ValueError: an unknown cost model name.
    """
    from perfmodel.plugin import make_cost_model

    kind = str(cfg.cost_model)
    if kind == "gnn":
        g = cfg.gnn
        return make_cost_model("gnn", checkpoint=cfg.get("checkpoint") or None, threads=g.get("threads"),
                               featurize_workers=int(g.get("featurize_workers") or physical_cores()),
                               **run_settings(cfg))
    return make_cost_model(kind, num_tuning_cores=int(cfg.get("xgb_threads") or physical_cores()))


def tune_target(cfg: Any) -> Any:
    """The ``tvm.target.Target`` a composed ``conf/tune.yaml`` tunes for on this machine."""
    from perfmodel.collect.collector import make_target

    return make_target(cfg.target if isinstance(cfg.target, str) else dict(cfg.target), int(cfg.threads))


def measure_settings(cfg: Any) -> tuple[Any, Any]:
    """The timing ``Protocol`` and busy-machine ``Guard`` that a composed ``conf/tune.yaml``'s run measures with."""
    from perfmodel.collect.measure import Guard, Protocol

    return (Protocol(**{"threads": int(cfg.threads), **dict(cfg.get("protocol") or {})}),
            Guard(**dict(cfg.get("guard") or {})))


def run_settings(cfg: Any) -> dict[str, Any] | None:
    """The options of ``GNNCostModel`` that decide how a composed ``conf/tune.yaml``'s run scores
    candidates (``None``: not the GNN): what builds the model, and what a resumed benchmark compares
    besides the weights (threads and workers change only the speed)."""
    if str(cfg.cost_model) != "gnn":
        return None
    from perfmodel.predictor import parse_alpha

    g = cfg.gnn
    return {"frozen": bool(g.frozen), "online": str(g.online),
            "ridge_alpha": parse_alpha(g.ridge_alpha, "gnn.ridge_alpha"),
            "gp_kappa": float(g.gp_kappa), "update_every": int(g.update_every), "steps": int(g.steps),
            "lr": float(g.lr), "explore": float(g.get("explore") or 0.0),
            **_diversity_settings(g),
            **({"decisions": float(g.decisions)} if g.get("decisions") else {}),  # only when on: old runs read back
            **({"decision_cover": int(g.decision_cover)} if g.get("decision_cover") else {})}


def _diversity_settings(g: Any) -> dict[str, Any]:
    """``gnn.diversity``, ``gnn.diversity_rounds``, ``gnn.diversity_signature`` and ``gnn.diversity_stall`` as
    ``run_settings`` lists them: only when a penalty is on, its rounds only when limited, the signature weight
    only when set and the stall only when it can act (rounds limited), so that runs from before any of them
    existed still read back."""
    div, rounds = float(g.get("diversity") or 0.0), int(g.get("diversity_rounds") or 0)
    sig, stall = float(g.get("diversity_signature") or 0.0), int(g.get("diversity_stall") or 0)
    if not (div or sig):
        return {}
    return {"diversity": div, **({"diversity_rounds": rounds} if rounds else {}),
            **({"diversity_signature": sig} if sig else {}),
            **({"diversity_stall": stall} if stall and rounds else {})}


def run_checkpoint(cfg: Any) -> dict[str, str] | None:
    """``{path, sha256}`` of the weights that score a composed ``conf/tune.yaml``'s run (``None``: not the GNN)."""
    if str(cfg.cost_model) != "gnn":
        return None
    from perfmodel.predictor import checkpoint_id

    return checkpoint_id(cfg.get("checkpoint") or None)


def tune(cfg: Any) -> dict[str, Any]:
    """Tunes the configured task or network and reports what it found.

    Args:
        cfg: the composed ``conf/tune.yaml``.

    Returns:
        ``best_s`` (best latency found: the task's, or the weighted network sum once every task has a
        valid record), ``tasks`` (best seconds per task), ``curve`` (best after each trial),
        ``seconds`` (seconds since the tuning started at which each trial was measured), ``trials``,
        ``untuned_tasks`` (no valid record), ``skipped_tasks`` (a network's tasks its build never runs, not
        tuned: :func:`resolve_tasks`), ``tune_s``, ``cost_model`` (its counters, e.g.
        ``predict_s``, ``predict_per_s``), ``cost_model_share`` (seconds inside predict + update /
        tuning seconds), ``work_dir``, ``plot``, ``target`` (``{kind, mcpu, threads}`` tuned for), for
        the GNN ``checkpoint`` (:func:`run_checkpoint`) and ``gnn_settings`` (:func:`run_settings`). A
        network run adds ``estimate_ms`` (weighted sum of the tuned tasks' bests) and, measured end to
        end (:func:`perfmodel.plugin.network.measure_network`), ``network_latency_ms``,
        ``untuned_latency_ms``, ``torch_eager_ms`` and their details (or ``network_error``).
    """
    os.environ["TVM_NUM_THREADS"] = str(int(cfg.threads))  # before the runner's worker starts
    label, tasks, skipped = resolve_tasks(cfg)
    model = build_cost_model(cfg)  # a bad checkpoint fails here, before any tuning

    import tvm

    from perfmodel._tvm import load_ms
    from perfmodel.workloads import target_summary
    from perfmodel.collect.runner import ProtocolRunner
    from perfmodel.plugin.search import best_curve, make_builder, make_contexts, plot_curves, tuning_callbacks

    ms = load_ms()
    # TVM sets its console handler to its logger's level when it configures logging: WARNING keeps the
    # per-round task tables out of the console (they still go to work_dir/logs)
    logging.getLogger("tvm.s_tir.meta_schedule").setLevel(logging.DEBUG if cfg.get("verbose") else logging.WARNING)
    work_dir = Path(cfg.work_dir or REPO / "runs" / "tune" / f"{label.replace('/', '__')}-{cfg.cost_model}-{cfg.trials}")
    work_dir.mkdir(parents=True, exist_ok=True)
    target = tune_target(cfg)
    ctxs = make_contexts(tasks, target=target, work_dir=work_dir, seed=int(cfg.seed), population=int(cfg.population),
                         num_threads=int(cfg.get("search_threads") or physical_cores()))
    print(f"tuning {label} ({len(tasks)} task{'s' if len(tasks) > 1 else ''}) with cost model {cfg.cost_model}, "
          f"{cfg.trials} trials -> {work_dir}", flush=True)
    if skipped:
        print(f"left out {len(skipped)} of {len(tasks) + len(skipped)} tasks that the network's build never runs "
              f"(Relax lowers them to a VM builtin): {', '.join(skipped)}", flush=True)
    note = budget_note(len(tasks), int(cfg.trials), int(cfg.trials_per_iter), cfg.get("max_trials_per_task"))
    if note:
        print(note, flush=True)
    n_before = _n_records(work_dir)
    if n_before:
        print(f"note: {work_dir} already holds {n_before} records; the search starts from them, and the curve "
              "and best latency below count only this run's trials", flush=True)
    builder = make_builder(str(cfg.get("builder", "persistent")), timeout_s=float(cfg.build_timeout_s))
    protocol, guard = measure_settings(cfg)
    runner = ProtocolRunner(target=target, protocol=protocol, guard=guard)
    callbacks, clock = tuning_callbacks(runner)  # clock.times: when each committed record was measured
    t0 = time.perf_counter()
    try:
        ms.tune_tasks(
            tasks=ctxs, task_weights=[t.weight for t in tasks], work_dir=str(work_dir),
            max_trials_global=int(cfg.trials), max_trials_per_task=cfg.get("max_trials_per_task") or None,
            num_trials_per_iter=int(cfg.trials_per_iter), builder=builder, runner=runner, database="json",
            cost_model=model, task_scheduler="gradient" if len(tasks) > 1 else "round-robin",
            measure_callbacks=callbacks,
        )
    finally:
        tune_s = time.perf_counter() - t0
        runner.close()
        if hasattr(builder, "close"):  # PersistentBuilder: stop its worker processes now
            builder.close()
    curve, best = best_curve(work_dir, tasks, start=n_before)
    seconds = [round(t - t0, 3) for t in clock.times] if len(clock.times) == len(curve) else None
    stats = model.stats
    out: dict[str, Any] = {
        "label": label, "cost_model_name": str(cfg.cost_model), "best_s": _fin(curve[-1] if curve else math.inf),
        "tasks": {k: _fin(v) for k, v in best.items()}, "curve": [_fin(v) for v in curve], "trials": len(curve),
        "seconds": seconds, "untuned_tasks": [k for k, v in best.items() if not math.isfinite(v)],
        "skipped_tasks": skipped,
        "tune_s": round(tune_s, 2), "cost_model": stats.as_dict(),
        "cost_model_share": round(stats.model_s / tune_s, 4) if tune_s > 0 else None,
        "work_dir": str(work_dir), "plot": None, "target": target_summary(target),
        # the busy-machine guard's part of tune_s: waiting for quiet, and timing batches it then threw away
        "guard": {"remeasured": runner.measurer.remeasured, "waited_s": round(runner.measurer.waited_s, 1),
                  "remeasure_s": round(runner.measurer.remeasure_s, 1)},
    }
    inner = getattr(model, "inner", None)
    if inner is not None and hasattr(inner, "stats"):  # the GNN's own counters (fallbacks, fine-tuning)
        out["gnn"] = inner.stats.as_dict()
    ckpt = run_checkpoint(cfg)  # which weights and settings scored a GNN run (a resumed benchmark checks them)
    if ckpt is not None:
        out["checkpoint"], out["gnn_settings"] = ckpt, run_settings(cfg)
    if cfg.get("network"):  # the estimate: weighted sum of the tuned tasks' bests (untuned ones left out)
        weights = {t.name: t.weight for t in tasks}
        out["estimate_ms"] = round(sum(weights[k] * v for k, v in best.items() if math.isfinite(v)) * 1e3, 4)
        nt = cfg.get("network_timing") or {}
        if nt.get("enabled", True):
            from perfmodel.plugin.network import measure_network

            print(f"compiling {label} with the tuned database and timing it (tuned, untuned, PyTorch eager)", flush=True)
            try:
                out.update(measure_network(str(cfg.network), int(cfg.batch), target=target, work_dir=work_dir,
                                           threads=int(cfg.threads), repeat=int(nt.get("repeat", 5)),
                                           min_repeat_ms=int(nt.get("min_repeat_ms", 200)),
                                           untuned_repeat=int(nt.get("untuned_repeat", 3)),
                                           kernel_runs=int(nt.get("kernel_runs", 10))))
            except Exception as e:  # noqa: BLE001  the tuning results are still reported and saved
                out["network_error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}"
                print(f"network compile/timing failed: {out['network_error']}", flush=True)
    if cfg.get("plot", True) and curve:
        out["plot"] = str(plot_curves({str(cfg.cost_model): curve}, work_dir / "best_latency.png",
                                      title=f"{label}: best latency vs trials and seconds ({cfg.cost_model})",
                                      seconds={str(cfg.cost_model): seconds} if seconds else None))
    (work_dir / TUNE_SUMMARY).write_text(json.dumps(out, indent=1))
    _print_summary(out)
    return out


def _print_summary(out: dict[str, Any]) -> None:
    best, n_tasks = out["best_s"], len(out["tasks"])
    if best is not None:
        print(f"\n{out['label']}: best latency {best * 1e3:.4f} ms after {out['trials']} trials")
    elif n_tasks > 1 and len(out["untuned_tasks"]) < n_tasks:
        print(f"\n{out['label']}: {n_tasks - len(out['untuned_tasks'])} of {n_tasks} tasks measured in "
              f"{out['trials']} trials (no estimate over all of them)")
    else:
        print(f"\n{out['label']}: no valid measurement in {out['trials']} trials")
    if len(out["tasks"]) > 1:
        for name, s in out["tasks"].items():
            print(f"  {name:70s} {'-' if s is None else f'{s * 1e3:.4f} ms'}")
    s = out["cost_model"]
    print(f"tuning {out['tune_s']:.1f} s, of which cost model {s['model_s']:.1f} s "
          f"({100 * (out['cost_model_share'] or 0):.1f}%: predict {s['predict_s']:.1f} s for {s['scored']} candidates "
          f"= {s['predict_per_s']:.0f}/s, update {s['update_s']:.1f} s)")
    if "gnn" in out:
        gn = out["gnn"]
        print(f"GNN: {gn['fallback']} candidates got the fallback score, {gn['errors']} errors; "
              f"{gn.get('cache_hits', 0)} scored with the features of a schedule scored before "
              f"({gn.get('output_hits', 0)} with its network outputs too); "
              f"{gn['featurized_by_workers']} featurized by forked workers ({gn['worker_failures']} worker failures; "
              f"{gn.get('unforked_calls', 0)} calls not forked: too little to featurize)")
    g = out.get("guard") or {}
    if g.get("remeasured") or g.get("waited_s"):
        print(f"guard: {g['remeasured']} disturbed batches timed again ({g['remeasure_s']:.1f} s) and "
              f"{g['waited_s']:.1f} s waiting for a quiet machine, inside the tuning seconds")
    if out["untuned_tasks"]:
        print(f"{len(out['untuned_tasks'])} of {len(out['tasks'])} tasks left untuned (no valid measurement): "
              + ", ".join(out["untuned_tasks"]))
    if "estimate_ms" in out:
        n = len(out["tasks"]) - len(out["untuned_tasks"])
        line = f"network estimate {out['estimate_ms']:.3f} ms (weighted sum of the bests of {n}/{len(out['tasks'])} tasks)"
        if "network_latency_ms" in out:
            line += (f"; measured end to end: tuned {out['network_latency_ms']:.3f} ms "
                     f"({out['scheduled_funcs']}/{out['prim_funcs']} functions scheduled), "
                     f"untuned {out['untuned_latency_ms']:.3f} ms, PyTorch eager {out['torch_eager_ms']:.3f} ms")
        print(line)
        for row in kernel_rows(out)[:8]:
            print(row)
    if out["plot"]:
        print(f"plot: {out['plot']}")


def kernel_rows(out: dict[str, Any]) -> list[str]:
    """A network run's kernels timed inside the tuned network (``kernels_in_network``) beside their best
    time tuned alone, the largest in-network total first: where the estimate and the measurement part."""
    inside = out.get("kernels_in_network") or {}
    if not inside:
        return []
    alone = {name.split("/", 1)[-1]: s for name, s in (out.get("tasks") or {}).items()}
    rows = sorted(inside.items(), key=lambda kv: -kv[1]["calls"] * kv[1]["ms"])
    total = sum(k["calls"] * k["ms"] for _, k in rows)
    lines = [f"inside the tuned network: {total:.3f} ms in its {len(rows)} functions (per call; tuned alone = the best "
             f"measurement of the task)"]
    for sym, k in rows:
        a = alone.get(sym)
        tail = f", tuned alone {a * 1e3:.4f} ms ({k['ms'] / (a * 1e3):.2f}x)" if a else ", not tuned"
        lines.append(f"  {sym:48s} x{k['calls']} {k['ms']:.4f} ms{tail}")
    return lines


def coverage_trials(n_tasks: int, trials_per_iter: int, max_trials_per_task: int | None = None) -> int:
    """Trials that let the task scheduler measure every task once: its first pass gives each task, in
    turn, one round of ``min(trials_per_iter, max_trials_per_task)`` candidates."""
    per_round = min(trials_per_iter, max_trials_per_task) if max_trials_per_task else trials_per_iter
    return n_tasks * per_round


def budget_note(n_tasks: int, trials: int, trials_per_iter: int, max_trials_per_task: int | None = None) -> str | None:
    """One line when ``trials`` is too small to measure each of ``n_tasks`` tasks once, else ``None``."""
    need = coverage_trials(n_tasks, trials_per_iter, max_trials_per_task)
    if n_tasks < 2 or trials >= need:
        return None
    per_round = need // n_tasks
    return (f"budget too small: {trials} trials may leave tasks unmeasured (the scheduler's first pass gives each of "
            f"the {n_tasks} tasks a round of {per_round} trials): trials >= {n_tasks} * {per_round} = {need} covers "
            f"every task (or lower trials_per_iter); a task never reached stays untuned")


def _n_records(work_dir: Path) -> int:
    from perfmodel.collect.database import RECORD_FILE, Database

    return len(Database.open(work_dir).records) if (work_dir / RECORD_FILE).is_file() else 0


def _fin(v: float) -> float | None:
    return float(v) if math.isfinite(v) else None


def physical_cores() -> int:
    try:
        import psutil

        return int(psutil.cpu_count(logical=False) or 1)
    except ImportError:
        return os.cpu_count() or 1
