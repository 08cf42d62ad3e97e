"""One featurizer, three views: ``featurize`` (PyG ``Data``), ``stage_graph`` (networkx) and ``features_to_batch``
(a scoring batch) give the same features, and those are the features stored in ``data/golden_v3.npz``. Its
schema-v2 columns were written by the featurizer before it was restructured for speed (issue #11 item 5); the v3
file was written after checking that every v2 column of these schedules came out unchanged (only ``vec_*`` new).

Regenerate the golden file only for a new feature schema: ``python tests/featurize/test_views.py --write``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

GOLDEN = Path(__file__).with_name("data") / "golden_v3.npz"
TASKS = ("matmul64", "SFM-2", "CBR-1", "TBG-1")  # 1 to 4 stages: reductions, inlining, padding, transposes
PER_TASK = 3


def _spaces(target):
    from conftest import matmul_mod

    from perfmodel import workloads
    from perfmodel.collect.sampler import TaskSpace

    for name in TASKS:
        mod = matmul_mod() if name == "matmul64" else workloads.get_task(name).mod
        yield name, TaskSpace(mod=mod, target=target)


def _schedules(target, seeds: dict[str, list[int]] | None = None):
    """``(task, seed, schedule)``: the first ``PER_TASK`` valid random schedules (or the given seeds)."""
    for name, space in _spaces(target):
        if seeds is None:
            for _, (seed, sch) in zip(range(PER_TASK), space.random_stream(1)):
                yield name, seed, sch
        else:
            for seed in seeds[name]:
                yield name, seed, space.random(seed)


@pytest.fixture(scope="module")
def golden(target):
    data = np.load(GOLDEN)
    meta = json.loads(str(data["meta"]))
    schs = list(_schedules(target, meta["seeds"]))
    return data, meta, schs


def test_features_equal_the_stored_features(golden) -> None:
    from perfmodel.featurize import SCHEMA_VERSION, featurize

    data, meta, schs = golden
    assert meta["schema_version"] == SCHEMA_VERSION, "new schema: regenerate the golden file (see module docstring)"
    assert len(schs) == len(TASKS) * PER_TASK
    for name, seed, sch in schs:
        for gran in ("stage", "loop"):
            d = featurize(sch, granularity=gran)
            key = f"{name}/{seed}/{gran}"
            assert np.array_equal(d.x.numpy(), data[f"{key}/x"]), key
            assert np.array_equal(d.edge_index.numpy(), data[f"{key}/edge_index"]), key
            assert np.array_equal(d.edge_attr.numpy(), data[f"{key}/edge_attr"]), key


def test_data_graph_and_batch_views_agree(golden) -> None:
    from torch_geometric.data import Batch

    from perfmodel.featurize import features_many, features_to_batch, featurize, graph_to_data, stage_graph

    _, _, schs = golden
    for gran in ("stage", "loop"):
        datas = []
        for name, _, sch in schs:
            d = featurize(sch, granularity=gran)
            g = stage_graph(sch, granularity=gran)
            via_graph = graph_to_data(g)
            for k in ("x", "edge_index", "edge_attr", "io_bytes"):
                assert torch.equal(getattr(d, k), getattr(via_graph, k)), (name, gran, k)
            kinds = [k for _, k in g.nodes(data="kind")]
            assert kinds.count("stage") >= 1 and (gran == "stage") == ("loop" not in kinds)
            assert all(b for _, _, b in g.edges(data="buffer") if b is not None)
            d.flops = torch.tensor([1e6 * (len(datas) + 1)], dtype=torch.float32)
            datas.append(d)
        feats = features_many([s for _, _, s in schs], granularity=gran)
        batch = features_to_batch(feats, [1e6 * (i + 1) for i in range(len(feats))])
        ref = Batch.from_data_list(datas)
        assert batch.num_graphs == ref.num_graphs == len(schs)
        for k in ("x", "edge_index", "edge_attr", "flops", "io_bytes", "batch", "ptr"):
            a, b = getattr(batch, k), getattr(ref, k)
            assert a.dtype == b.dtype and torch.equal(a, b), (gran, k)


def test_io_bytes_are_the_bytes_of_the_function_arguments(golden) -> None:
    from perfmodel.featurize import featurize

    _, _, schs = golden
    per_task: dict[str, set[float]] = {}
    for name, _, sch in schs:
        per_task.setdefault(name, set()).add(float(featurize(sch).io_bytes))
    assert per_task["matmul64"] == {3 * 64 * 64 * 4.0}  # A, B, C: float32 64x64, whatever the schedule
    assert all(len(v) == 1 and min(v) > 0 for v in per_task.values()), per_task


@pytest.mark.parametrize("size", [8192, 3])
def test_a_stage_found_in_the_memo_gets_the_features_computed_afresh(golden, monkeypatch, size: int) -> None:
    from perfmodel.featurize import graph

    _, _, schs = golden
    many = [t for _, _, s in schs for t in (s, s.copy())]  # copies: new TVM objects, the same stages
    fresh = []
    for s in many:  # every stage computed afresh
        monkeypatch.setattr(graph, "_STAGE_MEMO", graph._StageMemo())
        fresh.append(graph.features(s, granularity="loop"))
    memo = graph._StageMemo(size=size)  # 3: the young generation rolls over into the old one many times
    monkeypatch.setattr(graph, "_STAGE_MEMO", memo)
    warm = [graph.features(s, granularity="loop") for s in many]
    n_stages = sum(len(f.program.stages) for f in fresh[::2])
    assert memo.misses + memo.hits == 2 * n_stages
    if size > n_stages:  # every stage of a copy is found (numbered alike, whatever TVM's object identities)
        assert memo.hits >= n_stages and memo.misses <= n_stages
    else:
        assert len(memo) <= size and len(memo.old) <= size and memo.hits > 0
    for a, b in zip(fresh, warm):
        assert np.array_equal(a.x, b.x) and np.array_equal(a.edge_x, b.edge_x) and a.edges == b.edges


def test_scoring_pauses_the_garbage_collector_and_restores_it(golden) -> None:
    import gc

    from perfmodel.featurize import features_many, paused_gc

    _, _, schs = golden
    assert gc.isenabled()
    features_many([s for _, _, s in schs[:2]])
    assert gc.isenabled()
    with pytest.raises(RuntimeError), paused_gc():
        assert not gc.isenabled()
        raise RuntimeError("a featurizer bug")
    assert gc.isenabled()  # back on after an error too
    gc.disable()
    try:
        with paused_gc():
            pass
        assert not gc.isenabled()  # a caller that turned it off keeps it off
    finally:
        gc.enable()


def _write(target) -> None:  # pragma: no cover - run by hand for a new schema
    from perfmodel.featurize import SCHEMA_VERSION, featurize

    arrays, seeds = {}, {}
    for name, seed, sch in _schedules(target):
        seeds.setdefault(name, []).append(seed)
        for gran in ("stage", "loop"):
            d = featurize(sch, granularity=gran)
            for k in ("x", "edge_index", "edge_attr"):
                arrays[f"{name}/{seed}/{gran}/{k}"] = getattr(d, k).numpy()
    GOLDEN.parent.mkdir(exist_ok=True)
    np.savez_compressed(GOLDEN, meta=json.dumps({"schema_version": SCHEMA_VERSION, "seeds": seeds}), **arrays)
    print(f"wrote {GOLDEN} ({len(arrays)} arrays)")


if __name__ == "__main__" and "--write" in sys.argv:  # pragma: no cover
    import tvm

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    _write(tvm.target.Target({"kind": "llvm", "num-cores": 1}))
