"""MetaSchedule's runner interface over the project's timing protocol, for ``ms.tune_tir`` and Relax tuning.

``perfmodel tune``, the tuning benchmark and its plain ``tune_tir`` baseline all time candidates
through :class:`ProtocolRunner`, so a tuning run's latencies mean what the dataset's labels mean
(:mod:`perfmodel.collect.measure`).
"""

from __future__ import annotations

import time
from typing import Any

from tvm.ir.utils import derived_object

from perfmodel._tvm import load_ms
from perfmodel.collect.database import FAILED
from perfmodel.collect.measure import Guard, LocalMeasurer, Protocol

ms = load_ms()


@derived_object
class _Done(ms.runner.PyRunnerFuture):
    """A runner future whose result is already there (the batch is timed synchronously)."""

    def __init__(self, result: Any) -> None:
        super().__init__()
        self._result = result

    def done(self) -> bool:
        return True

    def result(self) -> Any:
        return self._result


@derived_object
class ProtocolRunner(ms.runner.PyRunner):
    """Times a batch of built artifacts with :class:`~perfmodel.collect.measure.LocalMeasurer`.

    Args:
        target: the ``tvm.target.Target`` the artifacts were built for (the reference kernel's).
        protocol: timing protocol (default :class:`Protocol`).
        guard: busy-machine guard (default :class:`Guard`).

    ``run_secs`` of a result are the ``keep`` fastest round estimates (their mean, which
    MetaSchedule uses, is within ``max_spread`` of the label, their median).

    ``finished`` holds, for every candidate timed, the ``time.perf_counter()`` at which its batch
    finished (the wall-clock axis of a tuning curve: record ``k`` of the database was measured by
    ``finished[k]``).
    """

    def __init__(self, *, target: Any, protocol: Protocol | None = None, guard: Guard | None = None) -> None:
        super().__init__()
        self.measurer = LocalMeasurer(target=target, protocol=protocol, guard=guard)
        self.timed = 0
        self.finished: list[float] = []

    def run(self, runner_inputs: list[Any]) -> list[Any]:
        items = [(str(ri.artifact_path) if ri.artifact_path else None, list(ri.args_info)) for ri in runner_inputs]
        results = self.measurer.measure_built(items)
        out = []
        for res in results:  # (TVM's task scheduler removes each artifact's directory afterwards)
            out.append(_Done(ms.runner.RunnerResult(res.run_secs, None) if res.ok
                             else ms.runner.RunnerResult([FAILED], res.error or "run failed")))
        self.timed += len(items)
        self.finished += [time.perf_counter()] * len(items)
        return out

    def close(self) -> None:
        self.measurer.close()
