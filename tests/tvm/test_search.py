"""Tuning helpers: reading a best-so-far curve at budgets, trials to reach a latency, the plot."""

from __future__ import annotations

import math
from pathlib import Path

from perfmodel.tvm.search import best_at, plot_curves, trials_to_reach


def test_best_at_and_trials_to_reach() -> None:
    curve = [math.inf, 5.0, 5.0, 3.0, 2.0, 2.0]
    assert best_at(curve, 1) == math.inf and best_at(curve, 4) == 3.0 and best_at(curve, 100) == 2.0
    assert best_at([], 8) == math.inf
    assert trials_to_reach(curve, 3.0) == 4 and trials_to_reach(curve, 2.5) == 5
    assert trials_to_reach(curve, 1.0) is None and trials_to_reach(curve, 1.9, rel_tol=0.1) == 5


def test_plot_curves(tmp_path: Path) -> None:
    path = plot_curves({"gnn": [math.inf, 2e-3, 1e-3], "xgb": [3e-3, 3e-3, 2e-3]}, tmp_path / "p" / "c.png", title="t")
    assert path.is_file() and path.stat().st_size > 1000
