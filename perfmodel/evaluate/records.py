"""Measured records of MetaSchedule databases, grouped by task, ready for any model to score.

A task is one workload of one database: its valid records (failed builds/runs are counted and
left out), their median times, and, replayed once on demand, their ``MeasureCandidate``s (the
GNN predicts ``candidate.sch``; TVM's cost models take the candidates themselves).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from perfmodel.collect.database import Database, DatabaseError, RawRecord, iter_databases
from perfmodel.collect.measure import label_secs

_NET_TASK = re.compile(r"^(?P<net>[^/]+)-b(?P<batch>\d+)/(?P<op>.+)$")


@dataclass
class TaskRecords:
    """The valid records of one task of one database.

    Attributes:
        name: registry name of the workload (``GMM-0``, ``resnet18-b8/fused_...``), else
            ``wl-<structural hash>``; suffixed ``@<db folder>`` when two databases hold it.
        key: the workload's structural hash as the database stores it (same task = same key).
        db: the database the records come from.
        workload: index of the workload line in ``db``.
        records: valid records (real timings only), in file order.
        times: median measured seconds of each record, shape [N].
        n_failed: records of this task left out because their build or run failed.
        n_unreplayable: records left out because their trace no longer replays.
        family: operator family from the registry (``None`` when not a registry task).
        batch: network batch size from the registry (``None`` for TE tasks / unknown).
        weight: occurrences of the task in its network (1 when unknown).
        sources: when the task pools several databases (``load_tasks(pool=True)``), the database of
            each record (parallel to ``records``); ``None``: every record is ``db``'s.
    """

    name: str
    key: str
    db: Database
    workload: int
    records: list[RawRecord]
    times: np.ndarray
    n_failed: int = 0
    n_unreplayable: int = 0
    family: str | None = None
    batch: int | None = None
    weight: int = 1
    sources: list[Database] | None = None
    _cands: list[Any] | None = field(default=None, repr=False)
    _ctx: Any = field(default=None, repr=False)

    @property
    def mod(self) -> Any:
        """The task's workload IRModule."""
        return self.db.workload(self.workload).mod

    @property
    def log_times(self) -> np.ndarray:
        return np.log(self.times)

    @property
    def op(self) -> str | None:
        """Operator name shared across a network's batch sizes (``resnet18/fused_conv2d3``), or ``None``."""
        m = _NET_TASK.match(self.name.split("@")[0])
        return f"{m['net']}/{m['op']}" if m else None

    def candidates(self) -> list[Any]:
        """``MeasureCandidate`` of every record (replayed once; records that fail are dropped)."""
        if self._cands is None:
            cands, keep = [], []
            for i, r in enumerate(self.records):
                try:
                    db = self.sources[i] if self.sources else self.db
                    cands.append(db.tuning_record(r).as_measure_candidate())
                    keep.append(i)
                except Exception:  # noqa: BLE001  a trace this TVM cannot replay is skipped and counted
                    self.n_unreplayable += 1
            self._keep(keep)
            self._cands = cands
        return self._cands

    def subsample(self, n: int) -> None:
        """Keep at most ``n`` records, evenly spread over the file order (before any replay)."""
        if len(self.records) > n:
            keep = np.unique(np.linspace(0, len(self.records) - 1, n).round().astype(int))
            self._keep(list(keep))
            self._cands = None

    def _keep(self, keep: list[int]) -> None:
        self.records = [self.records[i] for i in keep]
        self.times = self.times[keep]
        if self.sources:
            self.sources = [self.sources[i] for i in keep]

    def databases(self) -> list[Database]:
        """The databases this task's records come from (several when pooled), in record order."""
        return list({id(d): d for d in self.sources}.values()) if self.sources else [self.db]

    def schedules(self) -> list[Any]:
        """The ``tvm.s_tir.Schedule`` of every (replayable) record."""
        return [c.sch for c in self.candidates()]

    def context(self, target: Any = None) -> Any:
        """A ``TuneContext`` of this task (what TVM's cost models and feature extractors need)."""
        if self._ctx is None:
            import tvm

            from perfmodel._tvm import load_ms
            ms = load_ms()
            if target is None:
                t = self.records[0].target if self.records and self.records[0].target else None
                target = tvm.target.Target(t if t else {"kind": "llvm", "num-cores": 1})
            self._ctx = ms.TuneContext(mod=self.mod, target=target, task_name=self.name, num_threads=1)
        return self._ctx

    def runner_results(self) -> list[Any]:
        """``RunnerResult`` of every (replayable) record, for a cost model's ``update``."""
        from perfmodel._tvm import load_ms
        ms = load_ms()

        self.candidates()
        return [ms.runner.RunnerResult(list(r.run_secs), None) for r in self.records]


def load_tasks(paths: Iterable[str | os.PathLike], *, min_records: int = 1, pool: bool = False) -> list[TaskRecords]:
    """Every task of every MetaSchedule database at or under ``paths``.

    Args:
        paths: database directories, or directories holding databases anywhere below them.
        min_records: tasks with fewer valid records are dropped (1 keeps every task).
        pool: a workload held by several databases (the runs of a tuning benchmark: one per cost
            model and seed) is one task with the records of all of them; else one task per
            database, named ``<task>@<db folder>``.

    Raises:
        DatabaseError: one line naming the path, when a path holds no database, a database is
            empty, holds only failed records, or its workloads cannot be read by this TVM.
    """
    dirs: list[Path] = []
    for p in paths:
        dirs.extend(iter_databases(p))
    tasks: list[TaskRecords] = []
    for d in dict.fromkeys(dirs):
        tasks.extend(_db_tasks(d))
    if pool:
        tasks = _pooled(tasks)
    seen: dict[str, int] = {}
    for t in tasks:
        seen[t.name] = seen.get(t.name, 0) + 1
    for t in tasks:
        if seen[t.name] > 1:
            t.name = f"{t.name}@{t.db.path.name}"
    return [t for t in tasks if len(t.records) >= min_records]


def _pooled(tasks: list[TaskRecords]) -> list[TaskRecords]:
    """One task per workload key, its records (and their databases) in the order of ``tasks``."""
    by_key: dict[str, list[TaskRecords]] = {}
    for t in tasks:
        by_key.setdefault(t.key, []).append(t)
    out = []
    for parts in by_key.values():
        if len(parts) == 1:
            out.append(parts[0])
            continue
        first = parts[0]
        out.append(TaskRecords(
            name=first.name, key=first.key, db=first.db, workload=first.workload,
            records=[r for t in parts for r in t.records], times=np.concatenate([t.times for t in parts]),
            n_failed=sum(t.n_failed for t in parts), family=first.family, batch=first.batch, weight=first.weight,
            sources=[t.db for t in parts for _ in t.records]))
    return out


def _db_tasks(path: Path) -> list[TaskRecords]:
    from perfmodel.workloads import registry, task_of_mod

    db = Database.open(path)
    if not db.records:
        raise DatabaseError(f"{path}: database is empty (no tuning records)")
    groups = db.records_by_workload()
    n_ok = sum(r.ok for r in db.records)
    if n_ok == 0:
        raise DatabaseError(f"{path}: all {len(db.records)} records are failed builds/runs (run_secs 1e10)")
    reg = registry()
    out = []
    for w, recs in groups.items():
        ok = [r for r in recs if r.ok]
        try:
            mod = db.workload(w).mod
        except DatabaseError:
            raise
        except Exception as e:  # noqa: BLE001  TVM's own parser error, made one clear line
            msg = str(e).strip().splitlines()
            raise DatabaseError(
                f"{path}: workload line {w + 1} cannot be read by this TVM (a database from another "
                f"TVM version?): {type(e).__name__}: {msg[-1][:200] if msg else ''}") from None
        key = str(db.workloads[w][0])
        name = task_of_mod(mod) or f"wl-{key}"
        task = reg.get(name)
        out.append(TaskRecords(
            name=name, key=key, db=db, workload=w, records=ok,
            times=np.array([label_secs(r.run_secs) for r in ok], dtype=np.float64),
            n_failed=len(recs) - len(ok), family=task.family if task else None,
            batch=task.batch if task else None, weight=task.weight if task else 1,
        ))
    return out
