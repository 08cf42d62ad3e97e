"""Reading a database tolerantly: corrupt lines are skipped, counted and reported once per file."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

from perfmodel.collect.database import RECORD_FILE, WORKLOAD_FILE, Database

RECORD = json.dumps([0, [[[], []], [1e-3, 1.1e-3]]])


def _db(folder: Path, workloads: list[str], records: list[str]) -> Path:
    folder.mkdir()
    (folder / WORKLOAD_FILE).write_text("".join(x + "\n" for x in workloads))
    (folder / RECORD_FILE).write_text("".join(x + "\n" for x in records))
    return folder


def test_corrupt_lines_are_one_warning_per_file(tmp_path: Path) -> None:
    records = [RECORD] * 12
    records[1], records[5], records[6] = "{not json", json.dumps([7, [[[], []], [1.0]]]), "[0]"
    path = _db(tmp_path / "db", [json.dumps(["0x1", "module"]), "[1, 2, 3]"], records)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        db = Database.open(path)
    texts = [str(w.message) for w in seen]
    assert texts[0].startswith(f"skipped 1 corrupt line of {path / WORKLOAD_FILE}: 2 (line 2: corrupt workload line")
    assert texts[1].startswith(f"skipped 3 corrupt lines of {path / RECORD_FILE}: 2, 6, 7 (line 2: corrupt tuning record")
    assert len(texts) == 2
    assert len(db.bad_lines) == 4 and "out of range" in db.bad_lines[2]  # the details stay on the database
    assert len(db.records) == 9 and len(db.workloads) == 2


def test_a_clean_database_warns_nothing(tmp_path: Path) -> None:
    path = _db(tmp_path / "db", [json.dumps(["0x1", "module"])], [RECORD] * 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(Database.open(path).records) == 3



def test_sample_draws_the_same_valid_records_per_task_and_names_what_it_left_out(tiny_db: Path) -> None:
    db = Database.open(tiny_db)
    lines: list[str] = []
    picked = db.sample(["NRM-0", "XYZ-9", "GMM-0"], 3, seed=1, log=lines.append)
    assert [t for t, _, _ in picked] == ["NRM-0"] * 3 + ["GMM-0"] * 3  # in the order asked
    assert all(r.ok for _, r, _ in picked) and all(c.sch.mod is not None for _, _, c in picked)
    assert lines == [f"skip XYZ-9: not in {db.path}"]
    again = db.sample(["NRM-0", "GMM-0"], 3, seed=1, log=lines.append)
    assert [r.key for _, r, _ in again] == [r.key for _, r, _ in picked]  # the seed decides the draw
    every = db.sample(["GMM-0"], 10_000, log=lines.append)
    n_ok = sum(1 for r in db.records if r.ok and r.workload == every[0][1].workload)
    assert len(every) == n_ok  # asking for more than there are gives all of them
