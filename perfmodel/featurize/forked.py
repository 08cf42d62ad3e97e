"""Map a function over a list on several cores by forking: the children inherit the (TVM) objects, no copy."""

from __future__ import annotations

import logging
import os
import pickle
import select
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

MIN_PER_WORKER = 32  # fewer items per worker: forking (~10-40 ms in a process holding TVM and torch) does not pay
MAX_FAILED_IN_A_ROW = 3  # calls in a row with a failed child: then this process stops forking (see forked_map)

log = logging.getLogger(__name__)


@dataclass
class ForkStats:
    """What the forked maps of a process did: calls that forked, items done in children, children that
    failed (their chunks redone here), failed calls in a row, and whether forking was given up."""

    forked_calls: int = 0
    child_items: int = 0
    redone: int = 0
    failed_in_a_row: int = 0
    given_up: bool = False
    reasons: list[str] = field(default_factory=list)  # the first few reasons a slice was redone
    unforked: int = 0  # calls kept in this process because their ``ForkCosts`` said forking would not pay


STATS = ForkStats()


@dataclass
class ForkCosts:
    """What the forked maps of one stream of similar calls (one task's populations) cost: running averages
    of the mapped function's seconds per item in one process alone and of a forked call's own overhead
    (forking a process as large as a tuner, ~10-20 ms; waiting for the child; unpickling its results).
    ``forked_map(..., costs=...)`` forks only when that pays by them. Forked, each process runs
    ``slowdown`` times slower per item than one process alone (measured in live tunes on this 2-vCPU
    machine: 75 vs 53 us per NRM-3 schedule, ~650 vs 484 us per GRP-3 schedule), so two workers
    save ``1 - slowdown / 2`` (~30%) of the work's time, less the overhead: a population made mostly of
    contents scored before (features cached, ~50 us per schedule for the key) does not pay for a fork
    (NRM-3, 256 trials: 1.53 s featurizing forked vs 1.22 s in one process). Calls that stay in this
    process measure the seconds per item too, so the decision follows the stream."""

    per_item: float | None = None  # seconds per item in one process alone
    overhead: float | None = None
    slowdown: float = 1.4
    weight: float = 0.5  # of the newest call in each average

    def pays(self, n: int, workers: int) -> bool:
        """Whether ``n`` items on ``workers`` processes take less time than in this one (yes while unknown)."""
        if self.per_item is None or self.overhead is None:
            return True
        return n * self.per_item * (1.0 - self.slowdown / workers) > self.overhead

    def add(self, *, per_item: float | None = None, overhead: float | None = None) -> None:
        """Adds one call's seconds per item (in one process alone) and / or forking overhead to the averages."""
        w = self.weight
        if per_item is not None:
            self.per_item = per_item if self.per_item is None else self.per_item + w * (per_item - self.per_item)
        if overhead is not None:
            self.overhead = overhead if self.overhead is None else self.overhead + w * (overhead - self.overhead)


def forked_map(fn: Callable[[Sequence[Any]], list[Any]], items: Sequence[Any], *, workers: int,
               timeout_s: float = 10.0, min_per_worker: int = MIN_PER_WORKER, chunk: int = 16,
               costs: ForkCosts | None = None) -> list[Any]:
    """``fn(items)``, computed by this process and ``workers - 1`` forked children together; the
    results in the order of ``items``.

    The children are forked *after* ``items`` exist, so they read the caller's objects (TVM schedules)
    in place: nothing is serialized on the way in. All processes take chunks of ``chunk`` items from
    one queue (a pipe of chunk numbers) until it is empty, so a core that runs slower (a busy
    neighbour on a shared host) simply does fewer chunks; each child pickles its chunks' results back
    through a pipe and leaves with ``os._exit`` (no atexit handler, no destructor of the parent's pools
    runs in it). ``fn`` must be a pure function of its slice whose results pickle; it runs in the
    children without the threads of the parent (do not call into thread pools or torch from it).

    A child that fails, dies or is not done ``timeout_s`` (at least 3x the parent's own time) after
    the parent found the queue empty is killed, and the chunks it did not hand back are computed here
    (counted in ``STATS.redone``): the result is the same, only slower. After ``MAX_FAILED_IN_A_ROW``
    calls in a row with a failed child (a child that cannot work here, e.g. a lock some other thread
    held when it was forked) the process gives forking up, with one warning (``STATS.given_up``). Without
    ``os.fork``, with ``workers`` <= 1, fewer than ``min_per_worker`` items per worker or forking given
    up, this is just ``fn(items)``; with ``costs`` (:class:`ForkCosts`, updated by the call) also when
    forking would not pay by them (counted in ``STATS.unforked``).
    """
    reap()
    n = len(items)
    workers = min(int(workers), n // max(1, min_per_worker)) if n else 0
    if workers <= 1 or STATS.given_up or not hasattr(os, "fork"):
        return fn(items)
    if costs is not None and not costs.pays(n, workers):
        STATS.unforked += 1
        t = time.perf_counter()
        out = fn(items)
        costs.add(per_item=(time.perf_counter() - t) / n)
        return out
    start, own, own_items = time.perf_counter(), 0.0, 0
    chunk = max(1, int(chunk))
    n_chunks = -(-n // chunk)
    qr, qw = os.pipe()  # the queue: every chunk number, written before anyone starts
    os.write(qw, b"".join(struct.pack("<i", c) for c in range(n_chunks)))  # <= 4 bytes x n/chunk: fits the pipe
    os.close(qw)
    os.set_blocking(qr, False)

    def one(c: int) -> list[Any]:  # chunk c's results
        part = items[c * chunk:(c + 1) * chunk]
        return _checked(fn(part), len(part))

    def work() -> dict[int, list[Any]]:  # takes chunks until the queue is empty; counts this process's time
        nonlocal own, own_items
        done: dict[int, list[Any]] = {}
        while True:
            try:
                b = os.read(qr, 4)  # one read of a pipe is atomic: each chunk goes to one process
            except BlockingIOError:
                b = b""
            if len(b) < 4:
                return done
            c = struct.unpack("<i", b)[0]
            t = time.perf_counter()
            done[c] = one(c)
            own, own_items = own + time.perf_counter() - t, own_items + len(done[c])

    children: list[tuple[int, int]] = []  # (pid, read end of its result pipe)
    try:
        for _ in range(1, workers):
            r, w = os.pipe()
            pid = os.fork()
            if pid == 0:  # the child: take chunks, send their results, leave without cleanup
                code = 1
                try:
                    os.close(r)
                    got = work()  # its results and its own seconds of work, for ``costs``
                    data = pickle.dumps((got, own, own_items), protocol=pickle.HIGHEST_PROTOCOL)
                    with os.fdopen(w, "wb") as fh:
                        fh.write(data)
                    code = 0
                finally:
                    os._exit(code)
            os.close(w)
            children.append((pid, r))
        STATS.forked_calls += 1
        t0 = time.monotonic()
        done = work()
    except BaseException:  # the parent's own share failed: leave no child behind
        for pid, r in children:
            os.close(r)
            _kill(pid)
        raise
    finally:
        os.close(qr)
    deadline = time.monotonic() + max(float(timeout_s), 3.0 * (time.monotonic() - t0))
    failed = False
    work_s, work_items = own, own_items  # every process's seconds of work (a child may have done all of it)
    for pid, r in children:
        try:
            sent = _receive(r, pid, deadline)
            if not (isinstance(sent, tuple) and len(sent) == 3 and isinstance(sent[0], dict)):
                raise ValueError(f"forked_map: a child sent {type(sent).__name__}")
            got, secs, items_done = sent
            STATS.child_items += sum(len(v) for v in got.values())
            done.update(got)
            work_s, work_items = work_s + secs, work_items + items_done
        except Exception as e:  # noqa: BLE001  a failed, dead or late child: its chunks are redone below
            failed = True
            STATS.redone += 1
            if len(STATS.reasons) < 8:
                STATS.reasons.append(f"{type(e).__name__}: {e}".splitlines()[0][:200])
    STATS.failed_in_a_row = STATS.failed_in_a_row + 1 if failed else 0
    if STATS.failed_in_a_row >= MAX_FAILED_IN_A_ROW and not STATS.given_up:
        STATS.given_up = True
        log.warning("featurizing workers failed in %d calls in a row (last: %s); featurizing in this process "
                    "only from now on", STATS.failed_in_a_row, STATS.reasons[-1] if STATS.reasons else "?")
    out: list[Any] = []
    for c in range(n_chunks):
        out.extend(done[c] if c in done else one(c))
    if costs is not None and work_items and not failed:  # overhead: the wall time beyond the work shared evenly
        costs.add(per_item=work_s / work_items / costs.slowdown,
                  overhead=max(0.0, time.perf_counter() - start - work_s / workers))
    return out


def _receive(r: int, pid: int, deadline: float) -> Any:
    """The child's pickled result from pipe ``r``; raises on failure or past ``deadline``.

    A child that sent its whole result is reaped later (``reap``): a process as large as a tuner
    (TVM, torch) takes ~20 ms to tear down, which the caller need not wait for. A child that failed
    (it sends nothing, or not all) or ran late is killed and reaped here.
    """
    chunks = []
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([r], [], [], left)[0]:
                raise TimeoutError(f"featurizing child {pid} not done in time")
            b = os.read(r, 1 << 20)
            if not b:
                break
            chunks.append(b)
        try:
            got = pickle.loads(b"".join(chunks))
        except Exception as e:  # noqa: BLE001  nothing or a part: the child failed before or while sending
            raise ChildProcessError(f"featurizing child {pid} failed ({type(e).__name__}: sent {sum(map(len, chunks))} "
                                    "bytes)") from None
    except BaseException:
        _kill(pid)
        raise
    finally:
        os.close(r)
    _EXITING.append(pid)
    return got


_EXITING: list[int] = []  # children that sent their result and may still be tearing down


def reap(*, wait: bool = False) -> None:
    """Collects the children of earlier calls that have exited (each call does, so none is left
    behind for long); ``wait``: waits for those still tearing down."""
    for pid in list(_EXITING):
        try:
            done, _ = os.waitpid(pid, 0 if wait else os.WNOHANG)
        except ChildProcessError:  # reaped elsewhere
            done = pid
        if done:
            _EXITING.remove(pid)


def _kill(pid: int) -> None:
    """Kills a child and waits for it."""
    try:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass


def _checked(res: Any, size: int) -> list[Any]:
    if not isinstance(res, list) or len(res) != size:
        raise ValueError(f"forked_map: the function returned {type(res).__name__} of "
                         f"{len(res) if hasattr(res, '__len__') else '?'} items for a slice of {size}")
    return res
