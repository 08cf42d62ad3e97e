"""A tuned network, measured: compile it with a tuning database, time it end to end beside its untuned build and PyTorch eager."""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path
from typing import Any

from perfmodel._tvm import load_ms

ms = load_ms()


def compile_network(mod: Any, target: Any, work_dir: str | Path | None = None) -> tuple[Any, int]:
    """Builds a fused Relax module for the VM, with the best schedule of each task from a tuning database.

    Each PrimFunc whose workload the database of ``work_dir`` holds with a valid record gets that
    record's schedule (Relax's ``MetaScheduleApplyDatabase`` inside the database and target
    context); the others, and every one when ``work_dir`` is ``None``, are built as Relax's default
    pipeline leaves them (unscheduled loop nests, which LLVM compiles for a CPU).

    Args:
        mod: the fused Relax module (:func:`perfmodel.workloads.network_relax_mod`).
        target: the ``tvm.target.Target`` the database was tuned for.
        work_dir: a MetaSchedule JSON database directory, or ``None`` for the untuned build.

    Returns:
        ``(executable, scheduled)``: the ``relax.build`` result and how many PrimFuncs got a tuned schedule.
    """
    import tvm
    from tvm import relax

    scheduled = 0
    if work_dir is not None:
        db = ms.database.JSONDatabase(work_dir=str(work_dir))
        with target, db:
            mod = relax.transform.MetaScheduleApplyDatabase()(mod)
        scheduled = sum(1 for f in mod.functions.values()
                        if isinstance(f, tvm.tirx.PrimFunc) and f.attrs is not None and "tirx.is_scheduled" in f.attrs)
    return relax.build(mod, target), scheduled


def called_prim_funcs(mod: Any) -> set[str]:
    """Names of the PrimFuncs that a VM build of the fused Relax module ``mod`` calls.

    Relax's build lowers a call of a PrimFunc that only reshapes (``relax.analysis.has_reshape_pattern``)
    to the VM's ``vm.builtin.reshape`` (``RewriteDataflowReshape``), and the PrimFunc is dropped as dead
    code: such a function is a tuning task of the network that its build never runs (BERT layer: ``reshape``
    and ``reshape6`` of 18; ResNet-18 and MobileNetV2: ``reshape``).
    """
    import tvm
    from tvm import relax

    lowered = tvm.transform.Sequential([relax.transform.RewriteDataflowReshape(),
                                        relax.transform.DeadCodeElimination()])(mod)
    return {gv.name_hint for gv, f in lowered.functions.items() if isinstance(f, tvm.tirx.PrimFunc)}


def time_vm(executable: Any, x: Any, *, repeat: int, min_repeat_ms: int) -> tuple[list[float], Any]:
    """Seconds of ``repeat`` timings of the VM's ``main`` on ``x`` (one warm-up run first), and its output.

    Each timing runs ``main`` often enough to last ``min_repeat_ms`` (TVM's ``time_evaluator``).
    """
    vm, inp, out = _warm_vm(executable, x)
    res = vm.time_evaluator("main", inp.device, number=1, repeat=repeat, min_repeat_ms=min_repeat_ms)(inp)
    return [float(s) for s in res.results], _first(out).numpy()


def _warm_vm(executable: Any, x: Any) -> tuple[Any, Any, Any]:
    """A VM of ``executable`` on the CPU, the input ``x`` on it, and the output of one warm-up run of ``main``."""
    import tvm
    from tvm import relax

    dev = tvm.cpu()
    vm = relax.VirtualMachine(executable, dev)
    inp = tvm.runtime.tensor(x.numpy(), dev)
    return vm, inp, vm["main"](inp)


def time_calls(executable: Any, x: Any, *, runs: int) -> dict[str, dict[str, float]]:
    """The functions ``main`` calls, timed inside the network: per PrimFunc (the VM's own builtins left
    out) its calls per run and the median milliseconds per call over ``runs`` runs (one warm-up run
    first; wall time around each call, taken by the VM's instrument hook, so a kernel is timed in the
    state the network leaves the caches in, not warmed by its own repeats as a tuning measurement is). The
    hook's own cost (a few microseconds per call) is inside each time: read a kernel of tens of microseconds
    with that in mind."""
    vm, inp, _ = _warm_vm(executable, x)
    per: dict[str, list[float]] = {}
    start = [0.0]

    def instrument(func: Any, symbol: str, before: bool, ret: Any, *args: Any) -> int:
        if before:
            start[0] = time.perf_counter()
        else:
            per.setdefault(str(symbol), []).append(time.perf_counter() - start[0])
        return 0

    vm.set_instrument(instrument)
    for _ in range(max(1, int(runs))):
        vm["main"](inp)
    return {sym: {"calls": len(ts) // max(1, int(runs)), "ms": round(statistics.median(ts) * 1e3, 4)}
            for sym, ts in per.items() if not sym.startswith("vm.builtin.")}


def time_torch(model: Any, x: Any, *, repeat: int, min_repeat_ms: int) -> tuple[list[float], Any]:
    """Seconds of ``repeat`` timings of PyTorch eager ``model(x)`` on one thread (one warm-up run first), and its output."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            out = model(x)
            times = []
            for _ in range(repeat):
                n, t0 = 0, time.perf_counter()
                while n == 0 or time.perf_counter() - t0 < min_repeat_ms / 1e3:
                    model(x)
                    n += 1
                times.append((time.perf_counter() - t0) / n)
    finally:
        torch.set_num_threads(threads)
    return times, out.numpy()


def measure_network(net: str, batch: int, *, target: Any, work_dir: str | Path, threads: int = 1,
                    repeat: int = 5, min_repeat_ms: int = 200, untuned_repeat: int = 3,
                    kernel_runs: int = 10) -> dict[str, Any]:
    """Compiles network ``net`` at ``batch`` with and without the database of ``work_dir`` and times both and PyTorch eager.

    All three run on one thread (``TVM_NUM_THREADS`` = ``threads`` for the VM, ``torch.set_num_threads(1)``)
    on the same input; a latency is the median of the repeats. Other processes' CPU use during the
    timings (cores, from ``/proc``) is kept as ``foreign_cores``: nothing waits for a quiet machine here.

    Returns:
        ``network_latency_ms`` (tuned), ``untuned_latency_ms``, ``torch_eager_ms``, ``scheduled_funcs``
        / ``prim_funcs`` (how many PrimFuncs the database scheduled), ``max_rel_err`` (of each TVM build's
        output against PyTorch's), ``timings_ms`` (every repeat), ``compile_s``, ``tvm_threads``, ``foreign_cores``,
        ``kernels_in_network`` (the tuned build's functions timed inside it, :func:`time_calls` over
        ``kernel_runs`` runs; 0: not timed).
    """
    import numpy as np
    import tvm

    from perfmodel.collect.measure import CpuMeter
    from perfmodel.workloads import network_relax_mod

    os.environ["TVM_NUM_THREADS"] = str(int(threads))  # read when the runtime's thread pool starts
    mod, model, x = network_relax_mod(net, batch)
    prim_funcs = sum(1 for f in mod.functions.values() if isinstance(f, tvm.tirx.PrimFunc))
    t0 = time.perf_counter()
    tuned, scheduled = compile_network(mod, target, work_dir)
    untuned, _ = compile_network(mod, target, None)
    compile_s = time.perf_counter() - t0
    meter = CpuMeter(lambda: [])
    start = meter.sample()
    t_tuned, y_tuned = time_vm(tuned, x, repeat=repeat, min_repeat_ms=min_repeat_ms)
    t_untuned, y_untuned = time_vm(untuned, x, repeat=untuned_repeat, min_repeat_ms=min_repeat_ms)
    t_torch, y_torch = time_torch(model, x, repeat=repeat, min_repeat_ms=min_repeat_ms)
    kernels = time_calls(tuned, x, runs=kernel_runs) if kernel_runs > 0 else {}
    load = meter.since(start)

    def rel_err(y: Any) -> float:
        return float(np.abs(y - y_torch).max() / max(float(np.abs(y_torch).max()), 1e-12))

    def ms_(ts: list[float]) -> float:
        return round(statistics.median(ts) * 1e3, 4)

    return {
        "network_latency_ms": ms_(t_tuned), "untuned_latency_ms": ms_(t_untuned), "torch_eager_ms": ms_(t_torch),
        "scheduled_funcs": scheduled, "prim_funcs": prim_funcs,
        "max_rel_err": {"tuned": rel_err(y_tuned), "untuned": rel_err(y_untuned)},
        "timings_ms": {k: [round(s * 1e3, 4) for s in v]
                       for k, v in (("tuned", t_tuned), ("untuned", t_untuned), ("torch_eager", t_torch))},
        "compile_s": round(compile_s, 2), "tvm_threads": int(tvm.get_global_func("runtime.NumThreads")()),
        "foreign_cores": load["foreign"], "kernels_in_network": kernels,
    }


def time_databases(net: str, batch: int, *, target: Any, work_dirs: dict[str, str | Path | None], threads: int = 1,
                   builds: int = 4, repeat: int = 3, min_repeat_ms: int = 200) -> dict[str, Any]:
    """Network ``net`` at ``batch`` built with each database of ``work_dirs`` and timed in this one process, alternated.

    Timings of two processes are not comparable on this machine (the same code runs at one of two speeds
    per process, RESULTS.md), and a build's own placement of code and data moves its time a lot (the BERT
    layer's 10 builds of one database: 30-44 ms on a Zen 3, RESULTS.md); so each database is built ``builds`` times, in rounds that build and time every database
    once, each round in another order (rotated). A build's latency is the median of ``repeat`` timings of
    at least ``min_repeat_ms`` each; a database's is the median over its builds. ``None`` as a work dir is
    the untuned build. On ``threads`` threads (``TVM_NUM_THREADS``).

    Returns:
        ``latency_ms`` (per label), ``builds_ms`` (per label, each build's latency, in build order),
        ``order`` (the labels in the order they were timed), ``scheduled_funcs`` (per label),
        ``foreign_cores`` (other processes' CPU use while timing) and ``seconds`` (the whole comparison).
    """
    from perfmodel.collect.measure import CpuMeter
    from perfmodel.workloads import network_relax_mod

    os.environ["TVM_NUM_THREADS"] = str(int(threads))
    t0 = time.perf_counter()
    mod, _, x = network_relax_mod(net, batch)
    labels = list(work_dirs)
    per: dict[str, list[float]] = {k: [] for k in labels}
    scheduled: dict[str, int] = {}
    order: list[str] = []
    meter = CpuMeter(lambda: [])
    start = meter.sample()
    for r in range(max(1, int(builds))):
        for label in labels[r % len(labels):] + labels[:r % len(labels)]:
            executable, scheduled[label] = compile_network(mod, target, work_dirs[label])
            times, _ = time_vm(executable, x, repeat=repeat, min_repeat_ms=min_repeat_ms)
            per[label].append(round(statistics.median(times) * 1e3, 4))
            order.append(label)
    return {"latency_ms": {k: round(statistics.median(v), 4) for k, v in per.items()}, "builds_ms": per,
            "order": order, "scheduled_funcs": scheduled, "foreign_cores": meter.since(start)["foreign"],
            "seconds": round(time.perf_counter() - t0, 1)}


def _first(out: Any) -> Any:
    """The first tensor of a VM result (a PyTorch-exported ``main`` returns a tuple)."""
    while not hasattr(out, "numpy"):
        out = out[0]
    return out
