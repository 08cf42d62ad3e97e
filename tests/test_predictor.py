"""Predictor: checkpoint loading (weights_only, schema check), predicting schedules, fine-tuning, saving."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from perfmodel.featurize.schema import EDGE_FEATURES, NODE_FEATURES, SCHEMA_VERSION
from perfmodel.models import build_model
from perfmodel import predictor as predictor_mod
from perfmodel.predictor import (CheckpointError, GPCorrection, MeasuredBuffer, OnlineCorrection, Predictor,
                                 RoundDiversity, load_predictor, loo_alpha)
from perfmodel.training.synthetic import SyntheticDataset

torch.set_num_threads(1)  # tiny graphs on a shared 2-core machine: more threads only contend


ZNVER3 = {"kind": "llvm", "mcpu": "znver3", "threads": 1}
GENERIC = {"kind": "llvm", "mcpu": "generic", "threads": 1}


def _predictor(in_dim: int = 16, edge_dim: int = 4, target_input: int = 0, **meta) -> Predictor:
    torch.manual_seed(0)
    cfg = {"name": "gin", "in_dim": in_dim, "edge_dim": edge_dim, "hidden": 16}
    if target_input:  # else the config of a checkpoint from before the target input (no such key)
        cfg["target_input"] = target_input
    return Predictor(model=build_model(cfg), meta={"model": cfg, "schema_version": SCHEMA_VERSION, "norm": None,
                                                   "granularity": "stage", **meta})


def test_save_and_load(tmp_path: Path) -> None:
    p = _predictor(fingerprint="abc")
    ds = SyntheticDataset(n_tasks=2, per_task=5)
    datas = [ds[i] for i in range(len(ds))]
    q = Predictor.from_checkpoint(p.save(tmp_path / "m.pt"))
    assert np.allclose(p.predict_data(datas), q.predict_data(datas))
    assert q.meta["fingerprint"] == "abc"


def test_schema_mismatch_is_refused(tmp_path: Path) -> None:
    path = _predictor(schema_version=SCHEMA_VERSION + 1).save(tmp_path / "old.pt")
    with pytest.raises(CheckpointError) as e:
        Predictor.from_checkpoint(path)
    msg = str(e.value)
    assert f"schema version {SCHEMA_VERSION + 1}" in msg and f"schema version {SCHEMA_VERSION}" in msg
    assert "\n" not in msg


def test_not_a_checkpoint(tmp_path: Path) -> None:
    import collections
    import pickle

    torch.save({"state_dict": {}}, tmp_path / "x.pt")
    (tmp_path / "notes.txt").write_text("hello\n")
    torch.save({"counts": collections.Counter(a=1)}, tmp_path / "objects.pt")  # refused by weights_only=True
    (tmp_path / "data.pkl").write_bytes(pickle.dumps({"a": np.arange(3)}))
    for name in ("x.pt", "notes.txt", "objects.pt", "data.pkl"):
        with pytest.raises(CheckpointError) as e:
            load_predictor(tmp_path / name)
        msg = str(e.value)
        assert msg.startswith(f"{tmp_path / name}: not a perfmodel checkpoint (") and msg.endswith(")"), msg
        assert "\n" not in msg and "weights_only" not in msg, msg  # not torch's advice to unpickle it anyway
    with pytest.raises(FileNotFoundError, match="missing.pt does not exist"):
        load_predictor(tmp_path / "missing.pt")


def test_load_predictor_checks_feature_widths_and_defaults(tmp_path: Path, monkeypatch) -> None:
    with pytest.raises(CheckpointError, match="in_dim=16 but the featurizer gives"):
        load_predictor(_predictor().save(tmp_path / "synthetic.pt"))  # trained on 16 synthetic features
    real = _predictor(in_dim=len(NODE_FEATURES), edge_dim=len(EDGE_FEATURES)).save(tmp_path / "real.pt")
    assert isinstance(load_predictor(real), Predictor)
    monkeypatch.setattr(predictor_mod, "DEFAULT_CHECKPOINT", tmp_path / "none-shipped.ckpt")
    assert load_predictor(None, required=False) is None  # no shipped model: the caller goes on without one
    with pytest.raises(FileNotFoundError, match="none-shipped.ckpt"):
        load_predictor()
    with pytest.raises(FileNotFoundError):
        load_predictor(tmp_path / "named.ckpt", required=False)  # a named file must exist


def test_target_mismatch() -> None:
    znver3 = _predictor(target={"kind": "llvm", "mcpu": "znver3", "threads": 1})
    assert znver3.target == {"kind": "llvm", "mcpu": "znver3", "threads": 1}
    assert znver3.target_mismatch({"kind": "llvm", "mcpu": "znver3", "num-cores": 1}) is None  # target JSON
    assert znver3.target_mismatch({"kind": "llvm", "mcpu": "znver3", "threads": 1}) is None  # summary
    msg = znver3.target_mismatch({"kind": "llvm", "num-cores": 1})  # no mcpu = generic
    assert msg == ("checkpoint trained for llvm/znver3/1 thread(s), scoring for llvm/generic/1 thread(s): "
                   "predictions may be off; retrain on data of this target (python train.py data.db_paths=[...])")
    assert "4 thread(s)" in znver3.target_mismatch({"kind": "llvm", "mcpu": "znver3", "num-cores": 4})
    assert "cuda" in znver3.target_mismatch({"kind": "cuda", "num-cores": 1})
    generic = _predictor(target={"kind": "llvm", "mcpu": "generic", "threads": 1})
    assert generic.target_mismatch({"kind": "llvm", "num-cores": 1}) is None
    old = _predictor()  # a checkpoint from before targets were recorded: no opinion
    assert old.target is None and old.target_mismatch({"kind": "cuda"}) is None


def test_target_mismatch_of_a_tvm_target(target) -> None:
    znver3 = _predictor(target={"kind": "llvm", "mcpu": "znver3", "threads": 1})
    assert "scoring for llvm/generic/1 thread(s)" in znver3.target_mismatch(target)


def _synthetic(target_id: int | None = None) -> list:
    ds = SyntheticDataset(n_tasks=2, per_task=5)
    datas = [ds[i] for i in range(len(ds))]
    for d in datas if target_id is not None else []:
        d.target_id = torch.tensor([target_id])
    return datas


def test_target_input_scores_for_the_target_in_its_vocabulary(tmp_path: Path) -> None:
    p = _predictor(target_input=2, target_vocab=[ZNVER3, GENERIC], target=ZNVER3)
    assert p.target_input and p.target_index({"kind": "llvm", "num-cores": 1}) == 1  # no mcpu = generic
    assert p.target_index({"kind": "llvm", "mcpu": "znver4", "num-cores": 1}) is None
    as_znver3, as_generic = p.predict_data(_synthetic(0)), p.predict_data(_synthetic(1))
    assert not np.allclose(as_znver3, as_generic)
    assert np.array_equal(p.predict_data(_synthetic(), target={"kind": "llvm", "num-cores": 1}), as_generic)
    assert np.array_equal(p.predict_data(_synthetic()), as_znver3)  # no target: the most common one
    assert np.array_equal(p.predict_data(_synthetic(1), target=ZNVER3), as_generic)  # graphs keep their own id
    # a target it does not know: scored as the nearest by CPU features, and target_mismatch says so in one line
    znver4 = {"kind": "llvm", "mcpu": "znver4", "num-cores": 1}
    assert p.scored_as(znver4) == 0 and np.array_equal(p.predict_data(_synthetic(), target=znver4), as_znver3)
    assert p.target_mismatch(znver4) == (
        "checkpoint trained for llvm/znver3/1 thread(s) and llvm/generic/1 thread(s) (target input), scoring for "
        "llvm/znver4/1 thread(s) (scored as llvm/znver3/1 thread(s), the nearest by CPU features): predictions "
        "may be off; retrain on data of this target (python train.py data.db_paths=[...])")
    # with a Zen 5 known too, a Zen 4 (AVX-512, like the Zen 5) is scored as the Zen 5, not the first target
    znver5 = {"kind": "llvm", "mcpu": "znver5", "threads": 1}
    three = _predictor(target_input=3, target_vocab=[ZNVER3, GENERIC, znver5], target=ZNVER3)
    assert three.scored_as(znver4) == 2 and "(scored as llvm/znver5/1 thread(s)," in three.target_mismatch(znver4)
    assert np.array_equal(three.predict_data(_synthetic(), target=znver4), three.predict_data(_synthetic(2)))
    assert p.target_mismatch(GENERIC) is None and p.target_mismatch(ZNVER3) is None
    back = Predictor.from_checkpoint(p.save(tmp_path / "both.pt"))
    assert back.target_vocab == [ZNVER3, GENERIC] and np.array_equal(back.predict_data(_synthetic(1)), as_generic)
    # an ensemble keeps the vocabulary; members that number targets differently are refused
    assert Predictor.ensemble([p, back]).target_vocab == [ZNVER3, GENERIC]
    other = _predictor(target_input=2, target_vocab=[GENERIC, ZNVER3])
    with pytest.raises(CheckpointError, match="target_vocab"):
        Predictor.ensemble([p, other])


def test_a_checkpoint_without_target_input_loads_and_ignores_targets(tmp_path: Path) -> None:
    p = _predictor(target=ZNVER3)  # the layout of checkpoints from before the target input
    q = Predictor.from_checkpoint(p.save(tmp_path / "old.pt"))
    assert "target_input" not in q.meta["model"] and not q.target_input and q.target_vocab == []
    want = p.predict_data(_synthetic())
    assert np.array_equal(q.predict_data(_synthetic()), want)
    assert np.array_equal(q.predict_data(_synthetic(), target=GENERIC), want)
    assert "trained for llvm/znver3/1 thread(s), scoring for llvm/generic" in q.target_mismatch(GENERIC)


@pytest.mark.skipif(not predictor_mod.DEFAULT_CHECKPOINT.is_file(), reason="no shipped checkpoint")
def test_the_shipped_checkpoint_scores_for_the_targets_it_knows(target) -> None:
    """Without the target input, the target changes nothing; with it, every target of its vocabulary
    is scored as itself (a generic x86 target differs from a native one), a CPU it does not know as the
    known one sharing most of its CPU features (one LLVM does not know as generic, if known)."""
    from perfmodel.collect.sampler import TaskSpace
    from conftest import matmul_mod

    p = load_predictor()
    configs = p.meta["model"].get("members") or [p.meta["model"]]
    assert p.target_input == any(c.get("target_input") for c in configs)
    space = TaskSpace(mod=matmul_mod(), target=target)
    schs = [s for _, s in zip(range(4), (s for _, s in space.random_stream()))]
    plain = p.predict_schedules(schs)
    if not p.target_input:
        assert np.array_equal(p.predict_schedules(schs, target=target), plain)
        return
    vocab = p.target_vocab
    assert vocab and len({json.dumps(t, sort_keys=True) for t in vocab}) == len(vocab)
    per = [p.predict_schedules(schs, target=t) for t in vocab]
    assert np.array_equal(per[0], plain)  # no target given: scored as the most common one
    assert all(not np.array_equal(per[0], q) for q in per[1:]), "each known target has its own scale"
    unknown = {"kind": "llvm", "mcpu": "no-such-cpu", "threads": 64}  # LLVM compiles for it as generic
    assert p.target_index(unknown) is None and "scored as" in (p.target_mismatch(unknown) or "")
    generic = [i for i, t in enumerate(vocab) if t.get("mcpu") == "generic"]
    assert np.array_equal(p.predict_schedules(schs, target=unknown), per[generic[0]] if generic else plain)
    zen5 = [i for i, t in enumerate(vocab) if t.get("mcpu") == "znver5" and t.get("threads") == 1]
    if zen5:  # the shipped file knows a Zen 5: a Zen 4 is scored as it
        assert p.scored_as({"kind": "llvm", "mcpu": "znver4", "threads": 1}) == zen5[0]


def test_heldout_tasks_recorded_rebuilt_or_unknown() -> None:
    from perfmodel.data.split import heldout_task_names

    names = [f"T{i}" for i in range(10)]
    recorded = _predictor(task_names=names, split={"kind": "task", "seed": 3, "test_tasks": ["T1", "T7"]})
    assert recorded.heldout_tasks() == {"T1", "T7"} and recorded.heldout_tasks(3) == {"T1", "T7"}
    assert recorded.heldout_tasks(5) == heldout_task_names(names, seed=5)  # another seed of the same split
    legacy = _predictor(task_names=names, split={"kind": "task", "seed": 0})  # no test_tasks written
    assert legacy.heldout_tasks() == heldout_task_names(names, seed=0) and len(legacy.heldout_tasks()) == 2
    assert _predictor(task_names=names, split={"kind": "random", "seed": 0}).heldout_tasks() is None
    assert _predictor().heldout_tasks() is None


def test_measured_buffer_keeps_the_newest() -> None:
    buf = MeasuredBuffer(history=3)
    buf.add(["a", None, "b"], [1.0, 2.0, 3.0], task_id=0)  # None: a graph that failed to featurize
    buf.add(["c", "d"], [4.0, 5.0], task_id=1)
    assert (buf.datas, buf.log_secs, buf.task_ids, len(buf)) == (["b", "c", "d"], [3.0, 4.0, 5.0], [0, 1, 1], 3)
    with pytest.raises(ValueError):
        buf.add(["e"], [1.0, 2.0], task_id=0)


def test_fine_tune_reduces_the_loss() -> None:
    p = _predictor()
    ds = SyntheticDataset(n_tasks=2, per_task=16)
    datas = [ds[i] for i in range(len(ds))]
    y = np.array([float(d.y) for d in datas])
    before = np.mean((p.predict_data(datas) - y) ** 2)
    losses = p.fine_tune(datas, y, steps=60, task_ids=[int(d.task) for d in datas], lr=1e-2)
    after = np.mean((p.predict_data(datas) - y) ** 2)
    assert len(losses) == 60 and after < before / 2
    assert not p.model.training and p.meta["fine_tuned_steps"] == 60


def test_predict_schedules_of_a_real_task(target) -> None:
    from perfmodel.collect.sampler import TaskSpace
    from conftest import matmul_mod

    space = TaskSpace(mod=matmul_mod(), target=target)
    schs = [s for _, s in zip(range(4), (s for _, s in space.random_stream()))]
    p = _predictor(in_dim=len(NODE_FEATURES), edge_dim=len(EDGE_FEATURES))
    out = p.predict_schedules(schs)
    assert out.shape == (4,) and np.isfinite(out).all()
    assert np.allclose(out, p.predict_schedules(schs, flops=2 * 64**3), atol=1e-4)


def test_predict_schedules_scores_exactly_the_featurized_graphs(target) -> None:
    """The scoring path (features straight into one normalized batch, issue #11 item 5) predicts what
    ``predict_data`` predicts on ``featurize``'s graphs, bit for bit; an unfeaturizable schedule gets +inf."""
    import tvm

    from perfmodel.collect.sampler import TaskSpace
    from perfmodel.data import FeatureNorm
    from conftest import dynamic_copy_func, matmul_mod

    dynamic = dynamic_copy_func()

    space = TaskSpace(mod=matmul_mod(), target=target)
    schs = [s for _, s in zip(range(6), (s for _, s in space.random_stream()))]
    p = _predictor(in_dim=len(NODE_FEATURES), edge_dim=len(EDGE_FEATURES))
    datas = p.featurize(schs, flops=2 * 64**3)
    p.norm = FeatureNorm.fit(datas)
    want = p.predict_data(datas)
    assert np.array_equal(p.predict_schedules(schs, flops=2 * 64**3), want)
    out = p.predict_schedules([schs[0], tvm.s_tir.Schedule(dynamic), *schs[1:]], flops=2 * 64**3)
    assert out[1] == np.inf and np.array_equal(np.delete(out, 1), want)
    with pytest.raises(ValueError, match="flops"):
        p.predict_schedules(schs, flops=[1.0, 2.0])


def test_feature_cache_reuses_the_features_of_schedules_scored_before(target) -> None:
    import tvm

    from perfmodel.collect.sampler import TaskSpace
    from perfmodel.featurize import content_key, features
    from perfmodel.predictor import FeatureCache
    from conftest import dynamic_copy_func, matmul_mod

    dynamic = dynamic_copy_func()

    space = TaskSpace(mod=matmul_mod(), target=target)
    schs, seen = [], set()
    for _, s in space.random_stream():  # five schedules of different content
        if content_key(s) not in seen:
            seen.add(content_key(s))
            schs.append(s)
        if len(schs) == 5:
            break
    schs.append(tvm.s_tir.Schedule(dynamic))
    p = _predictor(in_dim=len(NODE_FEATURES), edge_dim=len(EDGE_FEATURES))
    twins = [s.copy() for s in schs[:2]]  # new objects, same modules (what a mutation that changed nothing gives)
    assert all(t.__chandle__() != s.__chandle__() for t, s in zip(twins, schs))
    population = schs + schs[:2] + twins  # the search hands in some schedule objects twice, some contents twice
    for t, s in zip(twins, schs):  # the same features (what makes reusing them right)
        a, b = features(t), features(s)
        assert np.array_equal(a.x, b.x) and np.array_equal(a.edge_x, b.edge_x) and a.edges == b.edges
    want = p.predict_schedules(population, flops=1e6)
    assert np.allclose(want[6:], np.tile(want[:2], 2), rtol=1e-6)  # (a graph's place in the batch: float rounding)
    cache = FeatureCache(size=16)
    got = p.predict_schedules(population, flops=1e6, cache=cache)
    # each content featurized and run through the network once: its twins get its very score
    assert np.array_equal(got[:6], want[:6]) and np.array_equal(got[6:], np.tile(want[:2], 2))
    assert (cache.hits, cache.misses, len(cache)) == (4, 6, 6)
    assert np.array_equal(p.predict_schedules(population, flops=1e6, cache=cache), got)  # every one a hit,
    assert cache.hits == 4 + 10 and want[5] == np.inf  # the unfeaturizable one too (cached as None)
    assert cache.output_hits == 9  # ... and not run through the network again (the unfeaturizable one never was)
    # other FLOPs, or new weights (a fine-tuning): the network runs again, as without the cache
    other = p.predict_schedules(schs[:2], flops=2e6, cache=cache)
    assert cache.output_hits == 9 and np.allclose(other, p.predict_schedules(schs[:2], flops=2e6), rtol=1e-6)
    assert not np.allclose(other, want[:2])
    datas = p.featurize(schs[:5], flops=1e6)
    p.fine_tune(datas, np.log(np.linspace(1e-4, 5e-4, 5)), steps=5, lr=1e-2)
    tuned = p.predict_schedules(population, flops=1e6, cache=cache)
    assert cache.output_hits == 9 and cache.hits == 4 + 10 + 2 + 10  # featurized never again; outputs anew
    assert np.allclose(tuned, p.predict_schedules(population, flops=1e6), rtol=1e-6)
    assert not np.allclose(tuned[:5], want[:5])
    assert cache.get(schs[2].copy()) is not FeatureCache.MISS
    small = FeatureCache(size=2)
    p.predict_schedules(schs, flops=1e6, cache=small)
    assert len(small) == 2 and small.get(schs[-1]) is None and small.get(schs[0]) is FeatureCache.MISS
    # the cache keeps no schedule alive (freeing one costs more than hashing it again): the search's objects
    # are held by the search only, and a new object of a content scored before is still a hit
    fresh = [s.copy() for s in schs]
    refs = [sys.getrefcount(s) for s in fresh]
    hits = cache.hits
    p.predict_schedules(fresh, flops=1e6, cache=cache)
    assert cache.hits == hits + len(fresh)
    held = [a - b for a, b in zip([sys.getrefcount(s) for s in fresh], refs)]
    assert sum(held) <= 1, held  # at most the last one (the featurizer's inline count of the last schedule)


def test_ensemble_predicts_the_members_mean_and_round_trips(tmp_path: Path) -> None:
    a = _predictor()
    torch.manual_seed(1)
    b = Predictor(model=build_model(a.meta["model"]), meta=dict(a.meta))
    ens = Predictor.ensemble([a, b])
    ds = SyntheticDataset(n_tasks=2, per_task=5)
    datas = [ds[i] for i in range(len(ds))]
    want = (a.predict_data(datas) + b.predict_data(datas)) / 2
    assert not np.allclose(a.predict_data(datas), b.predict_data(datas))
    assert np.allclose(ens.predict_data(datas), want, atol=1e-6)
    back = Predictor.from_checkpoint(ens.save(tmp_path / "ens.pt"))
    assert np.allclose(back.predict_data(datas), want, atol=1e-6)
    # an ensemble of an ensemble and a model flattens to three members
    assert len(Predictor.ensemble([back, a]).model.members) == 3
    # it fine-tunes like any model
    y = np.array([float(d.y) for d in datas])
    assert len(back.fine_tune(datas, y, steps=3)) == 3


def test_ensemble_refuses_members_of_other_splits() -> None:
    from perfmodel.data import FeatureNorm

    a = _predictor()
    b = _predictor()
    b.meta = {**b.meta, "norm": FeatureNorm(x_mean=torch.zeros(16), x_std=torch.ones(16), e_mean=torch.zeros(4),
                                              e_std=torch.ones(4)).state_dict()}
    with pytest.raises(CheckpointError, match="member 1 normalizes features differently"):
        Predictor.ensemble([a, b])
    c = _predictor(granularity="loop")
    with pytest.raises(CheckpointError, match="member 1 has granularity='loop'"):
        Predictor.ensemble([a, c])
    with pytest.raises(CheckpointError, match="no members"):
        Predictor.ensemble([])


def test_online_correction_fits_a_linear_residual_and_round_trips() -> None:
    """A task's residual that is linear in the embedding is learned from a few records; the prior
    stays for a task never measured; a large penalty keeps only the mean residual."""
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(60, 8))
    prior = rng.normal(size=60)
    truth = prior + emb @ rng.normal(size=8) * 0.5 + 0.3
    c = OnlineCorrection(alpha=1.0)
    c.add("A", emb[:40], truth[:40], prior[:40])
    fitted = prior[40:] + c("A", emb[40:])
    assert np.mean((fitted - truth[40:]) ** 2) < 0.1 * np.mean((prior[40:] - truth[40:]) ** 2)
    assert np.array_equal(c("B", emb[40:]), np.zeros(20)) and c.bound("B") is None and len(c) == 1
    stiff = OnlineCorrection(alpha=1e9)
    stiff.add("A", emb[:40], truth[:40], prior[:40])
    assert np.allclose(stiff("A", emb[40:]), np.mean(truth[:40] - prior[:40]), atol=1e-4)
    back = OnlineCorrection()
    back.load_state_dict(c.state_dict())
    assert np.allclose(back("A", emb[40:]), c("A", emb[40:])) and back.alpha == 1.0
    # more records than embedding width (primal form) gives the same fit as the dual form would
    many = OnlineCorrection(alpha=1.0, history=30)
    many.add("A", emb, truth, prior)
    assert many.records("A") == 30  # the newest 30
    with pytest.raises(ValueError, match="embeddings"):
        c.add("A", emb[:3], truth[:4], prior[:4])
    with pytest.raises(ValueError, match="width"):
        c("A", emb[:, :5])
    with pytest.raises(ValueError, match="alpha"):
        OnlineCorrection(alpha=0)


def _brute_loo(z: np.ndarray, rc: np.ndarray, alpha: float) -> float:
    """Leave-one-out squared error of ridge with an unpenalized intercept, each record refitted without it."""
    errs = []
    for i in range(len(rc)):
        keep = np.arange(len(rc)) != i
        x = np.hstack([np.ones((keep.sum(), 1)), z[keep]])
        pen = np.diag([0.0] + [alpha] * z.shape[1]) if np.isfinite(alpha) else None
        if pen is None:  # no slope: the mean of the others
            errs.append((rc[i] - rc[keep].mean()) ** 2)
            continue
        beta = np.linalg.solve(x.T @ x + pen, x.T @ rc[keep])
        errs.append((rc[i] - beta[0] - z[i] @ beta[1:]) ** 2)
    return float(np.mean(errs))


def test_loo_alpha_is_the_penalty_with_the_smallest_leave_one_out_error() -> None:
    """``loo_alpha``'s closed form picks what refitting without each record picks; residuals that are
    noise keep the prior (no slope or a stiff one), residuals linear in the embedding get a weak
    penalty; too few records keep the prior."""
    rng = np.random.default_rng(3)
    alphas = OnlineCorrection.ALPHAS
    for n, d, signal in ((12, 20, 1.0), (40, 6, 0.3), (30, 8, 0.0)):
        z = rng.normal(size=(n, d))
        z = (z - z.mean(0)) / z.std(0)
        r = z @ rng.normal(size=d) * signal + rng.normal(size=n) * 0.3
        rc = r - r.mean()
        brute = {a: _brute_loo(z, rc, a) for a in (*alphas, np.inf)}
        assert brute[loo_alpha(z, rc, alphas)] == pytest.approx(min(brute.values()), rel=1e-6)
    z = rng.normal(size=(48, 16))
    z = (z - z.mean(0)) / z.std(0)
    noise = rng.normal(size=48)
    assert loo_alpha(z, noise - noise.mean(), alphas) >= 1000
    lin = z @ rng.normal(size=16) + 0.05 * noise
    assert loo_alpha(z, lin - lin.mean(), alphas) <= 10
    assert loo_alpha(z[:3], lin[:3] - lin[:3].mean(), alphas) == np.inf


def test_online_correction_auto_alpha_learns_a_signal_and_ignores_noise() -> None:
    """``alpha="auto"``: a task whose residual is linear in the embedding is learned as with a weak
    penalty; a task whose residual is noise gets (almost) only its mean residual, where a fixed weak
    penalty chases the noise; the choice is kept per task; far from the records the correction stays
    within the residuals seen; the setting round-trips."""
    rng = np.random.default_rng(4)
    emb = rng.normal(size=(80, 8))
    prior = rng.normal(size=80)
    lin = prior + emb @ rng.normal(size=8) * 0.5 + 0.3
    noisy = prior + rng.normal(size=80) * 0.5 + 0.3
    auto, weak = OnlineCorrection(alpha="auto"), OnlineCorrection(alpha=1.0)
    for c in (auto, weak):
        c.add("lin", emb[:40], lin[:40], prior[:40])
        c.add("noise", emb[:40], noisy[:40], prior[:40])
    mse = lambda c, t, y: float(np.mean((prior[40:] + c(t, emb[40:]) - y[40:]) ** 2))  # noqa: E731
    assert mse(auto, "lin", lin) < 0.1 * np.mean((prior[40:] - lin[40:]) ** 2)
    assert auto.picked["lin"] <= 10 and auto.picked["noise"] >= 1000
    assert mse(auto, "noise", noisy) < mse(weak, "noise", noisy)
    assert np.std(auto("noise", emb[40:])) < 0.5 * np.std(weak("noise", emb[40:]))
    # far from every measured record it does not extrapolate beyond the residuals it saw; a fixed penalty does
    far, res = emb[40:] * 50, lin[:40] - prior[:40]
    assert res.min() - 1e-9 <= auto("lin", far).min() and auto("lin", far).max() <= res.max() + 1e-9
    assert np.abs(weak("lin", far)).max() > 5 * np.abs(res).max()
    back = OnlineCorrection(alpha=5.0)
    back.load_state_dict(auto.state_dict())
    assert back.alpha == "auto" and np.allclose(back("lin", emb[40:]), auto("lin", emb[40:]))
    assert np.allclose(back("lin", far), auto("lin", far))
    assert OnlineCorrection(alpha=" Auto ").alpha == "auto" and OnlineCorrection(alpha="30").alpha == 30.0
    for bad in ("often", -1, None):
        with pytest.raises(ValueError, match="alpha must be a number > 0 or 'auto'"):
            OnlineCorrection(alpha=bad)


def test_gp_correction_learns_a_local_residual_that_a_plane_cannot() -> None:
    """A residual that is a bump around one kernel (fast near it, as a search finds) is learned by the
    GP and not by ridge; the GP's spread is small at measured points and large far from them, and
    ``kappa`` turns it into optimism; its state (the records) round-trips; a ridge state is refused."""
    rng = np.random.default_rng(1)
    emb = rng.normal(size=(120, 6))
    centre = emb[0]
    truth_res = -1.5 * np.exp(-((emb - centre) ** 2).sum(1) / 4.0)  # log-time residual: faster near `centre`
    prior = rng.normal(size=120)
    train, test = slice(0, 90), slice(90, 120)
    gp, ridge = GPCorrection(kappa=0.0), OnlineCorrection(alpha=1.0)
    for c in (gp, ridge):
        c.add("T", emb[train], prior[train] + truth_res[train], prior[train])
    mse = lambda c: float(np.mean((c("T", emb[test]) - truth_res[test]) ** 2))  # noqa: E731
    assert mse(gp) < 0.5 * mse(ridge), (mse(gp), mse(ridge))
    # a unit constant over the measured records (a dead one) that moves a little in new candidates
    # does not make them all look unmeasured
    flat = np.hstack([emb, np.zeros((120, 1))])
    moved = flat[test].copy()
    moved[:, -1] = 0.5
    g2 = GPCorrection(kappa=0.0)
    g2.add("T", flat[train], prior[train] + truth_res[train], prior[train])
    assert float(np.mean((g2("T", moved) - truth_res[test]) ** 2)) < 0.5 * mse(ridge)
    _, sd_seen = gp.posterior("T", emb[:10])
    _, sd_far = gp.posterior("T", emb[:10] + 8.0)
    assert sd_seen.max() < 0.5 * sd_far.min()
    bold = GPCorrection(kappa=2.0)
    bold.add("T", emb[train], prior[train] + truth_res[train], prior[train])
    far = emb[:10] + 8.0
    assert np.all(bold("T", far) < gp("T", far) - 0.1)  # far from everything measured looks faster
    assert np.array_equal(gp("U", emb[test]), np.zeros(30)) and gp.bound("U") is None
    back = GPCorrection()
    back.load_state_dict(bold.state_dict())
    assert back.kappa == 2.0 and np.allclose(back("T", emb[test], prior[test]), bold("T", emb[test], prior[test]))
    # a prior whose spread this task does not bear out (measured = 0.3 x prior) is damped even far from
    # every measurement, where the kernel says nothing: the GP's mean scales the prior
    wide = rng.normal(scale=2.0, size=120)
    damp = GPCorrection(kappa=0.0)
    damp.add("T", emb[train], 0.3 * wide[train], wide[train])
    corrected = wide[test] + damp("T", emb[test] + 8.0, wide[test])
    assert np.std(corrected) < 0.6 * np.std(wide[test])
    assert np.corrcoef(corrected, wide[test])[0, 1] > 0.99  # the order of the prior is kept
    with pytest.raises(ValueError, match="online=ridge"):
        GPCorrection().load_state_dict(ridge.state_dict())
    with pytest.raises(ValueError, match="online=gp"):
        OnlineCorrection().load_state_dict(gp.state_dict())
    with pytest.raises(ValueError, match="kappa"):
        GPCorrection(kappa=-1)


def test_round_diversity_penalizes_near_duplicates_of_the_round_leaders() -> None:
    """A confident model's best candidates all sit in one tight cluster: plain scores measure only that
    cluster, penalized ones also the next cluster; a candidate is not penalized by itself or by slower
    ones; measured candidates never lead; a new round forgets the leaders; weight 0 changes nothing."""
    rng = np.random.default_rng(0)
    centres = rng.normal(scale=10.0, size=(4, 8))
    emb = np.concatenate([c + rng.normal(scale=0.3, size=(30, 8)) for c in centres])
    log_t = np.concatenate([k * 0.5 + rng.normal(scale=0.05, size=30) for k in range(4)])  # cluster 0 fastest
    cluster = np.repeat(np.arange(4), 30)
    div = RoundDiversity(weight=1.0, leaders=8, radius_quantile=0.2)
    pen = div("T", emb, log_t)
    assert pen.shape == (120,) and (pen >= 0).all()
    top = lambda y: set(cluster[np.argsort(y)[:8]].tolist())  # noqa: E731
    assert top(log_t) == {0} and top(log_t + pen) >= {0, 1}
    assert pen[np.argmin(log_t)] == 0.0  # the best candidate has no one ahead of it
    assert pen[cluster == 0].mean() > 0.5  # its neighbours (as fast) each sit next to several leaders
    assert pen[cluster == 3].max() < 1e-6  # far from every leader
    again = div("T", emb, log_t)  # the same population scored again in the same round
    assert again[np.argmin(log_t)] == 0.0 and again[cluster == 0].mean() > 0.5
    # a measured best is not a leader: its neighbours are not pushed away from it
    div2 = RoundDiversity(weight=1.0, leaders=8, radius_quantile=0.2)
    div2("T", emb[60:], log_t[60:])  # the task's units from a first population
    div2.reset("T")
    div2.measured("T", emb[cluster == 0])
    pen2 = div2("T", emb, log_t)
    assert pen2[cluster == 0].max() < 1e-6 and pen2[cluster == 1].mean() > 0.5
    div2.reset("T")
    assert div2("T", emb[cluster == 1][:1], log_t[cluster == 1][:1])[0] == 0.0  # a new round: no leaders
    assert np.array_equal(RoundDiversity(weight=0.0)("T", emb, log_t), np.zeros(120))
    with pytest.raises(ValueError, match="weight must be >= 0"):
        RoundDiversity(weight=-1.0)
    # rounds=2: the penalty of the first two rounds of a task, none from its third on; other tasks keep theirs
    div3 = RoundDiversity(weight=1.0, leaders=8, radius_quantile=0.2, rounds=2)
    for r in range(2):
        assert div3.active("T") and div3("T", emb, log_t)[cluster == 0].mean() > 0.5, r
        div3.reset("T")
    assert not div3.active("T") and np.array_equal(div3("T", emb, log_t), np.zeros(120))
    assert div3.active("U") and div3("U", emb, log_t)[cluster == 0].mean() > 0.5
    with pytest.raises(ValueError, match="rounds must be >= 0"):
        RoundDiversity(weight=1.0, rounds=-1)


def test_round_diversity_acts_again_while_a_task_finds_no_new_best() -> None:
    """``stall``: after its first ``rounds``, a task is penalized again once ``stall`` measured rounds in a
    row brought no new best time, and only until a round brings one; without times nothing ends a stall."""
    rng = np.random.default_rng(2)
    emb = np.concatenate([c + rng.normal(scale=0.3, size=(20, 6)) for c in rng.normal(scale=10.0, size=(3, 6))])
    log_t = np.repeat([0.0, 0.5, 1.0], 20) + rng.normal(scale=0.05, size=60)
    div = RoundDiversity(weight=1.0, leaders=8, radius_quantile=0.2, rounds=1, stall=2)

    def round_(best: float) -> bool:  # one search round: scored, measured (best log time ``best``), next round
        on = div.active("T")
        pen = div("T", emb, log_t)
        assert on == bool(pen.max() > 0.5)  # active means penalized
        div.reset("T")
        div.measured("T", emb[40:42], [best, best + 1.0])
        return on

    on = [round_(b) for b in (-5.0, -5.0, -5.0, -6.0, -6.0, -6.0, -6.0, -6.0)]
    # round 1: the first rounds; 2-3 measure nothing better than round 1; 4: stalled, finds a new best;
    # 5-6: two rounds again without one; 7-8: stalled
    assert on == [True, False, False, True, False, False, True, True]
    assert div.active("T") and div.active("U")  # another task: its own count (within its first round)
    plain = RoundDiversity(weight=1.0, rounds=1)
    plain.reset("T")
    assert not plain.active("T")  # stall 0: never again
    nostall = RoundDiversity(weight=1.0, rounds=1, stall=1)
    nostall.reset("T"), nostall.measured("T", emb[:2])  # no times: no best, the stall never ends
    assert nostall.active("T")
    with pytest.raises(ValueError, match="stall must be >= 0"):
        RoundDiversity(weight=1.0, stall=-1)


def test_round_diversity_spreads_a_round_over_decision_signatures() -> None:
    """``signature``: a candidate gets ``signature`` log seconds per leader predicted at least as fast with its
    decision signature, wherever the two sit in the embedding; the best of each signature keeps its score, so
    a round's leaders spread over the signatures; without signatures (or weight 0) nothing changes."""
    rng = np.random.default_rng(1)
    emb = rng.normal(scale=10.0, size=(12, 6))  # no two alike (weight 0: the embedding adds nothing)
    log_t = np.arange(12) * 0.01  # candidate 0 fastest
    sigs = [(5,)] * 9 + [(9,)] * 3  # one compute location for the 9 fastest, another for the 3 slowest
    div = RoundDiversity(weight=0.0, leaders=4, radius_quantile=0.2, signature=0.5)
    assert div.active("T") and not RoundDiversity(weight=0.0).active("T")
    pen = div("T", emb, log_t, sigs)
    assert pen[0] == 0.0 and pen[9] == 0.0  # the best of each signature
    assert pen[1] == pytest.approx(0.5) and pen[2] == pytest.approx(1.0)  # one, two leaders of (5,) ahead
    assert pen[10] == pytest.approx(0.5)  # one leader of (9,) ahead of it
    top = np.argsort(log_t + pen)[:4]
    assert {sigs[i] for i in top} == {(5,), (9,)}  # unpenalized, the 4 best are all (5,)
    assert np.array_equal(div("T", emb, log_t), np.zeros(12))  # no signatures given: weight 0 leaves nothing
    both = RoundDiversity(weight=1.0, leaders=4, radius_quantile=0.2, signature=0.5)("T", emb, log_t, sigs)
    emb_only = RoundDiversity(weight=1.0, leaders=4, radius_quantile=0.2)("T", emb, log_t)
    assert both[0] == emb_only[0] == 0.0 and both[1] == pytest.approx(emb_only[1] + 0.5)  # the two add up
    with pytest.raises(ValueError, match="3 signatures for 12 candidates"):
        div.reset("T"), div("T", emb, log_t, sigs[:3])
    with pytest.raises(ValueError, match="signature must be >= 0"):
        RoundDiversity(weight=0.0, signature=-1.0)


def test_embeddings_and_the_corrected_prediction_of_an_ensemble(target) -> None:
    """``embed_data`` predicts what ``predict_data`` predicts and gives every member's head input side by
    side; ``predict_schedules(correction=...)`` adds the correction of exactly those embeddings."""
    from perfmodel.collect.sampler import TaskSpace
    from conftest import matmul_mod

    a = _predictor(in_dim=len(NODE_FEATURES), edge_dim=len(EDGE_FEATURES))
    torch.manual_seed(1)
    b = Predictor(model=build_model(a.meta["model"]), meta=dict(a.meta))
    ens = Predictor.ensemble([a, b])
    space = TaskSpace(mod=matmul_mod(), target=target)
    schs = [s for _, s in zip(range(6), (s for _, s in space.random_stream()))]
    datas = ens.featurize(schs, flops=2 * 64**3)
    pred, emb = ens.embed_data(datas)
    assert np.allclose(pred, ens.predict_data(datas), atol=1e-6)
    _, emb_a = a.embed_data(datas)
    assert emb.shape == (6, 2 * emb_a.shape[1]) and np.allclose(emb[:, :emb_a.shape[1]], emb_a, atol=1e-6)
    seen = []
    def corr(e: np.ndarray, prior: np.ndarray) -> np.ndarray:
        seen.append((e, prior))
        return e[:, 0] * 0.1
    out = ens.predict_schedules(schs, flops=2 * 64**3, correction=corr)
    assert np.allclose(seen[0][0], emb, atol=1e-6) and np.allclose(seen[0][1], pred, atol=1e-6)
    assert np.allclose(out, pred + emb[:, 0] * 0.1, atol=1e-6)


def test_nearest_target_goes_by_kind_then_threads_then_cpu_features() -> None:
    from perfmodel.workloads import cpu_features, nearest_target

    z3, z5, gen = ({"kind": "llvm", "mcpu": m, "threads": 1} for m in ("znver3", "znver5", "generic"))
    assert "avx512f" in cpu_features("llvm", "znver4") and "avx512f" not in cpu_features("llvm", "znver3")
    assert nearest_target({"kind": "llvm", "mcpu": "znver4", "threads": 1}, [z3, gen, z5]) == 2
    assert nearest_target({"kind": "llvm", "mcpu": "znver2", "threads": 1}, [gen, z5, z3]) == 2
    # the thread count outranks the CPU: a Zen 4 run on 4 cores is nearer a generic 4-core target
    gen4 = {**gen, "threads": 4}
    assert nearest_target({"kind": "llvm", "mcpu": "znver4", "threads": 4}, [z3, z5, gen4]) == 2
    # a CPU that LLVM does not know is compiled for as generic; another kind has no features: the first one
    assert cpu_features("llvm", "no-such-cpu") == cpu_features("llvm", "generic") != frozenset()
    assert nearest_target({"kind": "llvm", "mcpu": "no-such-cpu", "threads": 1}, [z3, gen, z5]) == 1
    assert cpu_features("cuda", None) == frozenset()
    assert nearest_target({"kind": "cuda", "mcpu": None, "threads": None}, [z3, z5]) == 0
