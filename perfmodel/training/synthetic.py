"""Synthetic stage-graph datasets with a learnable run time, for tests and benchmarks without TVM."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch_geometric.data import Data, InMemoryDataset


class SyntheticDataset(InMemoryDataset):
    """Random chain-shaped graphs grouped in tasks, with the fields of ``ScheduleDataset`` items.

    Each item has ``x`` [N, F], ``edge_index`` [2, N-1], ``edge_attr`` [N-1, Fe], ``y`` [1] (log
    seconds = log FLOPs - 21 + a smooth function of the node and edge features), ``task``,
    ``flops``, ``family`` and ``record`` [1]. Same seed, same data.

    Args:
        n_tasks: tasks.
        per_task: records per task.
        node_dim: F.
        edge_dim: Fe.
        seed: generator seed.
    """

    def __init__(self, *, n_tasks: int = 8, per_task: int = 32, node_dim: int = 16, edge_dim: int = 4,
                 seed: int = 0) -> None:
        super().__init__(None)
        rng = np.random.default_rng(seed)
        w_node = rng.normal(size=node_dim) / np.sqrt(node_dim)
        w_edge = rng.normal(size=edge_dim) / np.sqrt(edge_dim)
        datas = []
        self.task_names = [f"T{t}" for t in range(n_tasks)]
        self.families = ["f0", "f1"]
        self.skipped: dict[str, int] = {}
        for t in range(n_tasks):
            flops = float(10 ** rng.uniform(6, 10))
            for _ in range(per_task):
                n = int(rng.integers(2, 7))
                x = rng.normal(size=(n, node_dim)).astype(np.float32)
                ea = rng.normal(size=(n - 1, edge_dim)).astype(np.float32)
                eff = np.tanh(x @ w_node).mean() + 0.5 * np.tanh(ea @ w_edge).mean() + 0.1 * n
                y = np.log(flops) - 21.0 + eff
                datas.append(Data(
                    x=torch.from_numpy(x),
                    edge_index=torch.stack([torch.arange(n - 1), torch.arange(1, n)]),
                    edge_attr=torch.from_numpy(ea),
                    y=torch.tensor([y], dtype=torch.float32),
                    task=torch.tensor([t]),
                    flops=torch.tensor([flops], dtype=torch.float32),
                    family=torch.tensor([t % 2]),
                    record=torch.tensor([len(datas)]),
                ))
        self.data, self.slices = self.collate(datas)


def task_split(dataset: SyntheticDataset, *, val: int = 1, test: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    """Held-out-task split of a synthetic dataset: ``val`` and ``test`` whole tasks."""
    tasks = dataset._data.task.numpy()
    order = np.random.default_rng(seed).permutation(np.unique(tasks))
    te, va = order[:test], order[test:test + val]
    idx = np.arange(len(dataset))
    return {"train": idx[~np.isin(tasks, np.r_[te, va])], "val": idx[np.isin(tasks, va)],
            "test": idx[np.isin(tasks, te)]}


def synthetic_datamodule(*, n_tasks: int = 8, per_task: int = 32, node_dim: int = 16, edge_dim: int = 4,
                         split_seed: int = 0, seed: int = 0, **kw: Any) -> Any:
    """A ``ScheduleDataModule`` over a ``SyntheticDataset`` with a held-out-task split (no normalization).

    Args:
        n_tasks, per_task, node_dim, edge_dim: of the ``SyntheticDataset``.
        split_seed: seed of the dataset and its split (the data itself, like a database's records).
        seed: seed of the batch order (ensemble members differ in it, not in their data).
        **kw: other ``ScheduleDataModule`` arguments (batch_size, tasks_per_batch...).
    """
    from perfmodel.training.datamodule import ScheduleDataModule

    ds = SyntheticDataset(n_tasks=n_tasks, per_task=per_task, node_dim=node_dim, edge_dim=edge_dim, seed=split_seed)
    kw = {k: v for k, v in kw.items() if k not in ("root", "db_paths", "split", "val", "test", "holdout_family", "max_records", "workers")}
    kw.setdefault("normalize", False)
    return ScheduleDataModule(dataset=ds, splits=task_split(ds, seed=split_seed), split="task", split_seed=split_seed,
                              seed=seed, **kw)
