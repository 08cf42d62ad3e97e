"""The dataset card: what a measured database holds, on what hardware and target, and how noisy its timings were."""

from __future__ import annotations

import json

import platform
import statistics
from collections import Counter
from pathlib import Path

from perfmodel.collect.database import Database
from perfmodel.collect.measure import Protocol


NOISE_FILE = "noise.json"  # the last bench_noise result on this folder


def cpu_info() -> tuple[str, str]:
    """CPU model name and its ISA flags (as /proc/cpuinfo gives them)."""
    model, flags = platform.processor() or "unknown", ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model in ("", "unknown", platform.processor()):
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return model, flags


def spread(run_secs: list[float]) -> float:
    """Relative spread of one record's repeats: population std / mean."""
    return statistics.pstdev(run_secs) / statistics.fmean(run_secs)


def card_stats(db: Database) -> dict:
    """Per-task counts and the noise of the repeats (median and 90th percentile of ``spread``)."""
    from perfmodel.workloads import task_of_mod

    per_task: dict[str, Counter] = {}
    spreads = []
    for wl, recs in db.records_by_workload().items():
        name = task_of_mod(db.workload(wl).mod) or f"workload-{wl}"
        c = per_task.setdefault(name, Counter())
        for r in recs:
            c["valid" if r.ok else "failed"] += 1
            if r.ok and len(r.run_secs) > 1:
                spreads.append(spread(r.run_secs))
    spreads.sort()
    q = (lambda p: spreads[min(len(spreads) - 1, int(p * len(spreads)))]) if spreads else (lambda p: float("nan"))
    return {"tasks": per_task, "valid": sum(c["valid"] for c in per_task.values()),
            "failed": sum(c["failed"] for c in per_task.values()), "noise_median": q(0.5), "noise_p90": q(0.9)}


def info_stats(db: Database) -> dict | None:
    """What the timing guard saw (``measure_info.jsonl`` beside the database), or ``None`` without it.

    Returns:
        ``records`` (lines), ``unstable`` (records whose fastest rounds never agreed), ``disturbed``
        (records stored although the machine was busy), ``spread_median`` (of the stored
        fastest-rounds spread, max/min - 1) and ``rounds_median`` (timing rounds per record).
    """
    info = list(db.measure_info().values())
    if not info:
        return None
    spreads = [float(i["spread"]) for i in info if i.get("spread") is not None]
    rounds = [int(i["rounds"]) for i in info if i.get("rounds") is not None]
    return {"records": len(info), "unstable": sum(1 for i in info if i.get("unstable") is True),
            "disturbed": sum(1 for i in info if i.get("disturbed")),
            "spread_median": statistics.median(spreads) if spreads else float("nan"),
            "rounds_median": statistics.median(rounds) if rounds else float("nan")}


def targets(db: Database) -> Counter:
    """How many records were measured for each target, as ``(kind, mcpu, threads)``."""
    from perfmodel.workloads import target_summary

    out: Counter = Counter()
    for r in db.records:
        t = target_summary(r.target)
        out[(t["kind"], t["mcpu"], t["threads"])] += 1
    return out


def render_card(db_dir: str | Path, collect_cfg: str = "conf/collect.yaml") -> str:
    """Markdown card of the database at ``db_dir``: only what it computes from the database, the
    collection config and this machine."""
    import os

    import tvm

    db = Database.open(db_dir)
    st = card_stats(db)
    info = info_stats(db)
    model, flags = cpu_info()
    protocol, runner, goal = Protocol(), "local", ""
    try:
        import yaml

        c = yaml.safe_load(Path(collect_cfg).read_text())
        protocol, runner = Protocol(**(c.get("protocol") or {})), str(c.get("runner", runner))
        per_task = int(c["n_random"]) + int(c["n_evolve"])
        total = per_task * len(c["tasks_default"])
        goal = (f"| Collection goal | {per_task} records per task x {len(c['tasks_default'])} tasks = {total}; "
                f"{len(db.records) / total:.0%} done (`perfmodel collect` resumes; small design spaces end early) |\n")
    except (OSError, KeyError, TypeError, ValueError):
        pass
    tgt = "; ".join(f"kind `{k}`, mcpu `{m}`, {t if t is not None else '?'} thread{'s' * (t != 1)}: {n} records"
                    for (k, m, t), n in targets(db).most_common()) or "-"
    timings = statistics.median(len(r.run_secs) for r in db.records if r.ok) if st["valid"] else 0
    guard = ""
    if info is not None:
        guard = (f"| Timing guard (`measure_info.jsonl`, {info['records']} records) | {info['unstable']} unstable "
                 f"(fastest rounds never agreed), {info['disturbed']} stored while disturbed; median "
                 f"{info['rounds_median']:g} rounds per record, median spread of the fastest rounds "
                 f"{info['spread_median']:.2%} |\n")
    noise = ""
    if (Path(db_dir) / NOISE_FILE).is_file():  # written by benchmarks/bench_noise.py --db <this folder>
        try:
            n = json.loads((Path(db_dir) / NOISE_FILE).read_text())
            noise = (f"| Re-measurement (`benchmarks/bench_noise.py`, {n.get('date', '?')}, {n['records']} records of "
                     f"{n['tasks']} tasks) | two fresh passes agree on {n['pass_pairwise']:.1%} of pairs (median "
                     f"difference {n['pass_median_rel']:.1%}); stored labels vs a fresh pass: {n['stored_pairwise']:.1%} "
                     f"(median {n['stored_median_rel']:.1%}); TVM's LocalRunner pass to pass, same run: "
                     f"{n.get('tvm_pass_pairwise', float('nan')):.1%} |\n")
        except (OSError, ValueError, KeyError, TypeError):
            noise = ""
    rows = "\n".join(f"| `{n}` | {c['valid']} | {c['failed']} |" for n, c in sorted(st["tasks"].items()))
    return f"""# Dataset card: `{Path(db_dir).name}`

Schedules of TVM tuning tasks measured on this machine, in MetaSchedule's own JSON database format
(`database_workload.json`, `database_tuning_record.json`: `ms.database.JSONDatabase` opens it).

| | |
|---|---|
| CPU | {model} ({platform.machine()}, {os.cpu_count()} logical cores on the collecting machine) |
| Runner | {runner} (a build over {protocol.build_timeout_s:g} s or a timing round over {protocol.timeout_s:g} s is killed and stored as a failure) |
| TVM | {tvm.__version__} |
| Target | {tgt} |
| Collection config | `{collect_cfg}` (random design-space samples, then MetaSchedule's evolutionary search with its XGBoost model) |
| Valid records | {st['valid']} over {len(st['tasks'])} tasks |
{goal}| Failed records (build/run errors, timeouts; `run_secs = [1e10]`, never a time) | {st['failed']} |
| Timings stored per record (median) | {timings:g} |
| Noise: median relative spread (std/mean) of a record's stored timings | {st['noise_median']:.2%} |
| Noise: 90th percentile of that spread | {st['noise_p90']:.2%} |
{guard}{noise}
CPU flags: `{flags}`

## Regenerate or extend

```bash
pip install -e ".[dev]"
perfmodel collect                        # resumes: tops every task up to n_random + n_evolve
perfmodel collect n_evolve=200           # extend: more evolutionary records per task
perfmodel collect "tasks=[C2D-0,DIL-0]"  # more tasks (names from `perfmodel workloads`)
perfmodel card datasets/{Path(db_dir).name} > datasets/{Path(db_dir).name}/README.md
```

Records from a different CPU model or target go to their own folder (`hardware=` defaults to the CPU
model name, the target's `mcpu` and the runner threads): never mix them.

## Records and failures per task

| task | valid | failed |
|---|---:|---:|
{rows}
"""
