"""Schedule -> features -> networkx stage graph or PyG ``Data``: the one featurizer of training, evaluation, tuning."""

from __future__ import annotations

import contextlib
import gc
import marshal
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import networkx as nx
import numpy as np

from perfmodel.featurize.schema import (
    ARITH, EDGE_FEATURES, EDGE_INDEX, KINDS, LOOP_SLOTS, NODE_FEATURES, NODE_INDEX, SLOT_FIELDS, SLOTS, VEC_FIELDS,
    VEC_REGISTERS,
)
from perfmodel.featurize.tir import FeaturizeError, Program, bind_env, footprint, walk
from perfmodel.featurize.tir import stride as stride_of

_NF = len(NODE_FEATURES)
_NE = len(EDGE_FEATURES)
_I = NODE_INDEX
_SLOT_BASE = {s: _I[f"{s}_present"] for s in SLOTS}
_OPS_BASE = _I[f"op_{ARITH[0]}"]
_L0 = _I["l0_extent"]
_LOOP_W = 1 + len(KINDS)
_WS0 = _I["l0_ws_bytes"]
_VEC0 = _I[VEC_FIELDS[0]]
assert VEC_FIELDS[:2] == ("vec_bytes", "vec_pow2") and len(VEC_FIELDS) == 2 + len(VEC_REGISTERS)
_VECTORIZED = KINDS.index("vectorized")
_N_PRODUCERS, _N_CONSUMERS, _N_INLINED = _I["n_producers"], _I["n_consumers"], _I["n_inlined_graph"]
(_IS_STAGE, _N_LOOPS, _PROD_ALL, _AUTO_UNROLL, _UNROLL_EXPLICIT, _COMPUTE_AT, _PRIVATE_LOOPS, _PROD_PRIVATE,
 _SPACE_SIZE, _REDUCE_SIZE, _N_SPACE, _N_REDUCE, _IS_INIT, _HAS_PRED, _N_READS, _IS_UPDATE, _WRITES_OUTPUT) = (
    _I[k] for k in ("is_stage", "n_loops", "prod_all", "auto_unroll_max_step", "unroll_explicit", "compute_at_depth",
                    "private_loops", "prod_private", "space_size", "reduce_size", "n_space_axes", "n_reduce_axes",
                    "is_init", "has_predicate", "n_reads", "is_update", "writes_output"))
_PROD_KINDS = [_I[f"prod_{k}"] for k in KINDS]
_SLOT_W = len(SLOT_FIELDS)
_W_SLOT = _SLOT_BASE["w"]
_R_SLOTS = [_SLOT_BASE[s] for s in SLOTS[1:]]
assert SLOT_FIELDS == ("present", "bytes", "lines", "reuse", "inner_bytes", "stride", "stride0", "contig", "local",
                       "param")  # the order describe() fills them in
_kind_handles: dict[tuple[str, ...], set[int]] = {}  # instruction kind names -> their handles


def _lg(v: float) -> float:
    return math.log2(1.0 + v) if v > 0 else 0.0


def _trace_insts(sch: Any, kinds: tuple[str, ...]) -> tuple[Any, list[Any]]:
    """The trace of a schedule (``None`` without one, e.g. a module) and its instructions of the named kinds."""
    handles = _kind_handles.get(kinds)
    if handles is None:
        from tvm.s_tir.schedule import InstructionKind

        handles = _kind_handles[kinds] = {InstructionKind.get(k).__chandle__() for k in kinds}
    trace = getattr(sch, "trace", None)
    if trace is None:
        return None, []
    return trace, [inst for inst in trace.insts[:] if inst.kind.__chandle__() in handles]


def decision_signature(sch: Any) -> tuple[int, ...]:
    """The discrete structural decisions of a schedule's trace, in trace order: where each stage is
    computed (``SampleComputeLocation``) and each categorical choice (``SampleCategorical``: unroll
    steps, vector widths). Tile sizes are left out. Two schedules with the same signature differ in
    their tiles only; ``()`` for a schedule without a trace (or a module)."""
    trace, insts = _trace_insts(sch, ("SampleComputeLocation", "SampleCategorical"))
    if trace is None:
        return ()
    decisions = trace.decisions
    return tuple(-1000 if (d := decisions.get(inst)) is None else int(getattr(d, "value", d)) for inst in insts)


def _n_inlined(sch: Any) -> int:
    """ComputeInline + ReverseComputeInline instructions in the schedule's trace (the last schedule's
    count is kept, for its module as it is: ``content_key`` and then ``features`` of one schedule read its
    trace once)."""
    mod = getattr(sch, "mod", None)
    last = _LAST_INLINED
    if last[0] is sch and last[1] is not None and mod is not None and last[1].same_as(mod):
        return last[2]
    n = len(_trace_insts(sch, ("ComputeInline", "ReverseComputeInline"))[1])
    last[:] = [sch, mod, n]  # both objects kept: no other schedule or module can be them meanwhile
    return n


_LAST_INLINED: list[Any] = [None, None, 0]  # schedule, its module when counted, the count


def content_key(sch: Any) -> tuple[int, int]:
    """What ``features`` reads of a schedule, as a key: the structural hash of its module and the trace's
    inline count (an IRModule / PrimFunc: its hash and 0). Two schedules with equal keys have equal
    features: the search's mutations often rebuild a module it scored before, as a new object."""
    import tvm
    import tvm_ffi

    if isinstance(sch, tvm.s_tir.Schedule):
        return int(tvm_ffi.structural_hash(sch.mod)), _n_inlined(sch)
    return int(tvm_ffi.structural_hash(sch)), 0


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


@dataclass(slots=True, eq=False)
class Features:
    """The featurizer's one result for a schedule: its node and edge features.

    The networkx stage graph (``stage_graph``) and the PyG ``Data`` (``featurize``) are two views of it,
    so the features are defined once; scoring batches many of them straight into tensors
    (``features_to_batch``) without building either.

    Attributes:
        x: node features, float32 [N, len(NODE_FEATURES)]; row i is node i (stages ``0..S-1`` in
            program order, then loops ``S..`` with loop granularity).
        edges: ``(src, dst, kind, buffer)`` of each edge (``buffer`` ``None`` for nesting edges), in
            networkx's edge order (by source node, then insertion).
        edge_x: edge features, float32 [E, len(EDGE_FEATURES)].
        program: the walked program (node names are read from it only when a graph is built); ``None``
            for features computed by forked workers (``features_many(workers=...)``).
        io_bytes: bytes of the function's arguments (inputs and outputs): the traffic no schedule
            avoids, the memory side of a roofline bound (FLOPs being the compute side).
    """

    x: np.ndarray
    edges: list[tuple[int, int, str, str | None]]
    edge_x: np.ndarray
    program: Program | None
    io_bytes: float = 0.0

    def node_kinds_names(self) -> list[tuple[str, str]]:
        """``(kind, name)`` of every node, in node order."""
        if self.program is None:
            raise ValueError("these features were computed in a forked worker (features_many(workers>1)) and "
                             "carry no program: node names need features_many(..., workers=1)")
        out = [("stage", st.name) for st in self.program.stages]
        if self.x.shape[0] > len(out):
            out.extend(("loop", lp.name) for lp in self.program.loops)
        return out


def features(sch: Any, *, granularity: str = "stage") -> Features:
    """The node and edge features of a schedule (what ``stage_graph`` and ``featurize`` are views of).

    Args:
        sch: a ``tvm.s_tir.Schedule``, a MetaSchedule ``TuningRecord`` (its trace is replayed) or
            ``MeasureCandidate``, or an IRModule / PrimFunc (then ``n_inlined_graph`` is 0).
        granularity: ``"stage"`` (one node per stage) or ``"loop"`` (loop nodes too, nesting edges).

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
    return _features(prog, granularity=granularity, n_inlined=n_inlined)


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
    return _to_graph(features(sch, granularity=granularity))


def _features(prog: Program, *, granularity: str, n_inlined: int) -> Features:
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

    n_nodes = len(stages) + (len(loops) if granularity == "loop" else 0)
    xs = np.zeros((n_nodes, _NF), dtype=np.float32)
    read_bytes: dict[tuple[int, Any], float] = {}
    memo = _STAGE_MEMO
    for st in stages:
        x = xs[st.id]
        nest = [loops[i] for i in st.loops]
        key = _stage_key(st, nest, bufs)
        got = memo.find(key)
        if got is None:
            _stage_features(st, nest, x, bufs, read_bytes)
            memo.put(key, (x.copy(), tuple([(b, nb) for (i, b), nb in read_bytes.items() if i == st.id])))
            memo.misses += 1
        else:
            x[:] = got[0]
            for b, nb in got[1]:
                read_bytes[(st.id, b)] = nb
            memo.hits += 1
        x[_N_PRODUCERS] = n_prod[st.id]
        x[_N_CONSUMERS] = n_cons[st.id]
        x[_N_INLINED] = n_inlined

    out_edges: list[tuple[int, int, str, str | None]] = []
    out_x: list[np.ndarray] = []
    seen: set[tuple[int, int]] = set()
    for w, r, buf in edges:
        if (w, r) in seen:  # one edge per producer -> consumer pair, the first buffer's
            continue
        seen.add((w, r))
        info = bufs[buf]
        e = np.zeros(_NE, dtype=np.float32)
        e[EDGE_INDEX["is_data"]] = 1
        e[EDGE_INDEX["bytes"]] = _lg(read_bytes.get((r, buf), 0.0))
        e[EDGE_INDEX["buffer_bytes"]] = _lg(math.prod(info.shape) * info.nbytes)
        e[EDGE_INDEX["shared_depth"]] = _shared(stages[w].loops, stages[r].loops)
        e[EDGE_INDEX["local"]] = float(info.local)
        out_edges.append((w, r, "data", info.name))
        out_x.append(e)

    if granularity == "loop":
        base = len(stages)
        for lp in loops:
            x = xs[base + lp.id]
            x[_I["is_loop"]] = 1
            x[_I["loop_extent"]] = _lg(lp.extent)
            x[_I[f"loop_{KINDS[lp.kind]}"]] = 1
            x[_I["loop_depth"]] = lp.depth
            x[_I["loop_unroll_step"]] = _lg(lp.unroll_step)
            x[_I["loop_stages"]] = _lg(lp.stages)
        for parent, kids in prog.loop_children.items():
            if parent is None:
                continue
            for kind, cid in kids:
                e = np.zeros(_NE, dtype=np.float32)
                e[EDGE_INDEX["is_nest"]] = 1
                e[EDGE_INDEX["shared_depth"]] = loops[parent].depth + 1
                out_edges.append((base + parent, cid if kind == "stage" else base + cid, "nest", None))
                out_x.append(e)
    # networkx lists edges by source node (in node order), then in insertion order: so do we
    order = sorted(range(len(out_edges)), key=lambda i: out_edges[i][0])
    edge_x = np.stack([out_x[i] for i in order]) if order else np.zeros((0, _NE), dtype=np.float32)
    io_bytes = float(sum(math.prod(b.shape) * b.nbytes for b in bufs.values() if b.param))
    return Features(x=xs, edges=[out_edges[i] for i in order], edge_x=edge_x, program=prog, io_bytes=io_bytes)


def _to_graph(f: Features) -> nx.DiGraph:
    """The networkx view of ``Features`` (node ``kind``/``name``/``x``, edge ``kind``/``x``/``buffer``)."""
    g = nx.DiGraph(io_bytes=f.io_bytes)
    for i, (kind, name) in enumerate(f.node_kinds_names()):
        g.add_node(i, kind=kind, name=name, x=f.x[i].copy())
    for (u, v, kind, buf), e in zip(f.edges, f.edge_x):
        if kind == "data":
            g.add_edge(u, v, kind=kind, buffer=buf, x=e.copy())
        else:
            g.add_edge(u, v, kind=kind, x=e.copy())
    return g


def _to_data(f: Features) -> Any:
    """The PyG view of ``Features``: what ``graph_to_data(stage_graph(...))`` gives, without networkx."""
    import torch
    from torch_geometric.data import Data

    if f.edges:
        edge_index = torch.tensor([[e[0] for e in f.edges], [e[1] for e in f.edges]], dtype=torch.long)
    else:
        edge_index = torch.zeros((2, 0), dtype=torch.long)
    return Data(x=torch.from_numpy(f.x), edge_index=edge_index, edge_attr=torch.from_numpy(f.edge_x),
                io_bytes=torch.tensor([f.io_bytes], dtype=torch.float32))


def features_to_batch(feats: Sequence[Features], flops: Sequence[float]) -> Any:
    """Many schedules' ``Features`` as one PyG ``Batch``, built straight from the arrays.

    Equal to ``Batch.from_data_list`` of their ``featurize`` graphs with ``flops`` set (fields
    ``x``, ``edge_index``, ``edge_attr``, ``flops`` and ``io_bytes`` [B] float32, ``batch``, ``ptr``), at a fraction of
    its cost: what scoring a population uses.

    Args:
        feats: one ``Features`` per graph (at least one).
        flops: FLOPs of each graph.
    """
    import torch
    from torch_geometric.data import Batch

    sizes = [f.x.shape[0] for f in feats]
    offsets = np.cumsum([0, *sizes])
    src: list[int] = []
    dst: list[int] = []
    for f, off in zip(feats, offsets[:-1].tolist()):
        for e in f.edges:
            src.append(e[0] + off)
            dst.append(e[1] + off)
    x = torch.from_numpy(np.concatenate([f.x for f in feats]))
    edge_attr = torch.from_numpy(np.concatenate([f.edge_x for f in feats]))
    edge_index = torch.tensor([src, dst], dtype=torch.long) if src else torch.zeros((2, 0), dtype=torch.long)
    batch = torch.repeat_interleave(torch.arange(len(feats)), torch.tensor(sizes))
    out = Batch(x=x, edge_index=edge_index, edge_attr=edge_attr, flops=torch.tensor(flops, dtype=torch.float32),
                io_bytes=torch.tensor([f.io_bytes for f in feats], dtype=torch.float32),
                batch=batch, ptr=torch.from_numpy(offsets))
    out._num_graphs = len(feats)
    return out


def _shared(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _stage_key(st: Any, nest: list, bufs: dict) -> bytes:
    """Everything ``_stage_features`` reads of a stage, as a key of ``_StageMemo``: the nested tuples
    written out by ``marshal`` (format 2: no back-references, so equal tuples give equal bytes). Kept as
    tuples, the memo's keys were ~200k objects the garbage collector scanned in every full collection of
    a tuning process (their innermost tuples are untracked one nesting level per collection); bytes are
    not scanned, and cost ~6 us a stage to write."""
    key = (tuple([(lp.var_key, lp.extent, lp.min, lp.kind, lp.unroll_step, lp.unroll_explicit, lp.stages)
                  for lp in nest]), tuple(st.frames), st.store.buf, st.store.indices,
           tuple([(a.buf, a.indices) for a in st.loads]), tuple(st.ops), st.space, st.reduce, st.n_space,
           st.n_reduce, st.is_init, st.predicate,
           tuple([(b, tuple(bufs[b].shape), bufs[b].nbytes, bufs[b].local, bufs[b].param)
                  for b in {st.store.buf: 0, **{a.buf: 0 for a in st.loads}}]))
    return marshal.dumps(key, 2)


class _StageMemo(dict):
    """A stage's features by what they read of it: its nest, bindings, accesses, operation counts and
    the facts of its buffers (variables and buffers by their numbers in the walk, so the same stage of
    another schedule finds them). The candidates of a search share many stages (a mutation redraws one
    decision): a third of a tuning run's stages are found here. Two generations of ``size`` entries
    (~3 KB each): when the young one is full it becomes the old one; an entry found in the old one
    moves back to the young one. Forked featurizing workers read the memo as it was at the fork; what
    they add stays in them."""

    def __init__(self, size: int = 8192) -> None:
        super().__init__()
        self.size = size
        self.old: dict[Any, Any] = {}
        self.hits = self.misses = 0

    def find(self, key: Any) -> Any:
        """The entry of ``key`` (``None``: not kept)."""
        got = self.get(key)
        if got is None:
            got = self.old.get(key)
            if got is not None:
                self.put(key, got)
        return got

    def put(self, key: Any, value: Any) -> None:
        if len(self) >= self.size:
            self.old = dict(self)
            self.clear()
        self[key] = value


_STAGE_MEMO = _StageMemo()


def vector_fields(extent: int, elem_bytes: int) -> list[float]:
    """``VEC_FIELDS`` of a vectorized loop of ``extent`` lanes of ``elem_bytes`` bytes each."""
    vb = extent * elem_bytes
    waste = [1.0 - vb / (-(-vb // r) * r) for r in VEC_REGISTERS]
    return [_lg(vb), float(extent & (extent - 1) == 0), *waste]


def _stage_features(st: Any, nest: list, x: np.ndarray, bufs: dict, read_bytes: dict) -> None:
    x[_IS_STAGE] = 1
    x[_N_LOOPS] = len(nest)
    prods = [1, 1, 1, 1]
    total = 1
    step = explicit = 0
    for lp in nest:
        prods[lp.kind] *= lp.extent
        total *= lp.extent
        step = max(step, lp.unroll_step)
        explicit = max(explicit, lp.unroll_explicit)
    x[_PROD_ALL] = _lg(total)
    for i, p in zip(_PROD_KINDS, prods):
        x[i] = _lg(p)
    x[_AUTO_UNROLL] = _lg(step)
    x[_UNROLL_EXPLICIT] = explicit
    depth = 0
    for lp in nest:
        if lp.stages > 1:
            depth += 1
        else:
            break
    private = nest[depth:]
    x[_COMPUTE_AT] = depth
    x[_PRIVATE_LOOPS] = len(private)
    x[_PROD_PRIVATE] = _lg(math.prod(lp.extent for lp in private))
    for slot, lp in enumerate(reversed(nest[-LOOP_SLOTS:])):
        b = _L0 + slot * _LOOP_W
        x[b] = _lg(lp.extent)
        x[b + 1 + lp.kind] = 1
    for lp in reversed(nest):  # the innermost vectorized loop: how its vector fills the SIMD registers
        if lp.kind == _VECTORIZED and lp.extent > 1:
            x[_VEC0:_VEC0 + len(VEC_FIELDS)] = vector_fields(lp.extent, bufs[st.store.buf].nbytes)
            break
    x[_SPACE_SIZE] = _lg(st.space)
    x[_REDUCE_SIZE] = _lg(st.reduce)
    x[_N_SPACE] = st.n_space
    x[_N_REDUCE] = st.n_reduce
    x[_IS_INIT] = float(st.is_init)
    x[_HAS_PRED] = float(st.predicate)
    x[_OPS_BASE:_OPS_BASE + len(st.ops)] = [_lg(v * total) for v in st.ops]

    # ---- memory ----
    # Footprints are taken with the loops from ``level`` inward over their range and the outer ones
    # at their first value: level 0 = the whole nest, level ``depth`` = inside the compute-at loops,
    # levels n-1, n-2, ... = the innermost loops (working sets). Each level's environment and each
    # access's footprint in it is computed once; levels that differ only by loops of extent 1 (the
    # same environment) share them.
    accs = [st.store, *st.loads]
    infos = [bufs[acc.buf] for acc in accs]
    n = len(nest)
    frames = st.frames
    canon = list(range(n + 1))  # canon[level]: the first loop from ``level`` inward with extent > 1
    for j in range(n - 1, -1, -1):
        if nest[j].extent == 1:
            canon[j] = canon[j + 1]
    closed = [(lp.var_key, (lp.min, lp.min)) for lp in nest]
    opened = [(lp.var_key, (lp.min, lp.min + lp.extent - 1)) for lp in nest]
    fps: dict[int, list[tuple[int, int]]] = {}

    def at(level: int) -> list[tuple[int, int]]:
        """(elements, lines) of every access with the loops from ``level`` inward over their range."""
        level = canon[level]
        r = fps.get(level)
        if r is None:
            env = dict(closed[:level])
            env.update(opened[level:])
            env = bind_env(frames, env, copy=False)
            r = fps[level] = [footprint(acc, info, env) for acc, info in zip(accs, infos)]
        return r

    inner_loop = None
    for lp in reversed(nest):
        if lp.extent > 1:
            inner_loop = lp
            break
    step_env = dict(closed)
    if inner_loop is not None:
        step_env[inner_loop.var_key] = (inner_loop.min, inner_loop.min + 1)
    env_step = bind_env(frames, step_env, copy=False)

    def describe(a: int, n_acc: int) -> tuple[float, list[float]]:
        info = infos[a]
        elems, lines = at(0)[a]
        ielems = at(depth)[a][0]
        stride = stride_of(accs[a], info, env_step)
        nb = elems * info.nbytes
        return nb, [1, _lg(nb), _lg(lines), _lg(total * n_acc / elems), _lg(ielems * info.nbytes),
                    _lg(stride) if stride is not None else _lg(math.prod(info.shape)), float(stride == 0),
                    float(stride == 1), float(info.local), float(info.param)]

    _, wv = describe(0, 1)
    x[_W_SLOT:_W_SLOT + _SLOT_W] = wv
    per_buf: dict[Any, tuple[float, list[float]]] = {}
    counts: dict[Any, int] = {}
    for acc in st.loads:
        counts[acc.buf] = counts.get(acc.buf, 0) + 1
    for a in range(1, len(accs)):
        buf = accs[a].buf
        nb, vals = describe(a, counts[buf])
        old = per_buf.get(buf)
        if old is None or nb > old[0]:
            per_buf[buf] = (nb, vals)
    for buf, (nb, _) in per_buf.items():
        read_bytes[(st.id, buf)] = nb
    ranked = sorted(per_buf.values(), key=lambda t: -t[0])
    for base, (_, vals) in zip(_R_SLOTS, ranked):
        x[base:base + _SLOT_W] = vals
    x[_N_READS] = len(per_buf)

    # working sets: l{i}_ws_bytes / l{i}_ws_lines, footprint of one run of each innermost loop level
    # (all buffers, the largest access per buffer)
    for slot in range(min(LOOP_SLOTS, n)):
        per: dict[Any, tuple[int, int]] = {}
        for acc, info, (elems, lines) in zip(accs, infos, at(n - 1 - slot)):
            nb = elems * info.nbytes
            old = per.get(acc.buf)
            if old is None or nb > old[0]:
                per[acc.buf] = (nb, lines)
        x[_WS0 + 2 * slot] = _lg(sum(v[0] for v in per.values()))
        x[_WS0 + 2 * slot + 1] = _lg(sum(v[1] for v in per.values()))
    x[_IS_UPDATE] = float(st.store.buf in per_buf)
    x[_WRITES_OUTPUT] = float(bufs[st.store.buf].param)


def graph_to_data(g: nx.DiGraph) -> Any:
    """A stage graph as a PyG ``Data``.

    Returns:
        ``Data(x=float32 [N, len(NODE_FEATURES)], edge_index=long [2, E], edge_attr=float32 [E, len(EDGE_FEATURES)],
        io_bytes=float32 [1])`` with nodes in ascending node-id order.
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
    return Data(x=torch.from_numpy(x), edge_index=edge_index, edge_attr=edge_attr,
                io_bytes=torch.tensor([float(g.graph.get("io_bytes", 0.0))], dtype=torch.float32))


def featurize(sch: Any, *, granularity: str = "stage") -> Any:
    """A schedule as a PyG ``Data``: equal to ``graph_to_data(stage_graph(sch))``, without networkx."""
    return _to_data(features(sch, granularity=granularity))


def features_many(schs: Iterable[Any], *, granularity: str = "stage", errors: str = "raise",
                  workers: int = 1) -> list[Features | None]:
    """``features`` of many schedules; ``errors="none"``: a schedule that fails gives ``None`` in its place.

    The cyclic garbage collector is paused meanwhile (``paused_gc``). ``workers`` > 1: the schedules are
    featurized on that many cores by forked children (``perfmodel.featurize.forked.forked_map``; below
    32 schedules per worker, here): the same features, but without their ``program`` (``None``: the
    walked program holds TVM objects that do not cross processes), so such results serve scoring
    (``features_to_batch``, ``graph_to_data``), not ``stage_graph``'s node names.
    """
    schs = list(schs)
    if workers > 1:
        from perfmodel.featurize.forked import forked_map

        with paused_gc():
            return forked_map(lambda part: _light(_features_list(part, granularity, errors)), schs, workers=workers)
    with paused_gc():
        return _features_list(schs, granularity, errors)


def features_keyed(schs: Iterable[Any], *, key: Callable[[Any], Any], known: Callable[[Any], bool],
                   granularity: str = "stage", workers: int = 1,
                   costs: Any = None) -> list[tuple[Any, bool, Features | None]]:
    """``(key(s), hit, features)`` of each schedule, for a cache of features by content.

    ``hit``: ``known(key(s))``, or the same key came earlier in this process's share of the list; then
    nothing is featurized (``features`` is ``None``). Otherwise ``features`` are the schedule's
    (``None``: the featurizer does not handle it, or failed on it). ``workers`` > 1: the keys (a
    structural hash costs ~80 us) and the features are computed on that many cores by forked
    children (as ``features_many``; results without ``program``), which read ``known`` as it was
    when they were forked; ``costs``: a ``perfmodel.featurize.forked.ForkCosts`` of the stream of calls
    this one belongs to (then they fork only when that pays).
    """
    schs = list(schs)

    def share(part: Sequence[Any]) -> list[tuple[Any, bool, Features | None]]:
        out: list[tuple[Any, bool, Features | None]] = []
        seen: set[Any] = set()
        for s in part:
            k = key(s)
            if k in seen or known(k):
                out.append((k, True, None))
                continue
            seen.add(k)
            try:
                f: Features | None = features(s, granularity=granularity)
            except Exception:  # noqa: BLE001  a construct it does not handle, or a featurizer bug: not scored
                f = None
            out.append((k, False, f))
        return out

    with paused_gc():
        if workers > 1:
            from perfmodel.featurize.forked import forked_map

            def light(part: Sequence[Any]) -> list[tuple[Any, bool, Features | None]]:
                res = share(part)
                _light([f for _, _, f in res])
                return res

            return forked_map(light, schs, workers=workers, costs=costs)
        return share(schs)


def _features_list(schs: Sequence[Any], granularity: str, errors: str) -> list[Features | None]:
    out: list[Features | None] = []
    for s in schs:
        try:
            out.append(features(s, granularity=granularity))
        except FeaturizeError:
            if errors == "raise":
                raise
            out.append(None)
    return out


def _light(feats: list[Features | None]) -> list[Features | None]:
    for f in feats:
        if f is not None:
            f.program = None
    return feats


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    """Pauses Python's cyclic garbage collector (if it runs) for the block.

    Featurizing and scoring allocate many small containers (none in reference cycles), which would
    otherwise set off collections that scan the whole heap of a process holding TVM and torch
    (~400k objects): scoring a population is 1.3-1.5x faster without them. Cycles made meanwhile are
    collected after the block as usual.
    """
    running = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if running:
            gc.enable()


def featurize_many(schs: Iterable[Any], *, granularity: str = "stage", errors: str = "raise") -> list[Any]:
    """Featurize many schedules.

    Args:
        schs: schedules (or IRModules / PrimFuncs).
        granularity: see :func:`stage_graph`.
        errors: ``"raise"`` (default) or ``"none"``: a schedule that fails gives ``None`` in its place.
    """
    return [None if f is None else _to_data(f) for f in features_many(schs, granularity=granularity, errors=errors)]


__all__: Sequence[str] = ["Features", "content_key", "features", "features_keyed", "features_many", "features_to_batch",
                          "stage_graph", "graph_to_data", "featurize", "featurize_many", "paused_gc", "FeaturizeError"]
