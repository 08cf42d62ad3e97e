"""LightningDataModule: the schedule dataset, its split, feature normalization and task-grouped batches."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Sequence
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler
from torch_geometric.loader import DataLoader

from perfmodel.training.sampler import TaskBatchSampler


def field(dataset: Any, name: str) -> np.ndarray:
    """One per-graph field (``task``, ``y``, ``flops``...) of every item of ``dataset``, shape [N].

    Reads the collated storage of an unsliced ``InMemoryDataset`` at once, else item by item.
    """
    data = getattr(dataset, "_data", None)
    if data is not None and getattr(dataset, "_indices", None) is None and name in data:
        v = data[name]
        if isinstance(v, torch.Tensor) and v.numel() == len(dataset):
            return v.reshape(-1).numpy()
    return np.array([float(dataset[i][name].reshape(-1)[0]) for i in range(len(dataset))])


class ScheduleDataModule(L.LightningDataModule):
    """Measured schedules as PyG graphs, split by task (default), normalized on the train split.

    Training batches group records of the same task (``TaskBatchSampler``) so the ranking loss
    has pairs; evaluation batches are sequential. Features are standardized per batch
    (``on_after_batch_transfer``), so the cached dataset is never modified.

    Larger than memory: nothing here needs the whole dataset in RAM. Pass as ``dataset`` any PyG
    ``Dataset`` whose items carry the fields of ``ScheduleDataset`` (e.g. a
    ``torch_geometric.data.OnDiskDataset``, which reads items from SQLite on access) and that
    exposes ``task_ids`` (np.int64 [N]); the normalization is fitted by streaming the train items,
    the sampler needs only ``task_ids``, and loaders read batches by index.

    Args:
        root: cache directory of the processed dataset.
        db_paths: MetaSchedule database directories (or folders holding them).
        granularity: ``stage`` or ``loop`` graphs.
        max_records: featurize at most this many records per workload (``None`` = all; smoke runs).
        max_spread: drop records whose fastest timing rounds disagreed by more (``None``: keep all).
        workers: processes that featurize the databases the first time.
        split: ``task`` (held-out tasks), ``random`` (within task) or ``family``.
        split_seed: seed of the split.
        val: validation fraction.
        test: test fraction.
        holdout_family: the test family of a ``family`` split.
        test_tasks: the test tasks (names) of a ``task`` split instead of a drawn ``test`` fraction.
        eval_db: one of ``db_paths`` (``None``: all): the val and test splits keep only its records,
            train keeps every database's. Tasks are split before, so a held-out task is held out of
            training in every database; val/test records of the other databases are left unused.
        batch_size: training records per batch.
        tasks_per_batch: tasks per training batch.
        eval_batch_size: records per validation / test batch.
        max_per_task: keep at most this many records per task in each split (None = all);
            a quick, deterministic subsample for smoke runs.
        normalize: standardize node / edge features with a ``FeatureNorm`` fitted on train.
        num_workers: DataLoader worker processes.
        seed: seed of the batch order.
        dataset: an already built dataset (tests); then ``root``/``db_paths`` are unused.
        splits: explicit ``{"train", "val", "test"}`` index arrays (with ``dataset``).
    """

    def __init__(
        self,
        *,
        root: str = ".cache/dataset",
        db_paths: Sequence[str] = ("datasets/amd-epyc-t1",),
        granularity: str = "stage",
        max_records: int | None = None,
        max_spread: float | None = None,
        workers: int = 1,
        split: str = "task",
        split_seed: int = 0,
        val: float = 0.1,
        test: float = 0.2,
        holdout_family: str | None = None,
        test_tasks: list[str] | None = None,
        eval_db: str | None = None,
        batch_size: int = 64,
        tasks_per_batch: int = 4,
        eval_batch_size: int = 512,
        max_per_task: int | None = None,
        normalize: bool = True,
        num_workers: int = 0,
        seed: int = 0,
        dataset: Dataset | None = None,
        splits: dict[str, np.ndarray] | None = None,
    ) -> None:
        super().__init__()
        self.root, self.db_paths, self.granularity = str(root), [str(p) for p in db_paths], granularity
        self.max_records, self.max_spread, self.workers = max_records, max_spread, workers
        self.split_kind, self.split_seed, self.val, self.test = split, split_seed, val, test
        self.holdout_family, self.eval_db = holdout_family, (str(eval_db) if eval_db else None)
        self.test_tasks = [str(t) for t in test_tasks] if test_tasks else None
        self.batch_size, self.tasks_per_batch, self.eval_batch_size = batch_size, tasks_per_batch, eval_batch_size
        self.max_per_task, self.normalize, self.num_workers, self.seed = max_per_task, normalize, num_workers, seed
        self.dataset, self.splits = dataset, splits
        self.norm: Any = None
        self._train_sampler: TaskBatchSampler | None = None
        self._ready = False

    # ----------------------------------------------------------------- setup
    def setup(self, stage: str | None = None) -> None:
        """Builds (or opens the cache of) the dataset, splits it and fits the normalization; once."""
        if self._ready:
            return
        if self.dataset is None:
            from perfmodel.data import ScheduleDataset

            self.dataset = ScheduleDataset(self.root, self.db_paths, granularity=self.granularity,
                                           max_records=self.max_records, max_spread=self.max_spread,
                                           workers=self.workers)
        if len(self.dataset) == 0:
            raise ValueError(f"dataset at {self.root} from {self.db_paths} has no usable records")
        if self.splits is None:
            from perfmodel.data import make_split

            self.splits = make_split(self.dataset, kind=self.split_kind, seed=self.split_seed, val=self.val,
                                     test=self.test, holdout_family=self.holdout_family,
                                     test_tasks=self.test_tasks)
        ids = getattr(self.dataset, "task_ids", None)
        self.task_ids = np.asarray(ids if ids is not None else field(self.dataset, "task"), dtype=np.int64)
        self.splits = {k: np.asarray(v, dtype=np.int64) for k, v in self.splits.items()}
        if self.eval_db:
            if not hasattr(self.dataset, "from_databases"):
                raise ValueError("data.eval_db needs a ScheduleDataset (records with their databases)")
            keep = self.dataset.from_databases(self.eval_db)
            self.splits.update({k: self.splits[k][keep[self.splits[k]]] for k in ("val", "test")})
        self.splits = {k: self._cap(v) for k, v in self.splits.items()}
        for part in ("train", "val"):
            if len(self.splits[part]) == 0:
                raise ValueError(f"the {part} split of {len(self.dataset)} records in "
                                 f"{len(np.unique(self.task_ids))} tasks is empty (split={self.split_kind}, "
                                 f"val={self.val}, test={self.test}); use more tasks or data.split=random")
        if self.normalize:
            from perfmodel.data import FeatureNorm

            self.norm = FeatureNorm.fit(self.dataset[int(i)] for i in self.splits["train"])  # streamed
        self._ready = True

    def set_batch_seed(self, seed: int) -> None:
        """Seeds the training batch order anew (the next ``train_dataloader`` starts from it)."""
        self.seed = int(seed)
        self._train_sampler = None

    def _cap(self, idx: np.ndarray) -> np.ndarray:
        if self.max_per_task is None or idx.size == 0:
            return idx
        rng = np.random.default_rng(self.split_seed)
        keep = [rng.permutation(idx[self.task_ids[idx] == t])[: self.max_per_task]
                for t in np.unique(self.task_ids[idx])]
        return np.sort(np.concatenate(keep))

    # ------------------------------------------------------------ properties
    @property
    def num_node_features(self) -> int:
        return int(self.dataset[0].x.size(-1))

    @property
    def num_edge_features(self) -> int:
        ea = getattr(self.dataset[0], "edge_attr", None)
        return int(ea.size(-1)) if ea is not None else 0

    @property
    def targets(self) -> list[dict[str, Any]]:
        """The dataset's ``target_id`` vocabulary (``{kind, mcpu, threads}``; empty: a dataset without targets)."""
        return [dict(t) for t in getattr(self.dataset, "targets", None) or []]

    @property
    def task_names(self) -> list[str]:
        names = getattr(self.dataset, "task_names", None)
        return list(names) if names is not None else [str(t) for t in np.unique(self.task_ids)]

    def subset(self, name: str) -> Any:
        """The ``train`` / ``val`` / ``test`` part of the dataset."""
        return self.dataset[torch.as_tensor(self.splits[name])]

    def train_log_flops(self, *, copy_work: bool = False) -> torch.Tensor:
        """log FLOPs of the training graphs [N] (for the model's standardization; ``copy_work``: a copy's
        bytes stand for its FLOPs, ``perfmodel.models.gnn.log_work``)."""
        from perfmodel.models.gnn import log_work

        tr = self.splits["train"]
        nb = field(self.dataset, "io_bytes")[tr] if copy_work else None
        return log_work(field(self.dataset, "flops")[tr], nb, copy_work=copy_work)

    def train_log_bytes(self) -> torch.Tensor:
        """log argument bytes (``io_bytes``) of the training graphs [N] (for the model's standardization)."""
        nb = field(self.dataset, "io_bytes")[self.splits["train"]]
        return torch.log(torch.as_tensor(nb, dtype=torch.float64).clamp_min(1.0))

    def train_log_secs(self) -> torch.Tensor:
        """Measured log seconds of the training graphs [N]."""
        return torch.as_tensor(field(self.dataset, "y")[self.splits["train"]], dtype=torch.float64)

    def fingerprint(self) -> str:
        """sha256 of what the model was trained on: task names, train indices, their log times."""
        h = hashlib.sha256()
        h.update("\n".join(self.task_names).encode())
        tr = self.splits["train"]
        h.update(tr.tobytes())
        h.update(np.asarray(field(self.dataset, "y"), dtype=np.float32)[tr].tobytes())
        return h.hexdigest()

    def train_targets(self) -> list[dict[str, Any]]:
        """``{kind, mcpu, threads}`` of the targets the training records were measured on, most common
        first (re-read from their database lines; empty for a dataset without ``sources``, e.g. synthetic)."""
        sources = getattr(self.dataset, "sources", None)
        if not sources:
            return []
        from perfmodel.collect.database import Database
        from perfmodel.workloads import target_summary

        lines: dict[str, set[int]] = {}
        for i in self.splits["train"]:
            db, line = sources[int(i)]
            lines.setdefault(str(db), set()).add(int(line))
        counts: Counter[str] = Counter()
        for db, want in lines.items():
            for r in Database.open(db).records:
                if r.line in want and r.target is not None:
                    counts[json.dumps(r.target, sort_keys=True)] += 1
        summaries: Counter[str] = Counter()
        for t, n in counts.items():
            summaries[json.dumps(target_summary(json.loads(t)))] += n
        return [json.loads(t) for t, _ in summaries.most_common()]

    def norm_state(self) -> dict[str, Any] | None:
        return None if self.norm is None else self.norm.state_dict()

    # ----------------------------------------------------------- dataloaders
    def train_dataloader(self) -> DataLoader:
        if self._train_sampler is None:
            world, rank = 1, 0
            if self.trainer is not None:
                world, rank = self.trainer.world_size, self.trainer.global_rank
            self._train_sampler = TaskBatchSampler(
                task_ids=self.task_ids[self.splits["train"]], batch_size=self.batch_size,
                tasks_per_batch=self.tasks_per_batch, seed=self.seed, num_replicas=world, rank=rank)
        return DataLoader(self.subset("train"), batch_sampler=self._train_sampler, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0)

    def _eval_loader(self, name: str) -> DataLoader:
        part = self.subset(name)
        sampler = None
        if self.trainer is not None and self.trainer.world_size > 1:  # shard evaluation across replicas
            sampler = DistributedSampler(part, num_replicas=self.trainer.world_size, rank=self.trainer.global_rank,
                                         shuffle=False)
        return DataLoader(part, batch_size=self.eval_batch_size, shuffle=False, sampler=sampler,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Standardizes the features of a collated batch (the cached dataset is left untouched)."""
        return batch if self.norm is None else self.norm.apply(batch)
