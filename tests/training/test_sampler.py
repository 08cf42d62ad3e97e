"""TaskBatchSampler: task-grouped batches, every record once per epoch, reproducible, sharded."""

from __future__ import annotations

import numpy as np
import torch

from perfmodel.training.sampler import TaskBatchSampler

torch.set_num_threads(1)  # tiny graphs on a shared 2-core machine: more threads only contend

TASKS = np.repeat(np.arange(5), [10, 3, 7, 1, 20])


def test_every_record_once_and_tasks_grouped() -> None:
    s = TaskBatchSampler(task_ids=TASKS, batch_size=8, tasks_per_batch=2, seed=0)
    batches = list(s)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(TASKS.size))
    assert len(batches) == len(s)
    for b in batches:
        assert len(np.unique(TASKS[b])) <= 2 and len(b) <= 8


def test_reproducible_and_epochs_differ() -> None:
    a = TaskBatchSampler(task_ids=TASKS, batch_size=8, tasks_per_batch=2, seed=3)
    b = TaskBatchSampler(task_ids=TASKS, batch_size=8, tasks_per_batch=2, seed=3)
    e0a, e1a = list(a), list(a)
    assert e0a == list(b)
    assert e0a != e1a
    b.set_epoch(1)
    assert list(b) == e1a


def test_replicas_share_the_epoch() -> None:
    parts = [list(TaskBatchSampler(task_ids=TASKS, batch_size=8, tasks_per_batch=2, seed=0, num_replicas=2, rank=r))
             for r in range(2)]
    assert len(parts[0]) == len(parts[1])
    seen = set(np.concatenate(parts[0] + parts[1]).tolist())
    assert seen == set(range(TASKS.size))
