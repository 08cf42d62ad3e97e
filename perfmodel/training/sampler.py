"""Batches that group records of the same task, so a within-task ranking loss has pairs."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler


class TaskBatchSampler(Sampler[list[int]]):
    """Yields batches made of ``tasks_per_batch`` chunks, each chunk records of one task.

    Every epoch, each task's records are shuffled and cut into chunks of
    ``batch_size // tasks_per_batch``; the chunks of all tasks are shuffled and concatenated
    ``tasks_per_batch`` at a time. Every record appears once per epoch. The order depends only on
    ``seed`` and the epoch (counted by the sampler itself, or set with ``set_epoch``), so training
    is reproducible. Under data parallelism each replica takes every ``num_replicas``-th batch
    (the list is padded by repeating batches so all replicas run the same number of steps).

    Args:
        task_ids: task of each dataset position, shape [N].
        batch_size: records per batch (the last chunks of a task may make a batch smaller).
        tasks_per_batch: distinct chunks (tasks) per batch.
        seed: base seed of the shuffling.
        num_replicas: data-parallel replicas (1 = no parallelism).
        rank: this replica's index.
    """

    def __init__(
        self,
        *,
        task_ids: Sequence[int] | np.ndarray,
        batch_size: int = 64,
        tasks_per_batch: int = 4,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        if batch_size < 1 or tasks_per_batch < 1:
            raise ValueError(f"batch_size ({batch_size}) and tasks_per_batch ({tasks_per_batch}) must be >= 1")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is outside 0..{num_replicas - 1}")
        self.task_ids = np.asarray(task_ids).reshape(-1)
        self.batch_size, self.tasks_per_batch = batch_size, min(tasks_per_batch, batch_size)
        self.seed, self.num_replicas, self.rank = seed, num_replicas, rank
        self.epoch = 0
        self._explicit_epoch = False
        self._groups = [np.flatnonzero(self.task_ids == t) for t in np.unique(self.task_ids)]

    def set_epoch(self, epoch: int) -> None:
        """Fixes the epoch whose order the next iteration yields."""
        self.epoch, self._explicit_epoch = epoch, True

    def _batches(self, epoch: int) -> list[list[int]]:
        rng = np.random.default_rng([self.seed, epoch])
        chunk = max(1, self.batch_size // self.tasks_per_batch)
        chunks: list[np.ndarray] = []
        for g in self._groups:
            g = rng.permutation(g)
            chunks.extend(g[i:i + chunk] for i in range(0, g.size, chunk))
        order = rng.permutation(len(chunks))
        batches = [
            np.concatenate([chunks[j] for j in order[i:i + self.tasks_per_batch]]).tolist()
            for i in range(0, len(order), self.tasks_per_batch)
        ]
        if self.num_replicas > 1:
            total = -(-len(batches) // self.num_replicas) * self.num_replicas
            batches += batches[: total - len(batches)]
            batches = batches[self.rank::self.num_replicas]
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        batches = self._batches(self.epoch)
        if not self._explicit_epoch:
            self.epoch += 1
        self._explicit_epoch = False
        yield from batches

    def __len__(self) -> int:
        chunk = max(1, self.batch_size // self.tasks_per_batch)
        n_chunks = sum(-(-g.size // chunk) for g in self._groups)
        n = -(-n_chunks // self.tasks_per_batch)
        return -(-n // self.num_replicas)
