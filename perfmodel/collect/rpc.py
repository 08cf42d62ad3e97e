"""Time candidates on a device registered with TVM's RPC tracker, with the project's timing protocol.

The batch is built here first (the same build workers as :class:`~perfmodel.collect.measure.LocalMeasurer`),
then every library is uploaded and loaded once, and the rounds of :class:`~perfmodel.collect.measure.Protocol`
run interleaved over the batch on the device: a round is one timing of at least ``min_repeat_ms``,
a record keeps its ``keep`` fastest rounds and gets more rounds (up to ``max_rounds``) while they
disagree. The device's own load cannot be seen from here, so the guard is not applied.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import numpy as np

from perfmodel.collect.measure import Measurer, MeasureResult, Protocol, _spread, args_of, one_line


class RPCMeasurer(Measurer):
    """Times candidates on the device registered under ``key`` at the tracker ``host:port``.

    A tracker that cannot be reached, or one where no server is registered under ``key``, fails
    at construction with one clear line.
    """

    def __init__(self, *, target: Any, host: str, port: int, key: str, protocol: Protocol | None = None) -> None:
        self.host, self.port, self.key = host, int(port), key
        self._session: Any = None
        self._connect()
        super().__init__(target=target, protocol=protocol, prefix="perfmodel-rpc-")

    def _connect(self) -> None:
        from tvm import rpc

        where = f"RPC tracker {self.host}:{self.port} (key {self.key!r})"
        try:
            tracker = rpc.connect_tracker(self.host, self.port)
            keys = {str(item["key"]).split(":")[-1] for item in tracker.summary()["server_info"]}
        except Exception as e:  # noqa: BLE001
            raise ConnectionError(f"{where} unreachable: {one_line(e)}") from None
        if self.key not in keys:  # request() would wait forever for a server that never comes
            raise ConnectionError(f"RPC tracker {self.host}:{self.port}: no server registered under key "
                                  f"{self.key!r} (registered: {sorted(keys) or 'none'})")
        try:
            self._session = tracker.request(self.key, priority=1, session_timeout=0)
        except Exception as e:  # noqa: BLE001
            raise ConnectionError(f"{where} unreachable: {one_line(e)}") from None

    def measure(self, items: Iterable[tuple[Any, Any]], *, next_items: Iterable[tuple[Any, Any]] | None = None
                ) -> list[MeasureResult]:
        """Time ``(scheduled IRModule, args_info)`` pairs as one batch; results in the same order.

        ``next_items`` are not built ahead here (a build beside an RPC timing would not disturb it,
        but uploading the libraries is the slow part).
        """
        import tvm

        items = list(items)
        p = self.protocol
        built = self._builders.build_all([m for m, _ in items], self._target_json, self._tmp, p.build_timeout_s)
        results = [MeasureResult(None, err, build_s=secs) for _, err, secs in built]
        loaded: dict[int, tuple[Any, list]] = {}
        sess = self._session
        dev = sess.cpu(0)
        rng = np.random.default_rng(0)
        for i, ((_, args_info), (path, _, _)) in enumerate(zip(items, built)):
            if path is None:
                continue
            try:
                sess.upload(path)
                lib = sess.load_module(os.path.basename(path))
                tensors = [tvm.runtime.tensor(rng.random(size=s, dtype=np.float32).astype(d) if "float" in d
                                              else rng.integers(0, 8, size=s).astype(d), dev)
                           for s, d in args_of(args_info)]
                loaded[i] = (lib, tensors)
            except Exception as e:  # noqa: BLE001
                results[i].error = f"run: {one_line(e)}"
                self._reconnect()
            finally:
                os.remove(path)
        est: dict[int, list[float]] = {i: [] for i in loaded}
        for r in range(p.max_rounds):
            todo = [i for i in loaded if results[i].error is None
                    and (r < p.rounds or _spread(est[i], p.keep) > p.max_spread)]
            for i in todo:
                lib, tensors = loaded[i]
                try:
                    f = lib.time_evaluator(lib.entry_name, dev, number=1, repeat=p.repeat,
                                           min_repeat_ms=p.min_repeat_ms)
                    est[i].append(min(float(x) for x in f(*tensors).results))
                except Exception as e:  # noqa: BLE001
                    results[i].error = f"run: {one_line(e)}"
                    self._reconnect()
        for i in loaded:
            if results[i].error is None and est[i]:
                fast = sorted(est[i])
                results[i].run_secs = fast[:p.keep]
                results[i].info = {"rounds": len(fast), "spread": round(_spread(fast, p.keep), 4), "rpc": True}
            elif results[i].error is None:
                results[i].error = "run: no timing"
        for name in {os.path.basename(path) for path, _, _ in built if path}:
            try:
                sess.remove(name)
            except Exception:  # noqa: BLE001
                pass
        return results

    def _reconnect(self) -> None:
        try:
            self._connect()
        except ConnectionError:
            pass

    def close(self) -> None:
        self._session = None
        super().close()
