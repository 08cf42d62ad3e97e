"""LightningModule that trains a ``CostGNN`` on log times and logs per-task accuracy and ranking metrics."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import Tensor, nn

from perfmodel.metrics import task_metrics
from perfmodel.models.losses import batch_loss
from perfmodel.predictor import CKPT_KEY

# Metrics logged every epoch as <stage>/<name> (task_metrics keys).
LOGGED = ("rmse_log", "mape", "r2", "kendall_tau", "spearman", "pairwise_acc", "peak1", "peak5")


class CostModelModule(L.LightningModule):
    """Trains ``model`` with ``loss``; collects each epoch's predictions for ``task_metrics``.

    Args:
        model: the network; ``forward(batch) -> [B]`` predicted log seconds.
        loss: ``loss(pred [B], true [B], task [B]) -> scalar``.
        optimizer: partial optimizer, called with the parameters.
        scheduler: partial LR scheduler, called with the optimizer (None = constant LR).
        meta: plain-container facts stored in every checkpoint under ``CKPT_KEY``
            (``perfmodel.predictor.checkpoint_meta``: model config, schema, normalization, split, target...).
    """

    def __init__(
        self,
        *,
        model: nn.Module,
        loss: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        meta: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.model, self.loss_fn = model, loss
        self.optimizer_fn, self.scheduler_fn = optimizer, scheduler
        self.meta = dict(meta or {})
        self._outs: dict[str, list[tuple[Tensor, Tensor, Tensor]]] = {"train": [], "val": [], "test": []}
        self.last_metrics: dict[str, dict[str, Any]] = {}

    def forward(self, batch: Any) -> Tensor:
        """Predicted log seconds [B]."""
        return self.model(batch)

    def _step(self, batch: Any, stage: str) -> Tensor:
        loss, pred, y, task = batch_loss(self.model, self.loss_fn, batch)
        self.log(f"{stage}/loss", loss, on_step=False, on_epoch=True, batch_size=y.numel(),
                 prog_bar=stage != "test", sync_dist=stage != "train")
        self._outs[stage].append((pred.detach().cpu(), y.detach().cpu(), task.detach().cpu()))
        return loss

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._step(batch, "test")

    def _epoch_end(self, stage: str) -> None:
        outs, self._outs[stage] = self._outs[stage], []
        if not outs:
            return
        pred, y, task = (torch.cat(t) for t in zip(*outs))
        if self.trainer is not None and self.trainer.world_size > 1:
            pred, y, task = (self._gather(t) for t in (pred, y, task))
        m = task_metrics(pred.double().numpy(), y.double().numpy(), task.numpy())
        self.last_metrics[stage] = m
        for name in LOGGED:
            v = m[name]
            self.log(f"{stage}/{name}", float(v) if np.isfinite(v) else float("nan"),
                     prog_bar=stage == "val" and name in ("pairwise_acc", "rmse_log"))

    def _gather(self, t: Tensor) -> Tensor:
        """Concatenates a 1-D tensor of every replica (padded to equal length for all_gather)."""
        n = torch.tensor([t.numel()], device=self.device)
        sizes = self.all_gather(n).reshape(-1).tolist()
        pad = torch.zeros(max(sizes), dtype=t.dtype, device=self.device)
        pad[: t.numel()] = t.to(self.device)
        allt = self.all_gather(pad).reshape(len(sizes), -1)
        return torch.cat([allt[i, :s] for i, s in enumerate(sizes)]).cpu()

    def on_train_epoch_end(self) -> None:
        self._epoch_end("train")

    def on_validation_epoch_end(self) -> None:
        self._epoch_end("val")

    def on_test_epoch_end(self) -> None:
        self._epoch_end("test")

    def configure_optimizers(self) -> Any:
        opt = self.optimizer_fn(params=self.model.parameters())
        if self.scheduler_fn is None:
            return opt
        return {"optimizer": opt, "lr_scheduler": {"scheduler": self.scheduler_fn(optimizer=opt), "interval": "epoch"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CKPT_KEY] = self.meta
