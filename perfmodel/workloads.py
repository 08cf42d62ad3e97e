"""Registry of tuning tasks: TVM's single-operator suite plus Relax-extracted network tasks, by name.

Names are stable: ``C2D-1`` is shape 1 of the Ansor suite's conv2d; ``resnet18-b8/fused_conv2d3_add_relu``
is a task that Relax extracts from ResNet-18 at batch 8. Network tasks are extracted once and cached
in ``perfmodel/resources/network_tasks.json.gz`` (``perfmodel workloads --refresh`` redoes it), so
listing the registry does not trace three PyTorch models every time.
"""

from __future__ import annotations

import functools
import gzip
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import tvm

TE_SUITE = ["C1D", "C2D", "C3D", "GMM", "GRP", "DIL", "DEP", "T2D", "CAP", "NRM", "SFM", "CBR", "TBG"]
NETWORK_BATCHES = (1, 8)
CACHE_FILE = Path(__file__).parent / "resources" / "network_tasks.json.gz"
REPO = Path(__file__).resolve().parents[1]
# The default dataset: this CPU's records, native target (host mcpu), one runner thread.
DEFAULT_DATASET = "amd-epyc-znver3-t1"
DEFAULT_DB = REPO / "datasets" / DEFAULT_DATASET
# The registry's target for extracting network tasks; measuring uses native_target().
DEFAULT_TARGET = {"kind": "llvm", "num-cores": 1}


def native_target(threads: int = 1) -> dict:
    """The TVM target JSON for this CPU: LLVM with the host's ``mcpu`` (e.g. ``znver4``), ``threads`` cores."""
    from tvm.target.codegen import llvm_get_system_cpu

    return {"kind": "llvm", "mcpu": str(llvm_get_system_cpu()), "num-cores": int(threads)}


def target_of_summary(summary: dict) -> dict:
    """The TVM target JSON of a ``{kind, mcpu, threads}`` summary (a checkpoint's, a card's)."""
    mcpu = summary.get("mcpu")
    return {"kind": summary.get("kind") or "llvm", **({"mcpu": mcpu} if mcpu and mcpu != "generic" else {}),
            "num-cores": int(summary.get("threads") or 1)}


def target_summary(target: object) -> dict:
    """``{kind, mcpu, threads}`` of a target (a ``tvm.target.Target``, its JSON dict or ``None``):
    what a checkpoint, a dataset card and a tuning run name as "the target"."""
    if target is None:
        return {"kind": None, "mcpu": None, "threads": None}
    if not isinstance(target, dict):
        target = {k: v for k, v in target.export().items()}
    mcpu = target.get("mcpu")
    cores = target.get("num-cores")
    return {"kind": str(target.get("kind")), "mcpu": str(mcpu) if mcpu else "generic",
            "threads": int(cores) if cores is not None else None}


def targets_match(have: dict, want: dict) -> bool:
    """Two ``{kind, mcpu, threads}`` summaries agree on each field (an unknown value matches anything)."""
    return all(have.get(k) is None or want.get(k) is None or have.get(k) == want.get(k)
               for k in ("kind", "mcpu", "threads"))


@functools.lru_cache(maxsize=64)
def cpu_features(kind: str | None, mcpu: str | None) -> frozenset[str]:
    """LLVM's feature set of an llvm target's ``mcpu`` on this host's triple (``generic``, or a CPU that
    LLVM does not know and so compiles for as ``generic``: the baseline one); empty for another kind."""
    if kind != "llvm":
        return frozenset()
    try:
        import tvm
        from tvm.target import codegen

        known = mcpu and mcpu != "generic" and codegen.llvm_is_valid_cpu(mcpu, codegen.llvm_get_system_triple())
        target = tvm.target.Target({"kind": "llvm", **({"mcpu": mcpu} if known else {})})
        return frozenset(str(f) for f in codegen.llvm_get_cpu_features(target))
    except Exception:  # noqa: BLE001 - no LLVM in this TVM build: no features to compare
        return frozenset()


def nearest_target(want: dict, known: list[dict]) -> int:
    """Index in ``known`` (``{kind, mcpu, threads}`` summaries) of the target nearest to ``want``: the
    same kind first, then the same thread count, then the largest share of LLVM CPU features (Jaccard:
    a Zen 4 is nearer a Zen 5 than a Zen 3, both having AVX-512); ties go to the earlier entry."""
    have = cpu_features(want.get("kind"), want.get("mcpu"))

    def closeness(t: dict) -> tuple[bool, bool, float]:
        other = cpu_features(t.get("kind"), t.get("mcpu"))
        share = len(have & other) / len(have | other) if have and other else 0.0
        return t.get("kind") == want.get("kind"), t.get("threads") == want.get("threads"), share

    scores = [closeness(t) for t in known]
    return max(range(len(known)), key=lambda i: (scores[i], -i)) if known else 0


def describe_target(t: dict) -> str:
    """``llvm/znver3/1 thread(s)``: a target summary in one word."""
    return f"{t.get('kind')}/{t.get('mcpu')}" + (f"/{t['threads']} thread(s)" if t.get("threads") is not None else "")


# Operator family of a TE suite code, used by the held-out-family split.
_TE_FAMILY = {
    "C1D": "conv", "C2D": "conv", "C3D": "conv", "GRP": "conv", "DIL": "conv", "DEP": "conv",
    "T2D": "conv", "CAP": "conv", "CBR": "conv", "GMM": "matmul", "TBG": "matmul",
    "NRM": "reduce", "SFM": "softmax",
}


class UnknownTaskError(KeyError):
    """A task name that the registry does not hold."""

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True)
class Task:
    """One tuning task.

    Attributes:
        name: stable registry name.
        source: ``te`` for the operator suite, else the network name (``resnet18``...).
        family: operator family (``conv``, ``matmul``, ``elementwise``, ``reduce``, ``softmax``...).
        flops: floating-point operations of one run, as TVM estimates them.
        weight: how many times the task occurs in its network (1 for the TE suite).
        batch: batch size of the network the task came from (``None`` for the TE suite).
    """

    name: str
    source: str
    family: str
    flops: float
    weight: int = 1
    batch: int | None = None

    @property
    def mod(self) -> tvm.IRModule:
        """The task's IRModule with a single ``main`` PrimFunc."""
        return _load_mod(self.name)


def family_of(op_name: str) -> str:
    """Operator family of a Relax fused-task name (``fused_conv2d3_add_relu`` -> ``conv``)."""
    n = op_name.lower()
    for key, fam in [("conv", "conv"), ("matmul", "matmul"), ("dense", "matmul"), ("softmax", "softmax"),
                     ("layer_norm", "reduce"), ("mean", "reduce"), ("sum", "reduce"), ("pool", "pool")]:
        if key in n:
            return fam
    if re.search(r"reshape|transpose|squeeze|slice|broadcast|concat", n):
        return "layout"
    return "elementwise"


def _te_mod(code: str, idx: int) -> tvm.IRModule:
    import tvm
    from tvm.s_tir.meta_schedule.testing import te_workload

    return tvm.IRModule({"main": te_workload.create_te_workload(code, idx)})


def _flops(mod: tvm.IRModule) -> float:
    from tvm.s_tir.analysis import estimate_tir_flops

    return float(estimate_tir_flops(mod))


def _network_entries() -> list[dict]:
    if not CACHE_FILE.exists():
        refresh_network_cache()
    with gzip.open(CACHE_FILE, "rt") as f:
        return json.load(f)


@functools.cache
def _network_mods() -> dict[str, str]:
    return {e["name"]: e["mod"] for e in _network_entries()}


@functools.cache
def _load_mod(name: str) -> tvm.IRModule:
    import tvm

    m = re.fullmatch(r"([A-Z0-9]+)-(\d+)", name)
    if m and m.group(1) in TE_SUITE:
        return _te_mod(m.group(1), int(m.group(2)))
    mods = _network_mods()
    if name not in mods:
        raise UnknownTaskError(f"unknown task {name!r}: `perfmodel workloads` lists the registry")
    return tvm.ir.load_json(mods[name])


@functools.lru_cache(maxsize=4)
def network_relax_mod(net: str, batch: int) -> tuple[tvm.IRModule, object, object]:
    """A registry network as the fused Relax module its tuning tasks come from, with the PyTorch model and input.

    Kept per ``(net, batch)`` (the export takes seconds, and a network run needs it for its tasks, the tasks
    its build runs and the build itself): callers read the three objects and never change them.

    The one pipeline behind both the registry's network tasks (:func:`extract_network_tasks`) and
    compiling a tuned network: PyTorch export (random weights, ``torch.manual_seed(0)``) -> Relax ->
    decompose, legalize, fold constants, fuse. Its PrimFuncs are therefore the registry's tasks, so a
    tuning database of those tasks applies to it.

    Returns:
        ``(mod, model, x)``: the fused Relax ``IRModule`` (weights bound as constants, ``main`` takes
        the input), the ``nn.Module`` in eval mode and the input tensor ``x`` of shape ``(batch, *shape)``.
    """
    import torch
    import tvm
    from tvm import relax
    from tvm.relax.frontend.torch import from_exported_program

    from perfmodel.reference_networks import NETWORKS

    cls, shape = NETWORKS[net]
    torch.manual_seed(0)
    model = cls().eval()
    x = torch.randn(batch, *shape)
    with torch.no_grad():
        ep = torch.export.export(model, (x,))
    mod = from_exported_program(ep)
    mod = tvm.transform.Sequential([
        relax.transform.DecomposeOpsForInference(),
        relax.transform.LegalizeOps(),
        relax.transform.AnnotateTIROpPattern(),
        relax.transform.FoldConstant(),
        relax.transform.FuseOps(),
        relax.transform.FuseTIR(),
    ])(mod)
    return mod, model, x


def extract_network_tasks(net: str, batch: int, target: dict | None = None) -> list[dict]:
    """Trace a registry network with PyTorch, import it to Relax and extract its tuning tasks.

    Returns:
        One dict per task: ``name``, ``weight``, ``mod`` (TVM JSON of a one-PrimFunc IRModule).
    """
    import tvm
    from tvm.s_tir import meta_schedule as ms

    mod, _, _ = network_relax_mod(net, batch)
    tasks = ms.relax_integration.extract_tasks(mod, tvm.target.Target(target or DEFAULT_TARGET))
    out = []
    for t in sorted(tasks, key=lambda t: t.task_name):
        func = t.dispatched[0]["main"].with_attr("global_symbol", "main")
        out.append({"name": f"{net}-b{batch}/{t.task_name}", "weight": int(t.weight),
                    "mod": tvm.ir.save_json(tvm.IRModule({"main": func}))})
    return out


def refresh_network_cache() -> Path:
    """Re-extract every network at every batch size and rewrite the cache file."""
    from perfmodel.reference_networks import NETWORKS

    entries = []
    for net in NETWORKS:
        for batch in NETWORK_BATCHES:
            for e in extract_network_tasks(net, batch):
                mod = _mod_from_json(e["mod"])
                e.update(source=net, batch=batch, family=family_of(e["name"].split("/")[1]), flops=_flops(mod))
                entries.append(e)
    CACHE_FILE.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(CACHE_FILE, "wt") as f:
        json.dump(entries, f)
    _network_mods.cache_clear()
    registry.cache_clear()
    return CACHE_FILE


def _mod_from_json(text: str) -> tvm.IRModule:
    import tvm

    return tvm.ir.load_json(text)


@functools.cache
def registry() -> dict[str, Task]:
    """All tasks by name: the TE suite (every shape), then the network tasks."""
    from tvm.s_tir.meta_schedule.testing import te_workload

    tasks: dict[str, Task] = {}
    for code in TE_SUITE:
        for idx in range(len(te_workload.CONFIGS[code][1])):
            name = f"{code}-{idx}"
            tasks[name] = Task(name=name, source="te", family=_TE_FAMILY[code], flops=_flops(_te_mod(code, idx)))
    for e in _network_entries():
        tasks[e["name"]] = Task(name=e["name"], source=e["source"], family=e["family"], flops=e["flops"],
                                weight=e["weight"], batch=e["batch"])
    return tasks


def get_task(name: str) -> Task:
    """The registry task called ``name``; an unknown name raises :class:`UnknownTaskError`."""
    tasks = registry()
    if name not in tasks:
        raise UnknownTaskError(f"unknown task {name!r}: `perfmodel workloads` lists the {len(tasks)} known tasks")
    return tasks[name]


def task_of_mod(mod: tvm.IRModule) -> str | None:
    """Registry name of a workload IRModule (structural match), or ``None``."""
    return _by_hash().get(_shash(mod))


def _shash(mod: tvm.IRModule) -> int:
    import tvm_ffi

    return int(tvm_ffi.structural_hash(mod))


@functools.cache
def _by_hash() -> dict[int, str]:
    return {_shash(_load_mod(n)): n for n in registry()}
