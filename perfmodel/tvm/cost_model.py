"""``GNNCostModel``: the shared ``Predictor`` behind MetaSchedule's four-method cost-model interface."""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
from tvm.ir.utils import derived_object

from perfmodel._tvm import load_ms
from perfmodel.predictor import CheckpointError, Predictor, flops_of
from perfmodel.tvm.timed import CostModelStats, TimedCostModel

ms = load_ms()
log = logging.getLogger("perfmodel.tvm")

DEFAULT_CHECKPOINT = Path(__file__).resolve().parents[1] / "pretrained" / "gnn.ckpt"
FAILED = 1e10  # MetaSchedule's run_secs of a failed build or run
_MAX_EXP = 300.0  # scores are exp(ref - log_time), the exponent clipped to +-300 (float64-safe)


@derived_object
class GNNCostModel(ms.cost_model.PyCostModel):
    """The pretrained stage-graph GNN as a MetaSchedule cost model.

    ``predict`` featurizes the candidates' schedules, predicts their log run time with the shared
    :class:`~perfmodel.predictor.Predictor` and returns the predicted throughput (float64, higher is
    better): GFLOP/s, or millions of runs per second for a task without FLOPs. Like TVM's models
    (min_cost / cost) only ratios within a workload matter: the evolutionary search ranks by score
    and samples parents in proportion to it. The score is stateless, so it is comparable across
    calls and identical after ``save``/``load``. ``update``
    keeps the measured candidates of the running tasks and fine-tunes the network on them every
    ``update_every`` calls (unless ``frozen``).

    A candidate whose featurization or prediction fails (exception or NaN) gets ``fallback`` as
    its score; the first failure logs one warning and ``stats.fallback`` counts them all.

    Args:
        path: checkpoint to load; default the shipped ``perfmodel/pretrained/gnn.ckpt``.
        predictor: use this predictor instead of loading ``path``.
        frozen: never fine-tune (``update`` only records the best measured time).
        update_every: fine-tune after every this many ``update`` calls.
        steps: optimizer steps per fine-tuning.
        lr: learning rate of the fine-tuning optimizer.
        history: keep at most this many measured candidates (the newest) for fine-tuning.
        batch_size: graphs per inference batch.
        fallback: score of a candidate that could not be scored.
        threads: torch CPU threads (``None``: leave torch's setting).
    """

    def __init__(self, *, path: str | Path | None = None, predictor: Predictor | None = None,
                 frozen: bool = False, update_every: int = 1, steps: int = 20, lr: float = 1e-4,
                 history: int = 4096, batch_size: int = 1024, fallback: float = 0.0,
                 threads: int | None = None) -> None:
        super().__init__()
        if threads:
            import torch

            torch.set_num_threads(int(threads))
        self.frozen = frozen
        self.update_every = max(1, int(update_every))
        self.steps, self.lr, self.history, self.batch_size = int(steps), float(lr), int(history), int(batch_size)
        self.fallback = float(fallback)
        self.stats = CostModelStats()
        self.path = None
        self.predictor: Predictor
        if predictor is not None:
            self.predictor = predictor
        else:
            self.load(str(path or DEFAULT_CHECKPOINT))
        self._tasks: dict[int, dict[str, Any]] = {}  # workload hash -> flops, ref, best, task id
        self._datas: list[Any] = []  # measured graphs (with flops) ...
        self._ys: list[float] = []  # ... their log seconds ...
        self._task_ids: list[int] = []  # ... and their task
        self._warned = False

    @classmethod
    def from_checkpoint(cls, path: str | Path | None = None, **kwargs: Any) -> GNNCostModel:
        """A cost model from a checkpoint (default: the shipped one); ``kwargs`` as the constructor.

        Raises:
            FileNotFoundError: the file does not exist.
            CheckpointError: not a perfmodel checkpoint, or not one for this featurizer.
        """
        return cls(path=path, **kwargs)

    # ------------------------------------------------------------ TVM's four methods
    def load(self, path: str) -> None:
        """Loads a checkpoint (of ``train`` or ``save``); checks that it fits the featurizer."""
        self.predictor = load_predictor(path)
        self.path = str(path)

    def save(self, path: str) -> None:
        """Writes the (possibly fine-tuned) network and its metadata; ``load`` reads it back."""
        self.predictor.save(path)

    def predict(self, context: Any, candidates: list[Any]) -> np.ndarray:
        """Scores of the candidates, float64 [N], higher = predicted faster."""
        t0 = time.perf_counter()
        n = len(candidates)
        try:
            if n == 0:
                return np.zeros(0, dtype="float64")
            task = self._task(context)
            log_t = self._log_times([c.sch for c in candidates], task["flops"])
            good = np.isfinite(log_t)
            out = np.full(n, self.fallback, dtype="float64")
            out[good] = np.exp(np.clip(task["ref"] - log_t[good], -_MAX_EXP, _MAX_EXP))
            if not good.all():
                self._fail(int(n - good.sum()), "prediction", None)
            return out
        except Exception as e:  # noqa: BLE001  never break the search
            self._fail(n, "prediction", e)
            return np.full(n, self.fallback, dtype="float64")
        finally:
            self.stats.predict_calls += 1
            self.stats.scored += n
            self.stats.predict_s += time.perf_counter() - t0

    def update(self, context: Any, candidates: list[Any], results: list[Any]) -> None:
        """Records the measured times; fine-tunes every ``update_every`` calls unless frozen."""
        t0 = time.perf_counter()
        try:
            self._update(context, candidates, results)
        except Exception as e:  # noqa: BLE001  never break the search
            self._fail(0, "update", e)
        finally:
            self.stats.update_calls += 1
            self.stats.updated += len(candidates)
            self.stats.update_s += time.perf_counter() - t0

    # ------------------------------------------------------------ internals
    def _update(self, context: Any, candidates: list[Any], results: list[Any]) -> None:
        if len(candidates) != len(results):
            raise ValueError(f"update: {len(candidates)} candidates but {len(results)} results")
        task = self._task(context)
        secs = [_median_secs(r) for r in results]
        ok = [i for i, s in enumerate(secs) if s is not None]
        if ok:
            best = min(secs[i] for i in ok)
            task["best"] = best if task["best"] is None else min(task["best"], best)
        if self.frozen or not ok:
            return
        datas = self.predictor.featurize([candidates[i].sch for i in ok], flops=task["flops"])
        for i, d in zip(ok, datas):
            if d is not None:
                self._datas.append(d)
                self._ys.append(math.log(secs[i]))
                self._task_ids.append(task["id"])
        if len(self._datas) > self.history:
            cut = len(self._datas) - self.history
            del self._datas[:cut], self._ys[:cut], self._task_ids[:cut]
        if self.stats.update_calls % self.update_every == self.update_every - 1 and len(self._datas) >= 2:
            self.predictor.fine_tune(self._datas, self._ys, steps=self.steps, task_ids=self._task_ids,
                                     lr=self.lr, batch_size=256, seed=self.stats.update_calls)
            self.stats.fine_tune_steps += self.steps

    def _task(self, context: Any) -> dict[str, Any]:
        import tvm_ffi

        mod = context.mod
        key = int(tvm_ffi.structural_hash(mod))
        if key not in self._tasks:
            try:
                flops = flops_of(mod)
            except Exception:  # noqa: BLE001  a task TVM cannot count: the model still ranks within it
                flops = 0.0
            # score = exp(ref - log_time): GFLOP/s, or millions of runs per second without FLOPs
            ref = math.log(flops / 1e9) if flops > 0 else math.log(1e-6)
            self._tasks[key] = {"flops": flops, "ref": ref, "best": None, "id": len(self._tasks)}
        return self._tasks[key]

    def _log_times(self, schs: list[Any], flops: float) -> np.ndarray:
        """Predicted log seconds; ``nan``/``inf`` for a schedule that could not be scored."""
        try:
            return self.predictor.predict_schedules(schs, flops=flops, batch_size=self.batch_size)
        except Exception:  # noqa: BLE001  one bad schedule must not cost the batch: retry one by one
            pass
        datas = []
        for s in schs:
            try:
                datas.extend(self.predictor.featurize([s], flops=flops))
            except Exception:  # noqa: BLE001
                datas.append(None)
        ok = [i for i, d in enumerate(datas) if d is not None]
        out = np.full(len(schs), np.nan)
        if ok:
            out[ok] = self.predictor.predict_data([datas[i] for i in ok], batch_size=self.batch_size)
        return out

    def _fail(self, n: int, where: str, e: Exception | None) -> None:
        self.stats.fallback += n
        if e is not None:
            self.stats.errors += 1
        if not self._warned:
            self._warned = True
            why = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}" if e else "featurization failed or NaN"
            log.warning("GNNCostModel: %s failed for %d candidate(s) (%s); they get score %g and the search goes "
                        "on (further failures are only counted in stats.fallback/errors)", where, n, why,
                        self.fallback)


def load_predictor(path: str | Path) -> Predictor:
    """``Predictor.from_checkpoint`` with every way a checkpoint can fail turned into one clear error.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        CheckpointError: not a perfmodel checkpoint, another feature schema, or a network that does
            not fit the featurizer's feature widths.
    """
    from perfmodel.featurize.schema import EDGE_FEATURES, NODE_FEATURES

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"GNN checkpoint {path} does not exist (train one with `python train.py`, "
                                f"or use the shipped {DEFAULT_CHECKPOINT})")
    try:
        pred = Predictor.from_checkpoint(path)
    except (CheckpointError, FileNotFoundError):
        raise
    except Exception as e:  # noqa: BLE001  e.g. state-dict shape mismatches
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise CheckpointError(f"{path}: does not fit this perfmodel ({type(e).__name__}: {first[:200]})") from e
    cfg = pred.meta.get("model", {})
    for key, want in (("in_dim", len(NODE_FEATURES)), ("edge_dim", len(EDGE_FEATURES))):
        if key in cfg and int(cfg[key]) != want:
            raise CheckpointError(f"{path}: model {key}={cfg[key]} but the featurizer gives {want} features")
    return pred


def make_cost_model(kind: str, *, checkpoint: str | Path | None = None, num_tuning_cores: int = 1,
                    **gnn_kwargs: Any) -> TimedCostModel:
    """A timed, guarded cost model by name: ``gnn`` (ours), or TVM's ``xgb`` / ``mlp`` / ``random``.

    Args:
        kind: ``gnn``, ``xgb``, ``mlp`` or ``random``.
        checkpoint: GNN checkpoint (default: the shipped one).
        num_tuning_cores: XGBoost threads (as ``tune_tir`` gives it).
        **gnn_kwargs: options of :class:`GNNCostModel` (``frozen``, ``update_every``, ``steps``...).

    Raises:
        ValueError: an unknown kind.
    """
    if kind == "gnn":
        return TimedCostModel(inner=GNNCostModel.from_checkpoint(checkpoint, **gnn_kwargs))
    if kind in ("xgb", "mlp", "random"):
        kw = {"num_tuning_cores": num_tuning_cores, "tree_method": "auto"} if kind == "xgb" else {}
        return TimedCostModel(inner=kind, **kw)
    raise ValueError(f"unknown cost model {kind!r}: use gnn, xgb, mlp or random")


def _median_secs(result: Any) -> float | None:
    """Median run time of a runner result; ``None`` for a failed build/run."""
    if getattr(result, "error_msg", None):
        return None
    secs = [float(s) for s in (result.run_secs or [])]
    if not secs or not all(0 < s < FAILED for s in secs):
        return None
    return float(np.median(secs))
