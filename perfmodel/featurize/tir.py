"""Walk a scheduled TIR PrimFunc once into plain Python: loops, stages, their accesses and operation counts.

The walk touches each TVM node once (attribute access through the FFI costs ~1 us); index
expressions are compiled into small Python tuples, so footprints and strides can then be evaluated
several times in pure Python.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import tvm
from tvm import tirx
from tvm.s_tir import SBlock, SBlockRealize

from perfmodel.featurize.schema import ARITH


_INT_IMM = tirx.IntImm
_VAR = tirx.Var


class FeaturizeError(ValueError):
    """A schedule with a construct the featurizer does not handle (the message names it and the block)."""


_SPECIAL = {"exp", "exp2", "exp10", "log", "log2", "log10", "log1p", "expm1", "sqrt", "rsqrt", "tanh", "sigmoid",
            "erf", "pow", "sin", "cos", "tan", "atan", "atan2", "asin", "acos", "sinh", "cosh", "fabs", "floor",
            "ceil", "round", "trunc", "nearbyint", "fmod", "fma", "copysign", "hypot"}
_OP_INDEX = {a: i for i, a in enumerate(ARITH)}
_ADD, _MUL, _DIV, _SPECIAL_I, _MINMAX, _INT, _CMP, _CAST, _LOADS = (
    _OP_INDEX[k] for k in ("float_addsub", "float_mul", "float_div", "float_special", "float_minmax",
                           "int_ops", "cmp_select", "cast", "loads"))

_dtype_float: dict[Any, bool] = {}
_dtype_bytes: dict[Any, int] = {}


def _is_float(e: Any) -> bool:
    dt = e.ty.dtype
    v = _dtype_float.get(dt)
    if v is None:
        v = _dtype_float[dt] = "float" in str(dt)
    return v


def dtype_bytes(dt: Any) -> int:
    v = _dtype_bytes.get(dt)
    if v is None:
        s = str(dt)
        d = tvm.DataType(s) if hasattr(tvm, "DataType") else None
        if d is not None:
            v = max(1, d.bits * d.lanes // 8)
        else:  # pragma: no cover - fallback for other TVM versions
            digits = "".join(c for c in s if c.isdigit()) or "32"
            v = max(1, int(digits) // 8)
        _dtype_bytes[dt] = v
    return v


@dataclass(slots=True)
class Loop:
    """One ``For`` loop of the scheduled program."""

    id: int
    var: Any  # the loop variable (its name is read only when needed: ``Loop.name``)
    extent: int
    min: int
    kind: int  # 0 serial, 1 parallel, 2 vectorized, 3 unrolled (thread-bound -> 1)
    unroll_step: int
    unroll_explicit: int
    depth: int
    parent: int | None
    var_key: int = -1
    stages: int = 0  # stages nested under it

    @property
    def name(self) -> str:
        return str(self.var.name)


@dataclass(slots=True)
class Access:
    """One buffer access of a stage: compiled indices into the buffer."""

    buf: int  # buffer number (key of Program.buffers)
    indices: tuple[Any, ...]


@dataclass(slots=True)
class Stage:
    """One computation stage (a leaf block) with everything the features need."""

    id: int
    name: str
    loops: list[int]  # enclosing loop ids, outermost first
    # per enclosing block, its iter vars: [(var key, compiled binding, dom min, dom extent, iter type)]
    frames: list[tuple[tuple[int, Any, int, int, int], ...]]
    store: Access | None = None
    loads: list[Access] = field(default_factory=list)
    ops: list[float] = field(default_factory=lambda: [0.0] * len(ARITH))
    space: int = 1
    reduce: int = 1
    n_space: int = 0
    n_reduce: int = 0
    predicate: bool = False
    is_init: bool = False


@dataclass(slots=True)
class BufInfo:
    """Static facts of a buffer."""

    name: str
    shape: list[int]
    nbytes: int  # bytes per element
    local: bool
    param: bool


@dataclass
class Program:
    """A scheduled PrimFunc as plain Python."""

    loops: list[Loop]
    stages: list[Stage]
    buffers: dict[int, BufInfo]  # by buffer number (0, 1, ... in the order the walk met them)
    loop_children: dict[int | None, list[tuple[str, int]]]  # parent loop (None = root) -> ("loop"|"stage", id)


# BufInfo of buffers seen before, by (handle, is a parameter): the candidates of a task share their
# parameter buffers (and unchanged ones), whose shape, dtype and scope then need no FFI reads. Each
# entry holds its buffer, so no other object can take its address while the entry lives.
_BUFFERS: dict[tuple[int, bool], tuple[Any, BufInfo]] = {}
_BUFFERS_MAX = 4096


class _Walker:
    def __init__(self, func: Any) -> None:
        self.loops: list[Loop] = []
        self.stages: list[Stage] = []
        self.buffers: dict[int, BufInfo] = {}  # by buffer number
        self.buf_ids: dict[int, int] = {}  # buffer handle -> its number
        self.var_ids: dict[int, int] = {}  # handle of a variable a loop or block binds -> its number
        self.n_bound = 0  # numbers given (a variable bound twice gets a new number, never another's)
        self.children: dict[int | None, list[tuple[str, int]]] = {None: []}
        self.block = "root"
        for p in func.params[:]:
            known = _BUFFERS.get((p.__chandle__(), True))
            if known is not None:
                self.buf_ids[p.__chandle__()] = n = len(self.buffers)
                self.buffers[n] = known[1]
            elif hasattr(p, "shape") and hasattr(p, "scope"):  # buffers are typed Vars in TVM 0.27
                self._buf(p, param=True)

    # ---- helpers -------------------------------------------------------------------------
    def err(self, what: str) -> FeaturizeError:
        return FeaturizeError(f"unsupported {what} in block {self.block!r}")

    def _buf(self, b: Any, *, param: bool = False) -> int:
        """The number of buffer ``b`` (its facts recorded the first time)."""
        h = b.__chandle__()
        n = self.buf_ids.get(h)
        if n is None:
            self.buf_ids[h] = n = len(self.buffers)
            known = _BUFFERS.get((h, param))
            if known is not None:
                self.buffers[n] = known[1]
                return n
            shape = []
            for s in b.shape[:]:
                if not type(s) is _INT_IMM:
                    raise self.err(f"symbolic buffer shape {s} of buffer {b.name!r}")
                shape.append(int(s.value))
            scope = str(b.scope())
            info = BufInfo(name=str(b.name), shape=shape, nbytes=dtype_bytes(b.dtype),
                           local=(not param) or scope != "global", param=param)
            if len(_BUFFERS) >= _BUFFERS_MAX:
                _BUFFERS.clear()
            _BUFFERS[(h, param)] = (b, info)
            self.buffers[n] = info
        return n

    def _bind(self, var: Any) -> int:
        """Numbers a variable a loop or block binds (in binding order: the same for the same structure)."""
        self.var_ids[var.__chandle__()] = n = self.n_bound
        self.n_bound += 1
        return n

    def _int(self, e: Any, what: str) -> int:
        if type(e) is _INT_IMM:
            return int(e.value)
        raise self.err(f"non-constant {what} {e}")

    # ---- statements ----------------------------------------------------------------------
    def stmt(self, s: Any, loops: list[int], frames: list) -> None:
        t = type(s)
        if t is _FOR:
            self.for_(s, loops, frames)
        elif t is _SEQ:
            for x in s.seq[:]:
                self.stmt(x, loops, frames)
        elif t is _REALIZE:
            self.realize(s, loops, frames)
        elif t is tirx.AllocBuffer or t is tirx.DeclBuffer:
            self._buf(s.buffer)
            body = getattr(s, "body", None)
            if body is not None:
                self.stmt(body, loops, frames)
        elif t is tirx.AttrStmt:
            self.stmt(s.body, loops, frames)
        elif t is tirx.Evaluate:
            raise self.err(f"statement Evaluate({s.value})")
        else:
            raise self.err(f"statement {t.__name__}")

    def for_(self, s: Any, loops: list[int], frames: list) -> None:
        """A chain of directly nested loops (walked without recursion), then the statement inside it."""
        loops = list(loops)
        all_loops, children = self.loops, self.children
        while True:
            kind = int(s.kind)
            if kind > 3:
                kind = 1
            step = explicit = 0
            ann = s.annotations
            if len(ann):
                v = ann.get("pragma_auto_unroll_max_step")
                step = int(v.value if hasattr(v, "value") else v) if v is not None else 0
                v = ann.get("pragma_unroll_explicit")
                explicit = int(v.value if hasattr(v, "value") else v) if v is not None else 0
            var = s.loop_var
            mn = s.min
            ext = s.extent
            if type(ext) is not _INT_IMM or type(mn) is not _INT_IMM:
                raise self.err(f"non-constant range [{mn}, {mn} + {ext}) of loop {str(var.name)!r}")
            lid = len(all_loops)
            parent = loops[-1] if loops else None
            all_loops.append(Loop(lid, var, int(ext.value), int(mn.value), kind, step, explicit, len(loops), parent,
                                  self._bind(var)))
            children[parent].append(("loop", lid))
            children[lid] = []
            loops.append(lid)
            s = s.body
            if type(s) is not _FOR:
                break
        self.stmt(s, loops, frames)

    def realize(self, s: Any, loops: list[int], frames: list) -> None:
        block = s.block
        outer = self.block
        self.block = str(block.name_hint)
        for b in block.alloc_buffers[:]:
            self._buf(b)
        frame = []
        for iv, val in zip(block.iter_vars[:], s.iter_values[:]):
            dom = iv.dom
            c = self.compile(val, None)  # the binding reads the outer variables: compiled before binding this one
            frame.append((self._bind(iv.var), c, self._int(dom.min, "iter-var min"),
                          self._int(dom.extent, "iter-var extent"), int(iv.iter_type)))
        frame = tuple(frame)
        frames = [*frames, frame]
        body = block.body
        pred = s.predicate
        has_pred = not (type(pred) is _INT_IMM and int(pred.value) == 1)
        if block.init is not None and type(body) is not tirx.BufferStore:
            raise self.err("reduction init inside a non-leaf block")
        if type(body) is tirx.BufferStore or (type(body) is tirx.IfThenElse and type(body.then_case) is tirx.BufferStore
                                              and body.else_case is None):
            self.stage(block, frame, body, loops, frames, has_pred)
        else:
            self.stmt(body, loops, frames)
        self.block = outer

    def stage(self, block: Any, frame: list, body: Any, loops: list[int], frames: list, has_pred: bool) -> None:
        st = Stage(id=len(self.stages), name=self.block, loops=list(loops), frames=frames,
                   predicate=has_pred)
        ops = st.ops
        if type(body) is tirx.IfThenElse:
            st.predicate = True
            self.expr(body.condition, ops, st.loads)
            body = body.then_case
        for _, _, _, ext, itype in frame:
            if itype == 2:  # CommReduce
                st.reduce *= ext
                st.n_reduce += 1
            else:
                st.space *= ext
                st.n_space += 1
        idx = tuple([self._index(i, ops) for i in body.indices[:]])
        st.store = Access(self._buf(body.buffer), idx)
        value = body.value
        st.is_init = isinstance(value, (tirx.IntImm, tirx.FloatImm))
        self.expr(value, ops, st.loads)
        ops[_OP_INDEX["stores"]] += 1
        self.stages.append(st)
        self.children[loops[-1] if loops else None].append(("stage", st.id))
        for lid in loops:
            self.loops[lid].stages += 1

    # ---- expressions ---------------------------------------------------------------------
    def expr(self, e: Any, ops: list[float], loads: list[Access] | None) -> None:
        """Count the operations of ``e`` into ``ops``; append its buffer loads to ``loads``."""
        t = type(e)
        h = _ARITH_KIND.get(t)
        if h is not None:
            if h == "bin":
                ops[_BIN_F[t] if _is_float(e) else _INT] += 1
            elif h == "cmp":
                ops[_CMP] += 1
            elif h == "minmax":
                ops[_MINMAX if _is_float(e) else _INT] += 1
            self.expr(e.a, ops, loads)
            self.expr(e.b, ops, loads)
            return
        if t is _LOAD:
            ops[_LOADS] += 1
            buf = self._buf(e.source)
            idx = tuple([self._index(i, ops) for i in e.indices[:]])
            if loads is not None:
                loads.append(Access(buf, idx))
        elif t in _LEAF:
            return
        elif t is tvm.ir.Call:
            name = str(e.op.name)
            short = name.rsplit(".", 1)[-1]
            if short == "if_then_else":
                ops[_CMP] += 1
            elif short in _SPECIAL:
                ops[_SPECIAL_I] += 1
            elif short in ("likely", "reinterpret"):
                pass
            else:
                ops[_SPECIAL_I] += 1
            for a in e.args[:]:
                self.expr(a, ops, loads)
        elif t is tirx.Cast:
            ops[_CAST] += 1
            self.expr(e.value, ops, loads)
        elif t is tirx.Select:
            ops[_CMP] += 1
            self.expr(e.condition, ops, loads)
            self.expr(e.true_value, ops, loads)
            self.expr(e.false_value, ops, loads)
        elif t is tirx.Not:
            ops[_CMP] += 1
            self.expr(e.a, ops, loads)
        elif t is tirx.Broadcast:
            self.expr(e.value, ops, loads)
        elif t is tirx.Ramp:
            self.expr(e.base, ops, None)
        else:
            raise self.err(f"expression {t.__name__}")

    def _index(self, e: Any, ops: list[float]) -> Any:
        c = self.compile(e, ops)
        if c is None:  # e.g. an indirect index (a load inside an index): count what it does
            self.expr(e, ops, None)
        return c

    def compile(self, e: Any, ops: list[float] | None) -> Any:
        """An index expression compiled: an int, ``("L", const, ((var key, coeff), ...))`` for a linear one
        (most index expressions are sums of variables times constants), ``(op, a, b)`` around non-linear
        parts (``//``, ``%``, ``min``, ``max``, a product of variables); ``None`` = unknown.

        Counts one integer operation per arithmetic node into ``ops`` (unless ``None``).
        """
        return _final(self._lin(e, ops))

    def _lin(self, e: Any, ops: list[float] | None) -> Any:
        # an int, a linear form [const, {var key: coeff}] (a fresh list: its parent may change it in
        # place), a compiled non-linear node (a tuple) or None (unknown)
        t = type(e)
        if t is _INT_IMM:
            return int(e.value)
        if t is _VAR:
            h = e.__chandle__()
            return [0, {self.var_ids.get(h, h): 1}]
        op = _COMPILE_OPS.get(t)
        if op is not None:
            a = self._lin(e.a, ops)
            b = self._lin(e.b, ops)
            if a is None or b is None:
                return None
            if ops is not None:
                ops[_INT] += 1
            return _combine(op, a, b)
        if t is tirx.Cast:
            return self._lin(e.value, ops)
        if isinstance(e, tirx.Var):
            h = e.__chandle__()
            return [0, {self.var_ids.get(h, h): 1}]
        return None


def _combine(op: str, a: Any, b: Any) -> Any:
    """``a op b`` of two ``_Walker._lin`` results: folded into a linear form where it stays linear."""
    ta, tb = type(a), type(b)
    if op == "+" or op == "-" or op == "*":
        if ta is int and tb is int:
            return a + b if op == "+" else a - b if op == "-" else a * b
        if (ta is list or ta is int) and (tb is list or tb is int):
            if op == "*":
                if tb is list:
                    if ta is list:
                        return (op, _final(a), _final(b))  # product of two variables
                    a, b = b, a  # the constant factor to the right
                a[0] *= b
                terms = a[1]
                for v in terms:
                    terms[v] *= b
                return a
            if ta is int:
                if op == "+":
                    b[0] += a
                    return b
                b[0] = a - b[0]
                terms = b[1]
                for v in terms:
                    terms[v] = -terms[v]
                return b
            if tb is int:
                a[0] = a[0] + b if op == "+" else a[0] - b
                return a
            terms = a[1]
            if op == "+":
                a[0] += b[0]
                for v, w in b[1].items():
                    terms[v] = terms.get(v, 0) + w
            else:
                a[0] -= b[0]
                for v, w in b[1].items():
                    terms[v] = terms.get(v, 0) - w
            return a
    return (op, _final(a), _final(b))


def _final(r: Any) -> Any:
    """A ``_Walker._lin`` result in its compiled form (see ``_Walker.compile``)."""
    if type(r) is list:
        return ("L", r[0], tuple((v, w) for v, w in r[1].items() if w))
    return r


_FOR, _SEQ, _REALIZE = tirx.For, tirx.SeqStmt, SBlockRealize
_LOAD = tvm.ir.TensorLoad  # what tirx.BufferLoad builds in TVM 0.27 (buffer in `.source`)
_BIN_F = {tirx.Add: _ADD, tirx.Sub: _ADD, tirx.Mul: _MUL, tirx.Div: _DIV, tirx.Mod: _DIV,
          tirx.FloorDiv: _DIV, tirx.FloorMod: _DIV}
_ARITH_KIND: dict[type, str] = {t: "bin" for t in _BIN_F}
_ARITH_KIND.update({t: "cmp" for t in (tirx.EQ, tirx.NE, tirx.LT, tirx.LE, tirx.GT, tirx.GE, tirx.And, tirx.Or)})
_ARITH_KIND.update({tirx.Min: "minmax", tirx.Max: "minmax"})
_ARITH_KIND.update({t: "int" for t in (tirx.BitwiseAnd, tirx.BitwiseOr, tirx.BitwiseXor, tirx.LShift, tirx.RShift)})
_LEAF = {tirx.IntImm, tirx.FloatImm, tirx.Var, tvm.ir.Var, tvm.ir.StringImm}
_COMPILE_OPS = {tirx.Add: "+", tirx.Sub: "-", tirx.Mul: "*", tirx.FloorDiv: "//", tirx.Div: "//",
                tirx.FloorMod: "%", tirx.Mod: "%", tirx.Min: "min", tirx.Max: "max"}


def _fix_int_kind() -> None:
    # bitwise ops count as int operations: map them onto the "bin" path with the int slot
    for t in (tirx.BitwiseAnd, tirx.BitwiseOr, tirx.BitwiseXor, tirx.LShift, tirx.RShift):
        _ARITH_KIND[t] = "bin"
        _BIN_F[t] = _INT


_fix_int_kind()


def walk(func: Any) -> Program:
    """Walk a scheduled PrimFunc (``sch.mod["main"]``) into a :class:`Program`.

    Raises:
        FeaturizeError: on a construct the featurizer does not handle (named, with its block).
    """
    w = _Walker(func)
    w.stmt(func.body, [], [])
    return Program(loops=w.loops, stages=w.stages, buffers=w.buffers, loop_children=w.children)


# ---- interval evaluation of compiled index expressions ---------------------------------------
def ival(c: Any, env: dict[int, tuple[int, int]]) -> tuple[int, int] | None:
    """Interval of a compiled expression given intervals of its variables (``None`` = unbounded)."""
    if type(c) is int:
        return c, c
    if c is None:
        return None
    op = c[0]
    if op == "L":
        lo = hi = c[1]
        for k, w in c[2]:
            r = env.get(k)
            if r is None:
                return None
            if w > 0:
                lo += w * r[0]
                hi += w * r[1]
            else:
                lo += w * r[1]
                hi += w * r[0]
        return lo, hi
    if op == "v":
        return env.get(c[1])
    a = ival(c[1], env)
    b = ival(c[2], env)
    if a is None or b is None:
        return None
    if op == "+":
        return a[0] + b[0], a[1] + b[1]
    if op == "-":
        return a[0] - b[1], a[1] - b[0]
    if op == "*":
        p = (a[0] * b[0], a[0] * b[1], a[1] * b[0], a[1] * b[1])
        return min(p), max(p)
    if op == "//":
        if b[0] != b[1] or b[0] <= 0:
            return None
        return a[0] // b[0], a[1] // b[0]
    if op == "%":
        if b[0] != b[1] or b[0] <= 0:
            return None
        m = b[0]
        if a[0] // m == a[1] // m:
            return a[0] % m, a[1] % m
        return 0, m - 1
    if op == "min":
        return min(a[0], b[0]), min(a[1], b[1])
    if op == "max":
        return max(a[0], b[0]), max(a[1], b[1])
    return None


def bind_env(frames: list, loop_env: dict[int, tuple[int, int]], *, copy: bool = True) -> dict[int, tuple[int, int]]:
    """Add the intervals of the block iter vars (from their bindings, clipped to their domains).

    ``copy=False``: add them to ``loop_env`` itself (and return it).
    """
    env = dict(loop_env) if copy else loop_env
    for frame in frames:
        for k, val, dmin, dext, _ in frame:
            dmax = dmin + dext - 1
            r = ival(val, env)
            lo, hi = dmin, dmax
            if r is not None:
                lo, hi = max(lo, r[0]), min(hi, r[1])
                if lo > hi:
                    lo = hi = max(dmin, min(r[0], dmax))
            env[k] = (lo, hi)
    return env


def footprint(acc: Access, info: BufInfo, env: dict[int, tuple[int, int]]) -> tuple[int, int]:
    """(distinct elements, distinct 64-byte cache lines) touched by ``acc`` under ``env``."""
    ranges = []
    elems = 1
    for c, dim in zip(acc.indices, info.shape):
        r = ival(c, env)
        n = dim if r is None else max(1, min(dim, r[1] - r[0] + 1))
        ranges.append(n)
        elems *= n
    # contiguous run: innermost range, times outer dims while the inner ones are fully covered
    run = 1
    for n, dim in zip(reversed(ranges), reversed(info.shape)):
        run *= n
        if n != dim:
            break
    run_bytes = run * info.nbytes
    lines = (elems // max(run, 1)) * -(-run_bytes // 64)
    return elems, max(lines, 1)


def stride(acc: Access, info: BufInfo, env: dict[int, tuple[int, int]]) -> int | None:
    """Elements the access moves when one loop steps by one (``env``: that loop over two values, the
    others fixed); ``None`` when an index is not analysable."""
    st = 0
    mul = 1
    for c, dim in zip(reversed(acc.indices), reversed(info.shape)):
        r = ival(c, env)
        if r is None:
            return None
        st += (r[1] - r[0]) * mul
        mul *= dim
    return st
