"""MetaSchedule JSON databases -> an on-disk PyG ``InMemoryDataset`` of stage graphs, cached by content.

Every valid record is replayed (``TuningRecord.as_measure_candidate``), featurized with
:mod:`perfmodel.featurize` and labelled with the log of its median measured time. Failed
measurements and records that do not replay or featurize are skipped and counted in
``dataset.skipped``. Each graph also carries the id of the target its record was measured for
(``target_id``, into the vocabulary ``dataset.targets``), so one dataset can hold several hardware
folders. The processed file is keyed by (database contents, schema version, options):
opening the same databases again loads it instead of reprocessing (``dataset.processed_now`` says
which happened).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
from collections import Counter
from pathlib import Path
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch_geometric.data import Data, InMemoryDataset
from tqdm import tqdm

from perfmodel.featurize.schema import SCHEMA_VERSION
from perfmodel.collect.measure import label_secs

META_VERSION = 3  # version of the processed-file layout (independent of the feature schema); 2: io_bytes; 3: target_id


def _db_dirs(db_paths: str | os.PathLike | list) -> list[Path]:
    from perfmodel.collect.database import iter_databases

    paths = [db_paths] if isinstance(db_paths, (str, os.PathLike)) else list(db_paths)
    if not paths:
        raise ValueError("ScheduleDataset needs at least one database path")
    out: list[Path] = []
    for p in paths:
        for d in iter_databases(p):
            if d.resolve() not in [o.resolve() for o in out]:
                out.append(d)
    return out


def db_state(dirs: list[Path]) -> dict[str, dict[str, list]]:
    """Per database dir and file: ``[bytes of whole lines, sha1 of them]`` (a half-written last line excluded)."""
    from perfmodel.collect.database import RECORD_FILE, WORKLOAD_FILE

    state: dict[str, dict[str, list]] = {}
    for d in dirs:
        state[str(d.resolve())] = {}
        for name in (WORKLOAD_FILE, RECORD_FILE):
            data = (d / name).read_bytes()
            cut = data.rfind(b"\n") + 1
            state[str(d.resolve())][name] = [cut, hashlib.sha1(data[:cut]).hexdigest()]
    return state


def content_key(state: dict[str, dict[str, list]], options: dict[str, Any]) -> str:
    """Cache key: the databases' contents (``db_state``), the feature schema version and the build options."""
    blob = json.dumps({"schema": SCHEMA_VERSION, "meta": META_VERSION, "options": options, "state": state},
                      sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def _grew_from(old: dict[str, dict[str, list]], new: dict[str, dict[str, list]]) -> list[str]:
    """Database dirs whose files in ``new`` only appended lines to those in ``old``."""
    out = []
    for d, files in old.items():
        if d not in new:
            continue
        ok = True
        for name, (n, digest) in files.items():
            n_new = new[d][name][0]
            if n_new < n:
                ok = False
                break
            if n_new != n or new[d][name][1] != digest:
                with open(Path(d) / name, "rb") as f:
                    if hashlib.sha1(f.read(n)).hexdigest() != digest:
                        ok = False
                        break
        if ok:
            out.append(d)
    return out


def _shash(mod: Any) -> int:
    import tvm_ffi

    return int(tvm_ffi.structural_hash(mod)) & 0xFFFFFFFFFFFFFFFF


def task_identity(mod: Any) -> tuple[str, str, float]:
    """(task name, family, FLOPs) of a workload module: the registry's when it matches, else derived.

    A workload outside the registry is named ``<last block>_<structural hash>`` with family ``unknown``.
    """
    from perfmodel import workloads

    name = workloads.task_of_mod(mod)
    if name is not None:
        t = workloads.registry()[name]
        return name, t.family, float(t.flops)
    funcs = list(mod.functions.values())
    func = mod["main"] if len(funcs) != 1 else funcs[0]
    blocks = _block_names(func)
    label = blocks[-1] if blocks else "prim"
    try:
        from tvm.s_tir.analysis import estimate_tir_flops

        flops = float(estimate_tir_flops(mod))
    except Exception:  # noqa: BLE001
        flops = 0.0
    return f"{label[:30]}_{_shash(mod):016x}", "unknown", flops


def _block_names(func: Any) -> list[str]:
    from perfmodel.featurize.tir import FeaturizeError, walk

    try:
        return [s.name for s in walk(func).stages]
    except FeaturizeError:
        return []


class ScheduleDataset(InMemoryDataset):
    """Stage graphs of measured schedules from MetaSchedule JSON databases.

    Each item is a ``Data`` with ``x`` [N, F], ``edge_index`` [2, E], ``edge_attr`` [E, Fe] and
    ``y`` (float32 [1], log of the median seconds), ``task`` (long [1], index into ``task_names``),
    ``family`` (long [1], index into ``families``), ``flops`` and ``io_bytes`` (float32 [1]), ``record`` (long [1],
    index of the item in the dataset; ``sources[record]`` is its ``(database dir, line)``), ``target_id``
    (long [1], index into ``targets``: the ``workloads.target_summary`` of the record's target).

    The target vocabulary is ordered most common first (ties: first seen, in ``db_paths`` order), so
    ``targets[0]`` is the target of most graphs. A record whose target cannot be read (none stored,
    or not a target) gets the most common target of its database; in a database where no record
    has a readable target, its records are skipped (reason ``no_target``).

    Args:
        root: cache directory (processed files go to ``root/processed``).
        db_paths: a database directory, a directory of them, or a list of either.
        granularity: ``"stage"`` or ``"loop"`` (see :func:`perfmodel.featurize.stage_graph`).
        max_records: use at most this many valid records per workload of each database (``None`` = all).
        workers: processes for replay + featurize (1 = in this process; 2 helps only on an idle 2-core box).
        progress: show a tqdm bar while processing.
        transform: PyG transform applied on access.
        force_reload: reprocess even when a cached file exists.

    Attributes:
        task_names, families, targets: the vocabularies of ``task`` / ``family`` / ``target_id``
            (``targets``: ``{kind, mcpu, threads}`` dicts).
        skipped: counts of records left out, by reason.
        errors: the first messages of records left out (one line each).
        processed_now: whether this instance processed the databases (False: loaded from the cache).
    """

    def __init__(self, root: str | os.PathLike, db_paths: Any, *, granularity: str = "stage",
                 max_records: int | None = None, max_spread: float | None = None, workers: int = 1,
                 progress: bool = True,
                 transform: Any = None, force_reload: bool = False) -> None:
        if granularity not in ("stage", "loop"):
            raise ValueError(f"granularity must be 'stage' or 'loop', got {granularity!r}")
        self.db_dirs = _db_dirs(db_paths)
        self.granularity = granularity
        self.max_records = max_records
        self.max_spread = max_spread
        self.workers = workers
        self.progress = progress
        self.options = {"granularity": granularity, "max_records": max_records, "max_spread": max_spread}
        self.state = db_state(self.db_dirs)
        self.key = content_key(self.state, self.options)
        self.reused = 0
        self.processed_now = False
        super().__init__(str(root), transform=transform, force_reload=force_reload, log=False)
        self.load(self.processed_paths[0])
        with open(self.processed_paths[1], encoding="utf-8") as f:
            meta = json.load(f)
        self.task_names: list[str] = meta["task_names"]
        self.families: list[str] = meta["families"]
        self.skipped: dict[str, int] = meta["skipped"]
        self.errors: list[str] = meta["errors"]
        self.sources: list[tuple[str, int]] = [tuple(s) for s in meta["sources"]]
        self.task_ids = np.asarray(meta["task_ids"], dtype=np.int64)
        self.family_ids = np.asarray(meta["family_ids"], dtype=np.int64)
        self.targets: list[dict[str, Any]] = meta["targets"]
        self.target_ids = np.asarray(meta["target_ids"], dtype=np.int64)

    @property
    def processed_file_names(self) -> list[str]:
        return [f"graphs_{self.key}.pt", f"meta_{self.key}.json"]

    def process(self) -> None:
        self.processed_now = True
        reuse = self._reusable()
        datas, meta = build(self.db_dirs, granularity=self.granularity, max_records=self.max_records,
                            max_spread=self.max_spread,
                            workers=self.workers, progress=self.progress, reuse=reuse)
        self.reused = meta["reused"]
        meta.update(options=self.options, state=self.state)
        self.save(datas, self.processed_paths[0])
        with open(self.processed_paths[1], "w", encoding="utf-8") as f:
            json.dump(meta, f)
        if meta["skipped"]:
            print(f"ScheduleDataset: {len(datas)} graphs; skipped "
                  + ", ".join(f"{k}: {v}" for k, v in sorted(meta["skipped"].items())), file=sys.stderr)

    def _reusable(self) -> dict[tuple[str, int], Data]:
        """Graphs of an earlier build of the same databases (before lines were appended), by (dir, line).

        A growing database is then processed incrementally: only records added since are replayed.
        """
        best: tuple[int, Path, list] | None = None
        for meta_path in Path(self.processed_dir).glob("meta_*.json"):
            try:
                with open(meta_path, encoding="utf-8") as f:
                    meta = json.load(f)
            except (OSError, ValueError):
                continue
            if (meta.get("schema_version") != SCHEMA_VERSION or meta.get("meta_version") != META_VERSION
                    or meta.get("options") != self.options):
                continue
            dirs = set(_grew_from(meta.get("state", {}), self.state))
            graphs = meta_path.with_name(meta_path.name.replace("meta_", "graphs_").replace(".json", ".pt"))
            if not dirs or not graphs.exists():
                continue
            keep = [i for i, (d, _) in enumerate(meta["sources"]) if str(Path(d).resolve()) in dirs]
            if best is None or len(keep) > best[0]:
                best = (len(keep), graphs, [(i, meta["sources"][i]) for i in keep])
        if best is None or best[0] == 0:
            return {}
        self.load(str(best[1]))
        out = {(str(Path(d).resolve()), int(line)): self.get(i) for i, (d, line) in best[2]}
        self._data_list = None
        return out

    def summary(self) -> dict[str, Any]:
        """Counts for a report: graphs, tasks, families, targets, skipped records by reason."""
        return {"graphs": len(self), "tasks": len(self.task_names), "families": len(self.families),
                "targets": len(self.targets), "skipped": dict(self.skipped)}

    def from_databases(self, db_paths: Any) -> np.ndarray:
        """Which graphs come from the databases at or under ``db_paths`` (bool [N]).

        Raises:
            ValueError: none of those databases is one of this dataset's.
        """
        want = {d.resolve() for d in _db_dirs(db_paths)}
        if not want & {d.resolve() for d in self.db_dirs}:
            raise ValueError(f"{db_paths} holds none of the dataset's databases "
                             f"({', '.join(str(d) for d in self.db_dirs)})")
        resolved = {d: Path(d).resolve() in want for d in {s[0] for s in self.sources}}
        return np.array([resolved[s[0]] for s in self.sources], dtype=bool)


# ---- processing ------------------------------------------------------------------------------
def _graph_of(db: Any, raw: Any, granularity: str) -> tuple[Data | None, str, str]:
    """(graph, "", "") or (None, reason, one-line message) for one record."""
    from perfmodel.featurize import FeaturizeError, featurize

    try:
        cand = db.tuning_record(raw).as_measure_candidate()
        return featurize(cand.sch, granularity=granularity), "", ""
    except FeaturizeError as e:
        return None, "featurize_error", str(e)
    except Exception as e:  # noqa: BLE001  a record that no longer replays must not stop a long build
        text = str(e).strip().splitlines()
        return None, "replay_error", f"{type(e).__name__}: {text[-1][:200] if text else ''}"


_worker_dbs: dict[str, Any] = {}
POOL_MIN_JOBS = 64  # fewer records are featurized in this process (a pool's start costs more)


def _worker_chunk(args: tuple[str, str, list[int]]) -> list[tuple[Data | None, str, str]]:
    from perfmodel._tvm import load_ms
    from perfmodel.collect.database import Database

    load_ms()
    path, granularity, positions = args
    if path not in _worker_dbs:
        _worker_dbs[path] = Database.open(path)
    db = _worker_dbs[path]
    # plain numpy arrays back to the parent: torch would share each tensor through a file descriptor
    # (one per tensor: thousands of graphs exhaust the descriptor limit and kill the pool's result thread)
    return [(None if g is None else {k: v.numpy() for k, v in g.to_dict().items()}, reason, msg)
            for g, reason, msg in (_graph_of(db, db.records[i], granularity) for i in positions)]


def _graphs(jobs: list, granularity: str, workers: int) -> Iterator[tuple[Data | None, str, str]]:
    """Graphs of the jobs' records, in order; ``workers`` > 1 uses a pool of forked processes."""
    if workers <= 1 or len(jobs) < POOL_MIN_JOBS:
        for db, raw, *_ in jobs:
            yield _graph_of(db, raw, granularity)
        return
    import multiprocessing as mp

    chunks: list[tuple[str, str, list[int]]] = []
    pos = {}
    for db, raw, *_ in jobs:
        key = str(db.path)
        if key not in pos:
            pos[key] = {id(r): i for i, r in enumerate(db.records)}
            _worker_dbs[key] = db  # the forked workers inherit the parsed database instead of re-reading it
        i = pos[key][id(raw)]
        if chunks and chunks[-1][0] == key and len(chunks[-1][2]) < 32:
            chunks[-1][2].append(i)
        else:
            chunks.append((key, granularity, [i]))
    with mp.get_context("fork").Pool(workers) as pool:  # fork: no re-import of the caller's __main__
        try:
            for out in pool.imap(_worker_chunk, chunks):
                for arrays, reason, msg in out:
                    yield (None if arrays is None else Data(**{k: torch.from_numpy(v) for k, v in arrays.items()}),
                           reason, msg)
        finally:
            _worker_dbs.clear()


def build(db_dirs: list[Path], *, granularity: str = "stage", max_records: int | None = None,
          max_spread: float | None = None, workers: int = 1,
          progress: bool = True, reuse: dict[tuple[str, int], Data] | None = None) -> tuple[list[Data], dict[str, Any]]:
    """Replay and featurize every valid record of the databases.

    ``reuse`` maps ``(resolved database dir, line)`` to a graph built before from the same record.
    ``max_spread`` drops records whose fastest timing rounds disagreed by more (the collector's
    ``measure_info.jsonl``; reason ``unstable``); records without that information are kept.
    Records the guard stored as ``disturbed`` (it gave up waiting for a quiet machine) are always
    dropped (reason ``disturbed``).

    Returns:
        The list of ``Data`` items and the metadata dict (vocabularies, skipped counts, sources).
    """
    from perfmodel.collect.database import Database, trace_hash

    task_names: list[str] = []
    families: list[str] = []
    skipped: Counter[str] = Counter()
    errors: list[str] = []
    sources: list[list[Any]] = []
    task_ids: list[int] = []
    family_ids: list[int] = []
    target_keys: list[str] = []  # of each graph: its target summary as JSON
    datas: list[Data] = []
    jobs: list[tuple[Any, Any, int, int, float, str]] = []  # (db, raw, task, family, flops, target key)

    def note(reason: str, msg: str) -> None:
        skipped[reason] += 1
        if len(errors) < 50:
            errors.append(msg)

    for d in db_dirs:
        db = Database.open(d)
        info = db.measure_info()
        skipped["corrupt_line"] += len(db.bad_lines)
        ident: dict[int, tuple[int, int, float] | None] = {}
        taken: Counter[int] = Counter()
        tkeys = [_target_key(raw.target) for raw in db.records]
        common = Counter(k for k in tkeys if k is not None).most_common(1)
        db_target = common[0][0] if common else None  # for records whose target cannot be read
        for raw, tkey in zip(db.records, tkeys):
            if not raw.ok:
                skipped["failed_measurement"] += 1
                continue
            if max_records is not None and taken[raw.workload] >= max_records:
                continue
            tkey = tkey or db_target
            if tkey is None:
                note("no_target", f"{d}:{raw.line}: no readable target in the record or anywhere in its database")
                continue
            seen = info.get((raw.workload, trace_hash(raw.key))) if info else None
            if seen is not None and seen.get("disturbed"):  # the guard gave up waiting for a quiet machine
                skipped["disturbed"] += 1
                continue
            if seen is not None and max_spread is not None and float(seen.get("spread") or 0.0) > max_spread:
                skipped["unstable"] += 1
                continue
            if raw.workload not in ident:
                try:
                    name, fam, flops = task_identity(db.workload(raw.workload).mod)
                    if name not in task_names:
                        task_names.append(name)
                    if fam not in families:
                        families.append(fam)
                    ident[raw.workload] = (task_names.index(name), families.index(fam), flops)
                except Exception as e:  # noqa: BLE001
                    ident[raw.workload] = None
                    errors.append(f"{d}: workload line {raw.workload + 1}: {type(e).__name__}: {e}")
            if ident[raw.workload] is None:
                skipped["bad_workload"] += 1
                continue
            taken[raw.workload] += 1
            jobs.append((db, raw, *ident[raw.workload], tkey))

    reuse = reuse or {}
    old = {i: reuse.get((str(job[0].path.resolve()), job[1].line)) for i, job in enumerate(jobs)}
    todo = [job for i, job in enumerate(jobs) if old[i] is None]
    fresh = _graphs(todo, granularity, workers)
    n_reused = sum(1 for v in old.values() if v is not None)

    def results() -> Iterator[tuple[Data | None, str, str]]:
        for i in range(len(jobs)):
            if old[i] is not None:
                d = old[i]
                yield Data(x=d.x, edge_index=d.edge_index, edge_attr=d.edge_attr, io_bytes=d.io_bytes), "", ""
            else:
                bar.update(1)
                yield next(fresh)

    bar = tqdm(total=len(todo), desc="featurize records", unit="rec", smoothing=0.05, disable=not progress)
    for (db, raw, task, fam, flops, tkey), (data, reason, msg) in zip(jobs, results()):
        if data is None:
            note(reason, f"{db.path}:{raw.line}: {msg}")
            continue
        secs = label_secs(raw.run_secs)
        data.y = torch.tensor([math.log(secs)], dtype=torch.float32)
        data.task = torch.tensor([task], dtype=torch.long)
        data.family = torch.tensor([fam], dtype=torch.long)
        data.flops = torch.tensor([flops], dtype=torch.float32)
        data.record = torch.tensor([len(datas)], dtype=torch.long)
        datas.append(data)
        sources.append([str(db.path), raw.line])
        task_ids.append(task)
        family_ids.append(fam)
        target_keys.append(tkey)
    bar.close()
    if not datas:
        raise ValueError(f"no usable record in {', '.join(map(str, db_dirs))} "
                         f"(skipped: {dict(skipped) or 'none'}; first error: {errors[0] if errors else '-'})")
    vocab = [k for k, _ in Counter(target_keys).most_common()]  # most common first; ties: first seen
    index = {k: i for i, k in enumerate(vocab)}
    target_ids = [index[k] for k in target_keys]
    for data, t in zip(datas, target_ids):
        data.target_id = torch.tensor([t], dtype=torch.long)
    meta = {"task_names": task_names, "families": families, "skipped": {k: v for k, v in skipped.items() if v},
            "errors": errors, "sources": sources, "task_ids": task_ids, "family_ids": family_ids,
            "targets": [json.loads(k) for k in vocab], "target_ids": target_ids,
            "schema_version": SCHEMA_VERSION, "meta_version": META_VERSION, "reused": n_reused}
    return datas, meta


def _target_key(target: Any) -> str | None:
    """The ``{kind, mcpu, threads}`` summary of a record's target as JSON; ``None`` when it cannot be read."""
    from perfmodel.workloads import target_summary

    if not isinstance(target, dict) or not target.get("kind"):
        return None
    return json.dumps(target_summary(target))
