"""`perfmodel show graph`: draws one record's stage graph (.dot / .png) and rejects bad arguments clearly."""

from __future__ import annotations

from pathlib import Path

import pytest

from perfmodel.collect.database import RECORD_FILE, WORKLOAD_FILE

SHIPPED = Path(__file__).resolve().parents[2] / "datasets" / "amd-epyc-t1"


@pytest.fixture(scope="module")
def small_db(tmp_path_factory) -> Path:
    if not (SHIPPED / RECORD_FILE).exists():
        pytest.skip("no shipped dataset in datasets/amd-epyc-t1")
    out = tmp_path_factory.mktemp("showdb")
    (out / WORKLOAD_FILE).write_bytes((SHIPPED / WORKLOAD_FILE).read_bytes())
    with open(SHIPPED / RECORD_FILE, "rb") as f:
        lines = [f.readline() for _ in range(3)]
    (out / RECORD_FILE).write_bytes(b"".join(line for line in lines if line.endswith(b"\n")))
    return out


def test_show_graph_dot_and_png(small_db, tmp_path, capsys):
    from perfmodel.cli import main

    dot = tmp_path / "g.dot"
    assert main(["show", "graph", str(small_db), "--record", "1", "--out", str(dot)]) == 0
    text = dot.read_text()
    assert text.startswith("digraph stage_graph {") and "->" in text and "iters=" in text
    png = tmp_path / "g.png"
    assert main(["show", "graph", str(small_db), "--record", "0", "--out", str(png), "--granularity", "loop"]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "nodes" in capsys.readouterr().out


def test_show_graph_bad_arguments(small_db, tmp_path, capsys):
    from perfmodel.cli import main

    assert main(["show", "graph", str(small_db), "--record", "99", "--out", str(tmp_path / "g.png")]) == 2
    assert "out of range" in capsys.readouterr().err
    assert main(["show", "graph", str(small_db), "--out", str(tmp_path / "g.txt")]) == 2
    assert ".dot" in capsys.readouterr().err
