"""The one predictor: checkpoint -> (featurize) -> model -> log seconds; used by the TVM plugin and evaluation."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

CKPT_KEY = "perfmodel"  # the block of a checkpoint that holds what inference needs


class CheckpointError(ValueError):
    """A checkpoint that cannot be used (not ours, or made for another feature schema)."""


class Predictor:
    """A trained cost model with its feature normalization, ready to score graphs or schedules.

    Lower predicted log time = faster. Build one with ``from_checkpoint``.

    Args:
        model: the network (``CostGNN``).
        meta: the checkpoint's ``"perfmodel"`` block (model config, ``schema_version``,
            ``norm`` state, ``fingerprint``, ``granularity``...).
        device: where the model runs.
    """

    def __init__(self, *, model: nn.Module, meta: dict[str, Any], device: str | torch.device = "cpu") -> None:
        self.model = model.to(device).eval()
        self.meta = meta
        self.device = torch.device(device)
        self.norm = _load_norm(meta.get("norm"))
        self.granularity = str(meta.get("granularity", "stage"))
        self._opt: torch.optim.Optimizer | None = None

    # ------------------------------------------------------------ loading
    @classmethod
    def from_checkpoint(cls, path: str | Path, *, device: str | torch.device = "cpu",
                        check_schema: bool = True) -> Predictor:
        """Loads a Lightning checkpoint of ``train`` or a file written by ``save``.

        Raises:
            CheckpointError: not a perfmodel checkpoint, or its feature schema differs from the
                featurizer's (the message names both versions).
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint {path} does not exist")
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001  pickle errors come in many types
            raise CheckpointError(f"{path}: cannot be loaded with weights_only=True ({type(e).__name__}: "
                                  f"{str(e).splitlines()[0] if str(e) else ''})") from e
        meta = ckpt.get(CKPT_KEY) if isinstance(ckpt, dict) else None
        if not isinstance(meta, dict) or "model" not in meta:
            raise CheckpointError(f"{path}: not a perfmodel checkpoint (no '{CKPT_KEY}' block with a model config)")
        if check_schema:
            check_schema_version(meta.get("schema_version"), source=str(path))
        from perfmodel.models import build_model

        model = build_model(meta["model"])
        state = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
        model.load_state_dict(state)
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
        return cls(model=model, meta=meta, device=first.device)

    def save(self, path: str | Path) -> Path:
        """Writes weights and metadata in the checkpoint layout ``from_checkpoint`` reads."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {f"model.{k}": v.detach().cpu() for k, v in self.model.state_dict().items()}
        torch.save({CKPT_KEY: self.meta, "state_dict": state}, path)
        return path

    # ------------------------------------------------------------ predicting
    def _batches(self, datas: Sequence[Any], batch_size: int) -> Any:
        from torch_geometric.data import Batch

        for i in range(0, len(datas), batch_size):
            b = Batch.from_data_list(list(datas[i:i + batch_size])).to(self.device)
            if self.norm is not None:
                out = self.norm.apply(b)
                b = b if out is None else out
            yield b

    def predict_data(self, datas: Sequence[Any], *, batch_size: int = 1024) -> np.ndarray:
        """Predicted log seconds of featurized graphs (each with ``flops``), shape [N] float64."""
        if len(datas) == 0:
            return np.zeros(0)
        missing = [i for i, d in enumerate(datas) if getattr(d, "flops", None) is None]
        if missing:
            raise ValueError(f"predict_data: graph {missing[0]} has no `flops` field "
                             "(set data.flops = torch.tensor([flops]) or use predict_schedules)")
        self.model.eval()
        outs = []
        with torch.inference_mode():
            for b in self._batches(datas, batch_size):
                outs.append(self.model(b).double().cpu())
        return torch.cat(outs).numpy()

    def featurize(self, schs: Sequence[Any], *, flops: float | Sequence[float] | None = None) -> list[Any]:
        """Schedules -> graphs with ``flops`` set (a graph that cannot be featurized gives ``None``).

        Args:
            schs: MetaSchedule ``Schedule`` objects (or IRModules).
            flops: FLOPs of the task (one number for all, or one per schedule); by default
                TVM's estimate of the first schedule's module.
        """
        from perfmodel.featurize import featurize_many

        datas = featurize_many(schs, granularity=self.granularity, errors="none")
        if flops is None:
            flops = flops_of(schs[0]) if len(schs) else 0.0
        fl = [float(flops)] * len(datas) if np.isscalar(flops) else [float(f) for f in flops]
        if len(fl) != len(datas):
            raise ValueError(f"featurize: {len(fl)} flops values for {len(datas)} schedules")
        for d, f in zip(datas, fl):
            if d is not None:
                d.flops = torch.tensor([f], dtype=torch.float32)
        return datas

    def predict_schedules(self, schs: Sequence[Any], *, flops: float | Sequence[float] | None = None,
                          batch_size: int = 1024) -> np.ndarray:
        """Predicted log seconds of schedules, shape [N]; one that cannot be featurized gets ``+inf``."""
        datas = self.featurize(schs, flops=flops)
        ok = [i for i, d in enumerate(datas) if d is not None]
        out = np.full(len(datas), np.inf)
        if ok:
            out[ok] = self.predict_data([datas[i] for i in ok], batch_size=batch_size)
        return out

    # ------------------------------------------------------------ updating
    def fine_tune(self, datas: Sequence[Any], log_secs: Sequence[float] | np.ndarray, steps: int = 20, *,
                  task_ids: Sequence[int] | None = None, lr: float = 1e-4, batch_size: int = 256,
                  loss: nn.Module | None = None, seed: int = 0) -> list[float]:
        """Online update: ``steps`` optimizer steps on measured graphs (e.g. a tuning round's results).

        The optimizer state persists across calls. Each step uses a random batch of the records;
        the default loss is MSE + within-task RankNet (``task_ids`` default: one task).

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

        from perfmodel.models import CombinedLoss

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
                b = Batch.from_data_list([datas[int(i)] for i in idx]).to(self.device)
                if self.norm is not None:
                    out = self.norm.apply(b)
                    b = b if out is None else out
                pred = self.model(b)
                lv = loss_fn(pred, y[idx].to(self.device), tasks[idx].to(self.device))
                self._opt.zero_grad(set_to_none=True)
                lv.backward()
                nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
                self._opt.step()
                losses.append(float(lv.detach()))
        finally:
            self.model.eval()
        self.meta = {**self.meta, "fine_tuned_steps": int(self.meta.get("fine_tuned_steps", 0)) + steps}
        return losses

    def copy(self) -> Predictor:
        """An independent copy (weights and optimizer state not shared)."""
        return Predictor(model=copy.deepcopy(self.model), meta=copy.deepcopy(self.meta), device=self.device)


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


def _load_norm(state: Any) -> Any:
    if state is None:
        return None
    from perfmodel.data import FeatureNorm

    return FeatureNorm.from_state(state)
