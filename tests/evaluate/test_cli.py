"""`perfmodel evaluate` / `check` on the command line: what they report about the databases they read."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import pytest

from perfmodel.collect.database import RECORD_FILE, WORKLOAD_FILE, Database


@pytest.fixture
def corrupt_db(tmp_path: Path) -> Path:
    """A database whose second tuning record is corrupt."""
    (tmp_path / WORKLOAD_FILE).write_text(json.dumps(["0x1", "module"]) + "\n")
    (tmp_path / RECORD_FILE).write_text(json.dumps([0, [[[], []], [1e-3]]]) + "\n{bad\n")
    return tmp_path


@pytest.mark.parametrize("cmd, where", [("evaluate", "perfmodel.evaluate.evaluator.evaluate"),
                                        ("check", "perfmodel.evaluate.check.check")])
def test_corrupt_lines_are_reported_not_silenced(cmd: str, where: str, corrupt_db: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from perfmodel.cli import main

    def reads_the_database(*args: Any, **kwargs: Any) -> None:
        Database.open(corrupt_db)
        raise ValueError("stop here")  # the command's real work is not what this test is about

    monkeypatch.setattr(where, reads_the_database)
    argv = {"evaluate": ["evaluate", "--db", str(corrupt_db), "--checkpoint", "none", "--baselines", "",
                         "--all-tasks"],
            "check": ["check", "GMM-0", "--checkpoint", "none"]}[cmd]
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("default")
        assert main(argv) == 2
    assert [str(w.message) for w in seen if "corrupt" in str(w.message)] == [
        f"skipped 1 corrupt line of {corrupt_db / RECORD_FILE}: 2 (line 2: corrupt tuning record "
        "(Expecting property name enclosed in double quotes: line 1 column 2 (char 1)))"]
