"""Reproducible train/val/test splits of a schedule dataset: within task, by held-out task, by held-out family."""

from __future__ import annotations

from typing import Any

import numpy as np

KINDS = ("random", "task", "family")


def _ids(dataset: Any, name: str) -> np.ndarray:
    ids = getattr(dataset, f"{name}_ids", None)
    if ids is not None:
        return np.asarray(ids, dtype=np.int64)
    return np.asarray([int(dataset[i][name]) for i in range(len(dataset))], dtype=np.int64)


def _cut(n: int, val: float, test: float) -> tuple[int, int]:
    """(n_test, n_val) of ``n`` units, keeping at least one unit for training when n >= 1."""
    n_test = int(round(n * test))
    n_val = int(round(n * val))
    while n_test + n_val >= n and n_test + n_val > 0:
        if n_val >= n_test and n_val > 0:
            n_val -= 1
        else:
            n_test -= 1
    return n_test, n_val


def make_split(dataset: Any, kind: str = "random", seed: int = 0, val: float = 0.1, test: float = 0.2,
               holdout_family: str | None = None, test_tasks: list[str] | None = None) -> dict[str, np.ndarray]:
    """Indices of a train/val/test split, reproducible from ``seed``.

    Args:
        dataset: a :class:`ScheduleDataset` (or any sequence of ``Data`` with ``task``/``family``).
        kind: ``"random"`` (within each task, ``val``/``test`` fractions of its records),
            ``"task"`` (whole tasks held out: fractions of the tasks go to val and test),
            ``"family"`` (every task of one operator family is the test set; val = held-out tasks
            of the other families).
        seed: random seed.
        val: validation fraction.
        test: test fraction (ignored by ``"family"``).
        holdout_family: the family tested by ``"family"`` (name); ``None`` picks one from ``seed``.
        test_tasks: ``"task"`` only: these tasks (names) are the test set, instead of a ``test``
            fraction drawn from ``seed`` (val is still drawn from the rest): to compare runs whose
            datasets hold different task sets on the same held-out tasks.

    Returns:
        ``{"train", "val", "test"}`` -> sorted ``np.int64`` index arrays, disjoint and covering the dataset.

    Guarantee (relied on by ``perfmodel evaluate``): which tasks ``"task"`` holds out depends only on
    the set of task ids present and ``seed``/``val``/``test``, not on the records.
    """
    if kind not in KINDS:
        raise ValueError(f"split kind must be one of {KINDS}, got {kind!r}")
    if not (0 <= val < 1 and 0 <= test < 1 and val + test < 1):
        raise ValueError(f"split fractions must be in [0, 1) with val + test < 1, got val={val}, test={test}")
    rng = np.random.default_rng(seed)
    tasks = _ids(dataset, "task")
    parts: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
    groups: dict[str, np.ndarray] = {}  # task kinds: the tasks of each part
    if kind == "random":
        for t in np.unique(tasks):
            idx = rng.permutation(np.flatnonzero(tasks == t))
            n_test, n_val = _cut(len(idx), val, test)
            parts["test"].append(idx[:n_test])
            parts["val"].append(idx[n_test:n_test + n_val])
            parts["train"].append(idx[n_test + n_val:])
    elif kind == "task" and test_tasks is not None:
        names = list(getattr(dataset, "task_names", []))
        missing = sorted(set(test_tasks) - set(names))
        if missing:
            raise ValueError(f"test_tasks not in the dataset: {', '.join(missing)}")
        chosen = np.array(sorted(names.index(t) for t in set(test_tasks)), dtype=np.int64)
        rest = rng.permutation(np.setdiff1d(np.unique(tasks), chosen))
        _, n_val = _cut(len(rest), val, 0.0)
        groups = {"test": chosen, "val": rest[:n_val], "train": rest[n_val:]}
    elif kind == "task":
        uniq = rng.permutation(np.unique(tasks))
        n_test, n_val = _cut(len(uniq), val, test)
        groups = {"test": uniq[:n_test], "val": uniq[n_test:n_test + n_val], "train": uniq[n_test + n_val:]}
    else:
        fams = _ids(dataset, "family")
        names = list(getattr(dataset, "families", [str(f) for f in sorted(set(fams.tolist()))]))
        present = sorted({names[f] for f in fams.tolist()})
        if holdout_family is None:
            candidates = [f for f in present if f != "unknown"] or present
            holdout_family = candidates[int(rng.integers(len(candidates)))]
        if holdout_family not in present:
            raise ValueError(f"holdout_family {holdout_family!r} is not in the dataset (families: {present})")
        if len(present) < 2:
            raise ValueError(f"a family split needs at least two operator families; the dataset has {present}")
        test_mask = fams == names.index(holdout_family)
        parts["test"].append(np.flatnonzero(test_mask))
        rest = np.unique(tasks[~test_mask])
        rest = rng.permutation(rest)
        _, n_val = _cut(len(rest), val, 0.0)
        parts["val"].append(np.flatnonzero(np.isin(tasks, rest[:n_val]) & ~test_mask))
        parts["train"].append(np.flatnonzero(np.isin(tasks, rest[n_val:]) & ~test_mask))
    for k, ts in groups.items():
        parts[k].append(np.flatnonzero(np.isin(tasks, ts)))
    return {k: np.sort(np.concatenate(v)).astype(np.int64) if v else np.zeros(0, np.int64) for k, v in parts.items()}


def heldout_task_names(task_names: list[str], *, seed: int, val: float = 0.1, test: float = 0.2) -> set[str]:
    """The test tasks that ``make_split(kind="task")`` picks from a dataset of these tasks (every one present)."""

    class _Tasks:  # one item per task: make_split only looks at the task ids
        task_ids = np.arange(len(task_names))

        def __len__(self) -> int:
            return len(task_names)

    split = make_split(_Tasks(), kind="task", seed=seed, val=val, test=test)
    return {task_names[int(i)] for i in split["test"]}
