"""The resumable collector: fill one database per hardware with measured schedules of many tasks.

Up to three phases over the task list: optionally re-timing the schedules of another folder
(``retime_from``: an older collection's traces, measured again here under this folder's target and
protocol, which skips sampling), then ``n_random`` uniform samples of every task's design space
(coverage), then an evolutionary search per task up to ``n_random + n_evolve`` records (the fast
corner). Every record is timed by :class:`perfmodel.collect.measure.LocalMeasurer` (or over RPC)
under its guard; what the guard saw goes to ``measure_info.jsonl`` beside the database, one line
per record (TVM's loader never reads it). Every batch is appended and fsynced before the next starts, so ``kill -9`` loses at most
the batch in flight; a rerun counts what is there, skips schedules already measured (trace key)
and continues up to the target.
"""

from __future__ import annotations

import json
import platform
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from perfmodel.collect.database import FAILED, INFO_FILE, Database, RawRecord, to_py, trace_hash
from perfmodel.collect.measure import Guard, LocalMeasurer, Measurer, MeasureResult, Protocol, one_line
from perfmodel.collect.sampler import Evolution, TaskSpace, trace_key


@dataclass
class CollectConfig:
    """What to collect (the defaults of ``conf/collect.yaml``; tests/collect keeps the two equal).

    Attributes:
        out_dir: root of the datasets; records go to ``<out_dir>/<hardware>/``.
        hardware: name of this machine's folder; empty = derived from the CPU model.
        target: TVM target as a JSON dict, or ``native`` (this CPU's ``mcpu``, ``protocol.threads`` cores).
        tasks: registry task names.
        n_random: random design-space samples per task.
        n_evolve: evolutionary-search records per task after the random ones.
        batch: candidates measured and committed together.
        seed: seed of the evolutionary search.
        runner: ``local`` or ``rpc``.
        rpc: ``host``, ``port``, ``key`` of the RPC tracker.
        protocol: how candidates are timed.
        guard: when the machine is too busy to time on.
        retime_from: a database folder whose valid schedules of ``tasks`` are re-timed first.
        progress: show a progress bar.
        max_duplicates: consecutive already-measured random samples after which a task's design
            space counts as exhausted (small spaces, e.g. a reduction, hold only a few schedules).
    """

    out_dir: str = "datasets"
    hardware: str = ""
    target: Any = "native"
    tasks: list[str] = field(default_factory=list)
    n_random: int = 96
    n_evolve: int = 96
    batch: int = 16
    seed: int = 1
    runner: str = "local"
    rpc: dict = field(default_factory=lambda: {"host": "127.0.0.1", "port": 9190, "key": "local"})
    protocol: Protocol = field(default_factory=Protocol)
    guard: Guard = field(default_factory=Guard)
    retime_from: str = ""
    progress: bool = True
    max_duplicates: int = 400


def hardware_slug(threads: int = 1, mcpu: str | None = None) -> str:
    """Folder name of this CPU: model name in lower case, the target's ``mcpu`` and the runner thread count."""
    model = platform.processor() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1]
                break
    except OSError:
        pass
    slug = re.sub(r"[^a-z0-9]+", "-", model.lower()).strip("-")
    return slug + (f"-{mcpu}" if mcpu and mcpu != "generic" else "") + f"-t{threads}"


def make_target(spec: Any, threads: int = 1) -> Any:
    """A ``tvm.target.Target`` from a dict, a JSON string or ``native``; a bad one raises one clear line."""
    import tvm

    from perfmodel.workloads import native_target

    if spec == "native":
        spec = native_target(threads)
    if isinstance(spec, str):
        try:
            spec = json.loads(spec)
        except ValueError:
            pass
    try:
        return tvm.target.Target(dict(spec) if not isinstance(spec, str) else spec)
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"target {spec!r} rejected by TVM: {one_line(e)}") from None


def _record(wl: int, trace: Any, res: MeasureResult, target_json: Any, args_json: Any) -> RawRecord:
    return RawRecord(line=0, workload=wl, trace=to_py(trace.as_json()),
                     run_secs=res.run_secs if res.ok else [FAILED], target=target_json, args_info=args_json)


class Collector:
    """Runs one collection (see module docstring). ``run()`` returns per-task counts."""

    def __init__(self, cfg: CollectConfig) -> None:
        from perfmodel.workloads import get_task

        self.cfg = cfg
        from perfmodel.workloads import target_summary

        self.target = make_target(cfg.target, cfg.protocol.threads)
        self.tasks = [get_task(n) for n in cfg.tasks]  # unknown names fail here, before measuring
        self.hardware = cfg.hardware or hardware_slug(cfg.protocol.threads, target_summary(self.target)["mcpu"])
        self.db = Database.open(Path(cfg.out_dir) / self.hardware, create=True)
        self.stats: Counter = Counter()
        self.failures: Counter = Counter()
        self.target_json = to_py(self.target.export()) if hasattr(self.target, "export") else None
        if cfg.runner == "rpc":
            from perfmodel.collect.rpc import RPCMeasurer

            self.measurer: Measurer = RPCMeasurer(target=self.target, protocol=cfg.protocol, **cfg.rpc)
        elif cfg.runner == "local":
            self.measurer = LocalMeasurer(target=self.target, protocol=cfg.protocol, guard=cfg.guard, log=self._log)
        else:
            raise ValueError(f"runner {cfg.runner!r} unknown: use local or rpc")
        self._bar: Any = None

    def _log(self, msg: str) -> None:
        from tqdm import tqdm

        tqdm.write(msg, file=sys.stderr)

    # ------------------------------------------------------------------------------------
    def _task_records(self, wl: int) -> list[RawRecord]:
        return [r for r in self.db.records if r.workload == wl]

    def run(self) -> dict[str, dict[str, int]]:
        from tqdm import tqdm

        goal = self.cfg.n_random + self.cfg.n_evolve
        wls = {t.name: self.db.add_workload(t.mod) for t in self.tasks}
        self._names = {wl: n for n, wl in wls.items()}
        have = {n: len(self._task_records(wl)) for n, wl in wls.items()}
        todo = sum(max(0, goal - have[n]) for n in wls)
        self._bar = tqdm(total=todo, unit="rec", disable=not self.cfg.progress, smoothing=0.05,
                         desc=f"collect {self.hardware}")
        try:
            if self.cfg.retime_from:
                self._retime_all(wls, goal)
            for phase, limit in (("random", self.cfg.n_random), ("evolve", goal)):
                for t in self.tasks:
                    if len(self._task_records(wls[t.name])) >= limit:
                        continue
                    self._bar.set_postfix_str(f"{phase} {t.name}", refresh=False)
                    space = TaskSpace(mod=t.mod, target=self.target, seed=self.cfg.seed)
                    if phase == "random":
                        self._random(t.name, wls[t.name], space, limit)
                    else:
                        self._evolve(t.name, wls[t.name], space, limit)
        finally:
            self._bar.close()
            self.measurer.close()
        out = {}
        for n, wl in wls.items():
            recs = self._task_records(wl)
            out[n] = {"records": len(recs), "valid": sum(r.ok for r in recs), "failed": sum(not r.ok for r in recs)}
        return out

    def _commit(self, name: str, wl: int, schedules: list[Any], results: list[MeasureResult], space: TaskSpace) -> None:
        args_json = to_py([a.as_json() for a in space.args_info])
        recs = [_record(wl, s.trace, r, self.target_json, args_json) for s, r in zip(schedules, results)]
        self._append(recs, results)
        for r in results:
            self.stats["valid" if r.ok else "failed"] += 1
            if not r.ok:
                self.failures[(name, (r.error or "no timing").split(":")[0])] += 1
        if self._bar is not None:
            self._bar.update(len(recs))

    def _append(self, recs: list[RawRecord], results: list[MeasureResult]) -> None:
        """Records, then what the guard saw for each (``measure_info.jsonl``, keyed by trace hash)."""
        self.db.append(recs)
        lines = [json.dumps({"workload": r.workload, "trace": trace_hash(r.key), **res.info})
                 for r, res in zip(recs, results)]
        with open(self.db.path / INFO_FILE, "a", encoding="utf-8") as f:
            f.write("".join(x + "\n" for x in lines))

    def _retime_all(self, wls: dict[str, int], goal: int) -> None:
        """Phase 0: measure again, here, the valid schedules another folder holds for our tasks."""
        import tvm_ffi

        src = Database.open(self.cfg.retime_from)
        by_hash: dict[int, list[RawRecord]] = {}
        for wl, recs in src.records_by_workload().items():
            try:
                h = int(tvm_ffi.structural_hash(src.workload(wl).mod))
            except Exception as e:  # noqa: BLE001
                self._log(f"retime: skipped workload line {wl + 1} of {src.path}: {one_line(e)}")
                continue
            by_hash.setdefault(h, []).extend(r for r in recs if r.ok)
        for t in self.tasks:
            old = by_hash.get(int(tvm_ffi.structural_hash(t.mod)), [])
            wl = wls[t.name]
            seen = {r.key for r in self._task_records(wl)}
            todo = [r for r in old if r.key not in seen][: max(0, goal - len(seen))]
            if not todo:
                continue
            self._bar.set_postfix_str(f"retime {t.name}", refresh=False)
            space_args = None

            def replay(chunk: list[RawRecord]) -> list[tuple[RawRecord, Any, Any]]:
                out = []
                for r in chunk:
                    try:
                        c = src.tuning_record(r).as_measure_candidate()
                        out.append((r, c, c.sch.mod))
                    except Exception as e:  # noqa: BLE001  a trace that no longer replays is skipped
                        self.failures[(t.name, "replay")] += 1
                        self._log(f"retime: {src.path} record line {r.line} does not replay: {one_line(e)}")
                return out

            chunks = [todo[i:i + self.cfg.batch] for i in range(0, len(todo), self.cfg.batch)]
            nxt = replay(chunks[0])
            for k in range(len(chunks)):
                scheds, nxt = nxt, (replay(chunks[k + 1]) if k + 1 < len(chunks) else [])
                if not scheds:
                    continue
                space_args = space_args or scheds[0][1].args_info
                # the next chunk builds on the other core while this one is timed
                results = self.measurer.measure([(m, c.args_info) for _, c, m in scheds],
                                                next_items=[(m, c.args_info) for _, c, m in nxt])
                args_json = to_py([a.as_json() for a in space_args])
                recs = [RawRecord(line=0, workload=wl, trace=r.trace, run_secs=res.run_secs if res.ok else [FAILED],
                                  target=self.target_json, args_info=args_json) for (r, _, _), res in zip(scheds, results)]
                self._append(recs, results)
                for res in results:
                    self.stats["valid" if res.ok else "failed"] += 1
                self._bar.update(len(recs))

    def _random(self, name: str, wl: int, space: TaskSpace, limit: int) -> None:
        seen = {r.key for r in self._task_records(wl)}
        stream = space.random_stream()
        while (need := limit - len(self._task_records(wl))) > 0:
            batch, dups = [], 0
            for _, sch in stream:
                key = trace_key(sch.trace.as_json())
                if key in seen:
                    dups += 1
                    if dups > self.cfg.max_duplicates:
                        break  # a small design space, sampled out
                    continue
                dups = 0
                seen.add(key)
                batch.append(sch)
                if len(batch) >= min(need, self.cfg.batch):
                    break
            if not batch:
                return  # the space is exhausted
            results = self.measurer.measure([(s.mod, space.args_info) for s in batch])
            self._commit(name, wl, batch, results, space)

    def _evolve(self, name: str, wl: int, space: TaskSpace, limit: int) -> None:
        """Evolutionary search up to ``limit`` records. TVM's search can fail in C++ on some tasks
        (seen: replaying measured traces into its population); the task is then retried once without
        seeding the search from measured records, then skipped with one warning, never crashing."""
        import warnings

        from perfmodel.collect.measure import one_line

        for seeded in (True, False):
            try:
                self._evolve_once(wl, space, limit, seeded=seeded)
                return
            except Exception as e:  # noqa: BLE001
                self.failures[(name, "search")] += 1
                what = "retrying without measured seeds" if seeded else "skipping the task"
                warnings.warn(f"evolutionary search of {name} failed ({one_line(e)}); {what}", stacklevel=2)

    def _evolve_once(self, wl: int, space: TaskSpace, limit: int, *, seeded: bool) -> None:
        recs = self._task_records(wl)
        seen = {r.key for r in recs}
        # a proposal that repeats a measured schedule is told that schedule's time (not a failure)
        known = {r.key: r.run_secs for r in recs if r.ok}
        # The search counts proposed candidates, duplicates of measured ones included: give it slack.
        budget = 2 * (limit - len(recs)) + self.cfg.batch
        evo = Evolution(space=space, measured=recs if seeded else [], db=self.db, max_trials=budget,
                        batch=self.cfg.batch)
        name = self._names[wl]
        try:
            while (need := limit - len(self._task_records(wl))) > 0:
                cands = evo.propose()
                if not cands:
                    return
                fresh, keys = [], []
                for c in cands:
                    key = trace_key(c.sch.trace.as_json())
                    keys.append(key)
                    if key not in seen and len(fresh) < need:
                        seen.add(key)
                        fresh.append((key, c))
                results = self.measurer.measure([(c.sch.mod, space.args_info) for _, c in fresh])
                self._commit(name, wl, [c.sch for _, c in fresh], results, space)
                for (key, _), r in zip(fresh, results):
                    if r.ok:
                        known[key] = r.run_secs
                evo.tell(cands, [known.get(k) for k in keys])
        finally:
            evo.close()


def collect(cfg: CollectConfig) -> dict[str, dict[str, int]]:
    """Run a collection and return ``{task: {records, valid, failed}}``."""
    return Collector(cfg).run()
