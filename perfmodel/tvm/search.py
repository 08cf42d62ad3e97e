"""What a tuning run needs around the cost model: builder, runner, task contexts, and the best-so-far curve."""

from __future__ import annotations

import logging
import math
import tempfile
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

        self.timeout_s = float(timeout_s)
        self.pool = PopenPoolExecutor(max_workers=max_workers or ms.utils.cpu_count(logical=False),
                                      timeout=self.timeout_s, initializer=load_ms, maximum_process_uses=max_uses)

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

    The ``local`` one's fresh-per-batch workers get ``load_ms`` as initializer, which moves the
    slow ``tvm.s_tir.tensor_intrin`` import out of the first build's timeout and makes it ~1 s.
    """
    if kind == "persistent":
        return PersistentBuilder(max_workers=max_workers, timeout_s=timeout_s)
    if kind == "local":
        return ms.builder.LocalBuilder(max_workers=max_workers, timeout_sec=timeout_s, initializer=load_ms)
    raise ValueError(f"unknown builder {kind!r}: use persistent or local")


def make_runner(*, number: int = 1, repeat: int = 3, min_repeat_ms: int = 20, timeout_s: float = 30.0) -> Any:
    """TVM's ``LocalRunner`` timing like the collector (``repeat`` timings of >= ``min_repeat_ms`` each).

    Set ``TVM_NUM_THREADS`` in the environment before the first run: the worker inherits it.
    """
    cfg = ms.runner.EvaluatorConfig(number=number, repeat=repeat, min_repeat_ms=min_repeat_ms,
                                    enable_cpu_cache_flush=False)
    return ms.runner.LocalRunner(timeout_sec=timeout_s, evaluator_config=cfg)


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
            s = sorted(rec.run_secs)[len(rec.run_secs) // 2]  # median
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


def plot_curves(curves: dict[str, list[float]], path: str | Path, *, title: str = "") -> Path:
    """Best latency (ms) against trials, one line per curve, saved as an image (matplotlib Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for label, curve in curves.items():
        xs = [k for k, v in enumerate(curve, 1) if math.isfinite(v)]
        ax.step(xs, [curve[k - 1] * 1e3 for k in xs], where="post", label=label)
    ax.set_xlabel("trials (measured candidates)")
    ax.set_ylabel("best latency (ms)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
