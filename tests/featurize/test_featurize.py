"""Stage graphs of hand-written TVMScript operators (exact feature values) and of sampled schedules."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from perfmodel.featurize import (
    EDGE_FEATURES, NODE_FEATURES, FeaturizeError, featurize, featurize_many, graph_to_data,
    stage_graph,
)
from perfmodel.featurize.schema import EDGE_INDEX, NODE_INDEX


def _programs():
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def matmul(A: T.Buffer((64, 32), "float32"), B: T.Buffer((32, 128), "float32"),
               C: T.Buffer((64, 128), "float32")):
        for i, j, k in T.grid(64, 128, 32):
            with T.sblock("C"):
                vi, vj, vk = T.axis.remap("SSR", [i, j, k])
                with T.init():
                    C[vi, vj] = T.float32(0)
                C[vi, vj] = C[vi, vj] + A[vi, vk] * B[vk, vj]

    @T.prim_func(s_tir=True)
    def conv(X: T.Buffer((1, 16, 16, 8), "float32"), W: T.Buffer((3, 3, 8, 4), "float32"),
             Y: T.Buffer((1, 16, 16, 4), "float32")):
        pad = T.sblock_alloc_buffer((1, 18, 18, 8))
        for n, h, w, c in T.grid(1, 18, 18, 8):
            with T.sblock("pad"):
                vn, vh, vw, vc = T.axis.remap("SSSS", [n, h, w, c])
                pad[vn, vh, vw, vc] = T.if_then_else(1 <= vh and vh < 17 and 1 <= vw and vw < 17,
                                                     X[vn, vh - 1, vw - 1, vc], T.float32(0))
        for n, h, w, co, rh, rw, ci in T.grid(1, 16, 16, 4, 3, 3, 8):
            with T.sblock("conv"):
                vn, vh, vw, vco, vrh, vrw, vci = T.axis.remap("SSSSRRR", [n, h, w, co, rh, rw, ci])
                with T.init():
                    Y[vn, vh, vw, vco] = T.float32(0)
                Y[vn, vh, vw, vco] = Y[vn, vh, vw, vco] + pad[vn, vh + vrh, vw + vrw, vci] * W[vrh, vrw, vci, vco]

    from conftest import dynamic_copy_func

    dynamic = dynamic_copy_func()

    return matmul, conv, dynamic


@pytest.fixture(scope="module")
def programs():
    return _programs()


def _sched(func):
    import tvm

    return tvm.s_tir.Schedule(func)


def raw(g, node, name) -> float:
    """A node feature with its log2(1+v) undone."""
    return 2.0 ** float(g.nodes[node]["x"][NODE_INDEX[name]]) - 1.0


def val(g, node, name) -> float:
    return float(g.nodes[node]["x"][NODE_INDEX[name]])


def test_schema_names_unique():
    assert len(set(NODE_FEATURES)) == len(NODE_FEATURES)
    assert len(set(EDGE_FEATURES)) == len(EDGE_FEATURES)


def test_matmul_features(programs):
    matmul, _, _ = programs
    g = stage_graph(_sched(matmul))
    assert list(g.nodes) == [0] and g.number_of_edges() == 0
    assert g.nodes[0]["name"] == "C"
    assert val(g, 0, "n_loops") == 3
    assert raw(g, 0, "prod_all") == pytest.approx(64 * 128 * 32)
    # slot 0 = innermost loop (k, 32), then j (128), then i (64); all serial
    assert [raw(g, 0, f"l{i}_extent") for i in range(3)] == pytest.approx([32, 128, 64])
    assert all(val(g, 0, f"l{i}_serial") == 1 for i in range(3))
    assert raw(g, 0, "space_size") == pytest.approx(64 * 128) and raw(g, 0, "reduce_size") == pytest.approx(32)
    assert val(g, 0, "n_space_axes") == 2 and val(g, 0, "n_reduce_axes") == 1
    assert val(g, 0, "is_update") == 1 and val(g, 0, "writes_output") == 1
    assert raw(g, 0, "op_float_mul") == pytest.approx(64 * 128 * 32)
    assert raw(g, 0, "op_float_addsub") == pytest.approx(64 * 128 * 32)
    assert raw(g, 0, "op_loads") == pytest.approx(3 * 64 * 128 * 32)
    # written buffer C: 64*128 float32, reused 32 times, stride 0 along k
    assert raw(g, 0, "w_bytes") == pytest.approx(64 * 128 * 4)
    assert raw(g, 0, "w_lines") == pytest.approx(64 * 128 * 4 / 64)
    assert raw(g, 0, "w_reuse") == pytest.approx(32)
    assert val(g, 0, "w_stride0") == 1 and val(g, 0, "w_param") == 1
    # reads by footprint: C (32 KiB), B (16 KiB, stride 128 along k), A (8 KiB, contiguous along k)
    assert val(g, 0, "n_reads") == 3
    assert raw(g, 0, "r1_bytes") == pytest.approx(32 * 128 * 4) and raw(g, 0, "r1_stride") == pytest.approx(128)
    assert raw(g, 0, "r2_bytes") == pytest.approx(64 * 32 * 4) and val(g, 0, "r2_contig") == 1
    assert raw(g, 0, "r2_reuse") == pytest.approx(128)
    # working sets (schema v2). One run of k (i, j fixed): C 1 elem (1 line), A 32 contiguous
    # (2 lines), B a column of 32 (32 lines) -> 65 elements, 35 lines.
    assert raw(g, 0, "l0_ws_bytes") == pytest.approx(65 * 4) and raw(g, 0, "l0_ws_lines") == pytest.approx(35)
    # one run of j (and k): a row of C (128, 8 lines), A's row (32, 2 lines), all of B (32x128, 256 lines)
    assert raw(g, 0, "l1_ws_bytes") == pytest.approx((128 + 32 + 32 * 128) * 4)
    assert raw(g, 0, "l1_ws_lines") == pytest.approx(8 + 2 + 256)
    # the outermost level touches everything; no loop slot 3 (only 3 loops)
    assert raw(g, 0, "l2_ws_bytes") == pytest.approx((64 * 128 + 64 * 32 + 32 * 128) * 4)
    assert val(g, 0, "l3_ws_bytes") == 0 and val(g, 0, "l3_ws_lines") == 0


def test_conv2d_with_padding_features(programs):
    _, conv, _ = programs
    g = stage_graph(_sched(conv))
    assert [g.nodes[n]["name"] for n in sorted(g.nodes)] == ["pad", "conv"]
    # pad: 18x18x8 iterations, writes the intermediate pad buffer, reads the input X (16x16x8)
    assert raw(g, 0, "prod_all") == pytest.approx(18 * 18 * 8)
    assert [raw(g, 0, f"l{i}_extent") for i in range(4)] == pytest.approx([8, 18, 18, 1])
    assert raw(g, 0, "w_bytes") == pytest.approx(18 * 18 * 8 * 4) and val(g, 0, "w_local") == 1
    assert raw(g, 0, "r0_bytes") == pytest.approx(16 * 16 * 8 * 4) and val(g, 0, "r0_param") == 1
    assert raw(g, 0, "op_cmp_select") == pytest.approx(8 * 18 * 18 * 8)  # 4 compares, 3 ands, 1 select
    assert val(g, 0, "n_consumers") == 1 and val(g, 0, "n_producers") == 0
    # conv: 16*16*4 outputs x 3*3*8 reduction
    assert raw(g, 1, "prod_all") == pytest.approx(16 * 16 * 4 * 72)
    assert raw(g, 1, "reduce_size") == pytest.approx(72)
    assert raw(g, 1, "r0_bytes") == pytest.approx(18 * 18 * 8 * 4)  # the padded input, all of it
    assert raw(g, 1, "r2_bytes") == pytest.approx(3 * 3 * 8 * 4 * 4)  # weights
    assert raw(g, 1, "r2_stride") == pytest.approx(4)  # W[rh, rw, ci, co] along ci
    assert val(g, 1, "n_producers") == 1
    # one edge, producer -> consumer, carrying the padded buffer
    assert list(g.edges) == [(0, 1)]
    e = g.edges[0, 1]
    assert e["buffer"] == "pad" and e["kind"] == "data"
    assert 2 ** float(e["x"][EDGE_INDEX["bytes"]]) - 1 == pytest.approx(18 * 18 * 8 * 4)
    assert e["x"][EDGE_INDEX["is_data"]] == 1 and e["x"][EDGE_INDEX["local"]] == 1


def test_a_schedule_changed_in_place_is_read_again(programs):
    """The inline count is kept for the last schedule (its key, then its features): a primitive applied
    to the same Schedule object afterwards (a new module) is counted anew."""
    from perfmodel.featurize import content_key, features

    _, conv, _ = programs
    sch = _sched(conv)
    key0 = content_key(sch)
    assert key0[1] == 0 and features(sch).x[0, NODE_INDEX["n_inlined_graph"]] == 0
    sch.compute_inline(sch.get_sblock("pad"))
    key1 = content_key(sch)
    assert key1[1] == 1 and key1 != key0
    f = features(sch)
    assert f.x.shape[0] == 1 and f.x[0, NODE_INDEX["n_inlined_graph"]] == 1


def test_graph_to_data_shapes_and_loop_granularity(programs):
    _, conv, _ = programs
    d = featurize(_sched(conv))
    assert d.x.dtype == torch.float32 and d.x.shape == (2, len(NODE_FEATURES))
    assert d.edge_index.dtype == torch.long and d.edge_index.tolist() == [[0], [1]]
    assert d.edge_attr.shape == (1, len(EDGE_FEATURES))
    g = stage_graph(_sched(conv), granularity="loop")
    loops = [n for n in g.nodes if g.nodes[n]["kind"] == "loop"]
    assert len(loops) == 4 + 7
    nest = [(u, v) for u, v, k in g.edges(data="kind") if k == "nest"]
    assert len(nest) == 3 + 1 + 6 + 1  # loop -> inner loop, innermost loop -> its stage, per nest
    assert all(g.nodes[u]["kind"] == "loop" for u, _ in nest)
    assert (0, 1) in g.edges  # the data edge stays
    dl = graph_to_data(g)
    assert dl.num_nodes == 13 and dl.edge_attr.shape[0] == g.number_of_edges()


def test_unsupported_construct_raises_one_clear_error(programs):
    _, _, dynamic = programs
    with pytest.raises(FeaturizeError) as e:
        stage_graph(_sched(dynamic))
    msg = str(e.value)
    assert "\n" not in msg and "symbolic" in msg


def test_featurize_many_none_on_error(programs):
    matmul, _, dynamic = programs
    out = featurize_many([_sched(matmul), _sched(dynamic)], errors="none")
    assert out[0] is not None and out[1] is None
    with pytest.raises(FeaturizeError):
        featurize_many([_sched(dynamic)])


def test_bad_granularity(programs):
    with pytest.raises(ValueError, match="granularity"):
        stage_graph(_sched(programs[0]), granularity="block")


def test_sampled_schedules_have_finite_features(target):
    """Random schedules of a real task (cache_write, parallel, vectorize, unroll) featurize sanely."""
    from perfmodel import workloads
    from perfmodel.collect.sampler import TaskSpace

    space = TaskSpace(mod=workloads.get_task("C2D-0").mod, target=target)
    schs = [s for _, s in zip(range(6), (s for _, s in space.random_stream(1)))]
    ds = featurize_many(schs)
    kinds = set()
    for s, d in zip(schs, ds):
        assert torch.isfinite(d.x).all() and torch.isfinite(d.edge_attr).all()
        assert d.x.shape[1] == len(NODE_FEATURES)
        assert int(d.edge_index.max()) < d.num_nodes if d.num_edges else True
        g = stage_graph(s)
        # the scheduled conv always has >= 2 stages (padding + conv), all reachable from a data edge
        assert g.number_of_nodes() >= 2 and g.number_of_edges() >= 1
        for k in ("prod_parallel", "prod_vectorized"):
            if any(val(g, n, k) > 1 for n in g.nodes):
                kinds.add(k)
        assert math.isclose(sum(val(g, n, "n_inlined_graph") for n in g.nodes) / g.number_of_nodes(),
                            val(g, 0, "n_inlined_graph"))
    assert kinds  # some schedule uses parallel or vectorized loops
    # the same schedule gives the same features
    again = featurize(schs[0])
    assert np.array_equal(again.x.numpy(), ds[0].x.numpy())


@pytest.mark.parametrize("dtype,lanes", [("float32", 8), ("float32", 10), ("float32", 4), ("float16", 16),
                                         ("float32", 1)])
def test_vector_width_features(dtype: str, lanes: int) -> None:
    """vec_*: bytes per vector op of the innermost vectorized loop and how it fills 16/32/64-byte registers."""
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def add(A: T.Buffer((4, 160), dtype), B: T.Buffer((4, 160), dtype), C: T.Buffer((4, 160), dtype)):
        for i, j in T.grid(4, 160):
            with T.sblock("C"):
                vi, vj = T.axis.remap("SS", [i, j])
                C[vi, vj] = A[vi, vj] + B[vi, vj]

    sch = _sched(add)
    _, j = sch.get_loops(sch.get_sblock("C"))
    _, ji = sch.split(j, [None, lanes])
    if lanes > 1:
        sch.vectorize(ji)
    g = stage_graph(sch)
    vb = lanes * (2 if dtype == "float16" else 4)
    if lanes == 1:  # no vectorized loop: all zero
        assert all(val(g, 0, n) == 0 for n in ("vec_bytes", "vec_pow2", "vec_waste16", "vec_waste32", "vec_waste64"))
        return
    assert raw(g, 0, "vec_bytes") == pytest.approx(vb)
    assert val(g, 0, "vec_pow2") == float(lanes in (4, 8, 16))
    for r in (16, 32, 64):
        assert val(g, 0, f"vec_waste{r}") == pytest.approx(1 - vb / (math.ceil(vb / r) * r)), r
    if (dtype, lanes) == ("float32", 10):  # 40 bytes: 2.5 xmm, 1.25 ymm -> 2 ymm, 5/8 of a zmm
        assert [val(g, 0, f"vec_waste{r}") for r in (16, 32, 64)] == pytest.approx([1 / 6, 3 / 8, 3 / 8])
