"""The one timing protocol of perfmodel: build a batch, then time it in rounds in a guarded runner.

Every place that measures (the collector, ``perfmodel tune`` through :class:`MeasureRunner`,
``perfmodel check``, the benchmarks) goes through :class:`LocalMeasurer` and :class:`Protocol`.
What the protocol does, and the measurement behind each choice (benchmarks/RESULTS.md,
"Timing protocol"):

1. **Build first, then time.** All candidates of a batch are compiled (two build workers, one per
   core) before any is timed, so no LLVM build runs on the other core during a timing.
2. **A real-time runner.** The runner process is pinned to one core and runs under
   ``SCHED_FIFO`` (when permitted), so no ordinary process can preempt a kernel being timed.
   It sleeps briefly every ~0.4 s so the kernel's real-time throttling (5% per second) never
   lands inside a timing.
3. **Rounds interleaved over the batch, each with a fresh allocation.** Each candidate is timed
   in ``rounds`` rounds; a round allocates the arguments anew (a random spacer before them varies
   their placement in memory, which moves some kernels' times by tens of percent) and takes
   ``repeat`` timings of at least ``min_repeat_ms`` each. Rounds visit the batch's candidates in
   turn, so a slow drift of the machine hits all of them alike.
4. **Estimator.** A round's estimate is its fastest repeat (CPU-bound kernels: the minimum is
   the most stable); ``run_secs`` stores one estimate per round, and the label is their median.
5. **The guard** (:class:`Guard`) waits until the machine is quiet before a batch (other
   processes' CPU time and steal time from ``/proc/stat``, printing one line why), re-times a
   timing during which the runner was switched out, times a fixed reference kernel before and
   after each batch and re-measures the batch when it drifted, and re-times a record whose
   rounds disagree beyond ``max_spread``. What it saw is kept per record (:class:`MeasureResult.info`).
"""

from __future__ import annotations

import json
import os
import random
import select
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, Self

import numpy as np

from perfmodel.collect.database import FAILED, one_line, to_py  # noqa: F401  (FAILED, one_line: re-exported)
PROTOCOL_VERSION = 3  # bump when the timing protocol changes what a stored time means
BUILD_NICE = 10  # nice level of the build workers (see _worker_main)


@dataclass(frozen=True)
class Protocol:
    """How candidates are timed (see the module docstring for why)."""

    rounds: int = 6                # rounds per candidate, interleaved over the batch, each with a fresh allocation of
                                   # its arguments and one estimate (its fastest repeat)
    max_rounds: int = 10           # more rounds, up to this many, for a record whose ``keep`` fastest estimates still
                                   # differ by more than ``max_spread`` (it has not yet been seen in a quiet moment)
    repeat: int = 1                # timings per round
    min_repeat_ms: int = 2         # each timing runs the kernel often enough to last at least this long
    keep: int = 3                  # the fastest round estimates stored as the record's ``run_secs``
    placement: str = "same"        # ``shift`` (a random spacer before each round's arguments), ``fresh`` (new
                                   # arguments each round, no spacer) or ``same`` (one allocation for all rounds)
    realtime: bool = False         # run the runner under ``SCHED_FIFO`` pinned to the last core (when permitted)
    max_spread: float = 0.03       # convergence tolerance of the ``keep`` fastest estimates (max/min - 1)
    budget_ms: float = 200.0       # rounds beyond ``keep`` stop once a candidate's rounds add up to this much kernel
                                   # time (a 200 ms kernel gets ``keep`` rounds, a 1 ms one up to ``max_rounds``)
    timeout_s: float = 20.0        # a candidate whose round takes longer is killed and counted as failed
    build_timeout_s: float = 60.0  # a build taking longer is killed and counted as failed
    build_workers: int = 2         # parallel build processes (builds run before the timings, never beside them)
    threads: int = 1               # TVM runtime threads of the runner (``TVM_NUM_THREADS``)
    gate: float = 0.0              # > 0: each timing is bracketed by two short timings of the reference kernel;
                                   # when either is slower than the fastest reference this runner has seen by more
                                   # than this fraction, the host was in one of its slow phases, and the timing is
                                   # taken again (protocol version 3). Off (version 2) by default: bench_noise showed
                                   # 0.954 / 3.6% pass to pass at 0.15 vs 0.947 / 3.5% without, for 60% more timing
                                   # time (benchmarks/RESULTS.md); for hours whose slow phases are long and frequent
    gate_wait_s: float = 2.0       # how long one timing may wait for the host's fast phase; a timing still gated
                                   # after this is dropped from the record's rounds (counted in its info)


@dataclass(frozen=True)
class Guard:
    """When the machine counts as too busy to time on."""

    enabled: bool = True            # check at all
    max_foreign_cores: float = 0.5  # other processes' CPU use (cores, averaged over a batch) above which the batch
                                    # waits and is re-measured
    ignore_niced: bool = True       # do not count processes running at a positive nice level (``nice -n 19 pytest``):
                                    # the scheduler keeps them off the runner's core, so they are one neighbour on the
                                    # other core, which bench_noise's ``niced`` pass measures as harmless
    max_steal: float = 0.05         # fraction of CPU time the hypervisor stole above which the same happens
    ref_tolerance: float = 0.20     # the reference kernel is timed once per round; when even its fastest time during
                                    # a batch is slower than the fastest this runner has seen by more, the whole batch
                                    # ran on a slowed machine and is re-measured. A quiet Zen 4 spends ~15% of its
                                    # batches in a slow phase that reads +30-35% here and slows the candidates by ~16%
                                    # (bench_guard.py); 98-100% of the records stored on Zen 3/4/5 read < 20%
    max_attempts: int = 10          # re-measurements of a disturbed batch (each after waiting for a quiet machine);
                                    # after that it is stored marked ``disturbed``, and training drops it
    report_s: float = 60.0          # while waiting, one line saying why every this many seconds
    settle_s: float = 2.0           # quiet seconds required before timing resumes


@dataclass
class MeasureResult:
    """Outcome of one candidate: ``run_secs`` (one estimate per round) or ``error``.

    ``info`` holds what the guard saw while timing it (spread of the rounds, foreign load,
    steal, reference drift, re-measurements): kept beside the record in a side file.
    """

    run_secs: list[float] | None
    error: str | None = None
    build_s: float = 0.0
    info: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None and bool(self.run_secs)


def label_secs(run_secs: Iterable[float]) -> float:
    """The time a record stands for: the median of its stored ``run_secs`` (with this protocol, the
    median of its fastest rounds). Training labels, evaluation, tuning curves and benchmarks all use it."""
    return float(np.median(np.asarray(list(run_secs), dtype=np.float64)))


def args_of(args_info: Iterable[Any]) -> list[tuple[list[int], str]]:
    """``(shape, dtype)`` of every tensor argument of a candidate's ``ArgInfo`` list."""
    out = []
    for a in args_info:
        j = a.as_json()  # ["TENSOR", dtype, shape]
        out.append(([int(s) for s in j[2]], str(j[1])))
    return out


def build(mod: Any, target: Any, out_dir: str) -> str:
    """Compile a scheduled IRModule for ``target`` and export it as a shared library."""
    import tvm
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    from perfmodel._tvm import load_ms

    load_ms()  # registers the tensor intrinsics some schedules use

    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
    lib = tvm.compile(mod, target=target)
    os.makedirs(out_dir, exist_ok=True)  # a /tmp cleanup during a long job must not fail every later build
    fd, path = tempfile.mkstemp(suffix=".so", dir=out_dir)
    os.close(fd)
    lib.export_library(path, **({"fcompile": _ld_shared} if shutil.which("ld") else {}))
    return path


def _ld_shared(output: str, objects: list[str], options: Any = None, **_: Any) -> None:
    """Link the kernel's object file into a shared library with ``ld`` alone.

    The machine code is LLVM's either way; skipping the ``g++`` driver (and its C runtime startup
    files, which a kernel library never runs) takes ~150 ms off each ~1 s build here. Symbols the
    kernel needs (libm, TVM's backend API) resolve at load time from the runner process, as they
    do for the default ``g++ -shared`` library.
    """
    subprocess.run(["ld", "-shared", "-o", output, *objects], check=True, capture_output=True)


_ld_shared.output_format = "so"  # type: ignore[attr-defined]  (what export_library asks of an fcompile)


# ---- the runner process -------------------------------------------------------------------------
class _Runner:
    """State of the runner process: loaded libraries, the reference kernel, real-time bookkeeping."""

    def __init__(self) -> None:
        import tvm

        self.tvm = tvm
        self.dev = tvm.cpu(0)
        self.libs: dict[int, tuple[Any, Any, list]] = {}
        self.busy_since = time.perf_counter()
        self.ref = None
        self.ref_f = None
        self.ref_best = float("inf")

    def tensors(self, args: list, seed: int) -> list:
        rng = np.random.default_rng(seed)
        out = []
        for shape, dtype in args:
            arr = rng.random(size=shape, dtype=np.float32) if "float" in dtype else rng.integers(0, 8, size=shape)
            out.append(self.tvm.runtime.tensor(arr.astype(dtype, copy=False), self.dev))
        return out

    def load(self, job: dict) -> None:
        lib = self.tvm.runtime.load_module(job["path"])
        fn = lib[lib.entry_name]
        self.libs[job["id"]] = (lib, fn, [tuple(a) for a in job["args"]], None)

    def time(self, job: dict) -> dict:
        lib, fn, args, kept = self.libs[job["id"]]
        spacer = None
        if job["placement"] == "same":
            if kept is None:
                kept = self.tensors(args, 0)
                self.libs[job["id"]] = (lib, fn, args, kept)
            tensors = kept
        else:
            if job["placement"] == "shift":  # vary where the arguments land relative to pages and sets
                spacer = np.empty(random.randrange(64, 1 << 20, 64), dtype=np.uint8)
            tensors = self.tensors(args, job.get("seed", 0))
        if job["placement"] != "same" or not job.get("warm"):
            fn(*tensors)  # warm-up (lazy initialisation, page faults of fresh buffers)
        f = lib.time_evaluator(lib.entry_name, self.dev, number=1, repeat=job["repeat"],
                               min_repeat_ms=job["min_repeat_ms"])
        gate = job.get("gate") or 0.0
        if gate <= 0 or self.ref is None:
            out = self._timed(lambda: f(*tensors).results)
        else:  # bracket the timing by the reference; take it again while the host is in a slow phase
            deadline = time.perf_counter() + job.get("gate_wait_s", 2.0)
            tries = 0
            while True:
                tries += 1
                before = self.ref_once()
                out = self._timed(lambda: f(*tensors).results)
                slow = max(before, self.ref_once()) / self.ref_best - 1
                if slow <= gate or time.perf_counter() > deadline:
                    break
                time.sleep(0.005)
            out.update(ref_slow=slow, gated=slow > gate, tries=tries)
        del spacer, tensors
        return out

    def _timed(self, call: Any) -> dict:
        import resource

        r0 = resource.getrusage(resource.RUSAGE_SELF)
        w0, c0 = time.perf_counter(), time.thread_time()
        res = [float(x) for x in call()]
        w1, c1 = time.perf_counter(), time.thread_time()
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        if w1 - self.busy_since > 0.4:  # stay under SCHED_FIFO throttling (95% of each second)
            time.sleep(0.03)
            self.busy_since = time.perf_counter()
        return {"ok": res, "wall": w1 - w0, "cpu": c1 - c0, "nivcsw": r1.ru_nivcsw - r0.ru_nivcsw}

    def reference(self, job: dict) -> dict:
        """A fixed 64x64x64 float32 matmul, built once per process: the machine's pulse."""
        self._build_reference(job["target"])
        lib, tensors = self.ref
        f = lib.time_evaluator(lib.entry_name, self.dev, number=1, repeat=3, min_repeat_ms=2)
        return self._timed(lambda: f(*tensors).results)

    def ref_once(self) -> float:
        """One short (>= 1 ms) timing of the reference kernel; keeps the fastest seen."""
        t = float(self.ref_f(*self.ref[1]).results[0])
        self.ref_best = min(self.ref_best, t)
        return t

    def _build_reference(self, target: dict) -> None:
        if self.ref is None:
            from tvm import te

            n = 64
            a = te.placeholder((n, n), name="A")
            b = te.placeholder((n, n), name="B")
            k = te.reduce_axis((0, n), name="k")
            c = te.compute((n, n), lambda i, j: te.sum(a[i, k] * b[k, j], axis=k), name="C")
            exe = self.tvm.compile(te.create_prim_func([a, b, c]), target=self.tvm.target.Target(target))
            with tempfile.TemporaryDirectory() as tmp:
                exe.export_library(os.path.join(tmp, "ref.so"))
                lib = self.tvm.runtime.load_module(os.path.join(tmp, "ref.so"))
            self.ref = (lib, self.tensors([([n, n], "float32")] * 3, 0))
            self.ref_f = lib.time_evaluator(lib.entry_name, self.dev, number=1, repeat=1, min_repeat_ms=1)
            for _ in range(200):  # calibrate: the fastest of ~0.1 s of short timings (refined as it goes)
                self.ref_once()


def _spread(estimates: list[float], keep: int) -> float:
    """Relative spread (max/min - 1) of the ``keep`` fastest estimates; ``inf`` with fewer."""
    if len(estimates) < keep:
        return float("inf")
    fast = sorted(estimates)[:keep]
    return fast[-1] / fast[0] - 1


def _set_realtime() -> bool:
    try:
        os.sched_setaffinity(0, {max(os.sched_getaffinity(0))})
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
        return True
    except (OSError, AttributeError, PermissionError):
        return False


def exit_with_parent(interval_s: float = 0.5) -> None:
    """Makes this worker process leave (``os._exit``) once the process that started it is gone.

    A worker left running by a killed tuning or collection (SIGTERM / SIGKILL skip every cleanup)
    finishes its job alone: a long LLVM build went on at ~90% of a core for minutes after its tuner
    died, and a resumed run's guard then waited for a quiet machine. An idle worker already leaves at
    the end of its input; this covers one in the middle of a job. A daemon thread compares the parent
    pid every ``interval_s`` (a process re-parented to init or a subreaper sees another one)."""
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(interval_s)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def build_worker_init() -> None:
    """Start of every build worker (a TVM pool's, ``PopenPoolExecutor`` / ``LocalBuilder``, and ours): MetaSchedule
    imported the fast way (``load_ms``) and :func:`exit_with_parent`."""
    from perfmodel._tvm import load_ms

    load_ms()
    exit_with_parent()


def _worker_main(role: str) -> None:
    """Entry of a worker process: JSON jobs on stdin, one JSON answer line each on stdout.

    ``role`` is ``build`` (IRModule JSON -> exported library path) or ``run`` (ops ``load``,
    ``time``, ``unload``, ``reference``, ``realtime`` on libraries).
    """
    out = sys.stdout
    sys.stdout = sys.stderr  # anything TVM prints must not corrupt the answer stream
    import tvm

    if role == "build":
        # Builds may overlap a timing: niced, so the runner keeps its core and the guard (which ignores
        # niced CPU time) does not count them; nice 10, not 19, so that they still win the other core
        # from anyone's `nice -n 19` background work (CFS weight 110 vs 15) and collection keeps its pace.
        os.nice(BUILD_NICE)
        build_worker_init()  # a build may run on for minutes; a runner's job is short and its input ends
    else:
        runner = _Runner()
    for line in sys.stdin:
        job = json.loads(line)
        try:
            if role == "build":
                ans: dict = {"ok": build(tvm.ir.load_json(job["mod"]), tvm.target.Target(job["target"]), job["dir"])}
            elif job["op"] == "load":
                runner.load(job)
                ans = {"ok": True}
            elif job["op"] == "time":
                ans = runner.time(job)
            elif job["op"] == "unload":
                runner.libs.clear()
                ans = {"ok": True}
            elif job["op"] == "reference":
                ans = runner.reference(job)
            elif job["op"] == "realtime":
                ans = {"ok": _set_realtime() if job["on"] else False}
            else:
                ans = {"error": f"unknown op {job['op']!r}"}
        except Exception as e:  # noqa: BLE001  a failing build or kernel is a result, not a crash
            ans = {"error": one_line(e)}
        out.write(json.dumps(ans) + "\n")
        out.flush()


class _Worker:
    """One long-lived ``python -m perfmodel.collect.measure <role>`` process.

    A small JSON-lines protocol over pipes rather than TVM's ``PopenPoolExecutor``: the runner
    must keep a batch's libraries loaded across rounds, run under ``SCHED_FIFO`` on its own core
    and answer many small requests (a few per timing) cheaply. An answer that does not come
    within the timeout (an LLVM build that never ends, a kernel that hangs) or a dead process (a
    crashing kernel) kills the worker; the job fails with the reason and the next starts afresh.
    """

    def __init__(self, role: str, threads: int) -> None:
        self.role = role
        self.threads = threads
        self.proc: subprocess.Popen | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    def submit(self, payload: dict) -> bool:
        """Send a job; ``True`` when a fresh process had to be started for it."""
        fresh = False
        if self.proc is None or self.proc.poll() is not None:
            env = dict(os.environ, TVM_NUM_THREADS=str(self.threads), OMP_NUM_THREADS="1")
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "perfmodel.collect.measure", self.role], stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True, bufsize=1)
            fresh = True
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps(payload) + "\n")
            self.proc.stdin.flush()
        except OSError:
            pass  # answer() sees the dead process
        return fresh

    def answer(self, timeout_s: float) -> tuple[Any, str | None]:
        """``(answer dict, None)`` or ``(None, error message)`` of the job in flight."""
        assert self.proc is not None and self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout_s)
        if ready:
            line = self.proc.stdout.readline()
            if line:
                ans = json.loads(line)
                return (ans, None) if "ok" in ans else (None, f"{self.role}: {ans['error']}")
            err = f"{self.role}: worker process died" + (" (crashing kernel)" if self.role == "run" else "")
        else:
            err = f"{self.role}: timed out after {timeout_s:g}s"
        self.kill()
        return None, err

    def call(self, payload: dict, timeout_s: float) -> tuple[Any, str | None]:
        self.submit(payload)
        return self.answer(timeout_s)

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.close()
                self.proc.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                pass
        self.kill()


class _Builders:
    """``n`` build workers used together on one batch (a build per worker at a time)."""

    def __init__(self, n: int) -> None:
        self.workers = [_Worker("build", threads=1) for _ in range(max(1, n))]

    def build_all(self, mods: list[Any], target_json: str, out_dir: str, timeout_s: float
                  ) -> list[tuple[str | None, str | None, float]]:
        """``(path, error, seconds)`` per module, in order."""
        import tvm

        target = json.loads(target_json)
        out: list[Any] = [None] * len(mods)
        todo = list(range(len(mods)))
        busy: dict[int, tuple[int, float]] = {}  # worker index -> (module index, start)
        while todo or busy:
            for w, worker in enumerate(self.workers):
                if w not in busy and todo:
                    i = todo.pop(0)
                    worker.submit({"mod": tvm.ir.save_json(mods[i]), "target": target, "dir": out_dir})
                    busy[w] = (i, time.perf_counter())
            streams = {self.workers[w].proc.stdout: w for w in busy}  # type: ignore[union-attr]
            now = time.perf_counter()
            wait = max(0.0, min(t0 + timeout_s - now for _, t0 in busy.values()))
            ready, _, _ = select.select(list(streams), [], [], wait)
            for s in ready or []:
                w = streams[s]
                i, t0 = busy.pop(w)
                ans, err = self.workers[w].answer(timeout_s)
                out[i] = (ans["ok"] if ans else None, err, time.perf_counter() - t0)
            if not ready:  # the oldest build ran past its timeout
                for w, (i, t0) in list(busy.items()):
                    if time.perf_counter() - t0 >= timeout_s:
                        self.workers[w].kill()
                        busy.pop(w)
                        out[i] = (None, f"build: timed out after {timeout_s:g}s", timeout_s)
        return out

    @property
    def pids(self) -> list[int]:
        return [p for w in self.workers if (p := w.pid) is not None]

    def close(self) -> None:
        for w in self.workers:
            w.close()


# ---- the guard ----------------------------------------------------------------------------------
class CpuMeter:
    """Other processes' CPU use and steal time over an interval, from ``/proc``.

    ``foreign`` = (busy CPU time of the whole machine - CPU time of ``own`` processes) / wall
    time, in cores; ``steal`` = stolen / total CPU time.
    """

    def __init__(self, own: Any, *, ignore_niced: bool = False) -> None:
        self.own = own  # callable -> list of our pids
        self.ignore_niced = ignore_niced
        self.hz = os.sysconf("SC_CLK_TCK")
        self._t = self.sample()

    def _stat(self) -> tuple[float, float, float]:
        with open("/proc/stat") as f:
            v = [float(x) for x in f.readline().split()[1:]]
        idle = v[3] + v[4]
        steal = v[7] if len(v) > 7 else 0.0
        busy = sum(v[:8]) - idle - steal - (v[1] if self.ignore_niced else 0.0)
        return busy, steal, sum(v[:8])

    def _own(self) -> float:
        """CPU ticks of this process, of its children it has reaped, and of the live ``own`` pids.

        The reaped children's time (``cutime + cstime``) keeps a worker that was killed and replaced
        mid-interval (a run or build past its timeout) on our side: without it, its CPU time dropped
        out of ours between two samples and was counted as a foreign process's (up to 2.7 cores).
        """
        total = 0.0
        me = os.getpid()
        for pid in [me, *self.own()]:
            try:
                with open(f"/proc/{pid}/stat") as f:
                    parts = f.read().rsplit(")", 1)[1].split()
                total += float(parts[11]) + float(parts[12])  # utime + stime
                if pid == me:
                    total += float(parts[13]) + float(parts[14])  # cutime + cstime: reaped children
            except (OSError, IndexError, ValueError):
                continue
        return total

    def sample(self) -> tuple[float, float, float, float, float]:
        busy, steal, total = self._stat()
        return time.perf_counter(), busy, steal, total, self._own()

    def since(self, start: tuple | None = None) -> dict:
        """``{"foreign": cores, "steal": fraction, "s": seconds}`` since ``start`` (default: the last call)."""
        a = start or self._t
        b = self.sample()
        self._t = b
        wall = max(b[0] - a[0], 1e-6)
        foreign = max(0.0, (b[1] - a[1]) - (b[4] - a[4])) / self.hz / wall
        steal = (b[2] - a[2]) / max(b[3] - a[3], 1.0)
        return {"foreign": round(foreign, 3), "steal": round(steal, 4), "s": round(wall, 2)}


def busiest_processes(n: int = 3, exclude: Iterable[int] = ()) -> str:
    """The ``n`` processes using the most CPU right now, as ``name(pid) 93%``, for the guard's line."""
    try:
        import psutil
    except ImportError:  # pragma: no cover
        return ""
    skip = set(exclude)
    procs = [p for p in psutil.process_iter(["pid", "name"]) if p.info["pid"] not in skip]
    for p in procs:
        try:
            p.cpu_percent(None)
        except psutil.Error:
            pass
    time.sleep(0.3)
    use = []
    for p in procs:
        try:
            use.append((p.cpu_percent(None), p.info["name"], p.info["pid"]))
        except psutil.Error:
            continue
    use.sort(reverse=True)
    return ", ".join(f"{name}({pid}) {pct:.0f}%" for pct, name, pid in use[:n] if pct >= 5)


# ---- the measurer ---------------------------------------------------------------------------------
class Measurer:
    """What the local and the RPC measurer share: target, protocol, build workers, a scratch folder, ``with``.

    Args:
        target: a ``tvm.target.Target``.
        protocol: how to time (default :class:`Protocol`).
        prefix: name prefix of the scratch folder (under the system's temp dir) that holds the built libraries.
    """

    def __init__(self, *, target: Any, protocol: Protocol | None, prefix: str) -> None:
        self.target = target
        self.protocol = protocol or Protocol()
        self._target_json = json.dumps(_plain(target.export()))
        self._builders = _Builders(self.protocol.build_workers)
        self._tmp = tempfile.mkdtemp(prefix=prefix)

    def measure(self, items: Iterable[tuple[Any, Any]], *, next_items: Iterable[tuple[Any, Any]] | None = None
                ) -> list[MeasureResult]:
        """Time ``(scheduled IRModule, args_info)`` pairs as one batch; results in the same order.

        ``next_items``: the caller's next batch, which a measurer may build while this one is timed.
        """
        raise NotImplementedError

    def close(self) -> None:
        """Stop the build workers and remove the scratch folder."""
        self._builders.close()
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class _Cand:
    index: int
    path: str | None
    args: list
    result: MeasureResult


class LocalMeasurer(Measurer):
    """Times candidates on this machine with the protocol of the module docstring.

    Args:
        target: a ``tvm.target.Target``.
        protocol: how to time (default :class:`Protocol`).
        guard: when the machine is too busy (default :class:`Guard`); ``Guard(enabled=False)``
            times whatever the load.
        log: where the guard's one-line messages go (default: stderr).
    """

    def __init__(self, *, target: Any, protocol: Protocol | None = None, guard: Guard | None = None,
                 log: Any = None) -> None:
        super().__init__(target=target, protocol=protocol, prefix="perfmodel-measure-")
        self.guard = guard or Guard()
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self._runner = _Worker("run", threads=self.protocol.threads)
        self._meter = CpuMeter(self._pids, ignore_niced=self.guard.ignore_niced)
        self._ref_base: float | None = None  # fastest reference time seen by this runner
        self.waited_s = 0.0
        self._quiet_during_build = False
        self._last_clean = False
        self._prefetch: tuple | None = None  # (ids of the modules, future of their builds, the modules)
        self._threads: Any = None
        self.remeasured = 0  # disturbed batches timed again
        self.remeasure_s = 0.0  # seconds spent timing the attempts that were thrown away

    def _pids(self) -> list[int]:
        return [p for p in [self._runner.pid, *self._builders.pids] if p is not None]

    def measure(self, items: Iterable[tuple[Any, Any]], *, next_items: Iterable[tuple[Any, Any]] | None = None
                ) -> list[MeasureResult]:
        """Time ``(scheduled IRModule, args_info)`` pairs as one batch; results in the same order.

        ``next_items``, when the caller already knows the next batch, are built (by niced build
        workers, on the other core) while this batch is timed.
        """
        items = list(items)
        if not items:
            return []
        mods = [m for m, _ in items]
        start = self._meter.sample()
        if self._prefetch is not None and self._prefetch[0] == [id(m) for m in mods]:
            built = self._prefetch[1].result()
            self._quiet_during_build = self._last_clean  # the machine was watched while the last batch ran
        else:
            self._drop_prefetch()  # never two builds at once; an unused prefetch is dropped
            built = self._builders.build_all(mods, self._target_json, self._tmp, self.protocol.build_timeout_s)
            load = self._meter.since(start)
            self._quiet_during_build = load["s"] >= 0.5 and self._is_quiet(load)
        self._prefetch = None
        if next_items is not None:
            nxt = [m for m, _ in next_items]
            if nxt:
                self._prefetch = ([id(m) for m in nxt], self._pool().submit(
                    self._builders.build_all, nxt, self._target_json, self._tmp, self.protocol.build_timeout_s),
                    nxt)
        cands = [_Cand(i, path, args_of(args_info), MeasureResult(None, err, build_s=secs))
                 for i, ((_, args_info), (path, err, secs)) in enumerate(zip(items, built))]
        try:
            self._time_batch([c for c in cands if c.path is not None])
        finally:
            for c in cands:
                if c.path:
                    try:
                        os.remove(c.path)
                    except OSError:
                        pass
        return [c.result for c in cands]

    def measure_built(self, items: Iterable[tuple[str | None, Any]]) -> list[MeasureResult]:
        """Time already built libraries: ``(library path or None, args_info)`` pairs, as one batch.

        A ``None`` path is a failed build: its result is an error. Libraries are not removed.
        """
        cands = [_Cand(i, path, args_of(args_info), MeasureResult(None, None if path else "build failed"))
                 for i, (path, args_info) in enumerate(items)]
        self._quiet_during_build = False
        self._time_batch([c for c in cands if c.path is not None])
        return [c.result for c in cands]

    # ---- one batch ------------------------------------------------------------------------
    def _start_runner(self) -> None:
        if self._runner.pid is None:
            self._runner.call({"op": "realtime", "on": self.protocol.realtime}, 60.0)

    def _reference(self) -> float | None:
        self._start_runner()
        ans, _ = self._runner.call({"op": "reference", "target": json.loads(self._target_json)}, 60.0)
        if ans is None:  # the reference failing says nothing about the candidates
            return None
        return min(ans["ok"]) if ans else None

    def _load(self, cands: list[_Cand]) -> list[_Cand]:
        """Load the libraries of ``cands`` into the runner; the ones that crash it fail."""
        self._start_runner()
        live = []
        for c in cands:
            if c.result.error is not None:
                continue
            ans, err = self._runner.call({"op": "load", "id": c.index, "path": c.path, "args": c.args},
                                         self.protocol.timeout_s)
            if ans is None:
                c.result.error = err
                if self._runner.pid is None:  # the crash took the loaded ones with it
                    return self._load(cands)
            else:
                live.append(c)
        self._live = live
        return live

    def _time_batch(self, cands: list[_Cand]) -> None:
        if not cands:
            return
        g, p = self.guard, self.protocol
        for attempt in range(1, g.max_attempts + 2):
            if g.enabled and not (attempt == 1 and self._quiet_during_build):
                self._wait_quiet()  # (the build phase, when quiet, served as the settle time)
            live = self._load(cands)
            if not live:
                break
            t_attempt = time.perf_counter()
            start = self._meter.sample()
            refs = []
            rounds: dict[int, list[float]] = {c.index: [] for c in live}
            switched = {c.index: 0 for c in live}
            gated = {c.index: 0 for c in live}
            for r in range(p.max_rounds):
                todo = [c for c in live if c.result.error is None and (r < p.keep or (
                    sum(rounds[c.index]) < p.budget_ms / 1e3
                    and (r < p.rounds or _spread(rounds[c.index], p.keep) > p.max_spread)))]
                if not todo:
                    break
                if g.enabled or (r == 0 and p.gate > 0):  # (the gate needs the reference built)
                    refs.append(self._reference())
                for c in todo[r % len(todo):] + todo[:r % len(todo)]:
                    est = self._time_one(c, seed=r, switched=switched, gated=gated)
                    if est is not None:
                        rounds[c.index].append(est)
            load = self._meter.since(start)
            drift = None
            refs = [x for x in refs if x]
            if refs:  # the fastest reference of the batch against the fastest this runner has seen
                self._ref_base = min(x for x in (self._ref_base, *refs) if x)
                drift = min(refs) / self._ref_base - 1
            bad = []
            if g.enabled:
                if load["foreign"] > g.max_foreign_cores:
                    bad.append(f"other processes used {load['foreign']:.2f} cores")
                if load["steal"] > g.max_steal:
                    bad.append(f"steal {load['steal']:.1%}")
                if drift is not None and drift > g.ref_tolerance:
                    bad.append(f"reference kernel {drift:+.1%} slower than its best")
            info = {"protocol": PROTOCOL_VERSION if p.gate > 0 else 2, "gate": p.gate,
                    "foreign": load["foreign"], "steal": load["steal"],
                    "ref_drift": None if drift is None else round(drift, 4), "attempt": attempt,
                    "ref_s": min(refs) if refs else None}
            if bad and attempt <= g.max_attempts:
                self.remeasured += 1
                self.remeasure_s += time.perf_counter() - t_attempt
                self.log(f"guard: batch of {len(live)} disturbed ({'; '.join(bad)}); waiting to re-measure "
                         f"(attempt {attempt + 1}/{g.max_attempts + 1})")
                continue
            if bad:
                info["disturbed"] = "; ".join(bad)
            self._last_clean = not bad
            self._finish(live, rounds, switched, gated, info)
            break
        if self._runner.pid is not None:
            self._runner.call({"op": "unload"}, 10.0)

    def _time_one(self, c: _Cand, *, seed: int, switched: dict, gated: dict) -> float | None:
        """One round of one candidate: its fastest repeat; re-timed (up to twice) when switched out.

        None when it failed (``c.result.error`` says why) or the gate dropped it (``gated``)."""
        p = self.protocol
        for _ in range(3):
            ans, err = self._runner.call({"op": "time", "id": c.index, "repeat": p.repeat, "seed": seed,
                                          "min_repeat_ms": p.min_repeat_ms, "placement": p.placement, "warm": seed > 0,
                                          "gate": p.gate, "gate_wait_s": p.gate_wait_s},
                                         p.timeout_s + p.gate_wait_s)
            if ans is None:
                c.result.error = err
                if self._runner.pid is None:  # it crashed: the others need their libraries again
                    self._load([x for x in self._live if x is not c])
                return None
            if ans.get("gated"):  # the host stayed in a slow phase for gate_wait_s: not a label
                gated[c.index] += 1
                return None
            if ans["cpu"] >= 0.95 * ans["wall"] or not self.guard.enabled:
                return min(ans["ok"])
            switched[c.index] += 1
        return min(ans["ok"])

    def _finish(self, live: list[_Cand], rounds: dict, switched: dict, gated: dict, info: dict) -> None:
        p = self.protocol
        for c in live:
            est = sorted(rounds[c.index])
            if c.result.error is not None or not est:
                c.result.error = c.result.error or "run: no timing"
                continue
            spread = _spread(est, p.keep)
            c.result.run_secs = [float(x) for x in est[:p.keep]]
            c.result.info = dict(info, rounds=len(est), spread=round(spread, 4), switched=switched[c.index],
                                 unstable=spread > p.max_spread, gated=gated[c.index])

    def _is_quiet(self, load: dict) -> bool:
        return load["foreign"] <= self.guard.max_foreign_cores and load["steal"] <= self.guard.max_steal

    def _wait_quiet(self) -> None:
        """Block until other processes leave the machine quiet for ``settle_s``; one line per ``report_s``."""
        g = self.guard
        t0 = time.perf_counter()
        last_report = -1e9
        while True:
            start = self._meter.sample()
            time.sleep(g.settle_s)
            load = self._meter.since(start)
            if self._is_quiet(load):
                self.waited_s += time.perf_counter() - t0 - g.settle_s
                return
            now = time.perf_counter()
            if now - last_report >= g.report_s:
                last_report = now
                who = busiest_processes(exclude=[os.getpid(), *self._pids()])
                self.log(f"guard: waiting for a quiet machine ({now - t0:.0f} s so far): other processes use "
                         f"{load['foreign']:.2f} cores (limit {g.max_foreign_cores}), steal {load['steal']:.1%}"
                         + (f"; busiest: {who}" if who else ""))

    def _pool(self) -> Any:
        if self._threads is None:
            from concurrent.futures import ThreadPoolExecutor

            self._threads = ThreadPoolExecutor(1, thread_name_prefix="perfmodel-build")
        return self._threads

    @property
    def pids(self) -> list[int]:
        return self._pids()

    def _drop_prefetch(self) -> None:
        if self._prefetch is not None:
            for path, _, _ in self._prefetch[1].result():
                if path:
                    try:
                        os.remove(path)
                    except OSError:
                        pass
            self._prefetch = None

    def close(self) -> None:
        self._drop_prefetch()
        if self._threads is not None:
            self._threads.shutdown(wait=True)
        self._runner.close()
        super().close()


def _plain(obj: Any) -> Any:
    return to_py(obj)


if __name__ == "__main__":
    _worker_main(sys.argv[1] if len(sys.argv) > 1 else "run")
