"""bench_guard's arithmetic: a batch's slowdown against the calm batches."""

from __future__ import annotations

import numpy as np

from tests.conftest import load_benchmark


def _bench():
    return load_benchmark("bench_guard")


def test_a_slow_batch_shows_its_candidates_slowdown_against_the_calm_ones() -> None:
    bench = _bench()
    base = np.array([1e-4, 3e-4, 2e-3])  # three candidates of very different speeds
    times = np.vstack([base, base * 1.02, base * 0.99, base * 1.3, base * [1.33, np.nan, 1.31]])
    drift = np.array([0.0, 0.01, 0.02, 0.31, 0.32])
    s = bench.slowdowns(times, drift, calm=0.15)
    assert np.allclose(s[:3], [0.0, 0.02, -0.01], atol=1e-9)  # calm batches against their own median
    assert np.allclose(s[3:], [0.3, 0.32])  # a failed timing (nan) does not count


def test_a_slow_reference_that_the_candidates_do_not_follow_shows_no_slowdown() -> None:
    bench = _bench()
    base = np.array([1e-4, 3e-4])
    times = np.vstack([base, base * 1.01, base, base * 1.01])
    s = bench.slowdowns(times, np.array([0.0, 0.0, 0.31, 0.31]), calm=0.15)
    assert np.all(np.abs(s) < 0.02)
