"""``GNNCostModel``: the shared ``Predictor`` behind MetaSchedule's four-method cost-model interface."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from tvm.ir.utils import derived_object

from perfmodel._tvm import load_ms
from perfmodel.collect.database import FAILED
from perfmodel.collect.measure import label_secs
from perfmodel.featurize.forked import STATS as FORKS
from perfmodel.predictor import (DEFAULT_CHECKPOINT, FeatureCache, GPCorrection, MeasuredBuffer, OnlineCorrection,
                                 Predictor, RoundDiversity, flops_of, load_predictor)
from perfmodel.plugin.timed import CostModelStats, TimedCostModel

ms = load_ms()
log = logging.getLogger("perfmodel.plugin")

CORRECTION_KEY = "online_correction"  # the tasks' corrections in a checkpoint written by ``GNNCostModel.save``
_MAX_EXP = 300.0  # scores are exp(ref - log_time), the exponent clipped to +-300 (float64-safe)


@derived_object
class GNNCostModel(ms.cost_model.PyCostModel):
    """The pretrained stage-graph GNN as a MetaSchedule cost model.

    ``predict`` scores candidates with the shared :class:`~perfmodel.predictor.Predictor` as
    predicted throughput (float64, higher is better): GFLOP/s, or millions of runs per second for a
    task without FLOPs. Only ratios within a workload matter (the evolutionary search ranks by score
    and samples parents in proportion to it); ``save`` writes the network and the tasks' corrections,
    so the score is identical after ``save``/``load``. A candidate that cannot be scored gets ``nan``:
    :class:`TimedCostModel` (``make_cost_model("gnn")``) turns it into a fallback score and counts it.
    ``update`` learns from the measured candidates (unless ``frozen``), by ``online``: ``"ridge"``
    (default) refits the task's :class:`~perfmodel.predictor.OnlineCorrection` (a ridge correction on
    the frozen network's embeddings, milliseconds per round); ``"gp"`` a
    :class:`~perfmodel.predictor.GPCorrection` instead (a Gaussian process on the same embeddings,
    optimistic by ``gp_kappa`` times its posterior spread); ``"finetune"`` keeps them in a
    :class:`~perfmodel.predictor.MeasuredBuffer` and fine-tunes the network on them every
    ``update_every`` calls (seconds per round). Replayed on finished tuning runs
    (``benchmarks/bench_finetune.py``, RESULTS.md) fine-tuning every round ranks the next round a little
    better (pairwise 0.675 vs 0.650, peak@1 0.829 vs 0.814; frozen 0.622 / 0.781) for ~30x the update
    seconds (8-15% of a tuning run's time); on held-out tasks' random schedules the two tie. Scoring for another target than the
    checkpoint's logs one warning and counts ``stats.target_mismatch``; a checkpoint with the target
    input scores for the tuning target (``context.target``: that warning when it is not one it knows,
    then scored as the nearest one it knows: ``Predictor.scored_as``). Candidates the search hands
    in again (the same schedule objects, or new ones with a module scored before) reuse their features
    (a :class:`~perfmodel.predictor.FeatureCache`).

    Args:
        path: checkpoint to load; default the shipped ``perfmodel/pretrained/gnn.ckpt``.
        predictor: use this predictor instead of loading ``path``.
        frozen: never learn from the search's measurements.
        online: ``"ridge"`` or ``"gp"`` (per-task correction on the embeddings) or ``"finetune"`` (the network).
        ridge_alpha: ridge penalty of the correction (default: ``OnlineCorrection``'s ``alpha``); ``"auto"``:
            picked per task at every refit by leave-one-out (``stats.ridge_alphas`` lists the picks).
        gp_kappa: ``online="gp"``: weight of the GP's posterior spread (default: ``GPCorrection``'s ``kappa``).
        update_every: fine-tune after every this many ``update`` calls (``online="finetune"``).
        steps: optimizer steps per fine-tuning.
        lr: learning rate of the fine-tuning optimizer.
        history: keep at most this many measured candidates (the newest) for fine-tuning.
        batch_size: graphs per inference batch.
        threads: torch CPU threads (``None``: leave torch's setting).
        featurize_workers: cores that featurize a population (forked workers, see
            ``perfmodel.featurize.features_many``); ``tune`` gives it the physical cores, as TVM's XGB
            model gets them for its feature extraction (the search waits for the scores: the
            builder and runner are idle meanwhile).
        feature_cache: schedules whose features are kept for when the search hands them in again, as
            the same object or as a new one with the same module (a
            :class:`~perfmodel.predictor.FeatureCache` by content; a few KB each; 0: none).
        explore: exploration from doubt: score ``mean - explore * std`` of the ensemble members'
            log times (0: the plain mean; a single model has no spread). Default off until
            bench_tune shows it reaching XGB's best sooner (``--models gnn,gnn-explore,...``).
        diversity: log seconds added to a candidate per near-duplicate among the round's leading
            candidates (:class:`~perfmodel.predictor.RoundDiversity`; 0: off), so that one round's
            measurements do not all go to one corner of the space. ``tune`` turns it on (0.5 for the
            first 8 rounds, ``conf/tune.yaml``); the class keeps it off unless asked.
        diversity_rounds: the penalty acts in a task's first this many search rounds only (0: every round).
        diversity_signature: log seconds added to a candidate per leading candidate of the round with its
            discrete structural decisions (compute locations, categorical choices; ``RoundDiversity``'s
            ``signature``; 0: off), so that a round's measurements also spread over the decisions the
            embedding holds close together. Acts in the same rounds as ``diversity``.
        diversity_stall: both penalties act again, after ``diversity_rounds``, once a task has had this many
            measured rounds in a row without a new best, until it has one (``RoundDiversity``'s ``stall``;
            0: never).
        decisions: the online correction (``online="ridge"``) also sees each candidate's discrete decisions
            (``decision_signature``: compute locations, categorical choices; each (position, value) pair sets
            one of ``DECISION_WIDTH`` hashed indicator units to this value times the square root of the
            embedding's width, beside the standardized embedding: at 1 one decision can weigh as much as the
            whole embedding in the ridge), so that where the network is wrong about a whole decision (a
            padding inlined or computed apart, which the embedding may hold close together) a few
            measurements with it move every candidate that shares it (0: off, the embedding only).
        decision_cover: per search round (between two ``update`` calls), at most this many candidates are moved
            to the top of the round's scores because their signature holds a decision (position, value) that
            no measured candidate of the task had (the best-scored carrier of such a decision first), so that
            every decision is measured early, however sure the network is that it is slow; with ``decisions``
            the correction then learns from it (0: off).
    """

    def __init__(self, *, path: str | Path | None = None, predictor: Predictor | None = None,
                 frozen: bool = False, update_every: int = 1, steps: int = 20, lr: float = 1e-4,
                 history: int = 4096, batch_size: int = 1024, threads: int | None = None,
                 feature_cache: int = 8192, explore: float = 0.0, online: str = "ridge",
                 ridge_alpha: float | str | None = None, gp_kappa: float | None = None,
                 featurize_workers: int = 1, diversity: float = 0.0, diversity_rounds: int = 0,
                 diversity_signature: float = 0.0, diversity_stall: int = 0, decisions: float = 0.0,
                 decision_cover: int = 0) -> None:
        super().__init__()
        if online not in ("ridge", "gp", "finetune"):
            raise ValueError(f"GNNCostModel: online must be 'ridge', 'gp' or 'finetune' (got {online!r})")
        if decisions and online != "ridge":
            raise ValueError(f"GNNCostModel: decisions={decisions} needs online='ridge' (got {online!r})")
        if threads:
            import torch

            torch.set_num_threads(int(threads))
        self.frozen, self.update_every = frozen, max(1, int(update_every))
        self.steps, self.lr, self.batch_size = int(steps), float(lr), int(batch_size)
        self.explore, self.online = float(explore), online
        self.decisions, self.decision_cover = float(decisions), max(0, int(decision_cover))
        self._covered: dict[int, set] = {}  # task -> decisions (position, value) of its measured candidates
        self._claimed: dict[int, tuple[set, int]] = {}  # task -> this round's promoted decisions and promotions
        self._correction_args: dict[str, Any] = (  # a GP keeps its own (smaller) history: its fit is cubic in it
            ({} if gp_kappa is None else {"kappa": gp_kappa}) if online == "gp" else
            {"history": history, "raw_units": DECISION_WIDTH if decisions else 0,
             **({} if ridge_alpha is None else {"alpha": ridge_alpha})})
        self.correction = self._new_correction()
        self.diversity = RoundDiversity(weight=diversity, rounds=diversity_rounds, signature=diversity_signature,
                                        stall=diversity_stall)
        self.stats = CostModelStats()  # its own counters here; TimedCostModel fills the rest of the same object
        self.buffer = MeasuredBuffer(history=history)
        self.features = FeatureCache(size=feature_cache)
        self.path: str | None = None
        self.featurize_workers = max(1, int(featurize_workers))
        self.predictor: Predictor
        if predictor is None:
            self.load(str(path or DEFAULT_CHECKPOINT))
        else:
            self.predictor = predictor
            predictor.featurize_workers = self.featurize_workers
        self._tasks: dict[int, dict[str, Any]] = {}  # workload hash -> flops, ref, id, target (mismatch)
        self._updates = 0

    @classmethod
    def from_checkpoint(cls, path: str | Path | None = None, **kwargs: Any) -> GNNCostModel:
        """A cost model from a checkpoint (default: the shipped one); ``kwargs`` as the constructor.

        Raises:
            FileNotFoundError / CheckpointError: see ``perfmodel.predictor.load_predictor``.
        """
        return cls(path=path, **kwargs)

    # ------------------------------------------------------------ TVM's four methods
    def load(self, path: str) -> None:
        """Loads a checkpoint (of ``train`` or ``save``); checks that it fits the featurizer."""
        self.predictor = load_predictor(path)
        self.predictor.featurize_workers = self.featurize_workers
        self.path = str(path)
        self.correction = self._new_correction()
        state = self.predictor.meta.pop(CORRECTION_KEY, None)  # written by ``save`` after a search
        if state:
            self.correction.load_state_dict(state)
        self.features = FeatureCache(size=self.features.size)  # features of another checkpoint's granularity

    def _new_correction(self) -> OnlineCorrection:
        """An empty per-task correction of the kind ``online`` names."""
        return (GPCorrection if self.online == "gp" else OnlineCorrection)(**self._correction_args)

    def save(self, path: str) -> None:
        """Writes the (possibly fine-tuned) network, its metadata and the tasks' corrections; ``load`` reads it back."""
        self.predictor.save(path, extra_meta={CORRECTION_KEY: self.correction.state_dict()} if len(self.correction)
                            else None)

    def predict(self, context: Any, candidates: list[Any]) -> np.ndarray:
        """Scores of the candidates, float64 [N], higher = predicted faster; ``nan`` = not scored."""
        task = self._task(context)
        if task["mismatch"]:
            if not self.stats.target_mismatch:
                log.warning("GNNCostModel: %s", task["mismatch"])
            self.stats.target_mismatch += 1
        cache = self.features if self.features.size else None
        before = (FORKS.child_items, FORKS.redone, self.features.hits, self.features.output_hits, FORKS.unforked)
        schs = [c.sch for c in candidates]
        sigs = (_signatures(schs) if self.decisions > 0 or self.decision_cover or (
            self.diversity.signature > 0 and self.diversity.active(task["key"])) else None)
        log_t = self.predictor.predict_schedules(schs, flops=task["flops"], batch_size=self.batch_size, cache=cache,
                                                 explore=self.explore, target=task["target"],
                                                 correction=self._adjustment(task["key"], sigs))
        self.stats.featurized_by_workers += FORKS.child_items - before[0]
        self.stats.worker_failures += FORKS.redone - before[1]
        self.stats.unforked_calls += FORKS.unforked - before[4]
        self.stats.cache_hits += self.features.hits - before[2]
        self.stats.output_hits += self.features.output_hits - before[3]
        with np.errstate(invalid="ignore"):
            score = np.where(np.isfinite(log_t), np.exp(np.clip(task["ref"] - log_t, -_MAX_EXP, _MAX_EXP)), np.nan)
        if self.decision_cover and sigs is not None and len(sigs) == len(score):
            self._promote(task["key"], score, sigs)
        return score

    def _promote(self, key: int, score: np.ndarray, sigs: list[Any]) -> None:
        """``decision_cover``: moves the best-scored carriers of decisions the task has not measured to the top of
        ``score`` (in place), up to the round's allowance."""
        covered = self._covered.setdefault(key, set())
        claimed, done = self._claimed.get(key, (set(), 0))
        top = float(np.nanmax(score)) if np.isfinite(score).any() else 1.0
        for i in np.argsort(-np.nan_to_num(score, nan=-np.inf)):
            if done >= self.decision_cover or not np.isfinite(score[i]):
                break
            new = set(_pairs(sigs[i])) - covered - claimed
            if new:
                claimed |= new
                done += 1
                score[i] = top * _PROMOTED
                self.stats.decision_promotions += 1
        self._claimed[key] = (claimed, done)

    def update(self, context: Any, candidates: list[Any], results: list[Any]) -> None:
        """Learns from the measured candidates (see the class's ``online``) unless frozen."""
        if len(candidates) != len(results):
            raise ValueError(f"update: {len(candidates)} candidates but {len(results)} results")
        self._updates += 1
        task = self._task(context)
        self.diversity.reset(task["key"])  # the next predict starts a new search round
        self._claimed.pop(task["key"], None)
        sigs = _signatures([c.sch for c in candidates]) if self.decision_cover or self.decisions > 0 else None
        if self.decision_cover:
            covered = self._covered.setdefault(task["key"], set())
            for sig in sigs:
                covered.update(_pairs(sig))
        secs = [_secs(r) for r in results]
        ok = [i for i, s in enumerate(secs) if s is not None]
        if self.frozen or not ok:
            return
        datas = self.predictor.featurize([candidates[i].sch for i in ok], flops=task["flops"], target=task["target"])
        if self.online in ("ridge", "gp"):
            have = [j for j, d in enumerate(datas) if d is not None]
            if have:
                prior, emb = self.predictor.embed_data([datas[j] for j in have], batch_size=self.batch_size,
                                                       target=task["target"])
                logs = [math.log(secs[ok[j]]) for j in have]
                rows = (_with_decisions(emb, [sigs[ok[j]] for j in have], self.decisions)
                        if sigs and self.decisions > 0 else emb)
                self.correction.add(task["key"], rows, logs, prior)
                self.diversity.measured(task["key"], emb, logs)
                self.stats.corrections += 1
                if self.online == "ridge" and self.correction.alpha == "auto":  # None: no slope (mean only)
                    a = self.correction.picked.get(task["key"], math.inf)
                    self.stats.ridge_alphas.append(a if math.isfinite(a) else None)
            return
        self.buffer.add(datas, [math.log(secs[i]) for i in ok], task["id"])
        if self._updates % self.update_every == 0 and len(self.buffer) >= 2:
            b = self.buffer
            self.predictor.fine_tune(b.datas, b.log_secs, steps=self.steps, task_ids=b.task_ids, lr=self.lr,
                                     batch_size=256, seed=self._updates)
            self.stats.fine_tune_steps += self.steps

    # ------------------------------------------------------------ internals
    def _adjustment(self, key: int,
                    sigs: list[Any] | None = None) -> Callable[[np.ndarray, np.ndarray], np.ndarray] | None:
        """What ``predict_features`` adds to the network's log times of task ``key``: its online correction,
        then the round's diversity penalty on the corrected times (``None``: neither applies yet). ``sigs``:
        the decision signatures of every candidate; used when every candidate was featurized (the
        correction then sees all of them, in order), else the round's penalty leaves signatures out."""
        corr = self.correction.bound(key)
        if corr is not None and self.decisions > 0:
            corr = _decision_correction(corr, sigs, self.decisions)
        if not self.diversity.active(key):
            return corr

        def adjust(emb: np.ndarray, log_t: np.ndarray) -> np.ndarray:
            c = corr(emb, log_t) if corr is not None else np.zeros(len(log_t))
            aligned = sigs if sigs is not None and len(sigs) == len(log_t) else None
            return c + self.diversity(key, emb, log_t + c, aligned)

        return adjust

    def _task(self, context: Any) -> dict[str, Any]:
        import tvm_ffi

        key = int(tvm_ffi.structural_hash(context.mod))
        if key not in self._tasks:
            try:
                flops = flops_of(context.mod)
            except Exception:  # noqa: BLE001  a task TVM cannot count: the model still ranks within it
                flops = 0.0
            # score = exp(ref - log_time): GFLOP/s, or millions of runs per second without FLOPs
            ref = math.log(flops / 1e9) if flops > 0 else math.log(1e-6)
            target = getattr(context, "target", None)
            self._tasks[key] = {"flops": flops, "ref": ref, "id": len(self._tasks), "key": key, "target": target,
                                "mismatch": self.predictor.target_mismatch(target)}
        return self._tasks[key]


def make_cost_model(kind: str, *, checkpoint: str | Path | None = None, num_tuning_cores: int = 1,
                    fallback: float = 0.0, **gnn_kwargs: Any) -> TimedCostModel:
    """A timed, guarded cost model by name: ``gnn`` (ours), or TVM's ``xgb`` / ``mlp`` / ``random``.

    Args:
        kind: ``gnn``, ``xgb``, ``mlp`` or ``random``.
        checkpoint: GNN checkpoint (default: the shipped one).
        num_tuning_cores: XGBoost threads (as ``tune_tir`` gives it).
        fallback: score of a candidate the model could not score.
        **gnn_kwargs: options of :class:`GNNCostModel` (``frozen``, ``update_every``, ``steps``...).

    Raises:
        ValueError: an unknown kind.
    """
    if kind == "gnn":
        return TimedCostModel(inner=GNNCostModel.from_checkpoint(checkpoint, **gnn_kwargs), fallback=fallback)
    if kind in ("xgb", "mlp", "random"):
        kw = {"num_tuning_cores": num_tuning_cores, "tree_method": "auto"} if kind == "xgb" else {}
        return TimedCostModel(inner=kind, fallback=fallback, **kw)
    raise ValueError(f"unknown cost model {kind!r}: use gnn, xgb, mlp or random")


def _signatures(schs: list[Any]) -> list[Any]:
    """The decision signature of each schedule (``perfmodel.featurize.decision_signature``); one whose
    trace cannot be read gets a signature of its own (it shares no penalty)."""
    from perfmodel.featurize import decision_signature

    out: list[Any] = []
    for i, s in enumerate(schs):
        try:
            out.append(decision_signature(s))
        except Exception:  # noqa: BLE001  a schedule TVM cannot show the trace of: scored without this penalty
            out.append(("unknown", i))
    return out


def _pairs(sig: Any) -> tuple[tuple[int, Any], ...]:
    """The (position, value) decisions of a ``_signatures`` entry; none for an unreadable trace."""
    return () if not sig or sig[0] == "unknown" else tuple(enumerate(sig))


_PROMOTED = 1e6  # a promoted candidate's score, times the best of its call (``decision_cover``)
DECISION_WIDTH = 64  # hashed indicator units of the decisions beside the embedding (GNNCostModel's ``decisions``)


def _with_decisions(emb: np.ndarray, sigs: list[Any] | None, value: float) -> np.ndarray:
    """The embeddings [N, E] with ``DECISION_WIDTH`` units more: unit ``hash((position, decision)) % width`` is
    ``value * sqrt(E)`` for each decision of the candidate's signature (``sigs``, aligned with ``emb``; ``None``,
    another length or an unreadable trace: those units 0)."""
    d = np.zeros((emb.shape[0], DECISION_WIDTH))
    value *= math.sqrt(emb.shape[1])  # one unit weighs as much as the whole standardized embedding at value 1
    if sigs is not None and len(sigs) == emb.shape[0]:
        for i, sig in enumerate(sigs):
            for pair in _pairs(sig):
                d[i, hash(pair) % DECISION_WIDTH] = value
    return np.hstack([np.asarray(emb, dtype=np.float64), d])


def _decision_correction(corr: Callable[[np.ndarray, np.ndarray], np.ndarray], sigs: list[Any] | None,
                         value: float) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """``corr`` (fitted on ``_with_decisions`` rows), called with the candidates' decisions beside their
    embeddings."""
    return lambda emb, log_t: corr(_with_decisions(emb, sigs, value), log_t)


def _secs(result: Any) -> float | None:
    """The time a runner result stands for (``label_secs``); ``None`` for a failed build/run."""
    secs = [float(s) for s in (result.run_secs or [])]
    if getattr(result, "error_msg", None) or not secs or not all(0 < s < FAILED for s in secs):
        return None
    return label_secs(secs)
