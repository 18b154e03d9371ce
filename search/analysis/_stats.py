"""Numpy-only statistics: bootstrap resampling, matched (stratified) differences, level-set
windows, kernel smoothing, least squares, and the two-sample tests behind the warnings.

No scipy: the CLI imports this package and must start fast.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

Array = NDArray[np.float64]
IntArray = NDArray[np.int64]

# At least this share of bootstrap replicates must be defined for an interval to be reported.
MIN_DEFINED_REPLICATES = 0.9


def rng_for(seed: int, label: str) -> np.random.Generator:
    """A generator per (seed, label): one finding's interval does not move when another is added."""
    return np.random.default_rng([seed, zlib.crc32(label.encode())])


def resample(rng: np.random.Generator, n: int, n_boot: int) -> IntArray:
    """``n_boot`` bootstrap resamples of ``range(n)``, one per row."""
    return rng.integers(0, n, size=(n_boot, n), dtype=np.int64)


def percentile_interval(replicates: Array) -> tuple[float, float] | None:
    """The 95% percentile interval of bootstrap replicates; None when too many are undefined."""
    finite = replicates[np.isfinite(replicates)]
    if finite.size == 0 or finite.size < MIN_DEFINED_REPLICATES * replicates.size:
        return None
    lo, hi = np.percentile(finite, [2.5, 97.5])
    return float(lo), float(hi)


def resample_counts(rng: np.random.Generator, n: int, n_boot: int) -> Array:
    """How often each of ``n`` points is drawn in each of ``n_boot`` resamples: (B, n)."""
    idx = resample(rng, n, n_boot)
    flat = (idx + n * np.arange(n_boot)[:, None]).ravel()
    return np.bincount(flat, minlength=n * n_boot).reshape(n_boot, n).astype(float)


# --- comparisons at matched learning rates --------------------------------------------------------


def hat_basis(x: Array, keys: IntArray, spacing: float) -> Array:
    """Piecewise-linear ("hat") functions of x with knots every ``spacing``, one set per key:
    any continuous curve that is linear between knots, separately for each key (n, columns)."""
    columns = []
    for key in np.unique(keys):
        mine = keys == key
        first = math.floor(x[mine].min() / spacing)
        last = math.ceil(x[mine].max() / spacing)
        for knot in np.arange(first, last + 1) * spacing:
            columns.append(np.clip(1 - np.abs(x - knot) / spacing, 0, None) * mine)
    return np.column_stack(columns)


def partially_linear(y: Array, d: Array, basis: Array, counts: Array) -> Array:
    """delta in y = f(x) + delta * d + noise, with f in the span of ``basis``, per row of
    ``counts`` (how often each point is drawn).

    By Frisch-Waugh: y and the group indicator d are both residualized on the basis, delta is
    the slope of one residual on the other. Only points with neighbours of the other group
    between the same knots inform it, so how the sampler spread each group over x cancels;
    where the groups never meet, delta is undefined (NaN), never a guess.
    """
    n, k = basis.shape
    both = np.column_stack([y, d])
    # Weighted normal equations for every resample at once, as matrix products (BLAS).
    gram = (counts @ (basis[:, :, None] * basis[:, None, :]).reshape(n, k * k)).reshape(-1, k, k)
    moments = (counts @ (basis[:, :, None] * both[:, None, :]).reshape(n, 2 * k)).reshape(-1, k, 2)
    fitted = basis[None] @ (np.linalg.pinv(gram, hermitian=True) @ moments)
    ry, rd = y - fitted[..., 0], d - fitted[..., 1]
    num = (counts * ry * rd).sum(axis=1)
    den = (counts * rd * rd).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 1e-6 * counts.sum(axis=1), num / den, np.nan)


def matched(x: Array, keys: IntArray, d: Array, reach: float) -> NDArray[np.bool_]:
    """Points with a point of the other group, and the same key, within ``reach`` in x.

    By sorting, per key and group (n log n): a pairwise comparison needs n² memory, 31 GiB at the
    65,000 points of a 100,000-trial study."""
    out = np.zeros(len(x), dtype=bool)
    for key in np.unique(keys):
        in_key = keys == key
        for group in np.unique(d[in_key]):
            mine = np.flatnonzero(in_key & (d == group))
            others = np.sort(x[in_key & (d != group)])
            if others.size == 0:
                continue
            at = np.searchsorted(others, x[mine])
            below = np.abs(x[mine] - others[np.clip(at - 1, 0, others.size - 1)])
            above = np.abs(others[np.clip(at, 0, others.size - 1)] - x[mine])
            out[mine] = np.minimum(below, above) <= reach
    return out


# --- level-set windows ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Windows:
    """One window per resample: the interval of x where y most exceeds a level."""

    low: Array
    high: Array
    low_open: NDArray[np.bool_]  # no point below the window: it may extend further
    high_open: NDArray[np.bool_]
    found: NDArray[np.bool_]  # False where no interval has positive excess


def level_windows(x: Array, y: Array, idx: IntArray, level: float) -> Windows:
    """Per resample (row of ``idx``), the excess-mass window: the interval of x maximizing
    sum(y - level) over the points inside (Hartigan's excess mass; under a unimodal
    P(y) it estimates where P(y) >= level). Edges lie halfway between the last point outside and
    the first inside, never between equal x.
    """
    xs, ys = x[idx], y[idx] - level
    order = np.argsort(xs, axis=1, kind="stable")
    xs, ys = np.take_along_axis(xs, order, axis=1), np.take_along_axis(ys, order, axis=1)
    n_rows, n = xs.shape
    rows = np.arange(n_rows)
    prefix = np.concatenate([np.zeros((n_rows, 1)), np.cumsum(ys, axis=1)], axis=1)
    boundary = np.ones((n_rows, n + 1), dtype=bool)  # before point k; never between equal x
    boundary[:, 1:n] = xs[:, 1:] != xs[:, :-1]
    starts = np.where(boundary, prefix, np.inf)
    lowest = np.minimum.accumulate(starts, axis=1)
    gain = np.where(boundary[:, 1:], prefix[:, 1:] - lowest[:, :-1], -np.inf)
    end = np.argmax(gain, axis=1) + 1  # the window holds points start..end-1
    best = gain[rows, end - 1]
    before_end = np.arange(n + 1)[None, :] < end[:, None]
    start = np.argmax((starts == lowest[rows, end - 1][:, None]) & before_end, axis=1)
    low = np.where(start > 0, (xs[rows, start - 1] + xs[rows, start]) / 2, xs[:, 0])
    inner = np.minimum(end, n - 1)
    high = np.where(end < n, (xs[rows, end - 1] + xs[rows, inner]) / 2, xs[:, -1])
    return Windows(low, high, start == 0, end == n, best > 0)


# --- smoothing and regression ---------------------------------------------------------------------


def kernel_weights(x: Array, grid: Array, bandwidth: float) -> Array:
    """Gaussian kernel weights, (len(x), len(grid)), 1 at zero distance."""
    return np.exp(-0.5 * ((grid[None, :] - x[:, None]) / bandwidth) ** 2)


def smoothed_argmax(counts: Array, y: Array, kernel: Array, grid: Array) -> Array:
    """Per row of ``counts`` (how often each point is drawn): the grid location of the maximum of
    the kernel-smoothed mean of ``y``, over grid points with at least half a point of kernel mass
    (no extrapolation into unsampled learning rates)."""
    mass = counts @ kernel
    with np.errstate(invalid="ignore", divide="ignore"):
        smooth = np.where(mass >= 0.5, ((counts * y) @ kernel) / mass, -np.inf)
    best = np.argmax(smooth, axis=1)
    return np.where(np.isfinite(smooth.max(axis=1)), grid[best], np.nan)


def least_squares(design: Array, y: Array, idx: IntArray) -> Array:
    """Ordinary least-squares coefficients per resample (row of ``idx``): (B, columns, outcomes).

    Through the pseudo-inverse of the normal equations, so a resample whose design is
    rank-deficient still gets the minimum-norm solution instead of stopping the batch.
    """
    x, yy = design[idx], y[idx]
    gram = np.einsum("bni,bnj->bij", x, x)
    moments = np.einsum("bni,bnk->bik", x, yy)
    return np.asarray(np.linalg.pinv(gram) @ moments, dtype=float)


# --- tests behind the warnings --------------------------------------------------------------------


def ks_two_sample(a: Array, b: Array) -> tuple[float, float]:
    """Two-sample Kolmogorov-Smirnov statistic and its asymptotic p-value (Stephens' correction)."""
    a, b = np.sort(a), np.sort(b)
    both = np.concatenate([a, b])
    d = float(
        np.max(
            np.abs(
                np.searchsorted(a, both, side="right") / a.size
                - np.searchsorted(b, both, side="right") / b.size
            )
        )
    )
    en = math.sqrt(a.size * b.size / (a.size + b.size))
    lam = (en + 0.12 + 0.11 / en) * d
    k = np.arange(1, 101)
    p = 2 * float(np.sum((-1.0) ** (k - 1) * np.exp(-2 * k**2 * lam**2)))
    return d, min(1.0, max(0.0, p))


def two_proportion_p(k1: int, n1: int, k2: int, n2: int) -> float:
    """Two-sided p-value that two proportions are equal (pooled normal approximation)."""
    pooled = (k1 + k2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if se == 0:
        return 1.0
    return math.erfc(abs(k1 / n1 - k2 / n2) / se / math.sqrt(2))
