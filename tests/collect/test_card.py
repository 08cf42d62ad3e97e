"""The dataset card states what it computes: the protocol's timeouts, the records' targets, the guard's side file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from perfmodel.collect.card import render_card
from perfmodel.collect.database import INFO_FILE, Database, RawRecord
from perfmodel.collect.database import FAILED
from perfmodel.collect.measure import Protocol

TARGET = {"kind": "llvm", "mcpu": "znver3", "num-cores": 1}


@pytest.fixture
def db_dir(tmp_path: Path) -> Path:
    from conftest import matmul_mod

    db = Database.open(tmp_path / "db", create=True)
    wl = db.add_workload(matmul_mod(16))
    db.append([RawRecord(line=0, workload=wl, trace=[[], []], run_secs=secs, target=TARGET, args_info=None)
               for secs in ([1e-3, 1.1e-3, 1.2e-3], [2e-3, 2e-3, 2.2e-3], [FAILED])])
    return db.path


def test_card_states_the_protocol_timeouts_and_the_targets(db_dir: Path, tmp_path: Path) -> None:
    card = render_card(db_dir, collect_cfg=str(tmp_path / "missing.yaml"))
    p = Protocol()
    assert f"a build over {p.build_timeout_s:g} s or a timing round over {p.timeout_s:g} s" in card
    assert "kind `llvm`, mcpu `znver3`, 1 thread: 3 records" in card
    assert "| Valid records | 2 over 1 tasks |" in card and "| 1 |" in card  # one failed record
    assert "Timing guard" not in card  # no measure_info.jsonl: nothing made up
    for claim in ("~85%", "1.8-2x", "no `mcpu`"):  # measured elsewhere, once: not this card's to state
        assert claim not in card
    cfg = tmp_path / "collect.yaml"
    cfg.write_text("n_random: 2\nn_evolve: 2\ntasks_default: [GMM-0]\nprotocol: {timeout_s: 7}\n")
    assert "a timing round over 7 s" in render_card(db_dir, collect_cfg=str(cfg))


def test_card_summarizes_the_guard_side_file(db_dir: Path, tmp_path: Path) -> None:
    lines = [{"workload": 0, "trace": "a", "rounds": 6, "spread": 0.01, "unstable": False},
             {"workload": 0, "trace": "b", "rounds": 12, "spread": 0.2, "unstable": True, "disturbed": "busy"},
             {"workload": 0, "trace": "c", "rounds": 8, "spread": 0.02, "unstable": False}]
    (db_dir / INFO_FILE).write_text("".join(json.dumps(x) + "\n" for x in lines))
    card = render_card(db_dir, collect_cfg=str(tmp_path / "missing.yaml"))
    assert ("| Timing guard (`measure_info.jsonl`, 3 records) | 1 unstable (fastest rounds never agreed), "
            "1 stored while disturbed; median 8 rounds per record, median spread of the fastest rounds 2.00% |") in card
