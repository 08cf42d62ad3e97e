"""Candidate schedules of a task: uniform samples of its design space, and an evolutionary search.

Random samples replay a design-space trace with its decisions dropped, under a fresh seed, then
run the space's postprocessors; they cover the whole space. The evolutionary part drives
MetaSchedule's own ``EvolutionarySearch`` (with its XGBoost model) batch by batch, so it visits
the fast corner as real tuning does, while we measure the candidates ourselves.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from perfmodel.collect.database import RawRecord, to_py


def trace_key(trace_json: Any) -> str:
    """De-duplication key of a schedule: its trace JSON with decisions, canonically printed."""
    return json.dumps(to_py(trace_json), sort_keys=True, separators=(",", ":"))


class TaskSpace:
    """The design space of one task for one target.

    Args:
        mod: the task's IRModule.
        target: a ``tvm.target.Target``.
        seed: seed of the search strategy (random samples take their own seeds).
        population: population size of the evolutionary search.
    """

    def __init__(self, *, mod: Any, target: Any, seed: int = 1, population: int = 256) -> None:
        from perfmodel._tvm import load_ms
        ms = load_ms()

        self.mod = mod
        self.target = target
        self.ctx = ms.TuneContext(
            mod=mod, target=target, space_generator="post-order-apply",
            search_strategy=ms.search_strategy.EvolutionarySearch(population_size=population),
            task_name="task", rand_state=seed, num_threads=1,
        )
        self.spaces = list(self.ctx.space_generator.generate_design_space(mod))
        self.postprocs = list(self.ctx.space_generator.postprocs)
        self.args_info = ms.arg_info.ArgInfo.from_prim_func(mod["main"])

    def random(self, seed: int) -> Any | None:
        """One random schedule (``None`` when a postprocessor rejects it). ``seed`` >= 1."""
        from tvm.s_tir.schedule import Schedule, Trace

        space = self.spaces[seed % len(self.spaces)]
        sch = Schedule(self.mod, seed=seed)
        Trace(space.trace.insts, {}).apply_to_schedule(sch, remove_postproc=True)
        for p in self.postprocs:
            if not p.apply(sch):
                return None
        return sch

    def random_stream(self, start_seed: int = 1) -> Iterator[tuple[int, Any]]:
        """``(seed, schedule)`` for seeds ``start_seed, start_seed+1, ...``, rejected ones skipped."""
        seed = start_seed
        fails = 0
        while True:
            sch = self.random(seed)
            if sch is not None:
                fails = 0
                yield seed, sch
            else:
                fails += 1
                if fails > 200:
                    return
            seed += 1


class Evolution:
    """MetaSchedule's evolutionary search for one task, driven one batch at a time.

    Args:
        space: the task's design space.
        measured: records of the task measured before (seed the search and its cost model).
        db: the ``Database`` those records belong to (to turn them into TVM records).
        max_trials: trial budget of this search.
        batch: candidates per round.
    """

    def __init__(self, *, space: TaskSpace, measured: list[RawRecord], db: Any, max_trials: int, batch: int) -> None:
        from perfmodel._tvm import load_ms
        ms = load_ms()

        self.space = space
        self.memdb = ms.database.MemoryDatabase()
        wl = self.memdb.commit_workload(space.mod)
        self.cost_model = ms.cost_model.XGBModel(num_tuning_cores=1)
        cands, results = [], []
        for r in measured:
            if not r.ok:
                continue
            rec = db.tuning_record(r)
            self.memdb.commit_tuning_record(
                ms.database.TuningRecord(rec.trace, wl, rec.run_secs, space.target, space.args_info))
            if len(cands) < 512:
                try:
                    cands.append(rec.as_measure_candidate())
                    results.append(ms.runner.RunnerResult(rec.run_secs, None))
                except Exception:  # noqa: BLE001  a record that no longer replays just does not warm up
                    pass
        if cands:
            self.cost_model.update(space.ctx, cands, results)
        self.workload = wl
        self.strategy = space.ctx.search_strategy
        self.strategy.pre_tuning(max_trials, batch, space.spaces, self.memdb, self.cost_model)

    def propose(self) -> list[Any]:
        """Next batch of ``MeasureCandidate``s (empty when the search is done)."""
        return list(self.strategy.generate_measure_candidates() or [])

    def tell(self, candidates: list[Any], run_secs: list[list[float] | None]) -> None:
        """Report the measured times (``None`` = failed) back to the search and its model."""
        from perfmodel._tvm import load_ms
        ms = load_ms()

        results = [ms.runner.RunnerResult(s, None if s else "failed") for s in run_secs]
        for c, s in zip(candidates, run_secs):
            if s:
                self.memdb.commit_tuning_record(ms.database.TuningRecord(
                    c.sch.trace, self.workload, s, self.space.target, self.space.args_info))
        self.cost_model.update(self.space.ctx, candidates, results)
        self.strategy.notify_runner_results(candidates, results)

    def close(self) -> None:
        try:
            self.strategy.post_tuning()
        except Exception:  # noqa: BLE001  a search that failed mid-round may refuse to clean up
            pass
