"""Featurizing on several cores: ``forked_map`` (forked children take chunks of one queue) and
``features_many(workers=...)`` give what one process gives; a child that fails, dies or hangs costs time,
never a result, and leaves no process behind."""

from __future__ import annotations

import os
import time

import numpy as np
import psutil
import pytest

from perfmodel.featurize.forked import STATS, ForkCosts, forked_map, reap

PARENT = os.getpid()


def _square_with_pid(part):
    time.sleep(0.005)  # work that takes time, so that every process gets chunks
    return [(x * x, os.getpid()) for x in part]


@pytest.fixture(autouse=True)
def _children_before():
    """The test process's children before each test (other tests' pools may hold some); each test
    starts with forking not given up."""
    global _BEFORE
    _BEFORE = {p.pid for p in psutil.Process().children(recursive=True)}
    STATS.failed_in_a_row, STATS.given_up = 0, False
    yield
    STATS.failed_in_a_row, STATS.given_up = 0, False


_BEFORE: set[int] = set()


def _no_children_left() -> bool:
    reap(wait=True)  # children that sent their results are reaped later (the next call), not waited for
    return not ({p.pid for p in psutil.Process().children(recursive=True)} - _BEFORE)


def test_forked_map_equals_the_plain_map_in_order_and_shares_the_work() -> None:
    items = list(range(300))
    before = STATS.child_items
    out = forked_map(_square_with_pid, items, workers=2, min_per_worker=8, chunk=7)
    assert [v for v, _ in out] == [x * x for x in items]
    pids = {p for _, p in out}
    assert PARENT in pids and len(pids) == 2  # the parent and one child each did chunks
    child_items = sum(p != PARENT for _, p in out)
    assert STATS.child_items - before == child_items > 0
    from perfmodel.featurize import forked

    assert len(forked._EXITING) == 1  # the child sent its results: not waited for while it tears down
    assert _no_children_left() and not forked._EXITING


@pytest.mark.parametrize("workers,n", [(1, 300), (2, 40)])
def test_forked_map_stays_in_process_for_one_worker_or_few_items(workers: int, n: int) -> None:
    out = forked_map(_square_with_pid, list(range(n)), workers=workers, min_per_worker=32)
    assert {p for _, p in out} == {PARENT}


def _cheap_with_pid(part):
    return [(x * x, os.getpid()) for x in part]


def _slow_with_pid(part):
    time.sleep(0.01 * len(part))  # 10 ms an item: a fork (~10-40 ms, more in a busy test process) pays on 64
    return [(x * x, os.getpid()) for x in part]


def test_forked_map_with_costs_forks_only_while_it_pays() -> None:
    """With ``costs``: the first call forks (nothing known yet) and measures; work too small to pay for a
    fork then stays in this process (same results, counted in ``STATS.unforked``), work that pays keeps forking."""
    items = list(range(64))
    cheap, slow = ForkCosts(), ForkCosts()
    forked_map(_cheap_with_pid, items, workers=2, min_per_worker=8, chunk=4, costs=cheap)
    assert cheap.per_item is not None and cheap.overhead is not None and cheap.overhead > 0
    unforked = STATS.unforked
    for _ in range(3):
        out = forked_map(_cheap_with_pid, items, workers=2, min_per_worker=8, chunk=4, costs=cheap)
        assert [v for v, _ in out] == [x * x for x in items] and {p for _, p in out} == {PARENT}
    assert STATS.unforked == unforked + 3 and not cheap.pays(len(items), 2)
    for _ in range(3):
        out = forked_map(_slow_with_pid, items, workers=2, min_per_worker=8, chunk=4, costs=slow)
        assert [v for v, _ in out] == [x * x for x in items] and len({p for _, p in out}) == 2
    assert STATS.unforked == unforked + 3 and slow.pays(len(items), 2)
    assert _no_children_left()


def _fails_in_child(part):
    if os.getpid() != PARENT:
        raise RuntimeError("a featurizer bug in the child")
    return _square_with_pid(part)


def _dies_in_child(part):
    if os.getpid() != PARENT:
        os._exit(3)
    return _square_with_pid(part)


def _hangs_in_child(part):
    if os.getpid() != PARENT:
        time.sleep(60)
    return _square_with_pid(part)


@pytest.mark.parametrize("fn", [_fails_in_child, _dies_in_child, _hangs_in_child])
def test_a_failed_dead_or_hung_child_costs_time_not_results(fn) -> None:
    items = list(range(200))
    redone = STATS.redone
    t0 = time.monotonic()
    out = forked_map(fn, items, workers=2, min_per_worker=8, chunk=5, timeout_s=1.0)
    assert time.monotonic() - t0 < 30  # the hung child was killed after its deadline, not waited for
    assert [v for v, _ in out] == [x * x for x in items]
    assert {p for _, p in out} == {PARENT}  # every chunk the child took was redone here
    assert STATS.redone == redone + 1 and STATS.reasons
    assert _no_children_left()


def test_a_process_whose_children_keep_failing_stops_forking(caplog) -> None:
    from perfmodel.featurize.forked import MAX_FAILED_IN_A_ROW

    items = list(range(100))
    for i in range(MAX_FAILED_IN_A_ROW):
        assert not STATS.given_up
        out = forked_map(_fails_in_child, items, workers=2, min_per_worker=8, chunk=5)
        assert [v for v, _ in out] == [x * x for x in items]
    assert STATS.given_up and "in this process only" in caplog.text
    calls = STATS.forked_calls
    out = forked_map(_square_with_pid, items, workers=2, min_per_worker=8, chunk=5)
    assert STATS.forked_calls == calls and {p for _, p in out} == {PARENT}  # no fork any more
    assert _no_children_left()


def _fails_in_parent(part):
    if os.getpid() == PARENT:
        raise KeyError("the parent's own chunk")
    time.sleep(60)
    return part


def test_the_parents_own_failure_raises_and_kills_its_children() -> None:
    with pytest.raises(KeyError):
        forked_map(_fails_in_parent, list(range(100)), workers=2, min_per_worker=8)
    assert _no_children_left()


def test_features_many_on_two_workers_equals_one_process(target) -> None:
    from conftest import matmul_mod

    from perfmodel import workloads
    from perfmodel.collect.sampler import TaskSpace
    from perfmodel.featurize import features_many, features_to_batch

    schs = []
    for mod in (matmul_mod(), workloads.get_task("SFM-2").mod):  # one and several stages
        space = TaskSpace(mod=mod, target=target)
        schs += [s for _, (_, s) in zip(range(40), space.random_stream(1))]
    for gran in ("stage", "loop"):
        one = features_many(schs, granularity=gran)
        before = STATS.child_items
        two = features_many(schs, granularity=gran, workers=2)
        assert STATS.child_items > before  # a child featurized some of them
        for a, b in zip(one, two, strict=True):
            assert np.array_equal(a.x, b.x) and np.array_equal(a.edge_x, b.edge_x)
            assert a.edges == b.edges and a.io_bytes == b.io_bytes
            assert b.program is None
        fl = [1e6] * len(schs)
        ba, bb = features_to_batch(one, fl), features_to_batch(two, fl)
        for key in ("x", "edge_index", "edge_attr", "io_bytes", "batch", "ptr"):
            assert bool((ba[key] == bb[key]).all()), key
    with pytest.raises(ValueError, match="forked worker"):
        two[0].node_kinds_names()
    assert _no_children_left()


def test_features_keyed_skips_known_and_repeated_contents_on_one_or_two_workers(target) -> None:
    from conftest import matmul_mod

    from perfmodel.collect.sampler import TaskSpace
    from perfmodel.featurize import content_key, features, features_keyed

    space = TaskSpace(mod=matmul_mod(), target=target)
    schs = [s for _, (_, s) in zip(range(80), space.random_stream(1))]
    schs += [s.copy() for s in schs[:10]]  # the same modules again, as new objects
    keys = [content_key(s) for s in schs]
    known = set(keys[:5])
    one = features_keyed(schs, key=content_key, known=known.__contains__)
    assert [k for k, _, _ in one] == keys
    first = {}
    for i, k in enumerate(keys):
        first.setdefault(k, i)
    # a hit: known, or the content came earlier; nothing featurized for it
    assert [hit for _, hit, _ in one] == [k in known or first[k] < i for i, k in enumerate(keys)]
    assert all((f is None) == hit for _, hit, f in one)
    before = STATS.child_items
    two = features_keyed(schs, key=content_key, known=known.__contains__, workers=2)
    assert STATS.child_items > before and [k for k, _, _ in two] == keys
    assert all(hit for (k, hit, _) in two if k in known)
    for s, (k, hit, f) in zip(schs, two):  # each process featurizes a content once; the same features
        if not hit:
            want = features(s)
            assert np.array_equal(f.x, want.x) and f.edges == want.edges and f.program is None
    assert sum(not hit for _, hit, _ in two) <= 2 * len(set(keys) - known)
    assert _no_children_left()
