"""The dataset card: what a measured database holds, on what hardware, and how noisy it is."""

from __future__ import annotations

import platform
import statistics
from collections import Counter
from pathlib import Path

from perfmodel.collect.database import Database


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


def render_card(db_dir: str | Path, collect_cfg: str = "conf/collect.yaml") -> str:
    """Markdown card of the database at ``db_dir``."""
    import tvm

    db = Database.open(db_dir)
    st = card_stats(db)
    model, flags = cpu_info()
    target = db.records[0].target if db.records else None
    goal = ""
    try:
        import yaml

        c = yaml.safe_load(Path(collect_cfg).read_text())
        per_task = int(c["n_random"]) + int(c["n_evolve"])
        total = per_task * len(c["tasks_default"])
        goal = (f"| Collection goal | {per_task} records per task x {len(c['tasks_default'])} tasks = {total}; "
                f"{len(db.records) / total:.0%} done (`perfmodel collect` resumes; small design spaces end early) |\n")
    except (OSError, KeyError, TypeError, ValueError):
        pass
    rows = "\n".join(f"| `{n}` | {c['valid']} | {c['failed']} |" for n, c in sorted(st["tasks"].items()))
    return f"""# Dataset card: `{Path(db_dir).name}`

Schedules of TVM tuning tasks measured on this machine, in MetaSchedule's own JSON database format
(`database_workload.json`, `database_tuning_record.json`: `ms.database.JSONDatabase` opens it).

| | |
|---|---|
| CPU | {model} ({platform.machine()}, {__import__('os').cpu_count()} logical cores on the collecting machine) |
| Runner | one thread (`TVM_NUM_THREADS=1`), local runner: a persistent build worker and a persistent runner process (a build over 60 s or a run over 10 s is killed and stored as a failure) |
| TVM | {tvm.__version__} |
| Target | `{target}` (no `mcpu`: LLVM emits generic x86-64 code, so AVX-512 is not used; a new collection should add `mcpu`, into a new folder) |
| Collection config | `{collect_cfg}` (random design-space samples, then MetaSchedule's evolutionary search with its XGBoost model) |
| Valid records | {st['valid']} over {len(st['tasks'])} tasks |
{goal}| Failed records (build/run errors, timeouts; `run_secs = [1e10]`, never a time) | {st['failed']} |
| Repeats per record | 3 (each the mean over enough runs to last >= 20 ms) |
| Noise: median relative spread (std/mean) of the repeats | {st['noise_median']:.2%} |
| Noise: 90th percentile of the spread | {st['noise_p90']:.2%} |

The spread of the repeats is a *lower* bound of the label noise: the repeats run back to back in
one process. Timing the same schedule again later differs far more. `benchmarks/bench_noise.py`
re-measures stored records and scores the stored times as predictions of the fresh ones (see
benchmarks/RESULTS.md): on this 2-vCPU VM, two fresh measurements of the same 32 schedules a minute
apart agreed on only ~85% of pairs (median difference 17-37%), and the stored times, measured while
the machine was also used for development (builds on the other core, tests and training at times),
ran ~1.8-2x slower than on the quiet machine and agree with fresh timings on ~80% of pairs. That is
the ceiling any cost model's pairwise accuracy can reach against these labels.

CPU flags: `{flags}`

## Regenerate or extend

```bash
pip install -e ".[dev]"
perfmodel collect                        # resumes: tops every task up to n_random + n_evolve
perfmodel collect n_evolve=200           # extend: more evolutionary records per task
perfmodel collect "tasks=[C2D-0,DIL-0]"  # more tasks (names from `perfmodel workloads`)
perfmodel card datasets/{Path(db_dir).name} > datasets/README.md
```

Records from a different CPU model go to their own folder (`hardware=` defaults to the CPU model
name): never mix them.

## Records and failures per task

| task | valid | failed |
|---|---:|---:|
{rows}
"""
