"""The one predictor: checkpoint -> (featurize) -> model -> log seconds; used by the TVM plugin and evaluation."""

from __future__ import annotations

import copy
import hashlib
import itertools
import math
import os
import re
import warnings
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, overload

import numpy as np
import torch
from torch import nn

from perfmodel.workloads import describe_target, nearest_target, targets_match

_WEIGHTS = itertools.count()  # names a predictor's weights (see ``FeatureCache.get_output``)

CKPT_KEY = "perfmodel"  # the block of a checkpoint that holds what inference needs
CKPT_FORMAT = 1  # version of the CKPT_KEY block
DEFAULT_CHECKPOINT = Path(__file__).resolve().parent / "pretrained" / "gnn.ckpt"  # the shipped model


class CheckpointError(ValueError):
    """A checkpoint that cannot be used (not ours, or made for another feature schema)."""


class Predictor:
    """A trained cost model with its feature normalization, ready to score graphs or schedules.

    Lower predicted log time = faster. Build one with ``load_predictor`` (or ``from_checkpoint``).

    A model with the target input (``CostGNN(target_input=n)``) scores graphs for a target: the
    methods that build graphs or batches take ``target`` (a ``tvm.target.Target``, its JSON dict or a
    ``{kind, mcpu, threads}`` summary) and set ``target_id`` to its index in ``target_vocab``; a
    target not in it is scored as the nearest one (``perfmodel.workloads.nearest_target``: kind, threads,
    then LLVM's CPU features; ``target_mismatch`` says so in one line), none given as ``target_vocab[0]``
    (the most common training target). Other models ignore ``target``.

    Args:
        model: the network (``CostGNN``).
        meta: the checkpoint's ``CKPT_KEY`` block (``checkpoint_meta``: model config,
            ``schema_version``, ``norm`` state, ``split``, ``target``...).
        device: where the model runs.
        featurize_workers: cores that featurize schedules (``features``, ``predict_schedules``): more than
            one forks that many workers per call (``perfmodel.featurize.features_many``).
    """

    def __init__(self, *, model: nn.Module, meta: dict[str, Any], device: str | torch.device = "cpu",
                 featurize_workers: int = 1) -> None:
        self.model = model.to(device).eval()
        self.featurize_workers = max(1, int(featurize_workers))
        self.meta = meta
        self.device = torch.device(device)
        self.norm = _load_norm(meta.get("norm"))
        self.granularity = str(meta.get("granularity", "stage"))
        self.target_input = any(getattr(m, "target_input", 0) for m in self.model.modules())
        self.target_vocab: list[dict[str, Any]] = [dict(t) for t in meta.get("target_vocab") or []]
        self._scored_as: dict[str, int] = {}  # describe_target(target) -> its scored_as index
        self._opt: torch.optim.Optimizer | None = None
        self._weights = next(_WEIGHTS)  # these weights, as a FeatureCache's outputs name them (new per fine-tune)
        self._fork_costs: dict[float, Any] = {}  # FLOPs (one task's calls) -> its featurizing calls' ForkCosts

    # ------------------------------------------------------------ loading
    @classmethod
    def from_checkpoint(cls, path: str | Path, *, device: str | torch.device = "cpu",
                        check_schema: bool = True) -> Predictor:
        """Loads a Lightning checkpoint of ``train`` or a file written by ``save`` (weights only).

        Raises:
            FileNotFoundError: ``path`` does not exist.
            CheckpointError: not a perfmodel checkpoint, its feature schema differs from the
                featurizer's (the message names both versions), or its weights do not fit its config.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint {path} does not exist (train one with `python train.py`, "
                                    f"or use the shipped {DEFAULT_CHECKPOINT})")
        try:
            with warnings.catch_warnings():  # e.g. torch's note on the pickle protocol of a foreign file
                warnings.simplefilter("ignore")
                ckpt = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001  pickle errors come in many types
            raise CheckpointError(f"{path}: not a perfmodel checkpoint ({_load_failure(e)})") from None
        meta = ckpt.get(CKPT_KEY) if isinstance(ckpt, dict) else None
        if not isinstance(meta, dict) or "model" not in meta or not isinstance(ckpt.get("state_dict"), dict):
            raise CheckpointError(f"{path}: not a perfmodel checkpoint (no '{CKPT_KEY}' block with a model config "
                                  "and a state_dict)")
        if check_schema:
            check_schema_version(meta.get("schema_version"), source=str(path))
        from perfmodel.models import build_model

        try:
            model = build_model(meta["model"])
            state = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
            model.load_state_dict(state)
        except Exception as e:  # noqa: BLE001  e.g. an unknown model name, state-dict shape mismatches
            raise CheckpointError(f"{path}: does not fit this perfmodel ({_one_line(e)})") from None
        return cls(model=model, meta=meta, device=device)

    @classmethod
    def ensemble(cls, members: Sequence[Predictor]) -> Predictor:
        """One predictor averaging the log times of ``members`` (same schema, granularity and
        feature normalization: e.g. one recipe trained with several seeds on one split).

        Raises:
            CheckpointError: members that disagree on schema, granularity or normalization (named).
        """
        from perfmodel.models import Ensemble

        members = list(members)
        if not members:
            raise CheckpointError("ensemble: no members given")
        first = members[0]
        for i, p in enumerate(members[1:], 1):
            for key in ("schema_version", "granularity"):
                if p.meta.get(key) != first.meta.get(key):
                    raise CheckpointError(f"ensemble: member {i} has {key}={p.meta.get(key)!r}, "
                                          f"member 0 has {first.meta.get(key)!r}")
            if not _same_norm(p.meta.get("norm"), first.meta.get("norm")):
                raise CheckpointError(f"ensemble: member {i} normalizes features differently from member 0 "
                                      "(trained on another split or dataset)")
        vocabs = [p.meta["target_vocab"] for p in members if p.meta.get("target_vocab")]
        if any(v != vocabs[0] for v in vocabs):
            raise CheckpointError("ensemble: members number their target inputs differently (target_vocab)")
        flat = []
        for p in members:  # an ensemble member contributes its own members
            if isinstance(p.model, Ensemble):
                flat.extend(zip(p.meta["model"]["members"], p.model.members))
            else:
                flat.append((p.meta["model"], p.model))
        model = Ensemble(members=[dict(c) for c, _ in flat])
        for dst, (_, src) in zip(model.members, flat):
            dst.load_state_dict(src.state_dict())
        meta = {**first.meta, "model": {"name": "ensemble", "members": [dict(c) for c, _ in flat]},
                "members": [{k: p.meta[k] for k in ("seed", "fingerprint") if k in p.meta} for p in members]}
        if vocabs:
            meta["target_vocab"] = vocabs[0]
        return cls(model=model, meta=meta, device=first.device)

    def save(self, path: str | Path, *, extra_meta: dict[str, Any] | None = None) -> Path:
        """Writes weights and metadata in the checkpoint layout ``from_checkpoint`` reads; ``extra_meta``:
        more keys of the metadata block for this file only (e.g. a cost model's online state)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {f"model.{k}": v.detach().cpu() for k, v in self.model.state_dict().items()}
        torch.save({CKPT_KEY: {**self.meta, **(extra_meta or {})}, "state_dict": state}, path)
        return path

    # ------------------------------------------------------------ what it was trained on
    @property
    def target(self) -> dict[str, Any] | None:
        """``{kind, mcpu, threads}`` of the hardware of the training data (``None``: an older checkpoint)."""
        return self.meta.get("target")

    @property
    def split(self) -> dict[str, Any]:
        """The training split: ``kind``, ``seed``, ``val``, ``test``, sizes, ``test_tasks`` (may be partial)."""
        return dict(self.meta.get("split") or {})

    def heldout_tasks(self, seed: int | None = None) -> set[str] | None:
        """Names of the tasks training held out for testing (what ``evaluate`` scores on the training data).

        Args:
            seed: another seed of the same split (``None``: the checkpoint's own split).

        Returns:
            The recorded ``test_tasks`` (rebuilt from ``task_names`` for an older checkpoint or another
            seed of a ``task`` split); ``None`` when unknown or when the split was within task.
        """
        split = self.split
        kind = split.get("kind", "task")
        if kind == "random":
            return None
        if split.get("test_tasks") is not None and (seed is None or seed == split.get("seed")):
            return set(split["test_tasks"])
        if kind != "task" or not self.meta.get("task_names"):
            return None
        from perfmodel.data.split import heldout_task_names

        return heldout_task_names(self.meta["task_names"], seed=int(split.get("seed", 0) if seed is None else seed),
                                  val=float(split.get("val", 0.1)), test=float(split.get("test", 0.2)))

    def target_mismatch(self, target: Any) -> str | None:
        """One line saying the checkpoint was trained for another target than ``target``, else ``None``.

        Kind, ``mcpu`` (missing = ``generic``) and thread count are compared; an unknown value (an
        older checkpoint without ``target``, a target without ``num-cores``) matches anything. A model
        with the target input knows every target of its ``target_vocab``; for another, the line also
        says which known target it is scored as.

        Args:
            target: a ``tvm.target.Target``, its JSON dict, or a ``{kind, mcpu, threads}`` summary.
        """
        vocab = self.target_vocab if self.target_input else []
        if not vocab and not self.target:
            return None
        want = _summary(target)
        if vocab:
            if self.target_index(want) is not None:
                return None
            known = " and ".join(describe_target(_summary(t)) for t in vocab)
            near = describe_target(_summary(vocab[self.scored_as(want)]))
            head = f"checkpoint trained for {known} (target input), scoring for {describe_target(want)} " \
                   f"(scored as {near}, the nearest by CPU features)"
        else:
            have = _summary(self.target)
            if targets_match(have, want):
                return None
            head = f"checkpoint trained for {describe_target(have)}, scoring for {describe_target(want)}"
        return f"{head}: predictions may be off; retrain on data of this target (python train.py data.db_paths=[...])"

    def target_index(self, target: Any) -> int | None:
        """Index of ``target`` (as ``target_mismatch`` takes it) in ``target_vocab``; ``None`` when not there."""
        want = _summary(target)
        return next((i for i, t in enumerate(self.target_vocab) if targets_match(_summary(t), want)), None)

    def scored_as(self, target: Any) -> int:
        """Index in ``target_vocab`` that ``target`` is scored as: its own, else the nearest
        (``nearest_target``; remembered per target)."""
        want = _summary(target)
        key = describe_target(want)
        if key not in self._scored_as:
            found = self.target_index(want)
            self._scored_as[key] = found if found is not None else nearest_target(
                want, [_summary(t) for t in self.target_vocab])
        return self._scored_as[key]

    def _target_id(self, target: Any) -> int | None:
        """The ``target_id`` of graphs scored for ``target`` (``None``: the model has no target input)."""
        if not self.target_input:
            return None
        return self.scored_as(target) if target is not None else 0

    # ------------------------------------------------------------ predicting
    def _prepare(self, batch: Any, target_id: int | None = None) -> Any:
        """A collated batch on the device, features normalized as in training; ``target_id`` set to
        ``target_id`` where the batch has none (``None``: left as it is)."""
        if target_id is not None and getattr(batch, "target_id", None) is None:
            batch.target_id = torch.full((batch.num_graphs,), target_id, dtype=torch.long)
        batch = batch.to(self.device)
        return batch if self.norm is None else self.norm.apply(batch)

    def _batches(self, datas: Sequence[Any], batch_size: int, target_id: int | None = None) -> Any:
        from torch_geometric.data import Batch

        for i in range(0, len(datas), batch_size):
            yield self._prepare(Batch.from_data_list(list(datas[i:i + batch_size])), target_id)

    def predict_data(self, datas: Sequence[Any], *, batch_size: int = 1024, target: Any = None) -> np.ndarray:
        """Predicted log seconds of featurized graphs (each with ``flops``), shape [N] float64.

        Graphs that carry ``target_id`` keep it (an index into ``target_vocab``); others are scored for
        ``target`` (see the class).
        """
        if len(datas) == 0:
            return np.zeros(0)
        missing = [i for i, d in enumerate(datas) if getattr(d, "flops", None) is None]
        if missing:
            raise ValueError(f"predict_data: graph {missing[0]} has no `flops` field "
                             "(set data.flops = torch.tensor([flops]) or use predict_schedules)")
        self.model.eval()
        outs = []
        with torch.inference_mode():
            for b in self._batches(datas, batch_size, self._target_id(target)):
                outs.append(self.model(b).double().cpu())
        return torch.cat(outs).numpy()

    def featurize(self, schs: Sequence[Any], *, flops: float | Sequence[float] | None = None,
                  target: Any = None) -> list[Any]:
        """Schedules -> graphs with ``flops`` (and, for a model with the target input, ``target_id``) set
        (a graph that cannot be featurized gives ``None``).

        Args:
            schs: MetaSchedule ``Schedule`` objects (or IRModules).
            flops: FLOPs of the task (one number for all, or one per schedule); by default
                TVM's estimate of the first schedule's module.
            target: the target they are scored for (see the class).
        """
        from perfmodel.featurize import featurize_many

        fl = self._flops(schs, flops)
        tid = self._target_id(target)
        datas = featurize_many(schs, granularity=self.granularity, errors="none")
        for d, f in zip(datas, fl):
            if d is not None:
                d.flops = torch.tensor([f], dtype=torch.float32)
                if tid is not None:
                    d.target_id = torch.tensor([tid], dtype=torch.long)
        return datas

    def predict_schedules(self, schs: Sequence[Any], *, flops: float | Sequence[float] | None = None,
                          batch_size: int = 1024, cache: FeatureCache | None = None,
                          explore: float = 0.0, target: Any = None,
                          correction: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None) -> np.ndarray:
        """Predicted log seconds of schedules, shape [N]; one that cannot be featurized gets ``+inf``.

        Equal to ``predict_data(featurize(schs, flops=flops))``, but the features go straight into
        one batch per ``batch_size`` schedules (no per-graph ``Data``): the scoring path of tuning.
        A featurizer that raises on the batch is retried schedule by schedule, so one bad schedule
        does not cost the others their prediction. With ``cache``, schedules whose content was scored
        before (see :class:`FeatureCache`) are not featurized again, nor run through the network again
        while its weights, the target and the FLOPs are the same; ``explore`` and ``correction``: see
        :meth:`predict_features`; ``target``: see the class.
        """
        from perfmodel.featurize.graph import paused_gc

        if len(schs) == 0:
            return np.zeros(0)
        with paused_gc():  # see there: many small allocations, no cycles
            return self._predict_schedules(schs, self._flops(schs, flops), batch_size, cache, explore, target,
                                           correction)

    def _predict_schedules(self, schs: Sequence[Any], fl: list[float], batch_size: int, cache: FeatureCache | None,
                           explore: float, target: Any,
                           correction: Callable[[np.ndarray, np.ndarray], np.ndarray] | None) -> np.ndarray:
        if cache is None:
            feats, keys = self._features_isolated(schs), None
        else:
            feats, keys = self._features_cached(schs, cache, fl[0])
        ok = [i for i, f in enumerate(feats) if f is not None]
        out = np.full(len(schs), np.inf)
        if ok:
            m, emb = self._outputs([feats[i] for i in ok], [fl[i] for i in ok], batch_size, self._target_id(target),
                                   cache, None if keys is None else [keys[i] for i in ok])
            out[ok] = self._combine(m, emb, explore, correction)
        return out

    def _features_cached(self, schs: Sequence[Any], cache: FeatureCache,
                         flops: float) -> tuple[list[Any], list[Any]]:
        """The features of ``schs`` and their content keys, each content featurized once: those in ``cache``
        taken from it, the others computed (keys and features on ``featurize_workers`` cores when forking
        pays by the earlier calls with these ``flops``: one task's, see ``ForkCosts``) and added to it."""
        from perfmodel.featurize import features_keyed
        from perfmodel.featurize.forked import ForkCosts

        costs = self._fork_costs.setdefault(flops, ForkCosts())
        got = features_keyed(schs, key=cache.key, known=cache.__contains__, granularity=self.granularity,
                             workers=self.featurize_workers, costs=costs)
        new: dict[Any, Any] = {}
        for k, hit, f in got:
            if not hit:
                new.setdefault(k, f)  # the first of a content two workers both featurized
        # a hit was in the cache when the workers started, and nothing leaves it before the puts below
        feats = [new[k] if k in new else cache.get_key(k) for k, _, _ in got]
        for k, f in new.items():
            cache.put_key(k, f)
        cache.misses += len(new)
        cache.hits += len(schs) - len(new)
        return feats, [k for k, _, _ in got]

    def predict_features(self, feats: Sequence[Any], flops: Sequence[float], *, batch_size: int = 1024,
                         explore: float = 0.0, target: Any = None,
                         correction: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None) -> np.ndarray:
        """Predicted log seconds of ``perfmodel.featurize.Features`` with their FLOPs, shape [N] float64.

        With ``explore`` > 0 and an ensemble: the optimistic log time ``mean - explore * std`` over the
        members (a lower confidence bound on the time: candidates the members disagree on look faster).
        ``correction``: called with the graphs' embeddings [N, E] (``embed_data``) and the prediction [N],
        returns log seconds [N] added to the prediction (an :class:`OnlineCorrection` bound to a task).
        ``target``: see the class.
        """
        if len(feats) == 0:
            return np.zeros(0)
        m, emb = self._outputs(feats, flops, batch_size, self._target_id(target))
        return self._combine(m, emb, explore, correction)

    @staticmethod
    def _combine(m: np.ndarray, emb: np.ndarray, explore: float,
                 correction: Callable[[np.ndarray, np.ndarray], np.ndarray] | None) -> np.ndarray:
        """Log seconds [N] from every member's [M, N] and the embeddings [N, E] (see ``predict_features``)."""
        y = m.mean(0) - explore * m.std(0) if explore > 0 and len(m) > 1 else m.mean(0)
        return y if correction is None else y + correction(emb, y)

    def _outputs(self, feats: Sequence[Any], flops: Sequence[float], batch_size: int, tid: int | None,
                 cache: FeatureCache | None = None, keys: Sequence[Any] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Every member's log seconds [M, N] and the embeddings [N, E] (float64) of features with their FLOPs.
        With ``cache`` and the features' content ``keys``: the outputs it holds for these weights, target and
        FLOPs are taken from it, the others computed (a content once per call) and added to it."""
        from perfmodel.featurize import features_to_batch

        tag, keyed = (self._weights, tid), cache is not None and keys is not None
        got = [cache.get_output(k, tag, f) for k, f in zip(keys, flops)] if keyed else [None] * len(feats)
        todo, first, dup = [], {}, []  # a content twice in one call is run once
        for i, g in enumerate(got):
            if g is not None:
                continue
            if keyed and (keys[i], flops[i]) in first:
                dup.append(i)
                continue
            if keyed:
                first[(keys[i], flops[i])] = i
            todo.append(i)
        self.model.eval()
        with torch.inference_mode():
            for s in range(0, len(todo), batch_size):
                idx = todo[s:s + batch_size]
                b = self._prepare(features_to_batch([feats[i] for i in idx], [flops[i] for i in idx]), tid)
                m, emb = self.model.outputs_and_embedding(b)  # every member's output and the embedding, one pass
                m, emb = m.double().cpu().numpy(), emb.double().cpu().numpy()
                for j, i in enumerate(idx):
                    got[i] = (m[:, j], emb[j])
                    if keyed:
                        cache.put_output(keys[i], tag, flops[i], got[i])
        for i in dup:
            got[i] = got[first[(keys[i], flops[i])]]
        return np.stack([g[0] for g in got], 1), np.stack([g[1] for g in got])

    def embed_data(self, datas: Sequence[Any], *, batch_size: int = 1024,
                   target: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """``predict_data``'s log seconds [N] and the graphs' embeddings [N, E] float64: the input of the
        model's head(s), every member's side by side (what an :class:`OnlineCorrection` is fitted on)."""
        if len(datas) == 0:
            return np.zeros(0), np.zeros((0, 0))
        self.model.eval()
        ys, es = [], []
        with torch.inference_mode():
            for b in self._batches(datas, batch_size, self._target_id(target)):
                m, emb = self.model.outputs_and_embedding(b)
                ys.append(m.double().mean(0).cpu())
                es.append(emb.double().cpu())
        return torch.cat(ys).numpy(), torch.cat(es).numpy()

    def _flops(self, schs: Sequence[Any], flops: float | Sequence[float] | None) -> list[float]:
        """One FLOPs value per schedule (default: TVM's estimate of the first schedule's module)."""
        if flops is None:
            flops = flops_of(schs[0]) if len(schs) else 0.0
        fl = [float(flops)] * len(schs) if np.isscalar(flops) else [float(f) for f in flops]
        if len(fl) != len(schs):
            raise ValueError(f"featurize: {len(fl)} flops values for {len(schs)} schedules")
        return fl

    def features(self, schs: Sequence[Any]) -> list[Any]:
        """Schedules -> ``perfmodel.featurize.Features`` (``None`` for one the featurizer does not handle):
        what ``predict_schedules`` featurizes, on ``featurize_workers`` cores."""
        from perfmodel.featurize import features_many

        return features_many(schs, granularity=self.granularity, errors="none", workers=self.featurize_workers)

    def _features_isolated(self, schs: Sequence[Any]) -> list[Any]:
        try:
            return self.features(schs)
        except Exception:  # noqa: BLE001  a featurizer bug on one schedule: isolate it
            return [self._features_one(s) for s in schs]

    def _features_one(self, sch: Any) -> Any:
        try:
            return self.features([sch])[0]
        except Exception:  # noqa: BLE001
            return None

    # ------------------------------------------------------------ updating
    def fine_tune(self, datas: Sequence[Any], log_secs: Sequence[float] | np.ndarray, steps: int = 20, *,
                  task_ids: Sequence[int] | None = None, lr: float = 1e-4, batch_size: int = 256,
                  loss: nn.Module | None = None, seed: int = 0) -> list[float]:
        """Online update: ``steps`` optimizer steps on measured graphs (e.g. a tuning round's results).

        The optimizer state persists across calls. Each step uses a random batch of the records and
        the training step of ``CostModelModule`` (``batch_loss``); the default loss is MSE + within-task
        RankNet (``task_ids`` default: one task).

        Args:
            datas: featurized graphs (with ``flops``).
            log_secs: their measured log seconds, shape [N].
            steps: optimizer steps.
            task_ids: task of each record (pairs for the ranking loss are taken within a task).
            lr: learning rate (of the first call; the optimizer is kept afterwards).
            batch_size: records per step.
            loss: ``loss(pred, true, task)``; default ``CombinedLoss()``.
            seed: seed of the batch choice.

        Returns:
            The loss of every step.
        """
        from torch_geometric.data import Batch

        from perfmodel.models import CombinedLoss, batch_loss

        y = torch.as_tensor(np.asarray(log_secs, dtype=np.float32)).reshape(-1)
        if len(datas) != y.numel():
            raise ValueError(f"fine_tune: {len(datas)} graphs but {y.numel()} times")
        if len(datas) == 0 or steps <= 0:
            return []
        tasks = torch.as_tensor(np.zeros(len(datas), np.int64) if task_ids is None else np.asarray(task_ids))
        loss_fn = loss or CombinedLoss()
        if self._opt is None:
            self._opt = torch.optim.AdamW(self.model.parameters(), lr=lr, weight_decay=1e-4)
        gen = torch.Generator().manual_seed(seed)
        losses = []
        self.model.train()
        try:
            for _ in range(steps):
                idx = torch.randperm(len(datas), generator=gen)[:batch_size]
                b = Batch.from_data_list([datas[int(i)] for i in idx])
                b.y, b.task = y[idx], tasks[idx]
                lv = batch_loss(self.model, loss_fn, self._prepare(b))[0]
                self._opt.zero_grad(set_to_none=True)
                lv.backward()
                nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
                self._opt.step()
                losses.append(float(lv.detach()))
        finally:
            self.model.eval()
        self.meta = {**self.meta, "fine_tuned_steps": int(self.meta.get("fine_tuned_steps", 0)) + steps}
        self._weights = next(_WEIGHTS)  # outputs cached for the weights before are not these weights' outputs
        return losses

    def copy(self) -> Predictor:
        """An independent copy (weights and optimizer state not shared)."""
        return Predictor(model=copy.deepcopy(self.model), meta=copy.deepcopy(self.meta), device=self.device,
                         featurize_workers=self.featurize_workers)


class FeatureCache:
    """The ``perfmodel.featurize.Features`` of the newest ``size`` schedules scored, by content.

    MetaSchedule's evolutionary search hands its cost model schedules it scored before: the very same
    objects (parents kept from one generation to the next: 11-12% of the candidates of a 64-trial
    tune) and new objects whose module a mutation rebuilt as it was (a tile size drawn again), or the
    measured bests it replays each round: in all 30% of GRP-3's and 56% of SFM-3's 10,240 candidates.
    ``Predictor.predict_schedules(..., cache=...)`` featurizes none of them twice, and runs none of them
    through the network twice while its weights (a fine-tuning makes new ones), the target and the FLOPs
    stay the same (each content's member outputs and embedding are kept beside its features; an online
    correction and the round's diversity penalty are applied afresh at every call). The key is what the
    featurizer reads (``perfmodel.featurize.content_key``: the module's structural hash and the trace's
    inline count), hashed afresh for every schedule handed in, also an object seen before: keeping
    objects to know them again would keep them alive, and freeing a schedule that only the cache still
    holds costs ~0.1-0.5 ms (its module, trace and state), more than the hash it saves (measured live:
    such a map of 1,024 objects spent 0.67 s of GRP-3's 6.1 s of scoring in 64 trials, mostly
    freeing, to skip the hash of the 11-12% of candidates handed in again). A cache belongs to one
    predictor's granularity (make a new one for another); tasks can share one (their modules differ).

    Args:
        size: schedules (distinct contents) whose features are kept, least recently used dropped first
            (a few KB each).
    """

    MISS = object()  # ``get``'s answer for a schedule not in the cache (``None`` is a cached failure)

    def __init__(self, *, size: int = 4096) -> None:
        self.size = int(size)
        self.hits = 0  # schedules scored without featurizing them (``predict_schedules`` counts)
        self.misses = 0  # schedules featurized
        self.output_hits = 0  # schedules scored without running the network on them
        self._feats: OrderedDict[Any, Any] = OrderedDict()  # content key -> features
        self._outs: dict[Any, tuple[Any, float, Any]] = {}  # content key -> (weights and target, FLOPs, outputs)
        self._serial = itertools.count()

    def __len__(self) -> int:
        """Schedules (distinct contents) whose features are kept."""
        return len(self._feats)

    def key(self, sch: Any) -> Any:
        """The content key of a schedule (or module); one that cannot be hashed gets a key of its own
        (only this call's object has it)."""
        from perfmodel.featurize import content_key

        try:
            return content_key(sch)
        except Exception:  # noqa: BLE001  e.g. a module TVM cannot hash
            return ("object", os.getpid(), next(self._serial))  # unique, forked workers too

    def __contains__(self, key: Any) -> bool:
        """Whether the features of content ``key`` are kept."""
        return key in self._feats

    def get(self, sch: Any) -> Any:
        """The cached features of ``sch`` (``None``: it could not be featurized), else ``MISS``."""
        return self.get_key(self.key(sch))

    def get_key(self, key: Any) -> Any:
        """The cached features of content ``key``, else ``MISS``."""
        if key not in self._feats:
            return self.MISS
        self._feats.move_to_end(key)
        return self._feats[key]

    def put_key(self, key: Any, feats: Any) -> None:
        """Remembers the features (or ``None``) of content ``key``."""
        self._feats[key] = feats
        self._feats.move_to_end(key)
        while len(self._feats) > self.size:
            self._outs.pop(self._feats.popitem(last=False)[0], None)

    def get_output(self, key: Any, tag: Any, flops: float) -> Any:
        """What ``put_output`` kept for content ``key`` with the same ``tag`` (weights, target) and FLOPs,
        else ``None``."""
        entry = self._outs.get(key)
        if entry is None or entry[0] != tag or entry[1] != flops:
            return None
        self.output_hits += 1
        return entry[2]

    def put_output(self, key: Any, tag: Any, flops: float, outputs: Any) -> None:
        """Keeps the network's ``outputs`` for content ``key`` (while its features are kept)."""
        if key in self._feats:
            self._outs[key] = (tag, flops, outputs)


class MeasuredBuffer:
    """The newest ``history`` measured graphs of a search, with their log times and tasks: what
    ``Predictor.fine_tune`` trains on online.

    Args:
        history: keep at most this many graphs (the oldest are dropped first).
    """

    def __init__(self, *, history: int = 4096) -> None:
        self.history = int(history)
        self.datas: list[Any] = []  # graphs with ``flops``
        self.log_secs: list[float] = []
        self.task_ids: list[int] = []

    def __len__(self) -> int:
        return len(self.datas)

    def add(self, datas: Sequence[Any], log_secs: Sequence[float], task_id: int) -> None:
        """Appends measured graphs of one task (a ``None`` graph, one that failed to featurize, is skipped)."""
        for d, y in zip(datas, log_secs, strict=True):
            if d is not None:
                self.datas.append(d)
                self.log_secs.append(float(y))
                self.task_ids.append(int(task_id))
        cut = len(self.datas) - self.history
        if cut > 0:
            del self.datas[:cut], self.log_secs[:cut], self.task_ids[:cut]


class OnlineCorrection:
    """Per-task ridge corrections of a frozen model's log time, learned online from a search's measurements.

    The pretrained model ranks a new task from what it knows of others; the task's own measurements
    then say where it is wrong. Instead of fine-tuning the network (seconds per round), each task gets
    a linear correction of the predicted log time in the space of the model's embeddings (the heads'
    inputs, ``Predictor.embed_data``), refitted in closed form after every measured batch
    (milliseconds): ridge regression of ``measured - predicted`` log seconds on the standardized
    embeddings, plus the mean residual. The prior stays where the task has no data (``alpha``: how
    far the correction may move from it). Replayed on finished tuning runs it keeps about half of what
    fine-tuning every round gains in ranking the next round, for ~3% of its seconds; on held-out tasks'
    random schedules it gains as much (``benchmarks/bench_finetune.py``, RESULTS.md).

    Args:
        alpha: ridge penalty on the standardized embedding (larger: closer to the model's prior). A fixed
            10 ended live tuning on Zen 5 (4 tasks x 2 seeds, 256 trials) at 0.90x the final best of
            1000, unsticking runs where the prior was sure of a slow region, but reached XGB's final
            later where the prior was right. ``"auto"`` (the default): the same finals as 10 (0.999x,
            geometric mean), and XGB's final reached in 3.66x fewer trials than XGB needs (median; 10:
            0.74x; RESULTS.md). It is picked per task at every refit from ``ALPHAS`` (or no slope at
            all) by the exact leave-one-out error of the task's own records, so a task whose residuals
            are noise keeps the prior and one where the prior is systematically wrong lets its
            measurements speak (``picked``: the last choice).
            Leave-one-out judges the fit inside the measured cloud only, so with ``"auto"`` the
            correction is also kept from extrapolating: no embedding unit is scaled up by more than
            twice the typical unit's (units nearly constant over the records would otherwise turn a
            small weight into a huge one on a new candidate) and the correction is clipped to the
            range of the residuals measured. Without these, round 1 of SFM-3 (16 kernels within 4%)
            picked alpha 1 and moved 16 far-off candidates by +16 log units, all of which then timed
            out (alpha 10 moved them by +10.7, alpha 1000 by -2; RESULTS.md).
        history: measured records kept per task (the newest).
        raw_units: the last this many units of the rows are taken as they are (centred, not scaled): units
            on a scale of their own, such as the decision indicators ``GNNCostModel(decisions=...)`` appends,
            whose value then sets how cheaply the ridge may lean on them against the standardized embedding.
    """

    ALPHAS = (1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1e3, 3e3, 1e4, 3e4, 1e5)  # alpha="auto"'s candidates

    def __init__(self, *, alpha: float | str = "auto", history: int = 4096, raw_units: int = 0) -> None:
        self.alpha: float | str = parse_alpha(alpha, "OnlineCorrection")
        self.history = int(history)
        self.raw_units = int(raw_units)
        self.picked: dict[Any, float] = {}  # task -> the penalty of its last refit (inf: the mean residual only)
        self._clips: dict[Any, tuple[float, float]] = {}  # task -> the correction's range (alpha="auto")
        self._records: dict[Any, tuple[list[np.ndarray], list[float]]] = {}  # task -> (embeddings, residuals)
        self._fits: dict[Any, tuple[np.ndarray, np.ndarray, np.ndarray, float]] = {}  # task -> mu, sd, w, b

    def __len__(self) -> int:
        """Tasks with a correction."""
        return len(self._fits)

    def records(self, task: Any) -> int:
        """Measured records the correction of ``task`` is fitted on."""
        return len(self._records.get(task, ((), (), ()))[1])

    def add(self, task: Any, emb: np.ndarray, log_secs: Sequence[float], prior: Sequence[float]) -> None:
        """Adds measured records of ``task`` (embeddings [n, E], measured and predicted log seconds [n]) and refits."""
        emb = np.asarray(emb, dtype=np.float64)
        pri = np.asarray(prior, dtype=np.float64)
        res = np.asarray(log_secs, dtype=np.float64) - pri
        if emb.ndim != 2 or emb.shape[0] != res.size:
            raise ValueError(f"OnlineCorrection.add: {emb.shape} embeddings for {res.size} times")
        keep = np.isfinite(res) & np.isfinite(emb).all(1)
        if not keep.any():
            return
        embs, resids, priors = self._records.setdefault(task, ([], [], []))
        embs.extend(emb[keep])
        resids.extend(res[keep].tolist())
        priors.extend(pri[keep].tolist())
        del embs[:-self.history], resids[:-self.history], priors[:-self.history]
        self._fits[task] = self._fit(np.stack(embs), np.asarray(resids), np.asarray(priors), task)

    def _fit(self, e: np.ndarray, r: np.ndarray, p: np.ndarray,
             task: Any = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
        mu, sd = e.mean(0), e.std(0) + 1e-6
        auto = self.alpha == "auto"
        k = e.shape[1] - self.raw_units
        if auto:  # see the class: no unit scaled up by more than twice the typical one
            sd[:k] = np.maximum(sd[:k], 0.5 * float(np.median(sd[:k])))
        sd[k:] = 1.0  # raw units: centred only
        z, b = (e - mu) / sd, float(r.mean())
        rc = r - b
        n, d = z.shape
        alpha = loo_alpha(z, rc, self.ALPHAS) if auto else float(self.alpha)
        self.picked[task] = alpha
        if auto:
            self._clips[task] = (b + float(rc.min()), b + float(rc.max()))
        if not math.isfinite(alpha):
            w = np.zeros(d)
        elif n <= d:  # dual form: an n x n system
            w = z.T @ np.linalg.solve(z @ z.T + alpha * np.eye(n), rc)
        else:
            w = np.linalg.solve(z.T @ z + alpha * np.eye(d), z.T @ rc)
        return mu, sd, w, b

    def __call__(self, task: Any, emb: np.ndarray, prior: np.ndarray | None = None) -> np.ndarray:
        """The correction [N] (log seconds to add) of ``task``'s predictions with embeddings ``emb`` [N, E]
        (``prior``, the predictions themselves, is not used by the ridge); zeros for a task without
        measurements."""
        emb = np.asarray(emb, dtype=np.float64)
        fit = self._fits.get(task)
        if fit is None:
            return np.zeros(emb.shape[0])
        mu, sd, w, b = fit
        if emb.shape[1] != mu.size:
            raise ValueError(f"OnlineCorrection: embeddings of width {emb.shape[1]}, fitted on {mu.size}")
        out = ((emb - mu) / sd) @ w + b
        clip = self._clips.get(task)
        return out if clip is None else np.clip(out, *clip)

    def bound(self, task: Any) -> Callable[[np.ndarray, np.ndarray], np.ndarray] | None:
        """``Predictor.predict_features``'s ``correction`` for ``task`` (``None`` while it has no measurement)."""
        return (lambda emb, prior: self(task, emb, prior)) if task in self._fits else None

    def state_dict(self) -> dict[str, Any]:
        """The fitted corrections (plain lists), for a cost model's ``save``."""
        return {"kind": "ridge", "alpha": self.alpha, "fits": [[k, mu.tolist(), sd.tolist(), w.tolist(), b]
                                              for k, (mu, sd, w, b) in self._fits.items()],
                "clips": [[k, lo, hi] for k, (lo, hi) in self._clips.items()]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores ``state_dict``'s corrections (the records behind them are not kept: new ones refit from
        the next measurement of that task on)."""
        if state.get("kind", "ridge") != "ridge":
            raise ValueError(f"OnlineCorrection.load_state_dict: the saved correction is a {state['kind']!r} one; "
                             f"load it with gnn.online={state['kind']}")
        self.alpha = parse_alpha(state.get("alpha", self.alpha), "OnlineCorrection.load_state_dict")
        self._records.clear()
        self._fits = {k: (np.asarray(mu), np.asarray(sd), np.asarray(w), float(b))
                      for k, mu, sd, w, b in state.get("fits") or []}
        self._clips = {k: (float(lo), float(hi)) for k, lo, hi in state.get("clips") or []}


class GPCorrection(OnlineCorrection):
    """Per-task Gaussian-process corrections: :class:`OnlineCorrection`'s residuals, fitted by a GP.

    A ridge correction is one plane through the embedding space: it shifts the prior but cannot
    learn "near this measured kernel it is fast". A GP with an RBF kernel on the standardized
    embeddings can, and its posterior spread says how far a candidate is from everything measured:
    the correction it returns is ``mean - kappa * std`` (optimistic in proportion to the distance from
    the measurements, so the search leaves a plateau of look-alikes it has measured). Kernel
    lengthscale and noise are picked per refit by marginal likelihood from a small grid around the
    median distance; the signal variance is the residuals' variance.

    Args:
        kappa: weight of the posterior spread (0: the posterior mean only).
        history: measured records kept per task (the newest; the fit is cubic in it).
    """

    _SCALES = (0.25, 0.5, 1.0, 2.0)  # lengthscale^2 as multiples of the median squared distance
    _NOISES = (0.01, 0.05, 0.2, 0.5)  # noise variance as a fraction of the signal variance

    def __init__(self, *, kappa: float = 1.0, history: int = 512) -> None:
        if kappa < 0:
            raise ValueError(f"GPCorrection: kappa must be >= 0 (got {kappa})")
        super().__init__(history=history)  # the records and fits; the ridge's alpha goes unused
        self.kappa = float(kappa)

    def _fit(self, e: np.ndarray, r: np.ndarray, p: np.ndarray, task: Any = None) -> tuple:
        # how much of the prior's own ranking holds on this task: measured ~ a * prior, a = 1 + beta
        # fitted by least squares, shrunk toward 1 while records are few, within [0, 1.5]
        pm = float(p.mean())
        pc = p - pm
        beta = float(np.clip((pc @ (r - r.mean())) / (pc @ pc + 1e-9) * len(p) / (len(p) + 16.0), -1.0, 0.5)) \
            if len(p) > 2 else 0.0
        r = r - beta * pc
        # a unit nearly constant over the measured records must not make every new candidate "far":
        # its scale is floored at half the typical unit's
        sd = e.std(0)
        mu, sd = e.mean(0), np.maximum(sd, 0.5 * float(np.median(sd)) + 1e-6)
        z, b = (e - mu) / sd, float(r.mean())
        rc = r - b
        s2 = max(float(rc.var()), 1e-4)
        d2 = _sqdist(z, z)
        med = float(np.median(d2[np.triu_indices(len(z), 1)])) if len(z) > 1 else 1.0
        best = None
        for scale in self._SCALES:
            k = s2 * np.exp(-d2 / (2 * scale * max(med, 1e-6)))
            for noise in self._NOISES:
                try:
                    chol = np.linalg.cholesky(k + noise * s2 * np.eye(len(z)))
                except np.linalg.LinAlgError:
                    continue
                a = np.linalg.solve(chol.T, np.linalg.solve(chol, rc))
                nll = 0.5 * rc @ a + np.log(np.diag(chol)).sum()
                if best is None or nll < best[0]:
                    best = (nll, scale * max(med, 1e-6), chol, a)
        if best is None:  # pragma: no cover - the largest noise keeps the matrix positive definite
            raise np.linalg.LinAlgError("GPCorrection: no kernel setting gave a positive-definite matrix")
        _, l2, chol, a = best
        return mu, sd, z, a, chol, b, s2, l2, beta, pm

    def posterior(self, task: Any, emb: np.ndarray, prior: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean and standard deviation [N] of ``task``'s residual (log seconds) at ``emb`` [N, E]
        with the model's predictions ``prior`` [N] (default: the records' mean prior)."""
        emb = np.asarray(emb, dtype=np.float64)
        fit = self._fits.get(task)
        if fit is None:
            return np.zeros(emb.shape[0]), np.zeros(emb.shape[0])
        mu, sd, z, a, chol, b, s2, l2, beta, pm = fit
        if emb.shape[1] != mu.size:
            raise ValueError(f"GPCorrection: embeddings of width {emb.shape[1]}, fitted on {mu.size}")
        ks = s2 * np.exp(-_sqdist((emb - mu) / sd, z) / (2 * l2))  # [N, n]
        v = np.linalg.solve(chol, ks.T)  # [n, N]
        var = np.maximum(s2 - (v * v).sum(0), 0.0)
        shift = 0.0 if prior is None else beta * (np.asarray(prior, dtype=np.float64) - pm)
        return ks @ a + b + shift, np.sqrt(var)

    def __call__(self, task: Any, emb: np.ndarray, prior: np.ndarray | None = None) -> np.ndarray:
        """The correction [N] of ``task``'s predictions ``prior`` with embeddings ``emb``: posterior mean -
        ``kappa`` * posterior std."""
        m, s = self.posterior(task, emb, prior)
        return m - self.kappa * s

    def state_dict(self) -> dict[str, Any]:
        """The tasks' measured records (a GP is its data), for a cost model's ``save``."""
        return {"kind": "gp", "kappa": self.kappa,
                "records": [[k, np.stack(e).tolist(), list(r), list(p)] for k, (e, r, p) in self._records.items() if r]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Refits ``state_dict``'s records."""
        if state.get("kind") != "gp":
            raise ValueError("GPCorrection.load_state_dict: the saved correction is not a GP's "
                             f"(kind {state.get('kind', 'ridge')!r}); load it with gnn.online=ridge")
        self.kappa = float(state.get("kappa", self.kappa))
        self._records.clear()
        self._fits.clear()
        for k, e, r, p in state.get("records") or []:
            self.add(k, np.asarray(e), np.asarray(r) + np.asarray(p), np.asarray(p))


class RoundDiversity:
    """Near-duplicates of a search round's leading candidates made to look slower (local penalization).

    MetaSchedule measures the ``trials_per_iter`` best-scored schedules of a round, and a confident
    model gives them all to one corner of the space: on the MobileNetV2 depthwise conv the GNN's
    16 picks of a round shared one tiling of the W axis in every round of a run that never found the
    fast kernels (XGB, still untrained, spreads its first rounds over 9-13). Batch Bayesian
    optimisation answers this with local penalization; here, in the model's embedding space: every
    candidate scored in a round is compared with the round's ``leaders`` (the best ``leaders``
    distinct, unmeasured candidates scored so far, by penalized log time) that the model predicts at
    least as fast (before their own penalty), and ``weight * sum(exp(-(d / r)^2))`` log seconds are
    added to its prediction (``d``: distance in embedding units, ``r``: a low quantile of the
    distances between candidates of the task's first population). Candidates in the same place as a
    measured one (the search re-scores its measured bests every round) never lead, so refining
    around the best is not penalized; the same candidate scored again is not penalized by itself.
    ``reset`` starts a round; with ``rounds`` the penalty acts only in a task's first ``rounds`` rounds
    (the basin is chosen early; later rounds refine around the best as without it). Live (7 tasks x 2
    seeds, weight 0.5; RESULTS.md), against XGB: without it final bests 1.012x XGB's, XGB's final reached
    in 1.89x fewer trials and 2.52x fewer seconds; in every round 0.954x, 1.69x, 1.79x (it keeps spending
    trials away from the best); in the first 8 rounds **0.937x, 3.04x, 2.62x**: ``tune``'s default.
    With ``stall`` the penalty acts again, after those rounds, once a task has had ``stall`` measured rounds
    in a row without a new best time (the times given to ``measured``), until it finds one: a search stuck
    refining one good region is spread out again (the Zen 3 full run's GRP-3 seed 2 had its best by trial
    32, then 14 rounds without a better one). Live with ``stall=3`` (Zen 3, 5 tasks x 2 seeds, RESULTS.md):
    final bests 1.031x XGB's against 0.922x without it on the same tasks, XGB's final reached in 0.85x the
    trials (3.90x without): off in ``tune``.

    The embedding can hold two schedules that differ only in a discrete structural decision (where the
    padding stage is computed, an unroll step) close together when the model thinks the decision does not
    matter; ``signature`` then spreads the round over those decisions as well: a candidate also gets
    ``signature`` log seconds per leader (predicted at least as fast) with its decision signature
    (``perfmodel.featurize.decision_signature``, passed as ``sigs``). On the MobileNetV2 conv the runs
    that ended in the slow basin spent 42-85% of their trials on one compute location of the padding stage,
    which the fast kernels do not use (RESULTS.md).

    Args:
        weight: log seconds added per identical leader (0: off).
        leaders: leaders kept per round (the search's measurements per round).
        radius_quantile: quantile of the first population's pairwise distances used as ``r``.
        rounds: penalize only in a task's first this many rounds (0: in every round).
        signature: log seconds added per leader with the candidate's decision signature (0: off).
        stall: penalize again after this many measured rounds without a new best (0: never; see above).
    """

    def __init__(self, *, weight: float, leaders: int = 16, radius_quantile: float = 0.05, rounds: int = 0,
                 signature: float = 0.0, stall: int = 0) -> None:
        if not weight >= 0:
            raise ValueError(f"RoundDiversity: weight must be >= 0 (got {weight!r})")
        if not signature >= 0:
            raise ValueError(f"RoundDiversity: signature must be >= 0 (got {signature!r})")
        if not int(rounds) >= 0:
            raise ValueError(f"RoundDiversity: rounds must be >= 0 (got {rounds!r})")
        if not int(stall) >= 0:
            raise ValueError(f"RoundDiversity: stall must be >= 0 (got {stall!r})")
        self.weight, self.leaders, self.quantile = float(weight), max(1, int(leaders)), float(radius_quantile)
        self.rounds, self.signature, self.stall = int(rounds), float(signature), int(stall)
        self._round: dict[Any, int] = {}  # task -> rounds started before the current one
        self._best: dict[Any, tuple[float, int]] = {}  # task -> best measured log time, the round count then
        self._scale: dict[Any, tuple[np.ndarray, float]] = {}  # task -> (unit per embedding dim, radius)
        self._lead: dict[Any, tuple[Any, ...]] = {}  # task -> leaders' units [k, E], log times, penalized [k], sigs
        self._measured: dict[Any, np.ndarray] = {}  # task -> measured candidates' units [m, E]

    def reset(self, task: Any) -> None:
        """A new round of ``task``: its leaders are forgotten."""
        self._lead.pop(task, None)
        self._round[task] = self._round.get(task, 0) + 1

    def active(self, task: Any) -> bool:
        """Whether ``task``'s current round is penalized (a weight, and within the first ``rounds`` or stalled)."""
        if not (self.weight > 0 or self.signature > 0):
            return False
        n = self._round.get(task, 0)
        if not self.rounds or n < self.rounds:
            return True
        return bool(self.stall) and n - self._best.get(task, (np.inf, 0))[1] >= self.stall

    def measured(self, task: Any, emb: np.ndarray, log_secs: Sequence[float] | None = None) -> None:
        """Embeddings [n, E] of ``task``'s measured candidates: never leaders from now on; with their
        measured ``log_secs`` [n], a new best of the task ends a stall (see ``stall``)."""
        if log_secs is not None and len(log_secs):
            best = float(np.min(log_secs))
            if best < self._best.get(task, (np.inf, 0))[0]:
                self._best[task] = (best, self._round.get(task, 0))
        z = self._units(task, np.asarray(emb, dtype=np.float64))
        old = self._measured.get(task)
        self._measured[task] = z if old is None else np.concatenate([old, z])

    def __call__(self, task: Any, emb: np.ndarray, log_t: np.ndarray, sigs: Sequence[Any] | None = None) -> np.ndarray:
        """Log seconds [N] to add to the predictions ``log_t`` [N] of candidates with embeddings ``emb`` [N, E]
        (and decision signatures ``sigs`` [N], for ``signature``; ``None``: not known, no signature penalty)."""
        emb, log_t = np.asarray(emb, dtype=np.float64), np.asarray(log_t, dtype=np.float64)
        pen = np.zeros(len(log_t))
        if not self.active(task) or len(log_t) == 0:
            return pen
        if sigs is not None and len(sigs) != len(log_t):
            raise ValueError(f"RoundDiversity: {len(sigs)} signatures for {len(log_t)} candidates")
        z = self._units(task, emb)
        _, r = self._scale[task]
        same = (1e-3 * r) ** 2  # closer than this: the same candidate (the forward pass is not bit-exact)
        meas = self._measured.get(task)
        measured = (np.zeros(len(z), bool) if meas is None or not len(meas)
                    else (_sqdist(z, meas) <= same).any(1))
        lz, lraw, ly, lsig = self._lead.get(task, (np.zeros((0, z.shape[1])), np.zeros(0), np.zeros(0), []))
        use_sig = self.signature > 0 and sigs is not None
        if use_sig:  # signatures as small integers, the leaders' (from earlier calls) included
            codes: dict[Any, int] = {}
            code = np.array([codes.setdefault(sg, len(codes)) for sg in sigs], dtype=np.int64)
        order = np.argsort(log_t, kind="stable")
        order = order[np.isfinite(log_t[order])]
        r2, pos = r * r, 0
        # Candidates in order of predicted time; the leaders change only at some of them, so each block of
        # candidates is scored against the leaders at once, up to the first one that changes them.
        while pos < len(order):
            idx = order[pos:pos + (16 if len(ly) < self.leaders else 128)]
            d2 = _sqdist(z[idx], lz)  # [b, leaders]
            # leaders predicted at least as fast (before their own penalty), not the candidate itself
            near = (lraw[None, :] <= log_t[idx, None]) & (d2 > same)
            p = self.weight * np.where(near, np.exp(-d2 / r2), 0.0).sum(1)
            if use_sig:
                lcode = np.array([codes.setdefault(sg, len(codes)) for sg in lsig], dtype=np.int64)
                p = p + self.signature * (near & (lcode[None, :] == code[idx, None])).sum(1)
            y = log_t[idx] + p
            free = ~measured[idx] & ~(d2 <= same).any(1)  # not measured, not a leader already
            change = free if len(ly) < self.leaders else free & (y < (ly.max() if len(ly) else np.inf))
            hit = np.flatnonzero(change)
            n = int(hit[0]) + 1 if len(hit) else len(idx)
            pen[idx[:n]] = p[:n]
            pos += n
            if not len(hit):
                continue
            i, sig = int(idx[n - 1]), sigs[int(idx[n - 1])] if use_sig else None
            if len(ly) < self.leaders:
                lz, lraw, ly = np.vstack([lz, z[i]]), np.append(lraw, log_t[i]), np.append(ly, y[n - 1])
                lsig = [*lsig, sig]
            else:
                w = int(np.argmax(ly))
                lz[w], lraw[w], ly[w] = z[i], log_t[i], y[n - 1]
                lsig[w] = sig
        self._lead[task] = (lz, lraw, ly, lsig)
        return pen

    def _units(self, task: Any, emb: np.ndarray) -> np.ndarray:
        """Embeddings in the task's units (fixed at its first population, so distances compare across calls)."""
        if task not in self._scale:
            sd = emb.std(0) if len(emb) > 1 else np.ones(emb.shape[1])
            sd = np.maximum(sd, max(float(np.median(sd)), 1e-6))  # no near-constant dimension dominates
            z = emb / sd
            rng = np.random.default_rng(0)
            n = len(z)
            i, j = rng.integers(0, n, 4096), rng.integers(0, n, 4096)
            d = np.sqrt(((z[i] - z[j]) ** 2).sum(1))
            d = d[d > 0]
            r = float(np.quantile(d, self.quantile)) if len(d) else 1.0
            self._scale[task] = (sd, max(r, 1e-6))
        return emb / self._scale[task][0]


def loo_alpha(z: np.ndarray, rc: np.ndarray, alphas: Sequence[float], min_records: int = 4) -> float:
    """The ridge penalty among ``alphas`` (or ``inf``: no slope, the mean only) whose fit of the centred
    residuals ``rc`` [n] on the centred, standardized embeddings ``z`` [n, d] (plus an unpenalized
    intercept) has the smallest exact leave-one-out squared error (a linear smoother's LOO residual is
    its residual / (1 - leverage)); ties go to the larger penalty. Below ``min_records`` it is ``inf``."""
    n = rc.size
    if n < min_records:
        return math.inf
    u, s, _ = np.linalg.svd(z, full_matrices=False)
    uy, s2, u2 = u.T @ rc, s * s, u * u
    best, best_err = math.inf, float(np.mean((rc * (n / (n - 1))) ** 2))
    for a in sorted(alphas, reverse=True):
        f = s2 / (s2 + a)
        h = u2 @ f + 1.0 / n
        err = float(np.mean(((rc - u @ (f * uy)) / np.maximum(1.0 - h, 1e-9)) ** 2))
        if err < best_err * (1 - 1e-9):
            best, best_err = float(a), err
    return best


def parse_alpha(alpha: float | str, who: str) -> float | str:
    """A ridge penalty as given (a number > 0, or ``"auto"``); a one-line error naming ``who`` otherwise."""
    if isinstance(alpha, str) and alpha.strip().lower() == "auto":
        return "auto"
    try:
        a = float(alpha)
    except (TypeError, ValueError):
        a = float("nan")
    if not a > 0:
        raise ValueError(f"{who}: alpha must be a number > 0 or 'auto' (got {alpha!r})")
    return a


def _sqdist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances [len(a), len(b)]."""
    return np.maximum((a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T, 0.0)


def checkpoint_id(path: str | Path | None = None) -> dict[str, str]:
    """``{path, sha256}`` of a checkpoint file (``None``: the shipped one); the digest's first 16 hex
    digits name the exact weights a tuning run used, so a run is never compared under another model's name."""
    path = Path(path) if path is not None else DEFAULT_CHECKPOINT
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return {"path": str(path), "sha256": h.hexdigest()[:16]}


@overload
def load_predictor(path: str | Path | None = None, *, required: Literal[True] = True,
                   device: str | torch.device = "cpu") -> Predictor: ...


@overload
def load_predictor(path: str | Path | None = None, *, required: bool,
                   device: str | torch.device = "cpu") -> Predictor | None: ...


def load_predictor(path: str | Path | None = None, *, required: bool = True,
                   device: str | torch.device = "cpu") -> Predictor | None:
    """The predictor of a checkpoint that fits the featurizer; every failure is one clear line.

    What the TVM plugin, ``perfmodel evaluate``/``check`` and the benchmarks load.

    Args:
        path: the checkpoint; ``None``: the shipped ``DEFAULT_CHECKPOINT``.
        required: ``False`` gives ``None`` when ``path`` is ``None`` and no model is shipped
            (a named file must exist).
        device: where the model runs.

    Raises:
        FileNotFoundError: the file does not exist.
        CheckpointError: not a perfmodel checkpoint, another feature schema, or a network that does
            not fit the featurizer's feature widths.
    """
    from perfmodel.featurize.schema import EDGE_FEATURES, NODE_FEATURES

    if path is None and not required and not DEFAULT_CHECKPOINT.is_file():
        return None
    path = Path(path) if path is not None else DEFAULT_CHECKPOINT
    pred = Predictor.from_checkpoint(path, device=device)
    members = pred.meta["model"].get("members") or [pred.meta["model"]]  # an ensemble: each member
    for cfg in members:
        for key, want in (("in_dim", len(NODE_FEATURES)), ("edge_dim", len(EDGE_FEATURES))):
            if key in cfg and int(cfg[key]) != want:
                raise CheckpointError(f"{path}: model {key}={cfg[key]} but the featurizer gives {want} features")
    return pred


def checkpoint_meta(*, model: dict[str, Any], granularity: str, norm: dict[str, Any] | None, fingerprint: str,
                    task_names: Sequence[str], split: dict[str, Any], db_paths: Sequence[str],
                    targets: Sequence[dict[str, Any]], seed: int,
                    target_vocab: Sequence[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The ``CKPT_KEY`` block that training writes into every checkpoint and ``Predictor`` reads.

    Args:
        model: ``build_model`` config.
        granularity: ``stage`` or ``loop`` graphs.
        norm: ``FeatureNorm.state_dict()`` (``None``: features not normalized).
        fingerprint: hash of the training data.
        task_names: the dataset's task vocabulary.
        split: ``kind``, ``seed``, ``val``, ``test``, sizes and ``test_tasks`` (``Predictor.heldout_tasks``).
        db_paths: the databases trained on.
        targets: ``{kind, mcpu, threads}`` of the training records' targets, most common first;
            the first is ``target`` (``Predictor.target``), several are also kept as ``targets``.
        seed: training seed.
        target_vocab: for a model with the target input, what its ``target_id`` indexes (the dataset's
            ``targets``, most common first, over every split: not always the order of ``targets``);
            kept as ``target_vocab`` (``Predictor.target_vocab``).
    """
    from perfmodel.featurize.schema import SCHEMA_VERSION

    meta = {"format": CKPT_FORMAT, "schema_version": SCHEMA_VERSION, "granularity": granularity, "model": model,
            "norm": norm, "fingerprint": fingerprint, "task_names": list(task_names), "split": split,
            "db_paths": list(db_paths), "seed": int(seed), "target": dict(targets[0]) if targets else None}
    if len(targets) > 1:
        meta["targets"] = [dict(t) for t in targets]
    if target_vocab:
        meta["target_vocab"] = [dict(t) for t in target_vocab]
    return meta


def check_schema_version(version: Any, *, source: str = "checkpoint") -> None:
    """Raises ``CheckpointError`` unless ``version`` is the featurizer's ``SCHEMA_VERSION``."""
    from perfmodel.featurize.schema import SCHEMA_VERSION

    if version != SCHEMA_VERSION:
        raise CheckpointError(f"{source}: feature schema mismatch: checkpoint has schema version {version}, "
                              f"the featurizer has schema version {SCHEMA_VERSION}; retrain the model "
                              "(or use the perfmodel version it was trained with)")


def flops_of(sch_or_mod: Any) -> float:
    """TVM's FLOP estimate of a schedule's (or module's) program."""
    from tvm.s_tir.analysis import estimate_tir_flops

    mod = getattr(sch_or_mod, "mod", sch_or_mod)
    return float(estimate_tir_flops(mod))


def _same_norm(a: dict[str, Any] | None, b: dict[str, Any] | None) -> bool:
    """Two ``FeatureNorm.state_dict()`` states (or ``None``) equal to float tolerance."""
    if a is None or b is None:
        return a is b
    return a.keys() == b.keys() and all(
        torch.allclose(torch.as_tensor(a[k]).double(), torch.as_tensor(b[k]).double(), rtol=1e-5, atol=1e-6)
        for k in a)


def _one_line(e: BaseException) -> str:
    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {first[:200]}" if first else type(e).__name__


def _load_failure(e: BaseException) -> str:
    """Why ``torch.load(weights_only=True)`` refused a file, without torch's advice to unpickle it anyway."""
    text = str(e)
    if "Weights only load failed" in text:
        found = re.search(r"GLOBAL ([\w.]+)", text)
        return "a pickle of Python objects, not only weights" + (f": {found.group(1)}" if found else "")
    return f"torch.load cannot read it: {_one_line(e)}"


def _summary(target: Any) -> dict[str, Any]:
    """``{kind, mcpu, threads}`` of a target, its JSON dict or such a summary (``mcpu`` default ``generic``)."""
    if isinstance(target, dict) and "threads" in target:
        return {"kind": target.get("kind"), "mcpu": target.get("mcpu") or "generic", "threads": target.get("threads")}
    from perfmodel.workloads import target_summary

    return target_summary(target)


def _load_norm(state: Any) -> Any:
    if state is None:
        return None
    from perfmodel.data import FeatureNorm

    return FeatureNorm.from_state(state)
