"""What a tuning run needs around the cost model: builder, runner, task contexts, and the best-so-far curve."""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tvm.ir.utils import derived_object

from perfmodel._tvm import load_ms

ms = load_ms()


@dataclass(frozen=True)
class TuneTask:
    """One task to tune: its registry ``name``, one-PrimFunc ``mod`` and ``weight`` in its network."""

    name: str
    mod: Any
    weight: float = 1.0


@derived_object
class PersistentBuilder(ms.builder.PyBuilder):
    """Builds candidates in long-lived worker processes, with a timeout per candidate.

    TVM's ``LocalBuilder`` starts fresh workers for every batch and each pays the TVM import
    (20-40 s on a busy 2-core machine, past its 30 s timeout). These workers import MetaSchedule
    once (the fast way), are recycled after ``max_uses`` builds (TVM's reason for fresh pools is a
    slow leak), and a candidate whose compilation runs past ``timeout_s`` is killed (its worker
    restarts) and reported as a failed build, like in ``LocalBuilder``.

    Args:
        max_workers: parallel builds (default: physical cores).
        timeout_s: seconds one build may take.
        max_uses: builds per worker process before it is restarted.
    """

    def __init__(self, *, max_workers: int | None = None, timeout_s: float = 60.0, max_uses: int = 256) -> None:
        super().__init__()
        from tvm.support.popen_pool import PopenPoolExecutor

        from perfmodel.collect.measure import build_worker_init

        self.timeout_s = float(timeout_s)
        self.pool = PopenPoolExecutor(max_workers=max_workers or ms.utils.cpu_count(logical=False),
                                      timeout=self.timeout_s, initializer=build_worker_init,
                                      maximum_process_uses=max_uses)

    def close(self) -> None:
        """Stops the worker processes now (not at garbage collection, which may never come before exit and
        leaves them orphaned); the builder cannot build afterwards."""
        self.pool.shutdown(wait=False)

    def build(self, build_inputs: list[Any]) -> list[Any]:
        from tvm.support.popen_pool import StatusKind

        from perfmodel.collect.measure import build, one_line

        # one directory per artifact: MetaSchedule removes an artifact's directory after running it
        jobs = [(bi.mod, bi.target, tempfile.mkdtemp(prefix="perfmodel-build-")) for bi in build_inputs]
        out = []
        for res in self.pool.map_with_error_catching(lambda job: build(*job), jobs):
            if res.status == StatusKind.COMPLETE:
                out.append(ms.builder.BuilderResult(res.value, None))
            elif res.status == StatusKind.TIMEOUT:
                out.append(ms.builder.BuilderResult(None, f"PersistentBuilder: timeout, killed after {self.timeout_s} s"))
            else:
                out.append(ms.builder.BuilderResult(None, f"PersistentBuilder: {one_line(res.value)}"))
        return out


def make_builder(kind: str = "persistent", *, timeout_s: float = 60.0, max_workers: int | None = None) -> Any:
    """A builder: ``persistent`` (:class:`PersistentBuilder`) or ``local`` (TVM's ``LocalBuilder``).

    Both pools' workers get ``build_worker_init`` as initializer: ``load_ms`` moves the slow
    ``tvm.s_tir.tensor_intrin`` import out of the first build's timeout (~1 s then), and the worker
    leaves when the tuning process is gone (``exit_with_parent``), mid-build included.
    """
    if kind == "persistent":
        return PersistentBuilder(max_workers=max_workers, timeout_s=timeout_s)
    if kind == "local":
        from perfmodel.collect.measure import build_worker_init

        return ms.builder.LocalBuilder(max_workers=max_workers, timeout_sec=timeout_s, initializer=build_worker_init)
    raise ValueError(f"unknown builder {kind!r}: use persistent or local")


@derived_object
class RecordClock(ms.measure_callback.PyMeasureCallback):
    """When each record of a tuning run was measured: ``times[k]`` is the ``perf_counter`` of the ``k``-th
    record the run commits to its database (the wall-clock axis of its tuning curve).

    MetaSchedule commits a batch's records after the task scheduler joins it, which for the first
    round of a network (one batch per task) comes after all of them ran; the runner's ``finished``
    (:class:`~perfmodel.collect.runner.ProtocolRunner`) says when each timed candidate really
    finished. The two are matched in order (batches are joined in the order they ran); a candidate
    that failed to build was never timed and gets its batch's time (the join time for a batch
    without one built candidate).

    It also stands in for MetaSchedule's ``RemoveBuildArtifact`` callback, tolerating a runner that
    already removed an artifact's directory (TVM's callback then raises).

    Args:
        runner: the tuning run's runner, with a ``finished`` list (or none: every time is the join time).
    """

    def __init__(self, runner: Any = None) -> None:
        super().__init__()
        self.runner = runner
        self.times: list[float] = []
        self._used = 0  # entries of runner.finished matched so far

    def apply(self, task_scheduler: Any, task_id: int, measure_candidates: list[Any],
              builder_results: list[Any], runner_results: list[Any]) -> None:
        now = time.perf_counter()
        built = [b.error_msg is None for b in builder_results]
        finished = list(getattr(self.runner, "finished", None) or [])
        ts = finished[self._used:self._used + sum(built)] if finished else []
        self._used += len(ts)
        batch_t = max(ts) if ts else now
        it = iter(ts)
        self.times += [next(it, batch_t) if ok else batch_t for ok in built]
        for b in builder_results:
            if b.artifact_path:
                shutil.rmtree(os.path.dirname(b.artifact_path), ignore_errors=True)


def tuning_callbacks(runner: Any = None) -> tuple[list[Any], RecordClock]:
    """MetaSchedule's default measure callbacks (add to database, remove artifacts, update the cost model)
    with :class:`RecordClock` removing the artifacts; returns the list and the clock."""
    clock = RecordClock(runner)
    return [ms.measure_callback.AddToDatabase(), clock, ms.measure_callback.UpdateCostModel()], clock


def make_contexts(tasks: list[TuneTask], *, target: Any, work_dir: str | Path, seed: int = 1,
                  population: int = 512, num_threads: int | str = "physical") -> list[Any]:
    """One ``TuneContext`` per task (post-order-apply space, evolutionary search), logging into ``work_dir/logs``."""
    short = [t.name.rsplit("/", 1)[-1] for t in tasks]
    loggers = work_dir_loggers(work_dir, short)
    seeds = ms.utils.fork_seed(seed, n=len(tasks))
    return [
        ms.TuneContext(mod=t.mod, target=target, space_generator="post-order-apply",
                       search_strategy=ms.search_strategy.EvolutionarySearch(population_size=population),
                       task_name=name, rand_state=s, num_threads=num_threads, logger=lg).clone()
        for t, name, s, lg in zip(tasks, short, seeds, loggers)
    ]


def work_dir_loggers(work_dir: str | Path, names: list[str]) -> list[Any]:
    """``ms.logging.get_loggers_from_work_dir``, callable more than once per process.

    TVM rebuilds its logging config from the handler names on its logger; a handler someone else
    attached without a name (pytest's log capture does) makes it crash. Such handlers are set aside
    while TVM configures, then put back.
    """
    lg = logging.getLogger("tvm.s_tir.meta_schedule")
    unnamed = [h for h in lg.handlers if h.get_name() is None]
    for h in unnamed:
        lg.removeHandler(h)
    try:
        return ms.logging.get_loggers_from_work_dir(str(work_dir), names)
    finally:
        for h in unnamed:
            lg.addHandler(h)


def best_curve(work_dir: str | Path, tasks: list[TuneTask], *, start: int = 0) -> tuple[list[float], dict[str, float]]:
    """The best-so-far latency after each measured record, in the order the database stored them.

    For several tasks the latency is the network estimate ``sum(weight * best of task)``, defined
    (not ``inf``) once every task has a valid record. Records before index ``start`` (an earlier
    run's) are left out.

    Returns:
        ``curve`` (seconds; ``curve[k]`` = best after ``k + 1`` trials, ``inf`` before the first
        valid one) and the best seconds of each task (``inf`` if none valid).
    """
    import tvm_ffi

    from perfmodel.collect.database import Database
    from perfmodel.collect.measure import label_secs

    db = Database.open(work_dir)
    by_hash = {int(tvm_ffi.structural_hash(t.mod)): t for t in tasks}
    task_of: dict[int, TuneTask | None] = {}
    best = {t.name: math.inf for t in tasks}
    curve = []
    for rec in db.records[start:]:
        if rec.workload not in task_of:
            task_of[rec.workload] = by_hash.get(int(tvm_ffi.structural_hash(db.workload(rec.workload).mod)))
        t = task_of[rec.workload]
        if t is not None and rec.ok:
            s = label_secs(rec.run_secs)
            best[t.name] = min(best[t.name], s)
        curve.append(sum(x.weight * best[x.name] for x in tasks))
    return curve, best


def best_at(curve: list[float], trials: int) -> float:
    """Best latency after ``trials`` trials (the last value if fewer were run)."""
    if not curve:
        return math.inf
    return curve[min(trials, len(curve)) - 1]


def trials_to_reach(curve: list[float], latency: float, *, rel_tol: float = 0.0) -> int | None:
    """Trials after which ``curve`` is at or below ``latency * (1 + rel_tol)``; ``None`` if never."""
    for k, v in enumerate(curve, 1):
        if v <= latency * (1 + rel_tol):
            return k
    return None


def plot_curves(curves: dict[str, list[float]], path: str | Path, *, title: str = "",
                seconds: dict[str, list[float]] | None = None) -> Path:
    """Best latency (ms) against trials, one line per curve, saved as an image (matplotlib Agg).

    Curves whose labels start with the same word (``gnn s1``, ``gnn s2``: one model, two seeds) share
    a colour and differ in line style; the latency axis is logarithmic when it spans over 10x.

    Args:
        curves: label -> best latency (seconds) after each trial (``inf``/``None`` before the first valid one).
        path: the image file.
        title: the figure's title.
        seconds: label -> seconds since the run's start at which each trial was measured (same
            lengths as ``curves``): adds a second panel, best latency against wall-clock seconds.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(dict.fromkeys(label.split()[0] if label.split() else label for label in curves))
    colors = {g: f"C{i % 10}" for i, g in enumerate(groups)}
    styles, seen = {}, {g: 0 for g in groups}
    for label in curves:
        g = label.split()[0] if label.split() else label
        styles[label] = ["-", "--", ":", "-."][seen[g] % 4]
        seen[g] += 1
    finite = [v for c in curves.values() for v in c if v is not None and math.isfinite(v) and v > 0]
    panels = 2 if seconds else 1
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels, 4), squeeze=False)
    for col, (ax, xlabel) in enumerate(zip(axes[0], ["trials (measured candidates)", "tuning wall-clock (s)"])):
        for label, curve in curves.items():
            xs_all = list(range(1, len(curve) + 1)) if col == 0 else list((seconds or {}).get(label) or [])
            pts = [(x, v) for x, v in zip(xs_all, curve) if v is not None and math.isfinite(v)]
            if pts:  # a step line, and a dot at the final best (visible even for one point)
                g = label.split()[0] if label.split() else label
                ax.step([x for x, _ in pts], [v * 1e3 for _, v in pts], where="post", label=label,
                        color=colors[g], linestyle=styles[label])
                ax.plot([pts[-1][0]], [pts[-1][1] * 1e3], "o", markersize=3, color=colors[g])
        ax.set_xlabel(xlabel)
        ax.set_xlim(left=0)
        if finite and max(finite) > 10 * min(finite):
            ax.set_yscale("log")
        ax.set_ylabel("best latency (ms)")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
