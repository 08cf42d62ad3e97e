"""Read and append MetaSchedule JSON databases without ever losing a measured record.

The files are TVM's own (``database_workload.json`` + ``database_tuning_record.json``, one JSON
value per line) so ``ms.database.JSONDatabase`` opens what we write and we open what it writes.
Unlike TVM's loader, a corrupt line here is reported as ``file:line: what is wrong``, counted and
skipped; a half-written last line (a ``kill -9`` during a write) is cut off before appending.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FAILED = 1e10  # MetaSchedule's run_secs of a failed build or run: a record format fact, defined here only


def one_line(e: BaseException) -> str:
    """An exception as one short line: its type and the last line of its message."""
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[-1][:300]}" if lines else type(e).__name__


WORKLOAD_FILE = "database_workload.json"
RECORD_FILE = "database_tuning_record.json"
INFO_FILE = "measure_info.jsonl"  # what the timing guard saw, one JSON line per record (TVM never reads it)


def trace_hash(key: str) -> str:
    """Short stable id of a schedule (its trace key, :attr:`RawRecord.key`) in side files."""
    import hashlib

    return hashlib.sha1(key.encode()).hexdigest()[:16]


def to_py(obj: Any) -> Any:
    """TVM FFI JSON values (``String``, ``FloatImm``, arrays, maps) as plain Python JSON values."""
    if isinstance(obj, bool) or obj is None:
        return obj
    if isinstance(obj, (int, float)):
        return obj
    if isinstance(obj, str):
        return str(obj)
    if isinstance(obj, dict) or type(obj).__name__ == "Map":
        return {str(k): to_py(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)) or type(obj).__name__ == "Array":
        return [to_py(x) for x in obj]
    if hasattr(obj, "value"):
        return obj.value
    raise TypeError(f"cannot turn {type(obj).__name__} into JSON")


class DatabaseError(ValueError):
    """A database that cannot be read at all (missing, empty, wrong layout)."""


@dataclass
class RawRecord:
    """One tuning-record line, parsed as JSON but not yet turned into TVM objects.

    Attributes:
        line: 1-based line number in the record file.
        workload: index of the workload line it belongs to.
        trace: the trace JSON (instructions + decisions).
        run_secs: every repeat timing in seconds (``[1e10]`` marks a failure).
        target: the target JSON, or ``None``.
        args_info: the argument JSON, or ``None``.
    """

    line: int
    workload: int
    trace: Any
    run_secs: list[float] | None
    target: Any
    args_info: Any

    @property
    def ok(self) -> bool:
        """True when the record holds real timings (not a failed build/run)."""
        return bool(self.run_secs) and all(0 < s < FAILED for s in self.run_secs)

    @property
    def key(self) -> str:
        """Identity of the schedule (its trace with decisions), for de-duplication."""
        return json.dumps(self.trace, sort_keys=True, separators=(",", ":"))

    def to_json(self) -> list:
        return [self.workload, [self.trace, self.run_secs, self.target, self.args_info]]


@dataclass
class Database:
    """A MetaSchedule JSON database directory, read tolerantly and appended to safely.

    Attributes:
        path: the directory holding the two files.
        workloads: workload JSON lines (``[shash, b64]``), index = line - 1.
        records: valid parsed tuning records, in file order.
        bad_lines: one message per corrupt line that was skipped.
    """

    path: Path
    workloads: list[Any] = field(default_factory=list)
    records: list[RawRecord] = field(default_factory=list)
    bad_lines: list[str] = field(default_factory=list)

    @classmethod
    def open(cls, path: str | os.PathLike, *, create: bool = False) -> Database:
        """Read the database at ``path``; ``create`` makes an empty one when it is missing."""
        p = Path(path)
        wl, rec = p / WORKLOAD_FILE, p / RECORD_FILE
        if not wl.exists() or not rec.exists():
            if not create:
                raise DatabaseError(f"{p}: not a MetaSchedule database (needs {WORKLOAD_FILE} and {RECORD_FILE})")
            p.mkdir(parents=True, exist_ok=True)
            wl.touch()
            rec.touch()
        db = cls(path=p)
        for n, text in _lines(wl):
            try:
                obj = json.loads(text)
                if not (isinstance(obj, list) and len(obj) == 2 and isinstance(obj[1], str)):
                    raise ValueError("expected [structural_hash, module]")
            except ValueError as e:
                db.bad_lines.append(f"{wl}:{n}: corrupt workload line ({e})")
                obj = None
            db.workloads.append(obj)  # keep indices aligned even for a bad line
        for n, text in _lines(rec):
            try:
                db.records.append(_parse_record(n, text, len(db.workloads)))
            except ValueError as e:
                db.bad_lines.append(f"{rec}:{n}: corrupt tuning record ({e})")
        for f in (wl, rec):  # one warning per file: its corrupt line numbers and the first reason
            bad = [m[len(f"{f}:"):].split(": ", 1) for m in db.bad_lines if m.startswith(f"{f}:")]
            if bad:
                warnings.warn(f"skipped {len(bad)} corrupt line{'s' * (len(bad) > 1)} of {f}: "
                              f"{', '.join(n for n, _ in bad)} (line {bad[0][0]}: {bad[0][1]})", stacklevel=2)
        return db

    # ---- writing -------------------------------------------------------------------------
    def add_workload(self, mod: Any) -> int:
        """Index of ``mod``'s workload line, appending one when it is new."""
        from perfmodel._tvm import load_ms
        ms = load_ms()

        entry = ms.database.Workload(mod).as_json()
        entry = [str(entry[0]), str(entry[1])]
        for i, w in enumerate(self.workloads):
            if w is not None and w[0] == entry[0] and w[1] == entry[1]:
                return i
        _append(self.path / WORKLOAD_FILE, [json.dumps(entry)])
        self.workloads.append(entry)
        return len(self.workloads) - 1

    def append(self, records: list[RawRecord]) -> None:
        """Append records durably (one write, flushed and fsynced)."""
        if records:
            _append(self.path / RECORD_FILE, [json.dumps(r.to_json()) for r in records])
            self.records.extend(records)

    # ---- reading as TVM objects ----------------------------------------------------------
    def workload(self, index: int) -> Any:
        """The ``ms.database.Workload`` of a workload line (cached)."""
        from perfmodel._tvm import load_ms
        ms = load_ms()

        cache = self.__dict__.setdefault("_wl_cache", {})
        if index not in cache:
            if not (0 <= index < len(self.workloads)) or self.workloads[index] is None:
                raise DatabaseError(f"{self.path / WORKLOAD_FILE}: no valid workload at line {index + 1}")
            cache[index] = ms.database.Workload.from_json(self.workloads[index])
        return cache[index]

    def tuning_record(self, rec: RawRecord) -> Any:
        """The ``ms.database.TuningRecord`` of a raw record (replays nothing)."""
        from perfmodel._tvm import load_ms
        ms = load_ms()

        return ms.database.TuningRecord.from_json(
            [rec.trace, rec.run_secs, rec.target, rec.args_info], self.workload(rec.workload)
        )

    def measure_info(self) -> dict[tuple[int, str], dict]:
        """What the guard saw for each record, by ``(workload, trace_hash(record.key))``; empty
        for a database without ``measure_info.jsonl`` (e.g. one written by ``tune_tir``)."""
        out: dict[tuple[int, str], dict] = {}
        path = self.path / INFO_FILE
        if path.is_file():
            for n, text in _lines(path):
                try:
                    obj = json.loads(text)
                    out[(int(obj["workload"]), str(obj["trace"]))] = obj
                except (ValueError, KeyError, TypeError):
                    self.bad_lines.append(f"{path}:{n}: corrupt measure-info line")
        return out

    def records_by_workload(self) -> dict[int, list[RawRecord]]:
        out: dict[int, list[RawRecord]] = {}
        for r in self.records:
            out.setdefault(r.workload, []).append(r)
        return out

    def sample(self, tasks: Iterable[str], n: int, *, seed: int = 0,
               log: Callable[[str], None] | None = None) -> list[tuple[str, RawRecord, Any]]:
        """Up to ``n`` valid records of each registry task in ``tasks`` (one seeded draw per task, kept in file
        order), each with its replayed ``MeasureCandidate``: ``(task, record, candidate)`` in the order of
        ``tasks``. A task the database lacks and a record that does not replay are left out, one line each to
        ``log`` (default: stderr)."""
        import numpy as np

        from perfmodel.workloads import task_of_mod

        log = log or (lambda msg: print(msg, file=sys.stderr))
        by_wl = self.records_by_workload()
        names = {}
        for wl in by_wl:
            name = task_of_mod(self.workload(wl).mod)
            if name:
                names[name] = wl
        rng = np.random.default_rng(seed)
        out = []
        for name in tasks:
            if name not in names:
                log(f"skip {name}: not in {self.path}")
                continue
            recs = [r for r in by_wl[names[name]] if r.ok]
            for i in sorted(rng.choice(len(recs), size=min(n, len(recs)), replace=False)):
                try:
                    cand = self.tuning_record(recs[i]).as_measure_candidate()
                except Exception as e:  # noqa: BLE001  a record TVM cannot replay any more
                    log(f"skip {name}'s record {i} in {self.path}: {one_line(e)}")
                    continue
                out.append((name, recs[i], cand))
        return out


def _parse_record(n: int, text: str, n_workloads: int) -> RawRecord:
    obj = json.loads(text)
    if not (isinstance(obj, list) and len(obj) == 2 and isinstance(obj[0], int) and isinstance(obj[1], list)):
        raise ValueError("expected [workload_index, [trace, run_secs, target, args_info]]")
    if not 0 <= obj[0] < n_workloads:
        raise ValueError(f"workload index {obj[0]} out of range (database has {n_workloads} workloads)")
    body = obj[1]
    if len(body) < 1 or not isinstance(body[0], list):
        raise ValueError("missing trace")
    run_secs = body[1] if len(body) > 1 else None
    if run_secs is not None and not (isinstance(run_secs, list) and all(isinstance(s, (int, float)) for s in run_secs)):
        raise ValueError("run_secs is not a list of numbers")
    return RawRecord(
        line=n, workload=obj[0], trace=body[0],
        run_secs=[float(s) for s in run_secs] if run_secs is not None else None,
        target=body[2] if len(body) > 2 else None, args_info=body[3] if len(body) > 3 else None,
    )


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """Numbered non-empty lines; an unterminated last line (a write in flight) is left out."""
    with open(path, encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            if not line.endswith("\n"):
                return
            line = line.strip()
            if line:
                yield n, line


def _append(path: Path, lines: list[str]) -> None:
    _repair_tail(path)
    with open(path, "a", encoding="utf-8") as f:
        f.write("".join(line + "\n" for line in lines))
        f.flush()
        os.fsync(f.fileno())


def _repair_tail(path: Path) -> None:
    """Cut a half-written last line (no trailing newline) left by a killed writer."""
    size = path.stat().st_size if path.exists() else 0
    if size == 0:
        return
    with open(path, "rb+") as f:
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return
        f.seek(0)
        content = f.read()
        cut = content.rfind(b"\n") + 1
        f.truncate(cut)


def iter_databases(path: str | os.PathLike) -> Iterator[Path]:
    """Every database directory at or under ``path`` (a directory holding both files)."""
    p = Path(path)
    if not p.exists():
        raise DatabaseError(f"{p}: no such file or directory")
    if p.is_file():
        p = p.parent
    found = sorted({f.parent for f in p.rglob(RECORD_FILE) if (f.parent / WORKLOAD_FILE).exists()})
    if not found:
        raise DatabaseError(f"{p}: holds no MetaSchedule database ({WORKLOAD_FILE} + {RECORD_FILE})")
    yield from found
