"""Shared fixtures: tiny real workloads (a 64x64 matmul) and a tiny real measured database."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

warnings.filterwarnings("ignore", category=FutureWarning)

REPO = Path(__file__).resolve().parents[1]


def load_benchmark(name: str):
    """The module of ``benchmarks/<name>.py`` (the benchmarks are scripts, not a package), loaded afresh."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def matmul_mod(n: int = 64):
    """A ``n x n x n`` float32 matmul as a one-PrimFunc IRModule (TE -> TIR)."""
    import tvm
    from tvm import te

    a = te.placeholder((n, n), name="A")
    b = te.placeholder((n, n), name="B")
    k = te.reduce_axis((0, n), name="k")
    c = te.compute((n, n), lambda i, j: te.sum(a[i, k] * b[k, j], axis=k), name="C")
    return tvm.IRModule({"main": te.create_prim_func([a, b, c])})


@pytest.fixture(scope="session")
def target():
    import tvm

    return tvm.target.Target({"kind": "llvm", "num-cores": 1})


@pytest.fixture(scope="session")
def tiny_db(tmp_path_factory) -> Path:
    """A real database measured here: 12 random + 12 evolutionary records of GMM-0 and of NRM-0.

    Returns the directory that holds ``database_workload.json`` / ``database_tuning_record.json``.
    """
    from perfmodel.collect.collector import CollectConfig, collect
    from perfmodel.collect.measure import Guard

    out = tmp_path_factory.mktemp("tinydb")
    collect(CollectConfig(out_dir=str(out), hardware="test", tasks=["GMM-0", "NRM-0"],
                          n_random=12, n_evolve=12, batch=6, progress=False, guard=Guard(enabled=False)))
    return out / "test"


@pytest.fixture(scope="session")
def two_target_dbs(tmp_path_factory) -> tuple[Path, Path]:
    """Two real databases of GMM-0, NRM-0 and SFM-0 like the shipped folders: 4 random schedules per task
    measured for the generic x86 target (``generic/``), then re-timed for this CPU's ``mcpu``
    (``native/``), one quick timing each.

    Returns ``(native dir, generic dir)``; skips where this CPU's LLVM target has no ``mcpu``.
    """
    from perfmodel.collect.collector import CollectConfig, collect
    from perfmodel.collect.measure import Guard, Protocol
    from perfmodel.workloads import native_target

    if native_target(1).get("mcpu", "generic") == "generic":
        pytest.skip("this CPU's native target is the generic one: one target only")
    out = tmp_path_factory.mktemp("twotargets")
    quick = dict(out_dir=str(out), tasks=["GMM-0", "NRM-0", "SFM-0"], n_random=4, n_evolve=0, batch=6,
                 progress=False, guard=Guard(enabled=False), protocol=Protocol(rounds=1, max_rounds=1, keep=1))
    collect(CollectConfig(hardware="generic", target={"kind": "llvm", "num-cores": 1}, **quick))
    collect(CollectConfig(hardware="native", target="native", retime_from=str(out / "generic"), **quick))
    return out / "native", out / "generic"


@pytest.fixture(autouse=True, scope="session")
def _tvm_logging_without_unnamed_handlers():
    """pytest's log capture attaches unnamed ``LogCaptureHandler``s to MetaSchedule's logger during a
    test; MetaSchedule rebuilds its logging config from handler names and crashes on ``None`` in the
    next ``tune_tir`` of the session. For the whole session (module-scoped fixtures included), TVM's
    ``create_loggers`` first sets such handlers aside (real use never has them)."""
    import logging

    import tvm.s_tir.meta_schedule.logging as mod

    original = mod.create_loggers

    def create_loggers(*args, **kwargs):
        lg = logging.getLogger("tvm.s_tir.meta_schedule")
        unnamed = [h for h in lg.handlers if h.get_name() is None]
        for h in unnamed:
            lg.removeHandler(h)
        try:
            return original(*args, **kwargs)
        finally:
            for h in unnamed:
                lg.addHandler(h)

    mod.create_loggers = create_loggers
    yield
    mod.create_loggers = original


def dynamic_copy_func():
    """A PrimFunc with a symbolic extent (``B[i] = A[i]`` for ``i < n``): what the featurizer rejects."""
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def dynamic(a: T.handle, b: T.handle):
        n = T.int32()
        A = T.match_buffer(a, (n,), "float32")
        B = T.match_buffer(b, (n,), "float32")
        for i in range(n):
            with T.sblock("copy"):
                vi = T.axis.spatial(n, i)
                B[vi] = A[vi]

    return dynamic
