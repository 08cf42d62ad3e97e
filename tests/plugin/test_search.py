"""Tuning helpers: reading a best-so-far curve at budgets, trials to reach a latency, the plot; build workers
that leave with their tuner."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from perfmodel.plugin.search import best_at, plot_curves, trials_to_reach


def test_best_at_and_trials_to_reach() -> None:
    curve = [math.inf, 5.0, 5.0, 3.0, 2.0, 2.0]
    assert best_at(curve, 1) == math.inf and best_at(curve, 4) == 3.0 and best_at(curve, 100) == 2.0
    assert best_at([], 8) == math.inf
    assert trials_to_reach(curve, 3.0) == 4 and trials_to_reach(curve, 2.5) == 5
    assert trials_to_reach(curve, 1.0) is None and trials_to_reach(curve, 1.9, rel_tol=0.1) == 5


def test_plot_curves(tmp_path: Path) -> None:
    path = plot_curves({"gnn": [math.inf, 2e-3, 1e-3], "xgb": [3e-3, 3e-3, 2e-3]}, tmp_path / "p" / "c.png", title="t")
    assert path.is_file() and path.stat().st_size > 1000


def test_plot_curves_against_trials_and_seconds(tmp_path: Path) -> None:
    curves = {"gnn s1": [math.inf, 2e-3, 1e-3], "xgb s1": [None, None, None], "one": [math.inf, math.inf, 4e-3]}
    seconds = {"gnn s1": [5.0, 9.0, 12.0], "xgb s1": [4.0, 8.0, 16.0], "one": [1.0, 2.0, 3.0]}
    path = plot_curves(curves, tmp_path / "two.png", title="t", seconds=seconds)
    assert path.is_file() and path.stat().st_size > 1000


def test_record_clock_matches_records_to_the_runner_times(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from conftest import matmul_mod
    from tvm.s_tir import Schedule

    from perfmodel.plugin.search import RecordClock, ms

    mod = matmul_mod(8)
    cand = ms.MeasureCandidate(Schedule(mod), ms.arg_info.ArgInfo.from_prim_func(mod["main"]))
    sched = ms.task_scheduler.RoundRobin()

    runner = SimpleNamespace(finished=[])
    clock = RecordClock(runner)
    art = []
    for i in range(2):
        (tmp_path / f"a{i}").mkdir()
        (tmp_path / f"a{i}" / "lib.so").write_text("x")
        art.append(str(tmp_path / f"a{i}" / "lib.so"))
    ok = [ms.builder.BuilderResult(a, None) for a in art]
    bad = ms.builder.BuilderResult(None, "build failed")
    rr = ms.runner.RunnerResult([1e-3], None)
    runner.finished += [10.0, 10.0]  # the runner timed the two built candidates of the first batch
    clock.apply(sched, 0, [cand] * 3, [ok[0], bad, ok[1]], [rr] * 3)
    assert clock.times == [10.0, 10.0, 10.0]  # the failed build gets its batch's time
    assert not (tmp_path / "a0").exists() and not (tmp_path / "a1").exists()  # artifacts removed (or already gone)
    clock.apply(sched, 0, [cand], [bad], [rr])  # nothing built, nothing timed: the join time
    assert len(clock.times) == 4 and clock.times[-1] > 10.0
    runner.finished += [20.0]
    clock.apply(sched, 1, [cand], [ms.builder.BuilderResult(art[0], None)], [rr])  # its directory is gone: fine
    assert clock.times[-1] == 20.0


_ORPHANED_BUILD = """
import os, sys, time
from pathlib import Path
from perfmodel.plugin.search import PersistentBuilder

marker = Path(sys.argv[1])

def job():  # a build that would go on for two minutes
    marker.write_text(str(os.getpid()))
    time.sleep(120)

b = PersistentBuilder(max_workers=1, timeout_s=300)
b.pool.submit(job)
t = time.time()
while not marker.exists() and time.time() - t < 120:
    time.sleep(0.1)
os._exit(0)  # the tuner dies without any cleanup, as under SIGKILL
"""


def _running(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie (an orphan nobody reaped has exited)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


def test_build_worker_leaves_when_its_tuner_dies_mid_build(tmp_path: Path) -> None:
    marker = tmp_path / "worker.pid"
    proc = subprocess.run([sys.executable, "-c", _ORPHANED_BUILD, str(marker)], timeout=180)
    assert proc.returncode == 0 and marker.exists(), "the build worker never started its job"
    pid = int(marker.read_text())
    try:
        deadline = time.time() + 10
        while _running(pid) and time.time() < deadline:
            time.sleep(0.1)
        assert not _running(pid), f"build worker {pid} still running 10 s after its tuner died"
    finally:
        if _running(pid):
            os.kill(pid, signal.SIGKILL)
