"""Learning-rate stability: over which learning rates does each placement train at all?

Too small a learning rate does not learn in the epochs given, too large a rate fails: P(trains)
over log10 of the effective learning rate rises, then falls. The window is its excess-mass level
set: the range of learning rates where runs that trained most outnumber those that failed
(sum of trained share - ``trains_probability`` over the configurations inside is largest), an
estimate of where P(trains) >= ``trains_probability`` that needs no parametric curve. The
headline compares upper edges: BN should train at larger learning rates (Ioffe & Szegedy).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from search.analysis import _stats
from search.analysis._common import (
    Context,
    decisive,
    difference_strength,
    finding,
    lr_text,
    scatter,
)
from search.analysis._models import Finding, Practice, Strength
from search.analysis._placement import NONE, placement_groups
from search.analysis._records import Point

_BN = "with BN"


@dataclass(frozen=True)
class _Window:
    """A fitted window of trainable learning rates (log10) and its bootstrap."""

    edges: tuple[float, float, bool, bool] | None  # low, high, low_open, high_open; None: never
    high_replicates: _stats.Array  # upper edge per resample (the lowest lr tried if none trains)
    low_replicates: _stats.Array
    lowest: float  # the lowest learning rate tried

    @property
    def high(self) -> float:
        return self.edges[1] if self.edges else self.lowest

    def as_list(self) -> list[float] | None:
        return None if self.edges is None else [10 ** self.edges[0], 10 ** self.edges[1]]

    def text(self) -> str:
        if self.edges is None:
            return "never trained"
        low, high, low_open, high_open = self.edges
        return f"{'≤' if low_open else ''}{lr_text(low)}–{'≥' if high_open else ''}{lr_text(high)}"


def _fit(points: list[Point], ctx: Context, label: str, n_boot: int) -> _Window | None:
    x = np.array([p.log_lr for p in points])
    y = np.array([p.trained for p in points])
    if len(points) < ctx.options.min_curve_points or np.unique(x).size < 3:
        return None
    identity = np.arange(len(points), dtype=np.int64)[None, :]
    idx = np.vstack([identity, _stats.resample(ctx.rng(f"window:{label}"), len(points), n_boot)])
    w = _stats.level_windows(x, y, idx, ctx.options.trains_probability)
    lowest = x[idx].min(axis=1)
    found = bool(w.found[0])
    edges = (
        (float(w.low[0]), float(w.high[0]), bool(w.low_open[0]), bool(w.high_open[0]))
        if found
        else None
    )
    highs = np.where(w.found, w.high, lowest)[1:]
    lows = np.where(w.found, w.low, np.nan)[1:]
    return _Window(edges, highs, lows, float(x.min()))


def _headline(windows: dict[str, _Window]) -> tuple[str, str] | None:
    """Which two windows to compare: with vs without BN, else the first two BN placements."""
    if _BN in windows and NONE in windows:
        return _BN, NONE
    bn = [k for k in windows if k not in (_BN, NONE)]
    return (bn[0], bn[1]) if len(bn) >= 2 else None


def _verdict(a: str, b: str, d: float, ci: tuple[float, float] | None, s: Strength) -> str:
    interval = "no interval" if ci is None else f"95% CI {ci[0]:+.2f} to {ci[1]:+.2f} decades"
    if (a, b) != (_BN, NONE):
        if decisive(s):
            higher, lower = (a, b) if d > 0 else (b, a)
            return (
                f"{higher} trains up to a {10 ** abs(d):.3g}× larger learning rate than "
                f"{lower} ({interval})"
            )
        if s is Strength.NO_CLEAR_WINNER:
            return f"{a} and {b} fail at similar learning rates ({d:+.2f} decades, {interval})"
        return (
            f"cannot tell whether {a} or {b} trains at larger learning rates ({d:+.2f} decades, "
            f"{interval})"
        )
    if decisive(s) and d > 0:
        return (
            f"with BN the largest trainable learning rate is {d:.2f} decades ({10**d:.3g}×) higher "
            f"than without ({interval}): BN trains at larger learning rates, as Ioffe & Szegedy "
            "report and the article says"
        )
    if decisive(s):
        return (
            f"without BN the largest trainable learning rate is {-d:.2f} decades higher "
            f"({interval}): BN did not allow larger learning rates here, contrary to the article"
        )
    if s is Strength.NO_CLEAR_WINNER:
        return (
            f"with and without BN, runs fail at about the same learning rate ({d:+.2f} decades, "
            f"{interval}): the article's claim that BN allows larger learning rates is not borne "
            "out here"
        )
    return (
        f"the largest trainable learning rate with BN is {d:+.2f} decades from that without, but "
        f"the interval ({interval}) cannot tell whether BN allows larger learning rates"
    )


def stability_finding(ctx: Context) -> Finding:
    """Windows of learning rates that train, per placement (and batch size), compared."""
    data, opts = ctx.data, ctx.options
    groups = placement_groups(data.points)
    with_bn = [p for p in data.points if p.has_bn]
    candidates = dict(groups)
    if with_bn and NONE in groups:
        candidates[_BN] = with_bn
    windows = {
        k: w for k, g in candidates.items() if (w := _fit(g, ctx, k, opts.n_bootstrap)) is not None
    }
    shown = {k: w for k, w in windows.items() if k != _BN or len(groups) > 2}
    t = data.thresholds
    rule = t.rule[0].upper() + t.rule[1:]
    effect: dict[str, Any] = {
        "compared": None,
        "estimate": None,
        "unit": "decades of learning rate (log10)",
        "margin": opts.lr_margin_decades,
        "windows": {k: w.as_list() for k, w in shown.items()},
        "open_edges": {k: list(w.edges[2:]) if w.edges else None for k, w in shown.items()},
        "window_ci95": {
            k: {
                "low": _stats.percentile_interval(10**w.low_replicates),
                "high": _stats.percentile_interval(10**w.high_replicates),
            }
            for k, w in shown.items()
        },
        "trained_share": {k: float(np.mean([p.trained for p in g])) for k, g in groups.items()},
        "failed_to_train": {
            "rule": t.rule,
            "accuracy_below": t.trained_above,
            "loss_above": t.loss_above,
        },
        "windows_by_batch_size": _by_batch_size(ctx),
    }
    plot = {
        "kind": "lr_windows",
        "points": {k: scatter(g) for k, g in groups.items()},
        "windows": effect["windows"],
        "threshold": t.trained_above,
        "chance": t.chance_accuracy,
    }
    listed = ", ".join(f"{k} {w.text()}" for k, w in shown.items())
    level = f"where the share of runs that train most exceeds {opts.trains_probability:g}"
    described = f"{rule}. Learning rates that train ({level}): {listed or 'too few trials'}"
    pair = _headline(windows)
    if pair is None or not shown:
        return finding(
            Practice.LEARNING_RATE_STABILITY,
            described + "; nothing to compare them with",
            Strength.INSUFFICIENT_DATA,
            effect,
            plot=plot,
        )
    a, b = pair
    wa, wb = windows[a], windows[b]
    effect["compared"] = f"upper edge {a} - {b}"
    d = wa.high - wb.high
    (higher, w_high), (lower, w_low) = sorted(((a, wa), (b, wb)), key=lambda kw: -kw[1].high)
    if w_high.edges is None:
        return finding(
            Practice.LEARNING_RATE_STABILITY,
            f"{described}; no configuration of {a} or {b} trained: nothing to compare",
            Strength.INSUFFICIENT_DATA,
            effect,
            plot=plot,
        )
    if w_low.edges and w_low.edges[3]:
        return finding(
            Practice.LEARNING_RATE_STABILITY,
            f"{described}; {lower} trained up to the largest learning rate it was tried at "
            f"({lr_text(w_low.high)}), so where it fails is unknown and the windows cannot be "
            "compared: widen the range",
            Strength.INSUFFICIENT_DATA,
            effect,
            plot=plot,
        )
    ci = _stats.percentile_interval(wa.high_replicates - wb.high_replicates)
    strength = difference_strength(ci, opts.lr_margin_decades)
    effect["estimate"] = d
    verdict = f"{described}; {_verdict(a, b, d, ci, strength)}"
    if w_high.edges[3]:
        verdict += f" (at least: {higher} trained up to the largest learning rate tried)"
    if w_low.edges is None:
        verdict += f" (at least: {lower} never trained at any learning rate tried)"
    return finding(
        Practice.LEARNING_RATE_STABILITY,
        verdict,
        strength,
        effect,
        ci,
        sample_size=len(candidates[a]) + len(candidates[b]),
        plot=plot,
    )


def _by_batch_size(ctx: Context) -> dict[str, dict[str, list[float] | None]]:
    """Point-estimate windows per batch size and placement, where the batch size varied."""
    if "batch_size" not in ctx.varied:
        return {}
    out: dict[str, dict[str, list[float] | None]] = {}
    for size in sorted({p.batch_size for p in ctx.data.points}):
        cells = placement_groups(tuple(p for p in ctx.data.points if p.batch_size == size))
        fitted = {k: _fit(g, ctx, f"{k}@{size}", 0) for k, g in cells.items()}
        row = {k: w.as_list() for k, w in fitted.items() if w is not None}
        if row:
            out[str(size)] = row
    return out
