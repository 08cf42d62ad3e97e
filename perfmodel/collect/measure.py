"""Build schedules in this process and time them in one long-lived worker process.

MetaSchedule's ``LocalBuilder``/``LocalRunner`` start process pools and tar/untar artifacts for every
batch. A collector only needs timings, so it keeps one runner process alive for the whole job,
builds the next candidate while the runner times the previous one, and restarts the runner only
if a kernel crashes it or runs past the timeout. ``RPCMeasurer`` sends the same artifacts through
TVM's RPC tracker instead, for boards elsewhere.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

FAILED = 1e10  # MetaSchedule's run_secs for a failed build or run


@dataclass(frozen=True)
class EvalConfig:
    """How one candidate is timed.

    Attributes:
        repeat: timings kept per record (each the mean over ``number`` runs).
        min_repeat_ms: ``number`` grows until one repeat lasts at least this long.
        timeout_s: a candidate whose timing takes longer is killed and counted as failed.
        build_timeout_s: a build (LLVM codegen of a huge unrolled nest can take minutes) taking
            longer is killed and counted as failed.
        threads: TVM runtime threads of the runner (``TVM_NUM_THREADS``).
    """

    repeat: int = 3
    min_repeat_ms: int = 20
    timeout_s: float = 20.0
    threads: int = 1
    build_timeout_s: float = 60.0


@dataclass
class MeasureResult:
    """Outcome of one candidate: ``run_secs`` (all repeats) or ``error``."""

    run_secs: list[float] | None
    error: str | None = None
    build_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None and bool(self.run_secs)


@dataclass
class _Job:
    path: str | None
    args: list[tuple[list[int], str]]
    result: MeasureResult = field(default_factory=lambda: MeasureResult(None))


def one_line(e: BaseException) -> str:
    """An exception as one short line: its type and the last line of its message."""
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[-1][:300]}" if lines else type(e).__name__


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
    fd, path = tempfile.mkstemp(suffix=".so", dir=out_dir)
    os.close(fd)
    lib.export_library(path)
    return path


def _time_module(path: str, args: list[tuple[list[int], str]], cfg: EvalConfig) -> list[float]:
    import tvm

    dev = tvm.cpu(0)
    lib = tvm.runtime.load_module(path)
    rng = np.random.default_rng(0)
    tensors = []
    for shape, dtype in args:
        if "float" in dtype:
            arr = rng.uniform(-1, 1, size=shape).astype(dtype)
        else:
            arr = rng.integers(0, 8, size=shape).astype(dtype)
        tensors.append(tvm.runtime.tensor(arr, dev))
    f = lib.time_evaluator(lib.entry_name, dev, number=1, repeat=cfg.repeat, min_repeat_ms=cfg.min_repeat_ms)
    return [float(x) for x in f(*tensors).results]


def _worker_main(role: str) -> None:
    """Entry of a worker process: JSON jobs on stdin, one JSON answer line each on stdout.

    ``role`` is ``build`` (IRModule JSON -> exported library path) or ``run`` (library -> timings).
    """
    out = sys.stdout
    sys.stdout = sys.stderr  # anything TVM prints must not corrupt the answer stream
    if role == "build":
        import tvm

        from perfmodel._tvm import load_ms

        load_ms()
    for line in sys.stdin:
        job = json.loads(line)
        try:
            if role == "build":
                ans = {"ok": build(tvm.ir.load_json(job["mod"]), tvm.target.Target(job["target"]), job["dir"])}
            else:
                ans = {"ok": _time_module(job["path"], [tuple(a) for a in job["args"]], EvalConfig(**job["cfg"]))}
        except Exception as e:  # noqa: BLE001  a failing build or kernel is a result, not a crash
            ans = {"error": one_line(e)}
        out.write(json.dumps(ans) + "\n")
        out.flush()


class _Worker:
    """One long-lived ``python -m perfmodel.collect.measure <role>`` process.

    Jobs go in one at a time; an answer that does not come within the timeout (an LLVM build that
    never ends, a kernel that hangs) or a dead process (a crashing kernel) kills the worker, the job
    is failed with the reason, and the next job starts a fresh process.
    """

    def __init__(self, role: str, threads: int) -> None:
        self.role = role
        self.threads = threads
        self.proc: subprocess.Popen | None = None
        self.restarts = 0

    def submit(self, payload: dict) -> None:
        if self.proc is None or self.proc.poll() is not None:
            env = dict(os.environ, TVM_NUM_THREADS=str(self.threads))
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "perfmodel.collect.measure", self.role], stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True, bufsize=1)
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps(payload) + "\n")
            self.proc.stdin.flush()
        except OSError:
            pass  # answer() sees the dead process

    def answer(self, timeout_s: float) -> tuple[Any, str | None]:
        """``(value, None)`` or ``(None, error message)`` of the job in flight."""
        assert self.proc is not None and self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout_s)
        if ready:
            line = self.proc.stdout.readline()
            if line:
                ans = json.loads(line)
                return (ans["ok"], None) if "ok" in ans else (None, f"{self.role}: {ans['error']}")
            err = f"{self.role}: worker process died" + (" (crashing kernel)" if self.role == "run" else "")
        else:
            err = f"{self.role}: timed out after {timeout_s:g}s"
        self.kill()
        self.restarts += 1
        return None, err

    def build(self, mod: Any, target_json: str, out_dir: str, timeout_s: float) -> tuple[str | None, str | None]:
        """``(library path, None)`` or ``(None, error)``: builds ``mod`` in this (build) worker."""
        import tvm

        self.submit({"mod": tvm.ir.save_json(mod), "target": json.loads(target_json), "dir": out_dir})
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


class LocalMeasurer:
    """Times candidates on this machine with two persistent workers, a builder and a runner.

    The build of one candidate overlaps the timing of the previous one; neither worker is
    restarted between batches, only when it dies or runs past its timeout.

    Args:
        target: a ``tvm.target.Target``.
        cfg: timing configuration.
    """

    def __init__(self, *, target: Any, cfg: EvalConfig | None = None) -> None:
        self.target = target
        self.cfg = cfg or EvalConfig()
        self._builder = _Worker("build", threads=1)
        self._runner = _Worker("run", threads=self.cfg.threads)
        self._tmp = tempfile.mkdtemp(prefix="perfmodel-measure-")
        self._target_json = json.dumps(_plain(target.export()))

    def measure(self, items: Iterable[tuple[Any, Any]]) -> list[MeasureResult]:
        """Time ``(scheduled IRModule, args_info)`` pairs; results come back in the same order."""
        return list(self.iter_measure(items))

    def iter_measure(self, items: Iterable[tuple[Any, Any]]) -> Iterator[MeasureResult]:
        import time

        pending: _Job | None = None
        for mod, args_info in items:
            t0 = time.perf_counter()
            job = _Job(path=None, args=args_of(args_info))
            job.path, err = self._builder.build(mod, self._target_json, self._tmp, self.cfg.build_timeout_s)
            job.result.error = err
            job.result.build_s = time.perf_counter() - t0
            if pending is not None:
                yield self._finish(pending)
                pending = None
            if job.path is None:
                yield job.result
                continue
            self._runner.submit({"path": job.path, "args": job.args, "cfg": asdict(self.cfg)})
            pending = job
        if pending is not None:
            yield self._finish(pending)

    def _finish(self, job: _Job) -> MeasureResult:
        job.result.run_secs, job.result.error = self._runner.answer(self.cfg.timeout_s)
        if job.path:
            try:
                os.remove(job.path)
            except OSError:
                pass
        return job.result

    @property
    def restarts(self) -> int:
        return self._runner.restarts + self._builder.restarts

    def close(self) -> None:
        self._runner.close()
        self._builder.close()
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> LocalMeasurer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _plain(obj: Any) -> Any:
    from perfmodel.collect.sampler import to_py

    return to_py(obj)


class RPCMeasurer:
    """Times candidates on a device registered with TVM's RPC tracker under ``key``.

    The library is built here for the device's target, uploaded, loaded and timed remotely, one
    session for the whole job (reconnected if it drops). A tracker that cannot be reached fails
    at construction with one clear line.
    """

    def __init__(self, *, target: Any, host: str, port: int, key: str, cfg: EvalConfig | None = None,
                 session_timeout_s: float = 60.0) -> None:
        self.target = target
        self.cfg = cfg or EvalConfig()
        self.host, self.port, self.key = host, int(port), key
        self.session_timeout_s = session_timeout_s
        self._tmp = tempfile.mkdtemp(prefix="perfmodel-rpc-")
        self._session = None
        self.restarts = 0
        self._connect()
        # builds run in a persistent local worker with the same timeout as LocalMeasurer's
        self._builder = _Worker("build", threads=1)
        self._target_json = json.dumps(_plain(target.export()))

    def _connect(self) -> None:
        from tvm import rpc

        try:
            tracker = rpc.connect_tracker(self.host, self.port)
            keys = {str(item["key"]).split(":")[-1] for item in tracker.summary()["server_info"]}
        except Exception as e:  # noqa: BLE001
            raise ConnectionError(
                f"RPC tracker {self.host}:{self.port} (key {self.key!r}) unreachable: {one_line(e)}") from None
        if self.key not in keys:  # request() would wait forever for a server that never comes
            raise ConnectionError(f"RPC tracker {self.host}:{self.port}: no server registered under key "
                                  f"{self.key!r} (registered: {sorted(keys) or 'none'})")
        try:
            self._session = tracker.request(self.key, priority=1, session_timeout=0)
        except Exception as e:  # noqa: BLE001
            raise ConnectionError(
                f"RPC tracker {self.host}:{self.port} (key {self.key!r}) unreachable: {one_line(e)}") from None

    def measure(self, items: Iterable[tuple[Any, Any]]) -> list[MeasureResult]:
        return list(self.iter_measure(items))

    def iter_measure(self, items: Iterable[tuple[Any, Any]]) -> Iterator[MeasureResult]:
        import time

        for mod, args_info in items:
            res = MeasureResult(None)
            t0 = time.perf_counter()
            path, err = self._builder.build(mod, self._target_json, self._tmp, self.cfg.build_timeout_s)
            if path is None:
                res.error = err
                yield res
                continue
            res.build_s = time.perf_counter() - t0
            try:
                res.run_secs = self._run(path, args_of(args_info))
            except Exception as e:  # noqa: BLE001
                res.error = f"run: {one_line(e)}"
                self.restarts += 1
                try:
                    self._connect()
                except ConnectionError:
                    pass
            finally:
                os.remove(path)
            yield res

    def _run(self, path: str, args: list[tuple[list[int], str]]) -> list[float]:
        import tvm

        sess = self._session
        name = os.path.basename(path)
        sess.upload(path)
        lib = sess.load_module(name)
        dev = sess.cpu(0)
        rng = np.random.default_rng(0)
        tensors = [tvm.runtime.tensor(rng.uniform(-1, 1, size=s).astype(d) if "float" in d
                                      else rng.integers(0, 8, size=s).astype(d), dev) for s, d in args]
        f = lib.time_evaluator(lib.entry_name, dev, number=1, repeat=self.cfg.repeat,
                               min_repeat_ms=self.cfg.min_repeat_ms)
        out = [float(x) for x in f(*tensors).results]
        sess.remove(name)
        return out

    def close(self) -> None:
        self._session = None
        self._builder.close()
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> RPCMeasurer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


if __name__ == "__main__":
    _worker_main(sys.argv[1] if len(sys.argv) > 1 else "run")
