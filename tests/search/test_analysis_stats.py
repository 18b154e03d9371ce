"""What keeps the report of a large study in bounds: ``_stats.matched`` gives the same answer as
the pairwise comparison it replaced, in n log n (the pairwise form needed 31 GiB for a
100,000-trial study's report); plots keep at most ``MAX_PLOT_ROWS`` rows per series."""

from __future__ import annotations

import numpy as np

from search.analysis._common import thin
from search.analysis._stats import matched


def _pairwise(x: np.ndarray, keys: np.ndarray, d: np.ndarray, reach: float) -> np.ndarray:
    near = (np.abs(x[:, None] - x[None, :]) <= reach) & (keys[:, None] == keys[None, :])
    return (near & (d[:, None] != d[None, :])).any(axis=1)


def test_matched_agrees_with_the_pairwise_comparison() -> None:
    rng = np.random.default_rng(0)
    for _ in range(300):
        n = int(rng.integers(1, 40))
        x = np.round(rng.normal(size=n), 1)  # ties in x too
        keys, d = rng.integers(0, 3, n), rng.integers(0, 3, n).astype(float)
        reach = float(rng.choice([0.0, 0.1, 0.5, 2.0]))
        assert (matched(x, keys, d, reach) == _pairwise(x, keys, d, reach)).all()


def test_matched_handles_a_hundred_thousand_points() -> None:
    rng = np.random.default_rng(1)
    n = 100_000
    x, keys, d = rng.normal(size=n), rng.integers(0, 4, n), rng.integers(0, 2, n).astype(float)
    out = matched(x, keys, d, 0.01)
    assert out.shape == (n,) and 0.9 < out.mean() <= 1.0


def test_plot_data_is_thinned_evenly_and_in_step() -> None:
    """Parallel series keep the same rows; short ones are untouched; first and last kept."""
    rows = [[i, i * 2] for i in range(10_000)]
    xs = list(range(10_000))
    plot = {"points": {"a": rows, "short": [[1, 2]]}, "x": xs, "curve": list(range(50))}
    thinned = thin(plot, max_rows=2_000)
    assert len(thinned["points"]["a"]) == len(thinned["x"]) == 2_000
    assert [r[0] for r in thinned["points"]["a"]] == thinned["x"]  # the same rows of each
    assert thinned["points"]["a"][0] == [0, 0] and thinned["points"]["a"][-1] == [9_999, 19_998]
    assert thinned["points"]["short"] == [[1, 2]] and thinned["curve"] == list(range(50))
