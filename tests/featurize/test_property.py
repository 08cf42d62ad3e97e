"""Property test: every random schedule of every registry design space featurizes without an exception."""

from __future__ import annotations

import random
import time

import pytest
import torch

from perfmodel.featurize import NODE_FEATURES, featurize

TE_PER_TASK = 70      # x 52 TE-suite tasks = 3640 schedules
NET_TASKS = 34        # network tasks sampled from the registry
NET_PER_TASK = 40     # x 34 = 1360 schedules


@pytest.mark.slow
def test_5000_random_schedules_featurize(target):
    from perfmodel import workloads
    from perfmodel.collect.sampler import TaskSpace

    reg = workloads.registry()
    te = [n for n, t in reg.items() if t.source == "te"]
    net = sorted(n for n, t in reg.items() if t.source != "te")
    plan = [(n, TE_PER_TASK) for n in te] + [(n, NET_PER_TASK) for n in random.Random(0).sample(net, NET_TASKS)]
    assert len(te) == 52
    total = 0
    failures: list[str] = []
    t0 = time.perf_counter()
    for name, k in plan:
        space = TaskSpace(mod=workloads.get_task(name).mod, target=target)
        got = 0
        for seed, sch in space.random_stream(1):
            try:
                d = featurize(sch)
                assert d.x.shape[1] == len(NODE_FEATURES) and d.num_nodes >= 1
                assert torch.isfinite(d.x).all() and torch.isfinite(d.edge_attr).all()
            except Exception as e:  # noqa: BLE001  collect every failure, report them together
                failures.append(f"{name} seed {seed}: {type(e).__name__}: {e}")
            got += 1
            if got >= k:
                break
        total += got
    elapsed = time.perf_counter() - t0
    print(f"{total} schedules of {len(plan)} tasks in {elapsed:.0f} s, {len(failures)} failures")
    assert not failures, failures[:5]
    assert total >= 5000
