"""The stage-graph feature schema: the name and meaning of every node and edge feature, with its version.

Bump ``SCHEMA_VERSION`` whenever a name, its order or its meaning changes: checkpoints and dataset
caches record it and refuse (or rebuild) on a mismatch.

Conventions. ``log2(1+v)`` is applied to every size, extent, count and byte figure (marked ``[log]``),
so features are O(1)-O(40) before normalization. Counts of operations are totals over the whole
loop nest around a stage (work per execution times executions). One-hot groups are 0/1.

Nodes. With ``granularity="stage"`` there is one node per computation stage (a leaf ``SBlock`` of the
scheduled PrimFunc: one ``BufferStore`` per iteration). Inlined stages do not exist in the scheduled
program: their work shows up in the arithmetic and the reads of the stage they were inlined into,
and ``n_inlined_graph`` counts them (from the trace). With ``granularity="loop"`` every ``For`` loop is
a node too (``is_loop`` = 1, only the ``loop_*`` fields set), linked outer -> inner by nesting edges.

Memory slots. Each stage has 4 access slots: ``w`` (the buffer it writes) and ``r0``..``r2`` (the
buffers it reads, largest footprint first; more than 3 read buffers are folded into ``n_reads``).
Per slot: ``present``; ``bytes`` touched by the whole loop nest [log]; ``lines`` distinct 64-byte cache
lines [log]; ``reuse`` = accesses / distinct elements [log]; ``inner_bytes`` touched by one iteration
of the innermost loop shared with another stage (the compute-at level) [log]; ``stride`` of the
innermost non-unit loop in elements [log of abs]; ``stride0`` (stride 0: the access does not move
with the innermost loop), ``contig`` (stride 1); ``local`` (buffer scope is not ``global``, or the
buffer is allocated by the function: an intermediate), ``param`` (a function argument).

Working sets (schema v2). ``l{i}_ws_bytes`` / ``l{i}_ws_lines``: for the i-th innermost loop around a
stage, the distinct bytes and cache lines its accesses touch (all buffers, the largest access per
buffer) while that loop and the loops inside it run once over their range: the cache-tiling signal
TVM's per-store features carry as per-loop-level touched bytes.

Vector width (schema v3). The innermost vectorized loop (extent > 1) of a stage, if any: ``vec_bytes``, the
bytes one vector operation of its store covers (extent x element bytes) [log]; ``vec_pow2``, its extent is a
power of two; ``vec_waste16/32/64``, the share of lanes left empty in the 16/32/64-byte registers
(SSE / AVX2 / AVX-512) that hold it, ``1 - bytes / (ceil(bytes / R) * R)``. A vector of 10 floats fills
one 32-byte register and a quarter of a second: LLVM splits it (waste32 0.375) and the kernel runs at a
fraction of the 8-lane one's speed; the extent alone reads "wider = faster" (issue #11: on a ResNet-18
matmul the model ranked width-10/20/25 schedules, 0.5-0.6 ms, above width-8 ones, 0.11-0.17 ms).

TVM's ``PerStoreFeature`` rows are not reused: the same quantities (loop kinds, arithmetic by kind,
footprints, strides, reuse) are computed here directly from the scheduled TIR, which is ~5x faster.
"""

from __future__ import annotations

SCHEMA_VERSION = 3

LOOP_SLOTS = 6  # innermost loop levels described one by one (innermost first)
KINDS = ("serial", "parallel", "vectorized", "unrolled")  # thread-bound loops count as parallel
SLOTS = ("w", "r0", "r1", "r2")
SLOT_FIELDS = ("present", "bytes", "lines", "reuse", "inner_bytes", "stride", "stride0", "contig", "local", "param")
ARITH = ("float_addsub", "float_mul", "float_div", "float_special", "float_minmax",
         "int_ops", "cmp_select", "cast", "loads", "stores")

VEC_FIELDS = ("vec_bytes", "vec_pow2", "vec_waste16", "vec_waste32", "vec_waste64")
VEC_REGISTERS = (16, 32, 64)  # register bytes of vec_waste16/32/64

NODE_FEATURES: list[str] = [
    # node type
    "is_stage", "is_loop",
    # loop nest around the stage (aggregates)
    "n_loops",                 # number of enclosing loops
    "prod_all",                # [log] executions of the stage = product of all enclosing extents
    *[f"prod_{k}" for k in KINDS],  # [log] product of the extents of loops of that kind
    "auto_unroll_max_step",    # [log] largest pragma_auto_unroll_max_step of an enclosing loop
    "unroll_explicit",         # 1 if an enclosing loop has pragma_unroll_explicit = 1
    "compute_at_depth",        # loops shared with another stage (0 = root level)
    "private_loops",           # loops around this stage only
    "prod_private",            # [log] product of the private loops' extents
    # innermost LOOP_SLOTS loop levels (slot 0 = innermost): extent [log] + kind one-hot
    *[f"l{i}_{f}" for i in range(LOOP_SLOTS) for f in ("extent", *KINDS)],
    # iteration space (from the block's iter vars)
    "space_size",              # [log] product of spatial iter-var domains
    "reduce_size",             # [log] product of reduction iter-var domains
    "n_space_axes", "n_reduce_axes",
    "is_update",               # reads what it writes (reduction update)
    "is_init",                 # writes a constant (reduction init / fill)
    "has_predicate",           # the block realize has a non-trivial predicate
    # arithmetic totals over the nest [log]
    *[f"op_{a}" for a in ARITH],
    # memory access slots
    *[f"{s}_{f}" for s in SLOTS for f in SLOT_FIELDS],
    # working set of each of the innermost LOOP_SLOTS loop levels (slot 0 = innermost, as l{i}_extent):
    # distinct bytes / 64-byte lines all the stage's buffers touch in one full run of that loop [log]
    # (outer loops fixed): whether a tile fits L1/L2 is read off these
    *[f"l{i}_{f}" for i in range(LOOP_SLOTS) for f in ("ws_bytes", "ws_lines")],
    # the innermost vectorized loop (schema v3): bytes per vector op [log], power-of-two extent, and the
    # share of empty lanes in 16/32/64-byte registers (the width the target's SIMD unit splits it into)
    *VEC_FIELDS,
    "n_reads",                 # distinct buffers read
    # place in the graph
    "n_producers", "n_consumers",
    "writes_output",           # writes a function argument
    "n_inlined_graph",         # stages inlined away in this schedule (whole graph, from the trace)
    # loop-node fields (granularity="loop" only; 0 on stage nodes)
    "loop_extent",             # [log]
    *[f"loop_{k}" for k in KINDS],
    "loop_depth",
    "loop_unroll_step",        # [log] its own pragma_auto_unroll_max_step
    "loop_stages",             # [log] stages nested under it
]

EDGE_FEATURES: list[str] = [
    "is_data",                 # producer -> consumer through a buffer
    "is_nest",                 # loop -> child (loop granularity only)
    "bytes",                   # [log] bytes the consumer reads of the buffer over its whole nest
    "buffer_bytes",            # [log] size of the buffer
    "shared_depth",            # loops enclosing both ends
    "local",                   # the buffer is an intermediate (allocated in the function / not global)
]

NODE_INDEX = {n: i for i, n in enumerate(NODE_FEATURES)}
EDGE_INDEX = {n: i for i, n in enumerate(EDGE_FEATURES)}
assert len(NODE_INDEX) == len(NODE_FEATURES) and len(EDGE_INDEX) == len(EDGE_FEATURES)
