"""Training losses on predicted log times: MSE, within-task RankNet / LambdaRank, and their weighted sum."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _pairs(pred: Tensor, true: Tensor, task: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Dense pair matrices of a batch [B]: pred[i] - pred[j], and the mask of pairs (i, j) of the
    same task where i was measured faster (true[i] < true[j])."""
    same = task[:, None] == task[None, :]
    faster = true[:, None] < true[None, :]
    return pred[:, None] - pred[None, :], true[None, :] - true[:, None], same & faster


def batch_loss(model: nn.Module, loss_fn: nn.Module, batch: Any) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The training step's forward pass, shared by the LightningModule and ``Predictor.fine_tune``.

    Args:
        model: ``model(batch) -> [B]`` predicted log seconds.
        loss_fn: ``loss_fn(pred, true, task) -> scalar``.
        batch: a collated (normalized) batch with ``y`` (log seconds) and ``task`` per graph.

    Returns:
        ``(loss, pred [B], true [B], task [B])``.
    """
    pred = model(batch)
    true, task = batch.y.reshape(-1).to(pred.dtype), batch.task.reshape(-1)
    return loss_fn(pred, true, task), pred, true, task


class MSELoss(nn.Module):
    """Mean squared error of log times."""

    def forward(self, pred: Tensor, true: Tensor, task: Tensor) -> Tensor:
        """Args: pred, true [B] log seconds; task [B] task ids (unused)."""
        return F.mse_loss(pred, true)


class RankNetLoss(nn.Module):
    """RankNet pairwise logistic loss over pairs of the same task in a batch.

    For a pair where i is faster than j, the loss is ``softplus(sigma * (pred_i - pred_j))``: it
    pushes i's predicted log time below j's. Pairs whose log times differ by less than
    ``min_gap`` (measurement noise) are skipped. With ``weighted``, pairs weigh by their true
    log-time gap (clipped to 1), so near-ties matter less.
    """

    def __init__(self, *, sigma: float = 1.0, min_gap: float = 0.01, weighted: bool = False) -> None:
        super().__init__()
        self.sigma, self.min_gap, self.weighted = sigma, min_gap, weighted

    def forward(self, pred: Tensor, true: Tensor, task: Tensor) -> Tensor:
        """Mean loss over valid pairs; 0 (with a gradient path) when the batch has none."""
        diff, gap, mask = _pairs(pred, true, task)
        mask = mask & (gap > self.min_gap)
        if not bool(mask.any()):
            return pred.sum() * 0.0
        loss = F.softplus(self.sigma * diff[mask])
        if self.weighted:
            w = gap[mask].clamp(max=1.0)
            return (loss * w).sum() / w.sum()
        return loss.mean()


class LambdaRankLoss(nn.Module):
    """LambdaRank: RankNet pairs weighted by the NDCG change of swapping them, per task.

    A record's relevance is its normalized throughput within its task in the batch, raised to
    ``sharpness`` (``(min time / time) ** sharpness`` in (0, 1]); positions are those of the current
    prediction. The loss focuses on getting the fastest schedules of each task to the top, which is
    what the search uses; a larger ``sharpness`` narrows that focus to the fast corner (at 1 a schedule
    2x slower than its task's best keeps half the relevance, at 4 a sixteenth).
    """

    def __init__(self, *, sigma: float = 1.0, min_gap: float = 0.01, sharpness: float = 1.0) -> None:
        super().__init__()
        if not sharpness > 0:
            raise ValueError(f"LambdaRankLoss: sharpness must be > 0 (got {sharpness!r})")
        self.sigma, self.min_gap, self.sharpness = sigma, min_gap, float(sharpness)

    def forward(self, pred: Tensor, true: Tensor, task: Tensor) -> Tensor:
        """Args: pred, true [B] log seconds; task [B] task ids. Returns a scalar."""
        diff, gap, mask = _pairs(pred, true, task)
        mask = mask & (gap > self.min_gap)
        if not bool(mask.any()):
            return pred.sum() * 0.0
        with torch.no_grad():
            same = task[:, None] == task[None, :]
            # best (lowest) log time of each record's task, relevance = exp(sharpness * (best - true))
            big = torch.where(same, true[None, :].expand_as(same), torch.full_like(diff, math.inf))
            best = big.min(dim=1).values
            gain = torch.exp(self.sharpness * (best - true))  # (0, 1]
            # rank of each record inside its task by current prediction (0 = predicted fastest)
            # (ties broken by position, so a constant prediction still gets distinct ranks)
            idx = torch.arange(pred.numel(), device=pred.device)
            tie_ahead = (pred[None, :] == pred[:, None]) & (idx[None, :] < idx[:, None])
            ahead = same & ((pred[None, :] < pred[:, None]) | tie_ahead)
            rank = ahead.sum(dim=1).to(pred.dtype)
            disc = 1.0 / torch.log2(rank + 2.0)
            # ideal DCG per task: gains sorted descending against discounts 1/log2(2..)
            ideal_rank = (same & (true[None, :] < true[:, None])).sum(dim=1).to(pred.dtype)
            idcg_each = gain / torch.log2(ideal_rank + 2.0)
            idcg = (same.to(pred.dtype) * idcg_each[None, :]).sum(dim=1)
            delta = (gain[:, None] - gain[None, :]).abs() * (disc[:, None] - disc[None, :]).abs()
            delta = delta / idcg[:, None].clamp_min(1e-12)
        w = delta[mask]
        loss = F.softplus(self.sigma * diff[mask])
        return (loss * w).sum() / w.sum().clamp_min(1e-12)


class CombinedLoss(nn.Module):
    """``mse_weight * MSE + rank_weight * ranking loss`` (the default: absolute and ranking use)."""

    def __init__(self, *, mse_weight: float = 1.0, rank_weight: float = 1.0, rank: nn.Module | None = None) -> None:
        super().__init__()
        self.mse_weight, self.rank_weight = mse_weight, rank_weight
        self.mse = MSELoss()
        self.rank = rank if rank is not None else RankNetLoss()

    def forward(self, pred: Tensor, true: Tensor, task: Tensor) -> Tensor:
        """Args: pred, true [B] log seconds; task [B] task ids. Returns a scalar."""
        out = pred.sum() * 0.0
        if self.mse_weight:
            out = out + self.mse_weight * self.mse(pred, true, task)
        if self.rank_weight:
            out = out + self.rank_weight * self.rank(pred, true, task)
        return out
