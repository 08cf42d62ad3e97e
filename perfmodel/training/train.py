"""``train(cfg)``: data -> model -> Lightning fit -> test -> XGBoost baseline comparison -> metrics dict."""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from hydra.utils import instantiate
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf, open_dict

from perfmodel.training.datamodule import ScheduleDataModule
from perfmodel.training.module import LOGGED, CostModelModule

log = logging.getLogger(__name__)


def model_config(cfg_model: DictConfig | dict[str, Any], *, in_dim: int, edge_dim: int,
                 n_targets: int = 0) -> dict[str, Any]:
    """The plain dict a checkpoint stores to rebuild the model (``build_model`` form).

    ``target_input: true`` becomes ``n_targets`` (the dataset's target vocabulary size), ``false`` 0.

    Raises:
        ValueError: an unknown model, or ``target_input: true`` on a dataset without targets.
    """
    from perfmodel.models import MODELS

    c = OmegaConf.to_container(cfg_model, resolve=True) if isinstance(cfg_model, DictConfig) else dict(cfg_model)
    ti = c.get("target_input")
    if isinstance(ti, bool) or (ti is None and "target_input" in c):
        if ti and n_targets < 1:
            raise ValueError("model.target_input=true needs a dataset whose graphs carry target_id "
                             "(a ScheduleDataset of measured records)")
        c["target_input"] = n_targets if ti else 0
    target = c.pop("_target_", None)
    name = c.pop("name", None)
    if name is None:
        cls = next((k for k, v in MODELS.items() if f"{v.__module__}.{v.__name__}" == target
                    or target == f"perfmodel.models.{v.__name__}"), None)
        if cls is None:
            raise ValueError(f"model config needs `name` or a known `_target_` (got {target!r})")
        name = cls
    return {"name": name, "in_dim": in_dim, "edge_dim": edge_dim, **c}


def build_module(cfg: DictConfig, dm: ScheduleDataModule) -> CostModelModule:
    """The LightningModule for ``cfg`` on the (set up) data module, with its checkpoint metadata."""
    from perfmodel.models import build_model
    from perfmodel.predictor import checkpoint_meta

    mcfg = model_config(cfg.model, in_dim=dm.num_node_features, edge_dim=dm.num_edge_features,
                        n_targets=len(dm.targets))
    model = build_model(mcfg)
    # io_bytes only where the model reads them (synthetic graphs have none)
    model.set_flops_stats(dm.train_log_flops(copy_work=bool(mcfg.get("copy_work"))), dm.train_log_secs(),
                          dm.train_log_bytes() if mcfg.get("use_bytes") else None)
    names = dm.task_names
    test_tasks = sorted({names[int(t)] for t in np.unique(dm.task_ids[dm.splits["test"]])})
    split = {"kind": dm.split_kind, "seed": dm.split_seed, "val": dm.val, "test": dm.test,
             "n_train": int(len(dm.splits["train"])), "n_val": int(len(dm.splits["val"])),
             "n_test": int(len(dm.splits["test"])), "test_tasks": test_tasks, "eval_db": dm.eval_db}
    meta = checkpoint_meta(model=mcfg, granularity=dm.granularity, norm=dm.norm_state(), fingerprint=dm.fingerprint(),
                           task_names=names, split=split, db_paths=dm.db_paths, targets=dm.train_targets(),
                           seed=int(cfg.get("seed", 0)), target_vocab=dm.targets if mcfg.get("target_input") else None)
    return CostModelModule(model=model, loss=instantiate(cfg.loss), optimizer=instantiate(cfg.optim),
                           scheduler=instantiate(cfg.scheduler) if cfg.get("scheduler") else None, meta=meta)


def _instantiate_all(group: DictConfig | None) -> list[Any]:
    if not group:
        return []
    return [instantiate(c) for c in group.values() if c is not None and "_target_" in c]


def train(cfg: DictConfig) -> dict[str, Any]:
    """Trains the configured model, tests its best checkpoint and compares with TVM's XGBoost model.

    Args:
        cfg: the composed ``conf/train.yaml``.

    Returns:
        ``{"test/<metric>": value, ..., "xgb/<metric>": value, ..., "ckpt": best checkpoint path,
        "n_train": .., "n_test": .., "seconds": ..}``.
    """
    t0 = time.perf_counter()
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    dm: ScheduleDataModule = instantiate(cfg.data)
    dm.setup("fit")
    log.info("data: %d train / %d val / %d test records, %d tasks", len(dm.splits["train"]),
             len(dm.splits["val"]), len(dm.splits["test"]), len(np.unique(dm.task_ids)))
    n_members = int(cfg.get("ensemble") or 1)
    if n_members < 1:
        raise ValueError(f"ensemble must be >= 1, got {n_members}")
    members = [_member_config(cfg, i) if n_members > 1 else cfg for i in range(n_members)]
    workers = ensemble_workers(cfg, n_members)
    base: dict[str, Any] | None = None
    want_base = bool(cfg.get("baseline")) and len(dm.splits["test"]) > 0
    if workers > 1:
        # members are independent: train them in a pool of processes; the baseline fits here meanwhile
        with _MemberPool(members, workers) as pool:
            if want_base:
                base, want_base = _baseline(cfg, dm), False
            ckpts = pool.results()
        trainer = instantiate(cfg.trainer, callbacks=[], logger=False, enable_checkpointing=False)
        module = None
    else:
        ckpts = []
        for i, member_cfg in enumerate(members):
            if n_members > 1:
                log.info("ensemble member %d/%d (seed %d)", i + 1, n_members, int(member_cfg.seed))
            trainer, module = _fit(member_cfg, dm)
            ckpts.append(_best_checkpoint(trainer))
    ckpt = ckpts[-1]
    if n_members > 1:
        from perfmodel.predictor import Predictor

        if not all(ckpts):
            raise ValueError("ensemble needs a checkpoint per member: enable callbacks.model_checkpoint")
        ens = Predictor.ensemble([Predictor.from_checkpoint(c) for c in ckpts])
        path = Path(cfg.paths.output_dir) / "checkpoints" / "ensemble.ckpt"
        if trainer.is_global_zero:  # data-parallel replicas hold the same members: one writer
            ens.save(path)
        trainer.strategy.barrier("ensemble")
        ckpt = str(path)
        module = CostModelModule(model=ens.model, loss=instantiate(cfg.loss), optimizer=instantiate(cfg.optim),
                                 meta=ens.meta)
        log.info("ensemble of %d members: %s", n_members, ckpt)
    if want_base and trainer.is_global_zero:
        base = _baseline(cfg, dm)
    out: dict[str, Any] = {}
    if len(dm.splits["test"]) and cfg.get("test", True):
        trainer.test(module, datamodule=dm, ckpt_path=(ckpt or None) if n_members == 1 else None, verbose=False)
        m = module.last_metrics.get("test", {})
        out.update({f"test/{k}": _num(m.get(k)) for k in LOGGED})
        out["test/n_tasks"] = int(m.get("n_tasks", 0))
    if base is not None:
        out.update({f"{cfg.baseline}/{k}": _num(base.get(k)) for k in LOGGED})
    out.update(ckpt=ckpt, n_train=int(len(dm.splits["train"])), n_test=int(len(dm.splits["test"])),
               seconds=round(time.perf_counter() - t0, 1))
    return out


def _member_config(cfg: DictConfig, i: int) -> DictConfig:
    """Member ``i`` of an ensemble: seed ``seed + i``, its own checkpoint and log folders."""
    c = copy.deepcopy(cfg)
    with open_dict(c):
        c.seed = int(cfg.seed) + i
        c.data.seed = int(cfg.data.get("seed", cfg.seed)) + i  # each member its own batch order
        out = f"{cfg.paths.output_dir}/member{i}"
        for cb in (c.get("callbacks") or {}).values():  # every checkpoint writer: the member's own folder
            if cb is not None and "dirpath" in cb:
                cb.dirpath = f"{out}/checkpoints"
        for lg in (c.get("logger") or {}).values():
            if lg is not None and "save_dir" in lg:
                lg.save_dir = out
    return c


def _fit(cfg: DictConfig, dm: ScheduleDataModule) -> tuple[L.Trainer, CostModelModule]:
    """Seeds with ``cfg.seed``, builds the module, callbacks, loggers and trainer of ``cfg`` and fits on ``dm``
    (whose batch order follows ``cfg.data.seed``: the same member trains the same in any process)."""
    if "data" in cfg:
        dm.set_batch_seed(int(cfg.data.get("seed", cfg.seed)))  # a fresh batch order per member
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    module = build_module(cfg, dm)
    callbacks = _instantiate_all(cfg.get("callbacks"))
    loggers = _instantiate_all(cfg.get("logger"))
    if not loggers:  # nothing to log learning rates to
        callbacks = [c for c in callbacks if not isinstance(c, L.pytorch.callbacks.LearningRateMonitor)]
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    trainer.fit(module, datamodule=dm)
    return trainer, module


def ensemble_workers(cfg: DictConfig, n_members: int) -> int:
    """How many ensemble members train at once (``cfg.ensemble_workers``, at most one per member and CPU).

    One (members in turn, in this process) unless the trainer is a plain single-device CPU trainer:
    data-parallel and accelerator runs already spread one member over their devices.
    """
    import os

    want = cfg.get("ensemble_workers")
    want = 1 if want is None else int(want)
    if want < 1:
        raise ValueError(f"ensemble_workers must be >= 1, got {want}")
    t = cfg.trainer
    single_cpu = (str(t.get("accelerator", "cpu")) == "cpu" and str(t.get("devices", 1)) == "1"
                  and not t.get("strategy") and int(t.get("num_nodes", 1) or 1) == 1)
    return max(1, min(want, n_members, os.cpu_count() or 1)) if single_cpu else 1


class _MemberPool:
    """Ensemble members trained in spawned processes (each loads the data module from the cache the parent
    built, trains with ``threads`` torch threads and returns its best checkpoint's path)."""

    def __init__(self, members: list[DictConfig], workers: int) -> None:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        # resolved here: ${hydra:...} interpolations have no Hydra to answer them in a child
        self._cfgs = [OmegaConf.to_container(m, resolve=True) for m in members]
        self._pool = ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"))
        self._futures = [self._pool.submit(_member_job, c) for c in self._cfgs]
        log.info("ensemble: %d members, %d at a time (processes)", len(members), workers)

    def results(self) -> list[str]:
        from concurrent.futures.process import BrokenProcessPool

        ckpts = []
        for i, f in enumerate(self._futures):
            try:
                ckpt, info = f.result()
            except BrokenProcessPool as e:
                raise RuntimeError(f"ensemble member {i} (seed {self._cfgs[i]['seed']}): its process died "
                                   f"({e}); out of memory? try ensemble_workers=1") from e
            log.info("ensemble member %d/%d (seed %d): best %s %s, stopped after epoch %s, %.0f s", i + 1, len(self._futures),
                     self._cfgs[i]["seed"], info["monitor"], info["best"], info["epoch"], info["seconds"])
            ckpts.append(ckpt)
        return ckpts

    def __enter__(self) -> "_MemberPool":
        return self

    def __exit__(self, *exc: Any) -> None:
        self._pool.shutdown(wait=exc[0] is None, cancel_futures=exc[0] is not None)


_WORKER_DM: dict[str, ScheduleDataModule] = {}  # a pool process's data module, built once for its members


def _member_job(cfg_dict: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """One ensemble member in a pool process: the data module (cached per process), fit, best checkpoint."""
    t0 = time.perf_counter()
    cfg = OmegaConf.create(cfg_dict)
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    with open_dict(cfg):  # two members' progress bars on one terminal garble each other
        cfg.trainer.enable_progress_bar = False
        cfg.trainer.enable_model_summary = False
    data_key = json.dumps({k: v for k, v in cfg_dict["data"].items() if k != "seed"}, sort_keys=True, default=str)
    dm = _WORKER_DM.get(data_key)
    if dm is None:
        dm = _WORKER_DM[data_key] = instantiate(cfg.data)
        dm.setup("fit")
    trainer, _ = _fit(cfg, dm)
    cb = trainer.checkpoint_callback
    best = getattr(cb, "best_model_score", None)
    info = {"monitor": getattr(cb, "monitor", None), "best": None if best is None else round(float(best), 4),
            "epoch": trainer.current_epoch, "seconds": time.perf_counter() - t0}
    return _best_checkpoint(trainer), info


def _baseline(cfg: DictConfig, dm: ScheduleDataModule) -> dict[str, Any] | None:
    """The configured baseline's test metrics, or ``None`` (with a warning) when it cannot run here."""
    try:
        return run_baseline(str(cfg.baseline), dm, seed=int(cfg.seed))
    except (ImportError, NotImplementedError, ValueError) as e:
        log.warning("baseline %s unavailable: %s", cfg.baseline, e)
        return None


def run_baseline(name: str, dm: ScheduleDataModule, *, seed: int = 0) -> dict[str, Any]:
    """Test metrics of baseline ``name`` (``xgb`` = TVM's XGBModel) fitted on the same train split."""
    from perfmodel.evaluate.baselines import split_metrics

    if not hasattr(dm.dataset, "sources"):
        raise NotImplementedError("the dataset has no raw records (synthetic?)")
    return split_metrics(dm.dataset, dm.splits, name=name, seed=seed)


def _best_checkpoint(trainer: L.Trainer) -> str:
    cb = trainer.checkpoint_callback
    if cb is None:
        return ""
    return str(cb.best_model_path or cb.last_model_path or "")


def _num(v: Any) -> float | None:
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def comparison_table(out: dict[str, Any], *, model: str, baseline: str | None) -> str:
    """A text table of the test metrics of the model and the baseline, one row per metric."""
    rows = [f"{'metric':14s} {model:>12s}" + (f" {baseline:>12s}" if baseline else "")]
    for k in ("pairwise_acc", "kendall_tau", "spearman", "peak1", "peak5", "mape", "rmse_log", "r2"):
        line = f"{k:14s} {_fmt(out.get(f'test/{k}')):>12s}"
        if baseline:
            line += f" {_fmt(out.get(f'{baseline}/{k}')):>12s}"
        rows.append(line)
    return "\n".join(rows)


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"


def compose_train(overrides: list[str] | tuple[str, ...] = (), *, output_dir: str | None = None) -> DictConfig:
    """``conf/train.yaml`` composed outside ``@hydra.main`` (CLI, notebooks, tests).

    ``paths.output_dir`` (which ``@hydra.main`` takes from Hydra's run dir) defaults to
    ``<paths.log_dir>/<task_name>/<timestamp>``.
    """
    from perfmodel.config import REPO, compose

    cfg = compose("train", [f"paths.root_dir={REPO}", *overrides])
    if output_dir is None and not any(o.startswith("paths.output_dir=") for o in overrides):
        output_dir = f"{cfg.paths.log_dir}/{cfg.task_name}/{time.strftime('%Y-%m-%d_%H-%M-%S')}"
    if output_dir is not None:
        cfg.paths.output_dir = str(output_dir)
    return cfg


def main(cfg: DictConfig) -> dict[str, Any]:
    """What ``train.py`` runs: ``train(cfg)``, the comparison table, then one JSON line."""
    out = train(cfg)
    if rank_zero_only.rank != 0:  # data-parallel workers: only rank 0 reports
        return out
    name = str(cfg.model.get("name") or cfg.model.get("_target_", "model")).rsplit(".", 1)[-1]
    print(f"\ntest split ({cfg.data.get('split', 'task')}): {out.get('n_test')} records, {out.get('test/n_tasks')} tasks; "
          f"checkpoint {out.get('ckpt') or '-'}")
    print(comparison_table(out, model=name, baseline=cfg.get("baseline") or None))
    print(json.dumps(out))
    return out


__all__ = ["train", "main", "compose_train", "build_module", "model_config", "run_baseline", "comparison_table"]
