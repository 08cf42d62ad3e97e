"""Schedule -> networkx stage graph -> PyG ``Data``: the one featurizer of training, evaluation and tuning."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import networkx as nx
import numpy as np

from perfmodel.featurize.schema import (
    ARITH, EDGE_FEATURES, EDGE_INDEX, KINDS, LOOP_SLOTS, NODE_FEATURES, NODE_INDEX, SLOT_FIELDS, SLOTS,
)
from perfmodel.featurize.tir import FeaturizeError, Program, bind_env, footprint, walk
from perfmodel.featurize.tir import stride as stride_of

_NF = len(NODE_FEATURES)
_NE = len(EDGE_FEATURES)
_I = NODE_INDEX
_SLOT_BASE = {s: _I[f"{s}_present"] for s in SLOTS}
_FIELD = {f: i for i, f in enumerate(SLOT_FIELDS)}
_OPS_BASE = _I[f"op_{ARITH[0]}"]
_L0 = _I["l0_extent"]
_LOOP_W = 1 + len(KINDS)
_WS0 = _I["l0_ws_bytes"]
_inline_kinds: set[int] = set()


def _lg(v: float) -> float:
    return math.log2(1.0 + v) if v > 0 else 0.0


def _n_inlined(sch: Any) -> int:
    """ComputeInline + ReverseComputeInline instructions in the schedule's trace."""
    if not _inline_kinds:
        from tvm.s_tir.schedule import InstructionKind

        _inline_kinds.update(InstructionKind.get(k).__chandle__() for k in ("ComputeInline", "ReverseComputeInline"))
    trace = sch.trace
    if trace is None:
        return 0
    kinds = _inline_kinds
    return sum(1 for inst in trace.insts[:] if inst.kind.__chandle__() in kinds)


def _func_of(obj: Any) -> Any:
    """The PrimFunc of a Schedule, an IRModule (its ``main`` or only function) or a PrimFunc."""
    import tvm

    mod = obj.mod if isinstance(obj, tvm.s_tir.Schedule) else obj
    if isinstance(mod, tvm.IRModule):
        funcs = {gv.name_hint: f for gv, f in mod.functions.items()}
        if "main" in funcs:
            return funcs["main"]
        if len(funcs) != 1:
            raise FeaturizeError(f"module has {len(funcs)} functions and none is called 'main'")
        return next(iter(funcs.values()))
    if isinstance(mod, tvm.tirx.PrimFunc):
        return mod
    raise TypeError(f"cannot featurize a {type(obj).__name__}: give a Schedule, an IRModule or a PrimFunc")


def stage_graph(sch: Any, *, granularity: str = "stage") -> nx.DiGraph:
    """The stage graph of a schedule.

    Args:
        sch: a ``tvm.s_tir.Schedule``, a MetaSchedule ``TuningRecord`` (its trace is replayed) or
            ``MeasureCandidate``, or an IRModule / PrimFunc (then ``n_inlined_graph`` is 0).
        granularity: ``"stage"`` (one node per stage) or ``"loop"`` (loop nodes too, nesting edges).

    Returns:
        A ``networkx.DiGraph``; every node has ``kind`` (``"stage"``/``"loop"``), ``name`` and ``x``
        (``np.float32`` vector in ``NODE_FEATURES`` order); every edge ``kind`` (``"data"``/``"nest"``),
        ``x`` (``EDGE_FEATURES`` order) and, for data edges, ``buffer``. Node ids: stages ``0..S-1`` in
        program order, then loops ``S..`` (loop granularity).

    Raises:
        FeaturizeError: on a construct the featurizer does not handle.
    """
    if granularity not in ("stage", "loop"):
        raise ValueError(f"granularity must be 'stage' or 'loop', got {granularity!r}")
    if hasattr(sch, "as_measure_candidate"):  # a TuningRecord: replay its trace
        sch = sch.as_measure_candidate().sch
    elif hasattr(sch, "sch") and hasattr(sch, "args_info"):  # a MeasureCandidate
        sch = sch.sch
    func = _func_of(sch)
    prog = walk(func)
    import tvm

    n_inlined = _n_inlined(sch) if isinstance(sch, tvm.s_tir.Schedule) else 0
    return _build(prog, granularity=granularity, n_inlined=n_inlined)


def _build(prog: Program, *, granularity: str, n_inlined: int) -> nx.DiGraph:
    g = nx.DiGraph()
    loops = prog.loops
    stages = prog.stages
    bufs = prog.buffers
    if not stages:
        raise FeaturizeError("schedule has no computation stage (no block with a BufferStore)")
    # writers / readers per buffer, in program order
    writers: dict[Any, list[int]] = {}
    readers: dict[Any, list[int]] = {}
    for st in stages:
        writers.setdefault(st.store.buf, []).append(st.id)
        for acc in st.loads:
            lst = readers.setdefault(acc.buf, [])
            if not lst or lst[-1] != st.id:
                lst.append(st.id)
    edges: list[tuple[int, int, Any]] = []
    for buf, rs in readers.items():
        ws = writers.get(buf)
        if not ws:
            continue
        for r in rs:
            before = [w for w in ws if w < r]
            srcs = [before[-1]] if before else [w for w in ws if w != r]
            edges.extend((w, r, buf) for w in srcs if w != r)
    n_prod = [0] * len(stages)
    n_cons = [0] * len(stages)
    for w, r, _ in edges:
        n_prod[r] += 1
        n_cons[w] += 1

    read_bytes: dict[tuple[int, Any], float] = {}
    for st in stages:
        x = np.zeros(_NF, dtype=np.float32)
        _stage_features(st, x, loops, bufs, read_bytes)
        x[_I["n_producers"]] = n_prod[st.id]
        x[_I["n_consumers"]] = n_cons[st.id]
        x[_I["n_inlined_graph"]] = n_inlined
        g.add_node(st.id, kind="stage", name=st.name, x=x)

    for w, r, buf in edges:
        if g.has_edge(w, r):
            continue
        info = bufs[buf]
        e = np.zeros(_NE, dtype=np.float32)
        e[EDGE_INDEX["is_data"]] = 1
        e[EDGE_INDEX["bytes"]] = _lg(read_bytes.get((r, buf), 0.0))
        e[EDGE_INDEX["buffer_bytes"]] = _lg(math.prod(info.shape) * info.nbytes)
        e[EDGE_INDEX["shared_depth"]] = _shared(stages[w].loops, stages[r].loops)
        e[EDGE_INDEX["local"]] = float(info.local)
        g.add_edge(w, r, kind="data", buffer=info.name, x=e)

    if granularity == "loop":
        base = len(stages)
        for lp in loops:
            x = np.zeros(_NF, dtype=np.float32)
            x[_I["is_loop"]] = 1
            x[_I["loop_extent"]] = _lg(lp.extent)
            x[_I[f"loop_{KINDS[lp.kind]}"]] = 1
            x[_I["loop_depth"]] = lp.depth
            x[_I["loop_unroll_step"]] = _lg(lp.unroll_step)
            x[_I["loop_stages"]] = _lg(lp.stages)
            g.add_node(base + lp.id, kind="loop", name=lp.name, x=x)
        for parent, kids in prog.loop_children.items():
            if parent is None:
                continue
            for kind, cid in kids:
                e = np.zeros(_NE, dtype=np.float32)
                e[EDGE_INDEX["is_nest"]] = 1
                e[EDGE_INDEX["shared_depth"]] = loops[parent].depth + 1
                g.add_edge(base + parent, cid if kind == "stage" else base + cid, kind="nest", x=e)
    return g


def _shared(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _stage_features(st: Any, x: np.ndarray, loops: list, bufs: dict, read_bytes: dict) -> None:
    nest = [loops[i] for i in st.loops]
    x[_I["is_stage"]] = 1
    x[_I["n_loops"]] = len(nest)
    prods = [1, 1, 1, 1]
    total = 1
    step = explicit = 0
    for lp in nest:
        prods[lp.kind] *= lp.extent
        total *= lp.extent
        step = max(step, lp.unroll_step)
        explicit = max(explicit, lp.unroll_explicit)
    x[_I["prod_all"]] = _lg(total)
    for k, p in zip(KINDS, prods):
        x[_I[f"prod_{k}"]] = _lg(p)
    x[_I["auto_unroll_max_step"]] = _lg(step)
    x[_I["unroll_explicit"]] = explicit
    depth = 0
    for lp in nest:
        if lp.stages > 1:
            depth += 1
        else:
            break
    private = nest[depth:]
    x[_I["compute_at_depth"]] = depth
    x[_I["private_loops"]] = len(private)
    x[_I["prod_private"]] = _lg(math.prod(lp.extent for lp in private))
    for slot, lp in enumerate(reversed(nest[-LOOP_SLOTS:])):
        b = _L0 + slot * _LOOP_W
        x[b] = _lg(lp.extent)
        x[b + 1 + lp.kind] = 1
    x[_I["space_size"]] = _lg(st.space)
    x[_I["reduce_size"]] = _lg(st.reduce)
    x[_I["n_space_axes"]] = st.n_space
    x[_I["n_reduce_axes"]] = st.n_reduce
    x[_I["is_init"]] = float(st.is_init)
    x[_I["has_predicate"]] = float(st.predicate)
    for i, v in enumerate(st.ops):
        x[_OPS_BASE + i] = _lg(v * total)

    # ---- memory ----
    full = {}
    inner = {}
    step_env: dict[int, tuple[int, int]] = {}
    inner_loop = None
    for lp in reversed(nest):
        if lp.extent > 1:
            inner_loop = lp
            break
    for lp in nest:
        k = lp.var_key
        full[k] = (lp.min, lp.min + lp.extent - 1)
        step_env[k] = (lp.min, lp.min)
    for lp in nest[:depth]:
        inner[lp.var_key] = (lp.min, lp.min)
    for lp in private:
        inner[lp.var_key] = (lp.min, lp.min + lp.extent - 1)
    env_full = bind_env(st.frames, full)
    env_inner = bind_env(st.frames, inner) if depth else env_full
    if inner_loop is not None:
        step_env[inner_loop.var_key] = (inner_loop.min, inner_loop.min + 1)
    env_step = bind_env(st.frames, step_env)

    def describe(acc: Any, n_acc: int) -> tuple[float, list[float]]:
        info = bufs[acc.buf]
        elems, lines = footprint(acc, info, env_full)
        ielems, _ = footprint(acc, info, env_inner)
        stride = stride_of(acc, info, env_step)
        vals = [0.0] * len(SLOT_FIELDS)
        vals[_FIELD["present"]] = 1
        vals[_FIELD["bytes"]] = _lg(elems * info.nbytes)
        vals[_FIELD["lines"]] = _lg(lines)
        vals[_FIELD["reuse"]] = _lg(total * n_acc / elems)
        vals[_FIELD["inner_bytes"]] = _lg(ielems * info.nbytes)
        vals[_FIELD["stride"]] = _lg(stride) if stride is not None else _lg(math.prod(info.shape))
        vals[_FIELD["stride0"]] = float(stride == 0)
        vals[_FIELD["contig"]] = float(stride == 1)
        vals[_FIELD["local"]] = float(info.local)
        vals[_FIELD["param"]] = float(info.param)
        return elems * info.nbytes, vals

    _, wv = describe(st.store, 1)
    x[_SLOT_BASE["w"]:_SLOT_BASE["w"] + len(SLOT_FIELDS)] = wv
    per_buf: dict[Any, tuple[float, list[float]]] = {}
    counts: dict[Any, int] = {}
    for acc in st.loads:
        counts[acc.buf] = counts.get(acc.buf, 0) + 1
    for acc in st.loads:
        nb, vals = describe(acc, counts[acc.buf])
        old = per_buf.get(acc.buf)
        if old is None or nb > old[0]:
            per_buf[acc.buf] = (nb, vals)
    for buf, (nb, _) in per_buf.items():
        read_bytes[(st.id, buf)] = nb
    ranked = sorted(per_buf.values(), key=lambda t: -t[0])
    for s, (_, vals) in zip(SLOTS[1:], ranked):
        x[_SLOT_BASE[s]:_SLOT_BASE[s] + len(SLOT_FIELDS)] = vals
    x[_I["n_reads"]] = len(per_buf)
    _working_sets(st, x, nest, bufs)
    x[_I["is_update"]] = float(st.store.buf in per_buf)
    x[_I["writes_output"]] = float(bufs[st.store.buf].param)


def _working_sets(st: Any, x: np.ndarray, nest: list, bufs: dict) -> None:
    """``l{i}_ws_bytes`` / ``l{i}_ws_lines``: footprint of one run of each innermost loop level."""
    accs = [st.store, *st.loads]
    n = len(nest)
    for slot in range(min(LOOP_SLOTS, n)):
        level = n - 1 - slot
        env = {}
        for j, lp in enumerate(nest):
            env[lp.var_key] = (lp.min, lp.min + lp.extent - 1) if j >= level else (lp.min, lp.min)
        env = bind_env(st.frames, env)
        per: dict[Any, tuple[int, int]] = {}
        for acc in accs:
            info = bufs[acc.buf]
            elems, lines = footprint(acc, info, env)
            nb = elems * info.nbytes
            old = per.get(acc.buf)
            if old is None or nb > old[0]:
                per[acc.buf] = (nb, lines)
        x[_WS0 + 2 * slot] = _lg(sum(v[0] for v in per.values()))
        x[_WS0 + 2 * slot + 1] = _lg(sum(v[1] for v in per.values()))


def graph_to_data(g: nx.DiGraph) -> Any:
    """A stage graph as a PyG ``Data``.

    Returns:
        ``Data(x=float32 [N, len(NODE_FEATURES)], edge_index=long [2, E], edge_attr=float32 [E, len(EDGE_FEATURES)])``
        with nodes in ascending node-id order.
    """
    import torch
    from torch_geometric.data import Data

    nodes = sorted(g.nodes)
    pos = {n: i for i, n in enumerate(nodes)}
    x = np.stack([g.nodes[n]["x"] for n in nodes]).astype(np.float32, copy=False)
    if g.number_of_edges():
        src, dst, ea = [], [], []
        for u, v, d in g.edges(data=True):
            src.append(pos[u])
            dst.append(pos[v])
            ea.append(d["x"])
        edge_index = torch.tensor([src, dst], dtype=torch.long)
        edge_attr = torch.from_numpy(np.stack(ea).astype(np.float32, copy=False))
    else:
        edge_index = torch.zeros((2, 0), dtype=torch.long)
        edge_attr = torch.zeros((0, _NE), dtype=torch.float32)
    return Data(x=torch.from_numpy(x), edge_index=edge_index, edge_attr=edge_attr)


def featurize(sch: Any, *, granularity: str = "stage") -> Any:
    """``graph_to_data(stage_graph(sch))``: a schedule as a PyG ``Data``."""
    return graph_to_data(stage_graph(sch, granularity=granularity))


def featurize_many(schs: Iterable[Any], *, granularity: str = "stage", errors: str = "raise") -> list[Any]:
    """Featurize many schedules.

    Args:
        schs: schedules (or IRModules / PrimFuncs).
        granularity: see :func:`stage_graph`.
        errors: ``"raise"`` (default) or ``"none"``: a schedule that fails gives ``None`` in its place.
    """
    out = []
    for s in schs:
        try:
            out.append(featurize(s, granularity=granularity))
        except FeaturizeError:
            if errors == "raise":
                raise
            out.append(None)
    return out


__all__: Sequence[str] = ["stage_graph", "graph_to_data", "featurize", "featurize_many", "FeaturizeError"]
