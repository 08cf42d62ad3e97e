"""The on-disk dataset: built from the shipped records and from a plain ``ms.tune_tir`` database; cache; bad records;
two folders of two targets."""

from __future__ import annotations

import json
import math
import shutil
import statistics
from pathlib import Path

import numpy as np
import pytest
import torch

from perfmodel.collect.database import RECORD_FILE, WORKLOAD_FILE, Database
from perfmodel.data import FeatureNorm, ScheduleDataset, make_split
from perfmodel.featurize import EDGE_FEATURES, NODE_FEATURES

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "datasets" / "amd-epyc-t1"
PER_TASK = 3  # records per workload taken from the shipped database (keeps the test short)


def _snapshot(src: Path, dst: Path) -> Path:
    """A frozen copy of a database that is still growing (whole lines only)."""
    dst.mkdir(parents=True)
    for name in (WORKLOAD_FILE, RECORD_FILE):
        data = (src / name).read_bytes()
        (dst / name).write_bytes(data[: data.rfind(b"\n") + 1])
    return dst


@pytest.fixture(scope="module")
def shipped(tmp_path_factory) -> Path:
    if not (SHIPPED / RECORD_FILE).exists():
        pytest.skip("no shipped dataset in datasets/amd-epyc-t1")
    return _snapshot(SHIPPED, tmp_path_factory.mktemp("shipped") / "db")


@pytest.fixture(scope="module")
def dataset(shipped, tmp_path_factory) -> ScheduleDataset:
    return ScheduleDataset(tmp_path_factory.mktemp("cache"), shipped, max_records=PER_TASK, progress=False)


@pytest.mark.slow  # opens the 29 MB shipped database
def test_builds_from_shipped_records(dataset, shipped):
    from perfmodel import workloads

    db = Database.open(shipped)
    n_workloads_ok = len({r.workload for r in db.records if r.ok})
    assert dataset.processed_now
    assert len(dataset) + sum(v for k, v in dataset.skipped.items() if k != "failed_measurement") \
        == sum(min(PER_TASK, sum(1 for r in db.records if r.ok and r.workload == w)) for w in range(len(db.workloads)))
    assert len(dataset.task_names) == n_workloads_ok
    reg = workloads.registry()
    assert all(t in reg for t in dataset.task_names)  # the collector measures registry tasks
    assert set(dataset.families) <= {reg[t].family for t in dataset.task_names}
    d = dataset[0]
    assert d.x.shape[1] == len(NODE_FEATURES) and d.edge_attr.shape[1] == len(EDGE_FEATURES)
    assert d.y.dtype == torch.float32 and d.y.shape == (1,)
    # the label is the log of the median of the record's timings
    path, line = dataset.sources[int(d.record)]
    raw = next(r for r in Database.open(path).records if r.line == line)
    assert float(d.y) == pytest.approx(math.log(statistics.median(raw.run_secs)), rel=1e-6)
    assert dataset.task_names[int(d.task)] == workloads.task_of_mod(Database.open(path).workload(raw.workload).mod)
    assert float(d.flops) == pytest.approx(reg[dataset.task_names[int(d.task)]].flops, rel=1e-5)
    assert dataset.families[int(d.family)] == reg[dataset.task_names[int(d.task)]].family
    assert [int(dataset[i].record) for i in range(len(dataset))] == list(range(len(dataset)))
    # the dataset's graph is the featurizer's graph of the replayed tuning record
    from perfmodel.featurize import featurize

    assert torch.equal(featurize(Database.open(path).tuning_record(raw)).x, d.x)
    assert np.array_equal(dataset.task_ids, [int(dataset[i].task) for i in range(len(dataset))])


@pytest.mark.slow  # opens the 29 MB shipped database
def test_second_build_hits_the_cache(dataset, shipped):
    again = ScheduleDataset(dataset.root, shipped, max_records=PER_TASK, progress=False)
    assert not again.processed_now
    assert len(again) == len(dataset) and again.task_names == dataset.task_names
    assert torch.equal(again[len(again) - 1].x, dataset[len(dataset) - 1].x)
    # other options (or other contents) are another cache entry
    other = ScheduleDataset(dataset.root, shipped, max_records=1, progress=False)
    assert other.processed_now and other.key != dataset.key


@pytest.mark.slow  # opens the 29 MB shipped database
def test_two_workers_build_the_same_graphs_under_a_small_descriptor_limit(dataset, shipped, tmp_path, monkeypatch):
    import resource

    from perfmodel.data import dataset as dataset_mod

    monkeypatch.setattr(dataset_mod, "POOL_MIN_JOBS", 8)  # the test's few records still go through the pool
    assert len(dataset) * 4 > 256  # ~4 tensors a graph: sharing each by descriptor would pass the limit below
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
    try:
        two = ScheduleDataset(tmp_path / "cache2", shipped, max_records=PER_TASK, workers=2, progress=False)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert len(two) == len(dataset) and two.task_names == dataset.task_names
    for i in range(len(two)):
        a, b = two[i], dataset[i]
        assert torch.equal(a.x, b.x) and torch.equal(a.edge_index, b.edge_index) and torch.equal(a.y, b.y)


@pytest.mark.slow  # opens the 29 MB shipped database
def test_splits_are_reproducible_disjoint_and_grouped(dataset):
    n = len(dataset)
    for kind in ("random", "task", "family"):
        s = make_split(dataset, kind, seed=3)
        s2 = make_split(dataset, kind, seed=3)
        assert all(np.array_equal(s[k], s2[k]) for k in s)
        allidx = np.concatenate([s["train"], s["val"], s["test"]])
        assert len(allidx) == n and len(np.unique(allidx)) == n
        assert len(s["train"]) > 0
    tasks = dataset.task_ids
    s = make_split(dataset, "task", seed=0)
    assert not set(tasks[s["train"]]) & (set(tasks[s["test"]]) | set(tasks[s["val"]]))
    assert len(s["test"]) > 0
    fam = dataset.families[int(dataset.family_ids[0])]
    s = make_split(dataset, "family", seed=0, holdout_family=fam)
    assert set(dataset.family_ids[s["test"]]) == {dataset.families.index(fam)}
    assert dataset.families.index(fam) not in set(dataset.family_ids[s["train"]])
    s = make_split(dataset, "random", seed=0)
    assert set(tasks[s["train"]]) == set(tasks)  # every task is seen in training
    with pytest.raises(ValueError, match="holdout_family"):
        make_split(dataset, "family", holdout_family="no-such-family")
    chosen = [dataset.task_names[int(t)] for t in sorted(set(tasks.tolist()))[:2]]
    s = make_split(dataset, "task", seed=5, test_tasks=chosen)  # the named tasks, whatever the seed
    assert {dataset.task_names[int(t)] for t in tasks[s["test"]]} == set(chosen)
    assert not set(tasks[s["train"]]) & (set(tasks[s["test"]]) | set(tasks[s["val"]])) and len(s["val"])
    assert sum(len(v) for v in s.values()) == n
    with pytest.raises(ValueError, match="test_tasks not in the dataset: nope"):
        make_split(dataset, "task", test_tasks=["nope"])


@pytest.mark.slow  # opens the 29 MB shipped database
def test_feature_norm_fits_train_and_round_trips(dataset, tmp_path):
    s = make_split(dataset, "random", seed=0)
    train = [dataset[int(i)] for i in s["train"]]
    norm = FeatureNorm.fit(train)
    x = torch.cat([norm.apply(d).x for d in train])
    assert x.mean(0).abs().max() < 1e-3
    stds = x.std(0, unbiased=False)
    assert (((stds - 1).abs() < 1e-3) | (stds < 1e-6)).all()
    path = tmp_path / "norm.pt"
    torch.save({"norm": norm.state_dict()}, path)
    back = FeatureNorm.from_state(torch.load(path, weights_only=True)["norm"])
    d = dataset[int(s["test"][0])]
    assert torch.allclose(back.apply(d).x, norm.apply(d).x)
    assert torch.equal(d.x, dataset[int(s["test"][0])].x)  # apply does not modify its input
    bad = dict(norm.state_dict(), schema_version=-1)
    with pytest.raises(ValueError, match="schema"):
        FeatureNorm.from_state(bad)


@pytest.mark.slow  # opens the 29 MB shipped database
def test_bad_records_are_skipped_and_counted(shipped, tmp_path):
    db = Database.open(shipped)
    good = [r for r in db.records if r.ok][:4]
    out = tmp_path / "bad"
    out.mkdir()
    shutil.copy(shipped / WORKLOAD_FILE, out / WORKLOAD_FILE)
    lines = [json.dumps(r.to_json()) for r in good]
    failed = good[0].to_json()
    failed[1][1] = [1e10]
    broken = json.loads(json.dumps(good[1].to_json()))
    broken[1][0][0][0][0] = "NoSuchInstruction"  # first instruction's kind
    lines += [json.dumps(failed), json.dumps(broken), "{not json"]
    (out / RECORD_FILE).write_text("\n".join(lines) + "\n")
    with pytest.warns(UserWarning):
        ds = ScheduleDataset(tmp_path / "cache", out, progress=False)
    assert len(ds) == 4
    assert ds.skipped == {"failed_measurement": 1, "replay_error": 1, "corrupt_line": 1}
    assert any("NoSuchInstruction" in e or "replay" in e.lower() or str(out) in e for e in ds.errors)


def test_no_database_is_a_clear_error(tmp_path):
    from perfmodel.collect.database import DatabaseError

    with pytest.raises(DatabaseError, match="holds no MetaSchedule database"):
        ScheduleDataset(tmp_path / "cache", tmp_path, progress=False)


@pytest.mark.slow
def test_builds_from_plain_tune_tir_database(tmp_path, target):
    """A database written by plain ``ms.tune_tir`` (not our collector) builds; its task gets a stable name."""
    from conftest import matmul_mod

    from perfmodel._tvm import load_ms

    ms = load_ms()
    work = tmp_path / "tune"
    # stock builder/runner; only their worker processes get the fast MetaSchedule import and more time,
    # because a fresh worker importing tvm.s_tir.tensor_intrin on a busy 2-core box exceeds the 30 s default
    runner = ms.runner.LocalRunner(timeout_sec=60, initializer=load_ms)
    try:
        ms.tune_tir(matmul_mod(64), target=target, work_dir=str(work), max_trials_global=8, num_trials_per_iter=8,
                    builder=ms.builder.LocalBuilder(max_workers=1, timeout_sec=120, initializer=load_ms),
                    runner=runner, seed=1)
    finally:
        runner.pool.shutdown()  # TVM's LocalRunner keeps its worker process: else it outlives the test session
    ds = ScheduleDataset(tmp_path / "cache", work, progress=False)
    db = Database.open(work)
    assert len(ds) + ds.skipped.get("failed_measurement", 0) == len(db.records) > 0
    assert len(ds.task_names) == 1 and ds.families == ["unknown"]
    assert ds.task_names[0].startswith("C_")
    assert float(ds[0].flops) == pytest.approx(2 * 64 ** 3, rel=0.01)
    assert float(ds[0].io_bytes) == 3 * 64 * 64 * 4  # A, B, C in float32: the roofline's memory side
    again = ScheduleDataset(tmp_path / "cache", work, progress=False)
    assert not again.processed_now and again.task_names == ds.task_names


@pytest.mark.slow  # opens the 29 MB shipped database
def test_grown_database_is_processed_incrementally(shipped, tmp_path):
    lines = (shipped / RECORD_FILE).read_bytes().splitlines(keepends=True)
    if len(lines) < 30:
        pytest.skip("shipped database too small")
    db = tmp_path / "grow"
    db.mkdir()
    shutil.copy(shipped / WORKLOAD_FILE, db / WORKLOAD_FILE)
    (db / RECORD_FILE).write_bytes(b"".join(lines[:20]))
    first = ScheduleDataset(tmp_path / "cache", db, progress=False)
    assert first.processed_now and first.reused == 0
    with open(db / RECORD_FILE, "ab") as f:  # the collector appends records
        f.write(b"".join(lines[20:30]) + b'[0, [[[], []], [1.0e-3]')  # + a half-written last line
    grown = ScheduleDataset(tmp_path / "cache", db, progress=False)
    assert grown.processed_now and grown.reused == len(first)
    assert len(grown) == len(first) + sum(1 for r in Database.open(db).records[20:30] if r.ok)
    fresh = ScheduleDataset(tmp_path / "cache2", db, progress=False)
    assert fresh.reused == 0 and len(fresh) == len(grown)
    for i in range(len(grown)):
        assert torch.equal(grown[i].x, fresh[i].x) and torch.equal(grown[i].y, fresh[i].y)
        assert torch.equal(grown[i].edge_index, fresh[i].edge_index) and int(grown[i].task) == int(fresh[i].task)


def _copy_db(src: Path, dst: Path, *, records: slice = slice(None), no_target: slice = slice(0)) -> Path:
    """A copy of a database with some of its record lines, the ``no_target`` ones of them stored without target."""
    dst.mkdir(parents=True)
    shutil.copy(src / WORKLOAD_FILE, dst / WORKLOAD_FILE)
    recs = [json.loads(x) for x in (src / RECORD_FILE).read_text().splitlines()[records]]
    for r in recs[no_target]:
        r[1][2] = None
    (dst / RECORD_FILE).write_text("".join(json.dumps(r) + "\n" for r in recs))
    return dst


@pytest.mark.slow  # measures two tiny databases (conftest.two_target_dbs)
def test_two_targets_give_two_target_ids_and_a_vocabulary(two_target_dbs, tmp_path):
    from perfmodel.workloads import native_target, target_summary

    native, generic = two_target_dbs
    ds = ScheduleDataset(tmp_path / "cache", [native, generic], progress=False)
    want = {str(native): target_summary(native_target(1)), str(generic): {"kind": "llvm", "mcpu": "generic",
                                                                         "threads": 1}}
    assert sorted(map(json.dumps, ds.targets)) == sorted(map(json.dumps, want.values()))
    assert np.array_equal(ds.target_ids, [int(ds[i].target_id) for i in range(len(ds))])
    assert [ds.targets[t] for t in ds.target_ids] == [want[d] for d, _ in ds.sources]
    counts = np.bincount(ds.target_ids)
    assert len(counts) == 2 and counts[0] >= counts[1] > 0  # most common first
    assert ds.summary()["targets"] == 2
    from_native = ds.from_databases(native)
    assert from_native.any() and set(ds.target_ids[from_native]) == {ds.targets.index(want[str(native)])}
    with pytest.raises(ValueError, match="none of the dataset's databases"):
        ds.from_databases(_copy_db(native, tmp_path / "elsewhere"))
    # a record without a target gets its database's most common one; a database without any is skipped
    one = _copy_db(generic, tmp_path / "lost" / "one", no_target=slice(0, 2))
    assert [r.target for r in Database.open(one).records[:2]] == [None, None]
    _copy_db(generic, tmp_path / "lost" / "none", no_target=slice(None))
    mixed = ScheduleDataset(tmp_path / "cache", [native, tmp_path / "lost"], progress=False)
    assert mixed.skipped.get("no_target") == sum(r.ok for r in Database.open(generic).records)
    assert any("no readable target" in e for e in mixed.errors)
    assert len(mixed) == len(ds) and sorted(mixed.target_ids.tolist()) == sorted(ds.target_ids.tolist())


@pytest.mark.slow  # measures two tiny databases (conftest.two_target_dbs)
def test_grown_database_keeps_target_ids_of_reused_graphs(two_target_dbs, tmp_path):
    native, generic = two_target_dbs
    lines = (native / RECORD_FILE).read_text().splitlines(keepends=True)
    grow = _copy_db(native, tmp_path / "grow", records=slice(0, 3))
    first = ScheduleDataset(tmp_path / "cache", [grow, generic], progress=False)
    with open(grow / RECORD_FILE, "a") as f:
        f.write("".join(lines[3:]))
    grown = ScheduleDataset(tmp_path / "cache", [grow, generic], progress=False)
    fresh = ScheduleDataset(tmp_path / "cache2", [grow, generic], progress=False)
    assert grown.processed_now and grown.reused == len(first) > 0 and fresh.reused == 0
    assert grown.targets == fresh.targets and len(grown.targets) == 2
    assert np.array_equal(grown.target_ids, fresh.target_ids)
    for i in range(len(grown)):  # every per-graph field of a reused graph is there and right
        a, b = grown[i], fresh[i]
        assert set(a.keys()) == set(b.keys())
        assert all(torch.equal(a[k], b[k]) for k in b.keys())
