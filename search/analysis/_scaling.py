"""Batch size × learning rate: how the best learning rate moves with the batch size.

Per batch size, the best learning rate is the maximum of the kernel-smoothed accuracy over log lr
(not the single best trial, which is mostly noise); the slope of log(best lr) on log(batch size)
is fitted by least squares and bootstrapped by resampling configurations within each batch size.
Slope 1 is the linear scaling rule, 0.5 square-root scaling, 0 no scaling.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import numpy as np

from search.analysis import _stats
from search.analysis._common import (
    Context,
    by_setting,
    finding,
    lr_text,
    rules_covered,
    slope_strength,
)
from search.analysis._models import Finding, Practice, Strength
from search.analysis._records import Point

_GRID = 121


def _optima(points: list[Point], ctx: Context, size: int) -> _stats.Array:
    """The smoothed best log10 lr: the estimate first, then one per bootstrap resample."""
    x = np.array([p.log_lr for p in points])
    y = np.array([p.accuracy for p in points])
    grid = np.linspace(x.min(), x.max(), _GRID)
    kernel = _stats.kernel_weights(x, grid, ctx.options.smoothing_decades)
    n, n_boot = len(points), ctx.options.n_bootstrap
    idx = _stats.resample(ctx.rng(f"scaling:{size}"), n, n_boot)
    flat = (idx + n * np.arange(n_boot)[:, None]).ravel()
    counts = np.vstack(
        [np.ones(n), np.bincount(flat, minlength=n * n_boot).reshape(n_boot, n).astype(float)]
    )
    return _stats.smoothed_argmax(counts, y, kernel, grid)


def _rule_text(slope: float, ci: tuple[float, float]) -> str:
    covered = rules_covered(ci)
    interval = f"log-log slope {slope:.2f} (95% CI {ci[0]:.2f} to {ci[1]:.2f})"
    if 0.5 in covered and 1.0 in covered:
        return (
            f"cannot tell linear from square-root scaling: the best learning rate grows with "
            f"batch size with {interval}, which covers both 0.5 and 1"
        )
    if 0.0 in covered:
        if len(covered) > 1:
            return f"cannot tell whether the best learning rate grows with batch size: {interval}"
        return f"the best learning rate does not grow with batch size: {interval}"
    if covered == [1.0]:
        return f"consistent with the linear scaling rule (best lr ∝ batch size): {interval}"
    if covered == [0.5]:
        return f"consistent with square-root scaling (best lr ∝ √batch size): {interval}"
    if ci[0] > 1:
        return f"the best learning rate grows faster than the batch size: {interval}"
    if ci[1] < 0:
        return f"the best learning rate falls as the batch size grows: {interval}"
    return f"between square-root and linear scaling: {interval}"


def scaling_finding(ctx: Context) -> Finding:
    """Slope of log(best lr) vs log(batch size), with the fixed-epoch confound stated."""
    opts = ctx.options
    with_bn = [p for p in ctx.data.points if p.has_bn]
    pool = with_bn or list(ctx.data.points)
    by_size = by_setting(pool, lambda p: str(p.batch_size))
    usable = {
        int(k): g
        for k, g in by_size.items()
        if len(g) >= opts.min_curve_points and len({p.log_lr for p in g}) >= 3
    }
    sizes = sorted(usable)
    optima = {s: _optima(usable[s], ctx, s) for s in sizes}
    effect: dict[str, Any] = {
        "compared": "d log10(best lr) / d log10(batch size)",
        "estimate": None,
        "unit": "log-log slope",
        "placements": sorted({p.placement for p in pool}),
        "optima": {
            str(s): {
                "learning_rate": 10 ** o[0],
                "ci95": _stats.percentile_interval(10 ** o[1:]),
                "configurations": len(usable[s]),
                "at_edge": _at_edge(o[0], usable[s]),
            }
            for s, o in optima.items()
        },
    }
    plot: dict[str, Any] = {
        "kind": "batch_lr",
        "cells": _cells(pool, ctx),
        "optima": [[s, v["learning_rate"], v["ci95"]] for s, v in effect["optima"].items()],
    }
    if len(sizes) < 2:
        return finding(
            Practice.BATCH_SIZE_LEARNING_RATE,
            f"need at least two batch sizes with {opts.min_curve_points}+ configurations over 3+ "
            f"learning rates each to fit the scaling; have {len(sizes)}",
            Strength.INSUFFICIENT_DATA,
            effect,
            plot=plot,
        )
    lx = np.log10(np.array(sizes, dtype=float))
    table = np.vstack([optima[s] for s in sizes])  # (sizes, 1 + n_boot)
    cx = lx - lx.mean()
    slopes = (cx[:, None] * (table - table.mean(axis=0))).sum(axis=0) / (cx**2).sum()
    slope = float(slopes[0])
    intercept = float(table[:, 0].mean() - slope * lx.mean())
    ci = _stats.percentile_interval(slopes[1:])
    effect |= {"estimate": slope, "intercept": intercept}
    plot |= {"slope": slope, "intercept": intercept}
    if ci is None:
        return finding(
            Practice.BATCH_SIZE_LEARNING_RATE,
            f"log-log slope {slope:.2f}, but the smoothed optima are undefined too often to give "
            "an interval",
            Strength.INSUFFICIENT_DATA,
            effect,
            plot=plot,
        )
    effect["rules_covered"] = rules_covered(ci)
    parts = [_rule_text(slope, ci)]
    best = ", ".join(f"batch {s}: {lr_text(float(optima[s][0]))}" for s in sizes)
    parts.append(f"smoothed best learning rate {best}")
    edge = [str(s) for s in sizes if effect["optima"][str(s)]["at_edge"]]
    if edge:
        parts.append(
            f"the optimum for batch size {', '.join(edge)} sits at the edge of the learning rates "
            "tried, so the slope may be biased: widen the range"
        )
    parts.append(_confound(pool, sizes, effect))
    if any(p.settings.get("lr_scaling") for p in pool):
        parts.append("learning rates are effective rates after lr_scaling (× batch size / 256)")
    if with_bn and len(effect["placements"]) > 1:
        parts.append(f"pooled over BN placements ({', '.join(effect['placements'])})")
    return finding(
        Practice.BATCH_SIZE_LEARNING_RATE,
        "; ".join(parts),
        slope_strength(ci),
        effect,
        ci,
        sample_size=sum(len(usable[s]) for s in sizes),
        plot=plot,
    )


def _at_edge(optimum: float, points: list[Point]) -> bool:
    xs = [p.log_lr for p in points]
    return bool(math.isclose(optimum, min(xs)) or math.isclose(optimum, max(xs)))


def _confound(pool: list[Point], sizes: list[int], effect: dict[str, Any]) -> str:
    epochs = {int(p.settings["epochs"]) for p in pool}
    ratio = sizes[-1] / sizes[0]
    effect |= {"fixed_epochs": next(iter(epochs)) if len(epochs) == 1 else None}
    effect |= {"steps_ratio": ratio}
    if len(epochs) > 1:
        return "epochs varied across trials, so the optimizer steps differ in two ways at once"
    return (
        f"every trial ran {next(iter(epochs))} epochs, so batch size {sizes[-1]} took "
        f"{ratio:g}× fewer optimizer steps than {sizes[0]}: a larger best learning rate at large "
        "batches may partly make up for fewer steps (compare at equal steps to separate them)"
    )


def _cells(pool: list[Point], ctx: Context) -> list[list[float]]:
    """Heatmap cells: [batch size, lr bin low, lr bin high, mean accuracy, configurations]."""
    width = ctx.options.lr_bin_decades
    cells: dict[tuple[int, int], list[float]] = defaultdict(list)
    for p in pool:
        cells[(p.batch_size, ctx.lr_bin(p))].append(p.accuracy)
    return [
        [size, 10 ** (b * width), 10 ** ((b + 1) * width), float(np.mean(v)), len(v)]
        for (size, b), v in sorted(cells.items())
    ]
