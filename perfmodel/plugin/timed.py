"""Counters of a cost model's work, and the one wrapper that times, counts and guards any MetaSchedule cost model."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from tvm.ir.utils import derived_object

from perfmodel._tvm import load_ms

ms = load_ms()
log = logging.getLogger("perfmodel.plugin")


@dataclass
class CostModelStats:
    """What a cost model did during a search.

    Attributes:
        predict_calls: calls of ``predict``.
        scored: candidates scored by ``predict`` (featurization included in ``predict_s``).
        predict_s: wall seconds inside ``predict``.
        update_calls: calls of ``update``.
        updated: measured candidates passed to ``update``.
        update_s: wall seconds inside ``update`` (fine-tuning / retraining included).
        fine_tune_steps: optimizer steps of online fine-tuning (GNN with ``online="finetune"``).
        corrections: refits of a task's online ridge correction (GNN with ``online="ridge"``).
        target_mismatch: ``predict`` calls for another target than the checkpoint's (GNN only).
        fallback: candidates that got the fallback score (not scored, NaN, or the model raised).
        errors: calls in which the model raised and the guard took over.
        featurized_by_workers: candidates featurized by forked workers (GNN with ``featurize_workers`` > 1).
        worker_failures: forked workers that failed, died or ran late; their candidates were featurized
            in the tuning process instead (GNN only).
        unforked_calls: ``predict`` calls featurized in the tuning process alone because forking would not
            have paid (their candidates mostly cached: ``perfmodel.featurize.forked.ForkCosts``; GNN only).
        cache_hits: candidates scored with the features of a schedule scored before (the same object or
            the same module; GNN only): not featurized again.
        output_hits: candidates scored with the network's outputs for a schedule of the same content scored
            before (same weights; GNN only): not run through the network again either.
        ridge_alphas: the penalty the GNN's ridge correction picked at each refit with
            ``ridge_alpha="auto"`` (``None``: no slope, the mean residual only).
        decision_promotions: candidates the GNN moved to the top of a round for a decision its task had not
            measured yet (``decision_cover``).
    """

    predict_calls: int = 0
    scored: int = 0
    predict_s: float = 0.0
    update_calls: int = 0
    updated: int = 0
    update_s: float = 0.0
    fine_tune_steps: int = 0
    corrections: int = 0
    target_mismatch: int = 0
    fallback: int = 0
    errors: int = 0
    featurized_by_workers: int = 0
    worker_failures: int = 0
    unforked_calls: int = 0
    cache_hits: int = 0
    output_hits: int = 0
    decision_promotions: int = 0
    ridge_alphas: list[float | None] = field(default_factory=list)

    @property
    def model_s(self) -> float:
        """Seconds inside ``predict`` + ``update``."""
        return self.predict_s + self.update_s

    @property
    def predict_per_s(self) -> float:
        """Candidates scored per second of ``predict``."""
        return self.scored / self.predict_s if self.predict_s > 0 else 0.0

    def as_dict(self) -> dict[str, float]:
        return {**asdict(self), "model_s": self.model_s, "predict_per_s": self.predict_per_s}


@derived_object
class TimedCostModel(ms.cost_model.PyCostModel):
    """Delegates to another cost model (``"xgb"``, ``"random"``, a ``GNNCostModel``...) and counts its work.

    It also keeps the search alive: a candidate whose score is not finite (the GNN could not
    featurize it, a NaN) gets ``fallback``; if the model raises in ``predict`` every candidate does,
    and in ``update`` the batch is dropped. The first such event logs one warning, then only
    ``stats.fallback`` / ``stats.errors`` grow. This makes e.g. TVM's untrained ``MLPModel`` usable
    on a single task (its first ``update`` raises with fewer than 5 workloads).

    Args:
        inner: the cost model, or a kind for ``ms.cost_model.CostModel.create``.
        fallback: score of a candidate the model could not score.
        **create_kwargs: passed to ``CostModel.create`` when ``inner`` is a kind.

    Attributes:
        stats: the counters; the inner model's own ``stats`` object when it has one (the GNN counts
            its fine-tuning there), so there is one set of counters.
    """

    def __init__(self, *, inner: Any, fallback: float = 0.0, **create_kwargs: Any) -> None:
        super().__init__()
        if isinstance(inner, str):
            inner = ms.cost_model.CostModel.create(inner, **create_kwargs)
        self.inner = inner
        self.fallback = float(fallback)
        stats = getattr(inner, "stats", None)
        self.stats = stats if isinstance(stats, CostModelStats) else CostModelStats()
        self._warned = False

    def load(self, path: str) -> None:
        self.inner.load(path)

    def save(self, path: str) -> None:
        self.inner.save(path)

    def update(self, context: Any, candidates: list[Any], results: list[Any]) -> None:
        t0 = time.perf_counter()
        try:
            self.inner.update(context, candidates, results)
        except Exception as e:  # noqa: BLE001  never break the search
            self._guard("update", 0, e)
        finally:
            self.stats.update_calls += 1
            self.stats.updated += len(candidates)
            self.stats.update_s += time.perf_counter() - t0

    def predict(self, context: Any, candidates: list[Any]) -> np.ndarray:
        t0 = time.perf_counter()
        n = len(candidates)
        try:
            out = np.asarray(self.inner.predict(context, candidates), dtype="float64")
            if out.shape != (n,):
                raise ValueError(f"predict returned shape {out.shape} for {n} candidates")
            bad = ~np.isfinite(out)
            if bad.any():
                out[bad] = self.fallback
                self._guard("predict", int(bad.sum()), None)
        except Exception as e:  # noqa: BLE001  never break the search
            out = np.full(n, self.fallback, dtype="float64")
            self._guard("predict", n, e)
        finally:
            self.stats.predict_calls += 1
            self.stats.scored += n
            self.stats.predict_s += time.perf_counter() - t0
        return out

    def _guard(self, where: str, n: int, e: Exception | None) -> None:
        """Counts ``n`` candidates given the fallback (and an error when ``e``); warns the first time."""
        self.stats.fallback += n
        self.stats.errors += int(e is not None)
        if not self._warned:
            self._warned = True
            why = f"raised {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}" if e else "gave no finite score"
            log.warning("cost model %s %s in %s for %d candidate(s); they get score %g and the search goes on "
                        "(further cases are only counted in stats.fallback/errors)", type(self.inner).__name__,
                        why, where, n, self.fallback)
