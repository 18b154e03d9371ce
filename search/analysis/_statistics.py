"""BN's running statistics: evaluation with them, their momentum, and precise BN.

Training normalizes with each batch's own statistics; the running averages (set by bn_momentum,
or recomputed by precise BN) are used only at evaluation. Every trial measures test accuracy both
ways, so per trial: running = batch + gap. bn_momentum and precise BN cannot change the trained
weights, hence cannot change batch-statistics accuracy: any association with it is the sampler's
doing (it paired them with other settings), and their real effect is the one on the gap.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from search.analysis import _stats
from search.analysis._common import (
    Context,
    ci_pts,
    compare,
    decisive,
    difference_strength,
    eval_statistics_verdict,
    finding,
    pts,
)
from search.analysis._models import Finding, Practice, Strength
from search.analysis._records import Point

_NEEDS = (
    "needs complete trials with BN that trained and report test accuracy with running and with "
    "batch statistics"
)


def _paired(ctx: Context) -> list[Point]:
    """BN configurations that trained and measured both kinds of test accuracy."""
    return [p for p in ctx.data.points if p.has_bn and p.trained >= 0.5 and p.gap is not None]


def _gap(point: Point) -> float | None:
    return point.gap


# --- eval_statistics ------------------------------------------------------------------------------


def eval_statistics_finding(ctx: Context) -> Finding:
    """Running vs batch statistics test accuracy, paired per configuration."""
    opts = ctx.options
    points = _paired(ctx)
    plot = {
        "kind": "eval_pairs",
        "points": [
            [p.test_batch, p.test_running, p.settings["bn_momentum"], p.placement] for p in points
        ],
    }
    if len(points) < opts.min_points:
        return finding(
            Practice.EVAL_STATISTICS,
            f"only {len(points)} configuration(s) to judge evaluation statistics: {_NEEDS}",
            Strength.INSUFFICIENT_DATA,
            {"estimate": None, "unit": "accuracy (fraction)", "compared": "running - batch"},
            plot=plot,
        )
    gaps = np.array([p.gap for p in points], dtype=float)
    idx = _stats.resample(ctx.rng("eval_statistics"), gaps.size, opts.n_bootstrap)
    mean = float(gaps.mean())
    ci = _stats.percentile_interval(gaps[idx].mean(axis=1))
    strength = difference_strength(ci, opts.practical_margin)
    by_placement: dict[str, list[float]] = {}
    for p, g in zip(points, gaps.tolist(), strict=True):
        by_placement.setdefault(p.placement, []).append(g)
    said = f"{pts(mean)}, {ci_pts(ci)}"
    verdict = eval_statistics_verdict(said, strength, mean, opts.practical_margin)
    effect = {
        "compared": "test accuracy with running statistics - with batch statistics",
        "estimate": mean,
        "unit": "accuracy (fraction)",
        "margin": opts.practical_margin,
        "by_placement": {k: float(np.mean(v)) for k, v in by_placement.items()},
        "worst": float(gaps.min()),
        "configurations": len(points),
    }
    return finding(Practice.EVAL_STATISTICS, verdict, strength, effect, ci, len(points), plot)


# --- bn_momentum ----------------------------------------------------------------------------------


def _design(points: list[Point], ctx: Context) -> tuple[_stats.Array, list[str]]:
    """Columns: intercept, log10 bn_momentum, then the covariates the sample size allows."""
    n = len(points)
    lm = np.log10([float(p.settings["bn_momentum"]) for p in points])
    llr = np.array([p.log_lr for p in points])
    columns = [np.ones(n), lm]
    names = ["log10 learning rate", "log10 learning rate squared"]
    used: list[str] = []
    if np.ptp(llr) > 0:
        columns.append(llr - llr.mean())
        used.append(names[0])
        if n >= ctx.options.min_trend_points + 2:
            columns.append((llr - llr.mean()) ** 2)
            used.append(names[1])
    placements = sorted({p.placement for p in points})
    for extra in placements[1:]:
        if n >= len(columns) + 4:
            columns.append(np.array([p.placement == extra for p in points], dtype=float))
            used.append(f"placement {extra}")
    return np.column_stack(columns), used


def bn_momentum_finding(ctx: Context) -> Finding:
    """bn_momentum's effect through the running statistics, separated from sampler artefacts."""
    opts = ctx.options
    points = _paired(ctx)
    plot = {
        "kind": "bn_momentum",
        "points": [[p.settings["bn_momentum"], p.test_running, p.test_batch] for p in points],
    }
    unit = "accuracy (fraction) per decade of bn_momentum"
    momenta = {float(p.settings["bn_momentum"]) for p in points}
    if len(points) < opts.min_trend_points or len(momenta) < 3:
        return finding(
            Practice.BN_MOMENTUM,
            f"{len(points)} configuration(s) over {len(momenta)} bn_momentum value(s): a trend "
            f"{_NEEDS}, at least {opts.min_trend_points} over 3+ values",
            Strength.INSUFFICIENT_DATA,
            {"estimate": None, "unit": unit, "compared": None},
            plot=plot,
        )
    design, adjusted_for = _design(points, ctx)
    outcomes = np.array([[p.test_running, p.test_batch, p.gap] for p in points], dtype=float)
    identity = np.arange(len(points), dtype=np.int64)[None, :]
    idx = np.vstack(
        [identity, _stats.resample(ctx.rng("bn_momentum"), len(points), opts.n_bootstrap)]
    )
    # Adjusted for the covariates: the gap's slope is bn_momentum's effect (staleness).
    gap = _stats.least_squares(design, outcomes[:, 2:], idx)[:, 1, 0]
    # Unadjusted, as a plain correlation sees it: running = batch + gap, slope by slope.
    plain = _stats.least_squares(design[:, :2], outcomes[:, :2], idx)[:, 1, :]
    summary: dict[str, dict[str, Any]] = {
        name: {"estimate": float(values[0]), "ci95": _stats.percentile_interval(values[1:])}
        for name, values in (
            ("staleness", gap),
            ("running", plain[:, 0]),
            ("artefact", plain[:, 1]),
        )
    }
    strength = difference_strength(summary["staleness"]["ci95"], opts.practical_margin)
    verdict = _momentum_verdict(summary, strength, ctx)
    if all(p.precise for p in points):
        verdict += (
            "; every run used precise BN, which recomputes the running statistics before "
            "evaluation, so bn_momentum cannot matter here"
        )
    effect: dict[str, Any] = {
        "compared": "d(running - batch statistics accuracy) / d log10(bn_momentum)",
        "estimate": summary["staleness"]["estimate"],
        "unit": unit,
        "margin": opts.practical_margin,
        "adjusted_for": adjusted_for,
        "unadjusted_running_accuracy": summary["running"],
        "sampler_artefact": summary["artefact"],
        "configurations": len(points),
    }
    ci = summary["staleness"]["ci95"]
    return finding(Practice.BN_MOMENTUM, verdict, strength, effect, ci, len(points), plot)


def _per_decade(summary: dict[str, Any]) -> str:
    return f"{pts(summary['estimate'])} per decade, {ci_pts(summary['ci95'])}"


def _momentum_verdict(summary: dict[str, dict[str, Any]], strength: Strength, ctx: Context) -> str:
    margin = f"±{100 * ctx.options.practical_margin:g} point"
    staleness = _per_decade(summary["staleness"])
    rising = summary["staleness"]["estimate"] > 0
    parts = [
        "bn_momentum (the weight of each new batch in the running averages) does not enter "
        "training, which normalizes with batch statistics; it acts only on the running "
        "statistics used at evaluation"
    ]
    if decisive(strength) and rising:
        parts.append(
            f"raising it by a decade raises running-statistics accuracy ({staleness}): at small "
            "bn_momentum the running averages go stale, so raise it or use precise BN"
        )
    elif decisive(strength):
        parts.append(
            f"raising it by a decade lowers running-statistics accuracy ({staleness}): averages "
            "over fewer batches are noisier, so lower it"
        )
    elif strength is Strength.NO_CLEAR_WINNER:
        parts.append(
            f"over the range searched its effect stays within {margin} per decade ({staleness})"
        )
    else:
        parts.append(f"its effect on running-statistics accuracy is unclear ({staleness})")
    artefact = summary["artefact"]
    artefact_strength = difference_strength(artefact["ci95"], ctx.options.practical_margin)
    if decisive(artefact_strength):
        parts.append(
            f"a plain correlation would credit it with {_per_decade(summary['running'])} of "
            f"running-statistics accuracy, but {_per_decade(artefact)} of that shows on "
            "batch-statistics accuracy, which bn_momentum cannot change: the sampler's doing "
            "(it paired bn_momentum with other settings)"
        )
    elif artefact_strength is Strength.NO_CLEAR_WINNER:
        parts.append(
            f"batch-statistics accuracy does not move with it ({_per_decade(artefact)}): no "
            "sign of the regularizing effect the article ascribes to BN momentum"
        )
    else:
        parts.append(
            f"its association with batch-statistics accuracy, which it cannot change, is "
            f"{_per_decade(artefact)}: too uncertain to rule out a sampler artefact"
        )
    return "; ".join(parts)


# --- precise_bn -----------------------------------------------------------------------------------


def precise_bn_finding(ctx: Context) -> Finding:
    """Precise BN on vs off, read on the running-vs-batch gap (its only lever) at matched lr."""
    opts = ctx.options
    points = _paired(ctx)
    on = [p for p in points if p.precise]
    off = [p for p in points if not p.precise]
    comparison = compare(
        ctx, "precise_bn", ("on", "off"), (on, off), _gap, ctx.matching("precise_bn")
    )
    strength = comparison.strength(opts.practical_margin, opts.min_points)
    d = comparison.estimate
    said = f"{pts(d)}, {ci_pts(comparison.ci95)}" if math.isfinite(d) else "never matched"
    if strength is Strength.INSUFFICIENT_DATA:
        verdict = (
            f"too few configurations with and without precise BN at shared learning rates "
            f"({len(on)} on, {len(off)} off): the comparison {_NEEDS}"
        )
    elif decisive(strength) and d > 0:
        verdict = (
            f"precise BN raised running-statistics accuracy at matched learning rates ({said}): "
            "it replaces the lagging running averages with a true average before evaluation"
        )
    elif decisive(strength):
        verdict = (
            f"precise BN lowered running-statistics accuracy at matched learning rates ({said}): "
            "its few recomputation batches may be too few"
        )
    elif strength is Strength.NO_CLEAR_WINNER:
        verdict = (
            f"precise BN made no practical difference ({said}): the running averages were sound"
        )
    else:
        verdict = f"cannot tell whether precise BN helped ({said})"
    effect = comparison.as_dict() | {
        "estimate": d,
        "unit": "accuracy (fraction), via running - batch statistics",
        "margin": opts.practical_margin,
        "batches": sorted({int(p.settings["precise_bn_batches"]) for p in on}),
    }
    plot = {
        "kind": "groups",
        "label": "running - batch statistics test accuracy",
        "groups": {"on": [p.gap for p in on], "off": [p.gap for p in off]},
    }
    return finding(
        Practice.PRECISE_BN,
        verdict,
        strength,
        effect,
        comparison.ci95,
        comparison.n_a + comparison.n_b,
        plot,
    )
