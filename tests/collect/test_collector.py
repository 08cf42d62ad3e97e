"""The collector on real TVM: a small collection, resume after kill -9, RPC on loopback, bad input."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from perfmodel.collect.collector import CollectConfig, collect
from perfmodel.collect.database import RECORD_FILE, Database, DatabaseError
from perfmodel.collect.measure import Guard
from perfmodel.collect.rpc import RPCMeasurer

QUIET = Guard(enabled=False)  # these tests are about collecting; tests/collect/test_measure.py covers the guard

pytestmark = pytest.mark.slow


def _keys(db: Database) -> list[str]:
    return [r.key for r in db.records]


def test_small_collection_is_a_valid_metaschedule_database(tiny_db: Path) -> None:
    db = Database.open(tiny_db)
    assert len(db.workloads) == 2
    per_wl = db.records_by_workload()
    assert sorted(len(v) for v in per_wl.values()) == [24, 24]
    assert len(set(_keys(db))) == len(db.records), "duplicate schedules"
    ok = [r for r in db.records if r.ok]
    assert len(ok) >= 40
    assert all(len(r.run_secs) == 3 for r in ok), "every record keeps all 3 repeats"
    # TVM's own JSONDatabase reads what we wrote, and a record replays to a runnable schedule.
    from perfmodel._tvm import load_ms

    ms = load_ms()
    tvm_db = ms.database.JSONDatabase(work_dir=str(tiny_db))
    recs = tvm_db.get_all_tuning_records()
    assert len(recs) == len(db.records)
    cand = recs[0].as_measure_candidate()
    assert "main" in [gv.name_hint for gv in cand.sch.mod.get_global_vars()]


def test_rerun_resumes_to_target_without_duplicates(tiny_db: Path, tmp_path: Path) -> None:
    import shutil

    work = tmp_path / "db"
    shutil.copytree(tiny_db, work / "test")
    before = Database.open(work / "test")
    # Same targets: nothing to do.
    out = collect(CollectConfig(out_dir=str(work), hardware="test", tasks=["GMM-0"], n_random=12, n_evolve=12,
                                batch=6, progress=False, guard=QUIET))
    assert out["GMM-0"]["records"] == 24
    assert len(Database.open(work / "test").records) == len(before.records)
    # Raise the target: it continues from what is there.
    out = collect(CollectConfig(out_dir=str(work), hardware="test", tasks=["GMM-0"], n_random=12, n_evolve=18,
                                batch=6, progress=False, guard=QUIET))
    after = Database.open(work / "test")
    assert out["GMM-0"]["records"] == 30
    assert _keys(after)[: len(before.records)] == _keys(before), "earlier records untouched"
    assert len(set(_keys(after))) == len(after.records)


def test_kill_9_mid_collection_then_resume(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "perfmodel.cli", "collect", f"out_dir={tmp_path}", "hardware=k",
           "tasks=[GMM-0]", "n_random=30", "n_evolve=0", "batch=3", "progress=false", "guard.enabled=false"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    rec_file = tmp_path / "k" / RECORD_FILE
    deadline = time.time() + 240
    while time.time() < deadline:
        if rec_file.exists() and rec_file.read_text().count("\n") >= 6:
            break
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    killed = Database.open(tmp_path / "k")
    n_killed = len(killed.records)
    assert 6 <= n_killed < 30
    # A writer killed mid-line leaves a torn tail: simulate it, the resume must cut it off.
    with open(rec_file, "a") as f:
        f.write('[0, [[["GetSBlock"')
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=600)
    done = Database.open(tmp_path / "k")
    assert len(done.records) == 30
    assert _keys(done)[:n_killed] == _keys(killed), "nothing measured before the kill is lost"
    assert len(set(_keys(done))) == 30, "no duplicates after resume"
    assert not done.bad_lines


def test_corrupt_line_is_named_counted_and_skipped(tiny_db: Path, tmp_path: Path) -> None:
    import shutil

    shutil.copytree(tiny_db, tmp_path / "t")
    rec_file = tmp_path / "t" / RECORD_FILE
    lines = rec_file.read_text().splitlines()
    lines.insert(3, "{not json")
    lines.insert(7, json.dumps([99, [[[], []], [1e-3]]]))
    rec_file.write_text("\n".join(lines) + "\n")
    with pytest.warns(UserWarning, match=r"skipped 2 corrupt lines of \S*database_tuning_record\.json: 4, 8 "):
        db = Database.open(tmp_path / "t")
    assert len(db.bad_lines) == 2
    assert "out of range" in db.bad_lines[1] and ":8:" in db.bad_lines[1]
    assert len(db.records) == len(lines) - 2
    # A collection on top of it goes on and keeps the good records.
    out = collect(CollectConfig(out_dir=str(tmp_path), hardware="t", tasks=["NRM-0"], n_random=12, n_evolve=14,
                                batch=2, progress=False, guard=QUIET))
    assert out["NRM-0"]["records"] == 26


def test_bad_inputs_fail_with_one_clear_line(tmp_path: Path) -> None:
    from perfmodel.cli import main

    with pytest.raises(DatabaseError, match="not a MetaSchedule database"):
        Database.open(tmp_path / "missing")
    for args, text in [
        (["collect", f"out_dir={tmp_path}", "tasks=[NOPE-9]"], "unknown task 'NOPE-9'"),
        (["collect", f"out_dir={tmp_path}", "target={kind:nosuchkind}", "tasks=[GMM-0]"], "rejected by TVM"),
        (["collect", f"out_dir={tmp_path}", "runner=rpc", "rpc.port=1", "tasks=[GMM-0]"], "RPC tracker 127.0.0.1:1"),
    ]:
        r = subprocess.run([sys.executable, "-m", "perfmodel.cli", *args], capture_output=True, text=True, timeout=120)
        assert r.returncode == 2, r.stderr
        last = r.stderr.strip().splitlines()[-1]
        assert text in last and last.startswith("perfmodel collect: error:"), last


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_rpc_runner_on_loopback(tmp_path: Path) -> None:
    port = _free_port()
    env = dict(os.environ, TVM_NUM_THREADS="1")
    tracker = subprocess.Popen([sys.executable, "-m", "tvm.exec.rpc_tracker", "--host", "127.0.0.1", "--port",
                                str(port), "--port-end", str(port + 1)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    server = None
    try:
        time.sleep(2)
        sport = _free_port()
        server = subprocess.Popen([sys.executable, "-m", "tvm.exec.rpc_server", "--tracker", f"127.0.0.1:{port}",
                                   "--key", "loop", "--host", "127.0.0.1", "--port", str(sport),
                                   "--port-end", str(sport + 1)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                                  start_new_session=True)
        from tvm import rpc

        deadline = time.time() + 60  # wait until the server has registered with the tracker
        while time.time() < deadline:
            if any(str(i["key"]).endswith("loop") for i in rpc.connect_tracker("127.0.0.1", port).summary()["server_info"]):
                break
            assert server.poll() is None, "rpc_server exited"
            time.sleep(0.5)
        # A key with no server fails at once with one line instead of waiting forever.
        with pytest.raises(ConnectionError, match="no server registered under key 'nokey'"):
            RPCMeasurer(target=None, host="127.0.0.1", port=port, key="nokey")
        out = collect(CollectConfig(out_dir=str(tmp_path), hardware="rpc", tasks=["GMM-0"], n_random=4, n_evolve=0,
                                    batch=2, runner="rpc", rpc={"host": "127.0.0.1", "port": port, "key": "loop"},
                                    progress=False, guard=QUIET))
        assert out["GMM-0"] == {"records": 4, "valid": 4, "failed": 0}
        db = Database.open(tmp_path / "rpc")
        assert all(len(r.run_secs) == 3 and 0 < min(r.run_secs) < 1 for r in db.records)
    finally:  # each runs in a TVM PopenWorker of its own: kill the whole session, or those outlive the test
        for p in (server, tracker):
            if p is not None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        deadline = time.time() + 10
        while time.time() < deadline and _in_session(tracker.pid) + _in_session(server.pid if server else -1):
            time.sleep(0.2)
        assert not _in_session(tracker.pid) + _in_session(server.pid if server else -1), "RPC processes left behind"


def _in_session(sid: int) -> list[int]:
    """Live processes (not zombies) of session ``sid``."""
    import psutil

    out = []
    for q in psutil.process_iter(["pid", "status"]):
        try:
            if q.info["status"] != psutil.STATUS_ZOMBIE and os.getsid(q.info["pid"]) == sid:
                out.append(q.info["pid"])
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    return out


def test_collect_config_defaults_are_the_yaml_defaults() -> None:
    """CollectConfig and conf/collect.yaml name the same defaults (one is not allowed to drift)."""
    from dataclasses import fields

    from omegaconf import OmegaConf

    from perfmodel.collect.collector import CollectConfig

    yaml = OmegaConf.load(Path(__file__).resolve().parents[2] / "conf" / "collect.yaml")
    plain = {f.name: f.default for f in fields(CollectConfig)}
    shared = [k for k in ("out_dir", "hardware", "target", "n_random", "n_evolve", "batch", "seed", "runner",
                          "retime_from", "progress", "max_duplicates") if k in yaml]
    assert len(shared) >= 8
    assert {k: yaml[k] for k in shared} == {k: plain[k] for k in shared}
