"""GNNCostModel held to MetaSchedule's cost-model contract on a real 64x64 matmul, and inside tune_tir."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from perfmodel._tvm import load_ms
from perfmodel.predictor import CheckpointError, OnlineCorrection, Predictor
from perfmodel.plugin import DEFAULT_CHECKPOINT, GNNCostModel, TimedCostModel, make_cost_model

torch.set_num_threads(1)  # tiny graphs on a shared 2-core machine: more threads only contend
ms = load_ms()


def make_checkpoint(path: Path, *, hidden: int = 16, seed: int = 0, in_dim: int | None = None,
                    target: dict | None = None, target_vocab: list[dict] | None = None) -> Path:
    """An untrained network of the featurizer's real widths, saved in the checkpoint layout
    (with ``target_vocab``: a network with the target input, one entry per target)."""
    from perfmodel.featurize.schema import EDGE_FEATURES, NODE_FEATURES, SCHEMA_VERSION
    from perfmodel.models import build_model

    torch.manual_seed(seed)
    cfg = {"name": "gin", "in_dim": in_dim or len(NODE_FEATURES), "edge_dim": len(EDGE_FEATURES), "hidden": hidden}
    meta = {"model": cfg, "schema_version": SCHEMA_VERSION, "norm": None, "granularity": "stage", "target": target}
    if target_vocab:
        cfg["target_input"], meta["target_vocab"] = len(target_vocab), target_vocab
    return Predictor(model=build_model(cfg), meta=meta).save(path)


@pytest.fixture(scope="module")
def gnn_ckpt(tmp_path_factory) -> Path:
    """The shipped checkpoint once it exists; until then a small untrained one of the same layout."""
    if DEFAULT_CHECKPOINT.is_file():
        return DEFAULT_CHECKPOINT
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.ckpt")


@pytest.fixture(scope="module")
def space(target):
    """The design space of a 64x64x64 matmul (``.ctx`` is its TuneContext)."""
    from conftest import matmul_mod

    from perfmodel.collect.sampler import TaskSpace

    return TaskSpace(mod=matmul_mod(), target=target)


@pytest.fixture(scope="module")
def candidates(space) -> list:
    """16 random valid schedules of the matmul as MeasureCandidates."""
    schs = [s for _, s in zip(range(16), (s for _, s in space.random_stream()))]
    return [ms.MeasureCandidate(s, space.args_info) for s in schs]


def _results(n: int, *, failed: tuple[int, ...] = (), reverse_of: list | None = None) -> list:
    """Runner results: distinct times (3 repeats each), and failures where asked (error / 1e10).

    ``reverse_of``: a cost model's scores of the candidates; the times then run in the reverse of its order (its
    top pick measured slowest): an order the network does not know, but its embeddings can express, whatever the
    checkpoint. Else a fixed pattern, (7 i mod n)."""
    order = np.argsort(np.argsort(np.asarray(reverse_of))) if reverse_of is not None else None
    out = []
    for i in range(n):
        if i in failed:
            out.append(ms.runner.RunnerResult(None, "build failed") if i % 2 else ms.runner.RunnerResult([1e10], None))
        else:
            t = 1e-5 * (1 + (int(order[i]) if order is not None else (7 * i) % n))
            out.append(ms.runner.RunnerResult([t, t * 1.01, t * 0.99], None))
    return out


def test_is_a_tvm_cost_model(gnn_ckpt: Path) -> None:
    model = GNNCostModel.from_checkpoint(gnn_ckpt)
    assert isinstance(model, ms.cost_model.CostModel)  # what tune_tir accepts as an instance


def test_predict_float64_one_score_per_candidate(gnn_ckpt: Path, space, candidates: list) -> None:
    model = make_cost_model("gnn", checkpoint=gnn_ckpt)
    out = model.predict(space.ctx, candidates)  # through TVM's C++ CostModel::Predict
    assert isinstance(out, np.ndarray) and out.dtype == np.float64 and out.shape == (len(candidates),)
    assert np.isfinite(out).all() and (out > 0).all()
    assert len(np.unique(out)) > 1  # different schedules, different scores
    assert np.array_equal(out, model.predict(space.ctx, candidates))  # deterministic, stateless
    assert model._inst.predict(space.ctx, []).shape == (0,)  # (TVM's own wrapper cannot pass 0 candidates)
    assert model.inner._inst.predict(space.ctx, []).shape == (0,)
    assert model.stats.scored == 2 * len(candidates) and model.stats.fallback == 0
    assert model.inner.stats is model.stats  # one set of counters (what `perfmodel tune` reports as "gnn")


def test_candidates_scored_before_reuse_their_features(gnn_ckpt: Path, space, candidates: list) -> None:
    from perfmodel.featurize import content_key

    model = GNNCostModel.from_checkpoint(gnn_ckpt)
    first = model.predict(space.ctx, candidates)
    again = model.predict(space.ctx, candidates[:8] + candidates[:8])  # the same schedule objects
    assert np.allclose(again, np.concatenate([first[:8], first[:8]]), rtol=1e-5)
    distinct = len({content_key(c.sch) for c in candidates})  # random samples of a small space may repeat a module
    assert (model.features.misses, model.features.hits) == (distinct, 16 - distinct + 16)
    assert model.stats.cache_hits == model.features.hits  # what the tune summary reports
    off = GNNCostModel.from_checkpoint(gnn_ckpt, feature_cache=0)
    assert np.allclose(off.predict(space.ctx, candidates), first, rtol=1e-5) and off.features.misses == 0


def test_higher_score_is_lower_predicted_time(gnn_ckpt: Path, space, candidates: list) -> None:
    model = GNNCostModel.from_checkpoint(gnn_ckpt)
    scores = model.predict(space.ctx, candidates)
    # scored for the tuning target (a target-input checkpoint gives each known target its own scale)
    log_t = Predictor.from_checkpoint(gnn_ckpt).predict_schedules([c.sch for c in candidates], flops=2 * 64**3,
                                                                  target=space.ctx.target)
    assert np.allclose(np.log(scores), np.log(2 * 64**3 / 1e9) - log_t, atol=1e-5)  # predicted GFLOP/s


@pytest.mark.parametrize("online", ["ridge", "gp", "finetune"])
def test_save_load_round_trip(gnn_ckpt: Path, space, candidates: list, tmp_path: Path, online: str) -> None:
    a = GNNCostModel.from_checkpoint(gnn_ckpt, steps=5, lr=1e-2, online=online)
    fresh = a.predict(space.ctx, candidates)
    a.update(space.ctx, candidates, _results(len(candidates)))  # what it learned must survive too
    learned = a.predict(space.ctx, candidates)
    assert not np.allclose(fresh, learned)
    a.save(str(tmp_path / "m.ckpt"))
    b = GNNCostModel.from_checkpoint(gnn_ckpt, online=online)
    b.load(str(tmp_path / "m.ckpt"))
    assert np.allclose(learned, b.predict(space.ctx, candidates), rtol=1e-9)
    c = GNNCostModel.from_checkpoint(tmp_path / "m.ckpt", online=online)
    assert np.allclose(learned, c.predict(space.ctx, candidates), rtol=1e-9)
    # loading the plain checkpoint again forgets the search
    c.load(str(gnn_ckpt))
    assert np.array_equal(fresh, c.predict(space.ctx, candidates))
    if online == "gp":  # a GP's correction read as a ridge one: refused, saying how to load it
        with pytest.raises(ValueError, match="online=gp"):
            GNNCostModel.from_checkpoint(tmp_path / "m.ckpt")


def test_update_fine_tunes_on_measured_results(gnn_ckpt: Path, space, candidates: list) -> None:
    model = GNNCostModel.from_checkpoint(gnn_ckpt, steps=30, lr=1e-2, online="finetune")
    before = model.predict(space.ctx, candidates)
    results = _results(len(candidates), failed=(2, 3), reverse_of=before)
    model.update(space.ctx, candidates, results)  # through TVM's C++ CostModel::Update
    after = model.predict(space.ctx, candidates)
    assert not np.allclose(before, after)
    assert model.stats.fine_tune_steps == 30
    assert len(model.buffer) == len(candidates) - 2  # the two failures are not trained on
    assert model.buffer.log_secs and min(model.buffer.log_secs) == pytest.approx(np.log(1e-5))
    # the fitted model ranks the measured candidates better than before (the measured order is learnable)
    secs = np.array([float(np.median([float(s) for s in r.run_secs or [1e10]])) for r in results])
    ok = secs < 1e9
    def corr(s: np.ndarray) -> float:
        return float(np.corrcoef(np.argsort(np.argsort(-s[ok])), np.argsort(np.argsort(secs[ok])))[0, 1])
    assert corr(after) > corr(before)


def test_frozen_and_update_every(gnn_ckpt: Path, space, candidates: list) -> None:
    frozen = GNNCostModel.from_checkpoint(gnn_ckpt, frozen=True)
    before = frozen.predict(space.ctx, candidates)
    frozen.update(space.ctx, candidates, _results(len(candidates)))
    assert np.array_equal(before, frozen.predict(space.ctx, candidates)) and frozen.stats.fine_tune_steps == 0
    every2 = make_cost_model("gnn", checkpoint=gnn_ckpt, update_every=2, steps=3, online="finetune")
    for _ in range(4):
        every2.update(space.ctx, candidates[:8], _results(8))
    assert every2.stats.update_calls == 4 and every2.stats.fine_tune_steps == 6


def test_ridge_correction_learns_the_task_in_milliseconds(gnn_ckpt: Path, space, candidates: list) -> None:
    """online="ridge" (the default): the network stays as it is; a per-task correction on its embeddings
    makes the measured order learnable, and a task it has not measured is scored as before."""
    model = GNNCostModel.from_checkpoint(gnn_ckpt)
    weights = [p.detach().clone() for p in model.predictor.model.parameters()]
    before = model.predict(space.ctx, candidates)
    results = _results(len(candidates), failed=(2, 3), reverse_of=before)
    model.update(space.ctx, candidates, results)
    after = model.predict(space.ctx, candidates)
    assert all(torch.equal(w, p) for w, p in zip(weights, model.predictor.model.parameters()))
    assert model.stats.corrections == 1 and model.stats.fine_tune_steps == 0 and len(model.buffer) == 0
    assert model.correction.records(model._task(space.ctx)["key"]) == len(candidates) - 2
    secs = np.array([float(np.median([float(s) for s in r.run_secs or [1e10]])) for r in results])
    ok = secs < 1e9
    def corr(s: np.ndarray) -> float:
        return float(np.corrcoef(np.argsort(np.argsort(-s[ok])), np.argsort(np.argsort(secs[ok])))[0, 1])
    assert corr(after) > corr(before)
    # the intercept moves the scale toward the measured times: predicted seconds closer on average
    log_true = np.log(secs[ok])
    flops_ref = np.log(2 * 64**3 / 1e9)
    err = lambda sc: abs(np.mean(flops_ref - np.log(sc[ok]) - log_true))  # noqa: E731
    assert err(after) < err(before) + 1e-9
    # another task (another workload) has no correction: scored by the network alone
    other = GNNCostModel.from_checkpoint(gnn_ckpt)
    model.correction._fits = {k + 1: v for k, v in model.correction._fits.items()}
    assert np.allclose(model.predict(space.ctx, candidates), other.predict(space.ctx, candidates), rtol=1e-9)
    with pytest.raises(ValueError, match="online"):
        GNNCostModel.from_checkpoint(gnn_ckpt, online="sgd")


def test_ridge_alpha_auto_picks_a_penalty_per_refit(gnn_ckpt: Path, space, candidates: list) -> None:
    """ridge_alpha="auto": every refit picks the task's penalty by leave-one-out and the stats list the
    picks (None = the mean residual only); a fixed penalty lists none; a bad one is one clear error."""
    model = GNNCostModel.from_checkpoint(gnn_ckpt, ridge_alpha="auto")
    results = _results(len(candidates), failed=(2, 3))
    for _ in range(2):
        model.update(space.ctx, candidates, results)
    key = model._task(space.ctx)["key"]
    picked = model.correction.picked[key]
    assert len(model.stats.ridge_alphas) == 2 and model.stats.corrections == 2
    assert model.stats.ridge_alphas[-1] == (picked if np.isfinite(picked) else None)
    assert picked in (*OnlineCorrection.ALPHAS, np.inf)
    assert np.isfinite(model.predict(space.ctx, candidates)).all()
    fixed = GNNCostModel.from_checkpoint(gnn_ckpt, ridge_alpha=30.0)
    fixed.update(space.ctx, candidates, results)
    assert fixed.stats.ridge_alphas == [] and fixed.correction.picked[key] == 30.0
    gp = GNNCostModel.from_checkpoint(gnn_ckpt, online="gp")  # a GP picks no penalty: none listed
    gp.update(space.ctx, candidates, results)
    assert gp.stats.corrections == 1 and gp.stats.ridge_alphas == []
    with pytest.raises(ValueError, match="alpha must be a number > 0 or 'auto'"):
        GNNCostModel.from_checkpoint(gnn_ckpt, ridge_alpha="sometimes")


def test_diversity_pushes_down_near_duplicates_of_a_rounds_leaders(gnn_ckpt: Path, space, candidates: list) -> None:
    """gnn.diversity: within a search round a candidate close (in the model's embedding space) to a
    better-scored one scores lower; the best keeps its score; measured candidates never lead, so once
    the round's candidates are measured they are scored as without diversity."""
    plain = GNNCostModel.from_checkpoint(gnn_ckpt)
    div = GNNCostModel.from_checkpoint(gnn_ckpt, diversity=1.0)
    a, b = plain.predict(space.ctx, candidates), div.predict(space.ctx, candidates)
    assert np.all(b <= a * (1 + 1e-5)) and b.max() == pytest.approx(a.max(), rel=1e-5)  # float32 forward paths
    assert (b < a * np.exp(-0.3)).any()  # the closest pair's slower member: at least weight * e^-1
    results = _results(len(candidates))
    plain.update(space.ctx, candidates, results)
    div.update(space.ctx, candidates, results)
    assert np.allclose(div.predict(space.ctx, candidates), plain.predict(space.ctx, candidates), rtol=1e-6)
    # diversity_rounds=1: the first round is penalized, the next (after one measured candidate) is not
    once, plain1 = (GNNCostModel.from_checkpoint(gnn_ckpt, diversity=1.0, diversity_rounds=1),
                    GNNCostModel.from_checkpoint(gnn_ckpt))
    assert np.allclose(once.predict(space.ctx, candidates), b, rtol=1e-5)
    once.update(space.ctx, candidates[:1], results[:1])
    plain1.update(space.ctx, candidates[:1], results[:1])
    assert np.allclose(once.predict(space.ctx, candidates), plain1.predict(space.ctx, candidates), rtol=1e-6)
    # diversity_stall=1: after the first rounds, penalized again once a measured round brings no new best
    stall, plain2 = (GNNCostModel.from_checkpoint(gnn_ckpt, diversity=1.0, diversity_rounds=1, diversity_stall=1),
                     GNNCostModel.from_checkpoint(gnn_ckpt))
    for m in (stall, plain2):
        m.predict(space.ctx, candidates)
        m.update(space.ctx, candidates[:1], results[:1])  # the fastest time of all: a new best
    assert np.allclose(stall.predict(space.ctx, candidates), plain2.predict(space.ctx, candidates), rtol=1e-6)
    for m in (stall, plain2):
        m.update(space.ctx, candidates[1:2], results[1:2])  # slower: no new best
    s, p = stall.predict(space.ctx, candidates), plain2.predict(space.ctx, candidates)
    assert np.all(s <= p * (1 + 1e-5)) and (s < p * (1 - 1e-3)).any()
    with pytest.raises(ValueError, match="weight must be >= 0"):
        GNNCostModel.from_checkpoint(gnn_ckpt, diversity=-1.0)


def test_diversity_signature_spreads_a_round_over_the_traces_discrete_decisions(gnn_ckpt: Path, space,
                                                                                candidates: list) -> None:
    """gnn.diversity_signature: the matmul's schedules carry their categorical decisions (unroll steps) as
    signatures; within a round a candidate scores lower per better-scored candidate of its signature, the best
    of every signature keeps its score, and from round ``diversity_rounds`` on nothing changes."""
    from perfmodel.featurize import decision_signature

    sigs = [decision_signature(c.sch) for c in candidates]
    assert all(s and all(isinstance(v, int) for v in s) for s in sigs) and len(set(sigs)) > 1
    assert decision_signature(candidates[0].sch.mod) == ()  # a module has no trace
    plain = GNNCostModel.from_checkpoint(gnn_ckpt)
    sig = GNNCostModel.from_checkpoint(gnn_ckpt, diversity_signature=0.3, diversity_rounds=1)
    a, b = plain.predict(space.ctx, candidates), sig.predict(space.ctx, candidates)
    assert np.all(b <= a * (1 + 1e-5))
    for s in set(sigs):  # the best-scored of each signature is not penalized
        best = max((i for i in range(len(sigs)) if sigs[i] == s), key=lambda i: a[i])
        assert b[best] == pytest.approx(a[best], rel=1e-5)
    shared = [i for i in range(len(sigs)) if sum(sigs[j] == sigs[i] and a[j] > a[i] for j in range(len(sigs)))]
    assert shared and all(b[i] < a[i] * np.exp(-0.29) for i in shared)  # behind one of its signature at least
    sig.update(space.ctx, candidates[:1], _results(1))
    plain.update(space.ctx, candidates[:1], _results(1))
    assert np.allclose(sig.predict(space.ctx, candidates), plain.predict(space.ctx, candidates), rtol=1e-6)


def test_decisions_let_the_correction_learn_a_whole_decision(gnn_ckpt: Path, space, candidates: list) -> None:
    """gnn.decisions: the ridge correction sees each candidate's decisions beside its embedding. Where one
    decision makes kernels 100x faster, 10 measured candidates teach it, and the 6 not measured are ranked
    by it: every one with the fast decision above every one without."""
    from perfmodel.featurize import decision_signature
    from perfmodel.plugin.cost_model import DECISION_WIDTH

    sigs = [decision_signature(c.sch) for c in candidates]
    train, rest = list(range(10)), list(range(10, len(candidates)))
    both = {True, False}
    pos, val = next((p, v) for p in range(len(sigs[0])) for v in sorted({s[p] for s in sigs})
                    if {sigs[i][p] == v for i in train} == both and {sigs[i][p] == v for i in rest} == both)
    fast = [sigs[i][pos] == val for i in range(len(candidates))]
    results = []
    for i in train:
        t = (1e-5 if fast[i] else 1e-3) * (1 + 0.01 * i)
        results.append(ms.runner.RunnerResult([t, t, t], None))
    model = GNNCostModel.from_checkpoint(gnn_ckpt, decisions=1.0)
    model.predict(space.ctx, candidates)
    model.update(space.ctx, [candidates[i] for i in train], results)
    mu = model.correction._fits[model._task(space.ctx)["key"]][0]
    width = model.predictor.embed_data(model.predictor.featurize([candidates[0].sch]))[1].shape[1]
    assert mu.size == width + DECISION_WIDTH
    score = model.predict(space.ctx, candidates)
    assert min(score[i] for i in rest if fast[i]) > max(score[i] for i in rest if not fast[i])
    with pytest.raises(ValueError, match="decisions"):
        GNNCostModel.from_checkpoint(gnn_ckpt, decisions=1.0, online="gp")


def test_decision_cover_measures_every_decision_early(gnn_ckpt: Path, space, candidates: list) -> None:
    """gnn.decision_cover=1: once the candidates with the matmul's commonest unroll decision are measured, the
    next round's top score goes to the best-scored candidate with another decision (whatever the network
    thinks of it), once per round; the other scores are the plain model's."""
    from perfmodel.featurize import decision_signature

    sigs = [decision_signature(c.sch) for c in candidates]
    common = max(set(sigs), key=sigs.count)
    seen = [i for i, s in enumerate(sigs) if s == common]
    plain, cover = GNNCostModel.from_checkpoint(gnn_ckpt), GNNCostModel.from_checkpoint(gnn_ckpt, decision_cover=1)
    for m in (plain, cover):
        m.predict(space.ctx, candidates)
        m.update(space.ctx, [candidates[i] for i in seen], _results(len(seen)))
    a, b = plain.predict(space.ctx, candidates), cover.predict(space.ctx, candidates)
    other = [i for i in range(len(sigs)) if sigs[i] != common]
    pick = max(other, key=lambda i: a[i])
    assert int(np.argmax(b)) == pick and b[pick] > a.max()
    rest = [i for i in range(len(sigs)) if i != pick]
    assert np.allclose(b[rest], a[rest], rtol=1e-6)
    assert np.allclose(cover.predict(space.ctx, candidates), a, rtol=1e-6)  # the round's one promotion is spent
    assert cover.stats.decision_promotions == 2  # round 1 (nothing measured yet) and round 2


def test_a_failing_candidate_gets_the_fallback(gnn_ckpt: Path, space, candidates: list, caplog,
                                              monkeypatch) -> None:
    import tvm_ffi

    from perfmodel.featurize import graph

    good = Predictor.from_checkpoint(gnn_ckpt)
    ref = GNNCostModel(predictor=good).predict(space.ctx, candidates)
    bad_hash = int(tvm_ffi.structural_hash(candidates[3].sch.mod))
    real = graph.features

    def flaky(sch, **kw):  # the featurizer raises on one schedule's module (as a featurizer bug would)
        if int(tvm_ffi.structural_hash(sch.mod)) == bad_hash:
            raise RuntimeError("unsupported construct in block C")
        return real(sch, **kw)

    monkeypatch.setattr(graph, "features", flaky)
    for cache in (8192, 0):  # scored through the feature cache, and without it
        bare = GNNCostModel(predictor=good, feature_cache=cache).predict(space.ctx, candidates)
        assert np.isnan(bare[3]) and np.isfinite(np.delete(bare, 3)).all()  # the adapter only marks it
    model = TimedCostModel(inner=GNNCostModel(predictor=good), fallback=-1.0)
    with caplog.at_level(logging.WARNING, logger="perfmodel.plugin"):
        out = model.predict(space.ctx, candidates)
        model.predict(space.ctx, candidates)
    assert out[3] == -1.0 and model.stats.fallback == 2 and model.stats.errors == 0
    keep = np.arange(len(candidates)) != 3
    assert np.allclose(out[keep], ref[keep])
    guard = [r for r in caplog.records if r.name == "perfmodel.plugin" and r.module == "timed"]  # (not the target note)
    assert len(guard) == 1  # one warning, then counted
    model.update(space.ctx, candidates, _results(len(candidates)))  # the search goes on
    assert model.stats.update_calls == 1


def test_nan_predictions_get_the_fallback(gnn_ckpt: Path, space, candidates: list) -> None:
    pred = Predictor.from_checkpoint(gnn_ckpt)
    with torch.no_grad():
        for p in pred.model.parameters():
            p.fill_(float("nan"))
    model = TimedCostModel(inner=GNNCostModel(predictor=pred))
    out = model.predict(space.ctx, candidates)
    assert out.dtype == np.float64 and (out == 0.0).all() and model.stats.fallback == len(candidates)


def test_a_model_that_raises_gives_every_candidate_the_fallback(gnn_ckpt: Path, space, candidates: list) -> None:
    class _Raises(Predictor):
        def predict_schedules(self, schs, **kw):
            raise RuntimeError("boom")

    good = Predictor.from_checkpoint(gnn_ckpt)
    model = TimedCostModel(inner=GNNCostModel(predictor=_Raises(model=good.model, meta=good.meta)), fallback=0.5)
    out = model.predict(space.ctx, candidates)
    assert (out == 0.5).all() and model.stats.errors == 1 and model.stats.fallback == len(candidates)


def test_warns_once_when_scoring_for_another_target(space, candidates: list, tmp_path: Path, caplog) -> None:
    znver3 = make_checkpoint(tmp_path / "znver3.ckpt", target={"kind": "llvm", "mcpu": "znver3", "threads": 1})
    model = make_cost_model("gnn", checkpoint=znver3, frozen=True)  # space.ctx: llvm, no mcpu, 1 core
    with caplog.at_level(logging.WARNING, logger="perfmodel.plugin"):
        model.predict(space.ctx, candidates)
        model.predict(space.ctx, candidates)
    msgs = [r.getMessage() for r in caplog.records if r.name == "perfmodel.plugin"]
    assert len(msgs) == 1 and "\n" not in msgs[0]
    assert "trained for llvm/znver3/1 thread(s), scoring for llvm/generic/1 thread(s)" in msgs[0]
    assert "retrain on data of this target" in msgs[0]
    assert model.stats.target_mismatch == 2 and model.stats.fallback == 0
    caplog.clear()
    same = make_checkpoint(tmp_path / "generic.ckpt", target={"kind": "llvm", "mcpu": "generic", "threads": 1})
    model = make_cost_model("gnn", checkpoint=same, frozen=True)
    with caplog.at_level(logging.WARNING, logger="perfmodel.plugin"):
        model.predict(space.ctx, candidates)
    assert not [r for r in caplog.records if r.name == "perfmodel.plugin"] and model.stats.target_mismatch == 0


def test_target_input_scores_for_the_tuning_target(space, candidates: list, tmp_path: Path, caplog) -> None:
    """A checkpoint with the target input scores for ``context.target`` (llvm, no mcpu, 1 core) when it knows
    it; else as its most common target, with the one target-mismatch warning."""
    znver3, generic = {"kind": "llvm", "mcpu": "znver3", "threads": 1}, {"kind": "llvm", "mcpu": "generic", "threads": 1}
    both = make_checkpoint(tmp_path / "both.ckpt", target=znver3, target_vocab=[znver3, generic])
    pred = Predictor.from_checkpoint(both)
    schs = [c.sch for c in candidates]
    flops = 2 * 64**3
    as_znver3, as_generic = (pred.predict_schedules(schs, flops=flops, target=t) for t in (znver3, generic))
    assert not np.allclose(as_znver3, as_generic)
    model = GNNCostModel(predictor=pred, frozen=True)
    with caplog.at_level(logging.WARNING, logger="perfmodel.plugin"):
        scores = model.predict(space.ctx, candidates)
    assert not [r for r in caplog.records if r.name == "perfmodel.plugin"] and model.stats.target_mismatch == 0
    np.testing.assert_allclose(np.log(scores), np.log(flops / 1e9) - as_generic, rtol=1e-9)
    model.frozen, model.online = False, "finetune"  # update featurizes the measured candidates for the same target
    model.update(space.ctx, candidates, _results(len(candidates)))
    assert {int(d.target_id) for d in model.buffer.datas} == {1}
    caplog.clear()
    only = make_checkpoint(tmp_path / "znver3.ckpt", target=znver3, target_vocab=[znver3])
    model = make_cost_model("gnn", checkpoint=only, frozen=True)
    with caplog.at_level(logging.WARNING, logger="perfmodel.plugin"):
        model.predict(space.ctx, candidates)
        scores = model.predict(space.ctx, candidates)
    msgs = [r.getMessage() for r in caplog.records if r.name == "perfmodel.plugin"]
    assert len(msgs) == 1 and "(scored as llvm/znver3/1 thread(s)," in msgs[0] and model.stats.target_mismatch == 2
    np.testing.assert_allclose(np.log(scores), np.log(flops / 1e9) - Predictor.from_checkpoint(only).predict_schedules(
        schs, flops=flops, target=znver3), rtol=1e-9)


def test_bad_checkpoints_give_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        GNNCostModel.from_checkpoint(tmp_path / "missing.ckpt")
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError) as e:
        GNNCostModel.from_checkpoint(tmp_path / "junk.ckpt")
    assert str(e.value).startswith(f"{tmp_path / 'junk.ckpt'}: not a perfmodel checkpoint (")
    assert "\n" not in str(e.value) and "weights_only" not in str(e.value)
    wrong = make_checkpoint(tmp_path / "wrong.ckpt", in_dim=3)
    with pytest.raises(CheckpointError, match="in_dim=3"):
        GNNCostModel.from_checkpoint(wrong)


def test_timed_wrapper_counts_and_guards(gnn_ckpt: Path, space, candidates: list) -> None:
    timed = make_cost_model("gnn", checkpoint=gnn_ckpt, frozen=True)
    assert isinstance(timed, TimedCostModel)
    timed.predict(space.ctx, candidates)
    timed.update(space.ctx, candidates, _results(len(candidates)))
    s = timed.stats
    assert s.scored == len(candidates) and s.predict_s > 0 and s.update_calls == 1 and s.predict_per_s > 0
    mlp = TimedCostModel(inner="mlp")  # TVM's untrained MLP raises on its first update of one task
    mlp.update(space.ctx, candidates, _results(len(candidates)))
    assert mlp.stats.errors == 1
    assert mlp.predict(space.ctx, candidates).shape == (len(candidates),)
    with pytest.raises(ValueError, match="unknown cost model"):
        make_cost_model("ansor")


@pytest.mark.skipif(not DEFAULT_CHECKPOINT.is_file(), reason="perfmodel/pretrained/gnn.ckpt is not trained yet")
def test_default_is_the_shipped_checkpoint(space, candidates: list) -> None:
    model = GNNCostModel()
    assert Path(model.path) == DEFAULT_CHECKPOINT
    assert np.isfinite(model.predict(space.ctx, candidates)).all()


@pytest.mark.slow
def test_tune_tir_with_the_gnn(gnn_ckpt: Path, target, tmp_path: Path) -> None:
    from conftest import matmul_mod

    from perfmodel.plugin.search import make_builder

    model = make_cost_model("gnn", checkpoint=gnn_ckpt, steps=5)
    # TVM's LocalBuilder starts fresh workers per batch, each importing TVM for ~30 s on a busy machine;
    # the cost model is under test here, not the timings: TVM's own runner, one quick timing each
    runner = ms.runner.LocalRunner(evaluator_config=ms.runner.EvaluatorConfig(
        number=1, repeat=1, min_repeat_ms=1, enable_cpu_cache_flush=False))
    builder = make_builder()
    try:
        db = ms.tune_tir(matmul_mod(), target=target, work_dir=str(tmp_path), max_trials_global=16,
                         num_trials_per_iter=8, cost_model=model, builder=builder, runner=runner, seed=1)
        workers = [w._proc.pid for w in builder.pool._worker_map.values() if w._proc is not None]
        run_workers = [w._proc.pid for w in runner.pool._worker_map.values() if w._proc is not None]
    finally:
        builder.close()  # else its build workers outlive the test session (orphaned, idle)
        runner.pool.shutdown()  # TVM's LocalRunner keeps its worker process too
    assert workers and not [pid for pid in workers + run_workers if Path(f"/proc/{pid}").exists()]
    recs = db.get_all_tuning_records()
    ok = [r for r in recs if r.run_secs and all(0 < float(s) < 1e9 for s in r.run_secs)]
    assert len(recs) >= 8 and ok
    assert model.stats.predict_calls >= 1 and model.stats.update_calls >= 1 and model.stats.fallback == 0
    assert model.stats.corrections >= 1 and model.stats.fine_tune_steps == 0  # the default: ridge, no fine-tuning
    best = db.query_schedule(matmul_mod(), target=target, workload_name="main")
    assert best is not None


def test_exploration_scores_the_members_lower_confidence_bound(space, candidates: list, tmp_path: Path) -> None:
    """gnn.explore=w on an ensemble: log time mean - w * std over members; doubt raises a score, never lowers it."""
    members = [Predictor.from_checkpoint(make_checkpoint(tmp_path / f"m{i}.ckpt", seed=i)) for i in range(3)]
    ens = Predictor.ensemble(members)
    schs = [c.sch for c in candidates]
    each = np.stack([m.predict_schedules(schs, flops=2 * 64**3) for m in members])  # [3, N]
    np.testing.assert_allclose(ens.predict_schedules(schs, flops=2 * 64**3), each.mean(0), rtol=1e-5, atol=1e-5)
    lcb = ens.predict_schedules(schs, flops=2 * 64**3, explore=2.0)
    np.testing.assert_allclose(lcb, each.mean(0) - 2.0 * each.std(0), rtol=1e-5, atol=1e-5)
    plain = GNNCostModel(predictor=ens).predict(space.ctx, candidates)
    bold = GNNCostModel(predictor=ens, explore=2.0).predict(space.ctx, candidates)
    assert (bold >= plain * (1 - 1e-6)).all() and (bold > plain * 1.01).any()
    # one model has no spread: exploring changes nothing
    one = members[0]
    np.testing.assert_allclose(one.predict_schedules(schs, flops=1.0, explore=2.0),
                               one.predict_schedules(schs, flops=1.0), rtol=1e-6)
