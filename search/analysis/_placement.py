"""Placement: which BN placement gave better accuracy at the *same* learning rates.

Comparing group medians over whatever learning rates the sampler tried measures the sampler. Here
every pair of placements is compared within learning-rate bins (and levels of the other varied
categorical settings) where both were tried; pruned runs count at the epoch they reached, and the
verdict is checked against the same comparison without them.
"""

from __future__ import annotations

from itertools import combinations
from typing import Any

import numpy as np

from models.config import Placement
from search.analysis._common import (
    Comparison,
    Context,
    by_setting,
    ci_pts,
    compare,
    decisive,
    finding,
    lr_text,
    pts,
    scatter,
    smoothed_curve,
)
from search.analysis._models import Finding, Practice, Strength
from search.analysis._records import Point

BEFORE = Placement.BEFORE_ACTIVATION.value
AFTER = Placement.AFTER_ACTIVATION.value
NONE = Placement.NONE.value
_ORDER = [p.value for p in Placement]


def placement_groups(points: tuple[Point, ...]) -> dict[str, list[Point]]:
    """Points by placement, in the order ``Placement`` declares them."""
    groups = by_setting(points, lambda p: p.placement)
    return {k: groups[k] for k in sorted(groups, key=_ORDER.index)}


def _accuracy(point: Point) -> float:
    return point.accuracy


def _conclusion(comparison: Comparison, strength: Strength) -> str:
    if decisive(strength):
        return "a" if comparison.estimate > 0 else "b"
    return "none" if strength is Strength.NO_CLEAR_WINNER else "open"


def _article(top: str, runner: str, strength: Strength) -> str:
    if {top, runner} == {BEFORE, AFTER}:
        if not decisive(strength):
            return (
                "; the article's advice to place BN before the activation made no measurable "
                "difference here"
            )
        if top == BEFORE:
            return "; as the article advises (BN before the activation)"
        return "; this contradicts the article's advice to place BN before the activation"
    if top == NONE and decisive(strength):
        return "; runs without BN did better: BN did not help this model, contrary to the article"
    return ""


def _headline(c: Comparison, strength: Strength, ctx: Context) -> str:
    margin = 100 * ctx.options.practical_margin
    if strength is Strength.INSUFFICIENT_DATA:
        return (
            f"not enough data to compare {c.a} and {c.b} at matched learning rates (need "
            f"{ctx.options.min_points} configurations each with a neighbour of the other within "
            f"{2 * ctx.options.smoothing_decades:g} decades of learning rate; have "
            f"{c.matched_a} and {c.matched_b})"
        )
    if decisive(strength):
        return (
            f"{c.a} did better than {c.b} at matched learning rates: {pts(c.estimate)} "
            f"({ci_pts(c.ci95)}; {c.matched_a} and {c.matched_b} configurations matched)"
        )
    if strength is Strength.NO_CLEAR_WINNER:
        return (
            f"no clear winner: at matched learning rates {c.a} and {c.b} differ by "
            f"{pts(c.estimate)} ({ci_pts(c.ci95)}), inside the ±{margin:g}-point practical margin"
        )
    return (
        f"no clear winner: at matched learning rates {c.a} leads {c.b} by {pts(c.estimate)}, "
        f"but the interval ({ci_pts(c.ci95)}) allows no difference"
    )


def placement_finding(ctx: Context) -> Finding:
    """Each pair of placements at matched learning rates; the headline is best vs runner-up."""
    opts = ctx.options
    groups = placement_groups(ctx.data.points)
    stratum = ctx.matching("bn_placement")
    plot = {"kind": "placement", "points": {k: scatter(g) for k, g in groups.items()}}
    if len(groups) < 2:
        return finding(
            Practice.PLACEMENT,
            f"only one placement ({', '.join(groups) or 'none'}) has finished trials",
            Strength.INSUFFICIENT_DATA,
            {"estimate": None, "unit": "accuracy", "compared": None},
            plot=plot,
        )
    pairs = {
        (a, b): compare(
            ctx, f"placement:{a}:{b}", (a, b), (groups[a], groups[b]), _accuracy, stratum
        )
        for a, b in combinations(groups, 2)
    }
    ranking = sorted(groups, key=lambda k: -_score(k, pairs))
    top, runner = ranking[:2]
    head = pairs[(top, runner)] if (top, runner) in pairs else pairs[(runner, top)].flipped()
    strength = head.strength(opts.practical_margin, opts.min_points)
    verdict = _headline(head, strength, ctx) + _article(top, runner, strength)

    pruned = {k: sum(p.pruned for p in g) for k, g in groups.items()}
    without_pruned: dict[str, Any] | None = None
    if pruned[top] + pruned[runner]:
        complete = placement_groups(ctx.data.complete_points)
        alt = compare(
            ctx,
            f"placement-complete:{top}:{runner}",
            (top, runner),
            (complete.get(top, []), complete.get(runner, [])),
            _accuracy,
            stratum,
        )
        alt_strength = alt.strength(opts.practical_margin, opts.min_points)
        without_pruned = {"estimate": alt.estimate, "ci95": alt.ci95, "strength": alt_strength}
        verdict += f"; {pruned[top] + pruned[runner]} pruned runs count at the epoch they reached"
        if strength is not Strength.INSUFFICIENT_DATA and _conclusion(
            head, strength
        ) != _conclusion(alt, alt_strength):
            strength = Strength.WEAK
            verdict += (
                f", and the conclusion depends on them: without pruned runs "
                f"{pts(alt.estimate)} ({ci_pts(alt.ci95)}), so the evidence is weak"
            )
    others = [c for key, c in pairs.items() if set(key) != {top, runner}]
    if others:
        verdict += "; " + "; ".join(
            f"{c.a} vs {c.b}: {pts(c.estimate)} ({ci_pts(c.ci95)})" for c in others
        )

    curves = {}
    best = {}
    for k, g in groups.items():
        x = np.array([p.log_lr for p in g])
        if len(g) >= opts.min_curve_points and np.ptp(x) > 0:
            grid, smooth = smoothed_curve(
                x, np.array([p.accuracy for p in g]), opts.smoothing_decades
            )
            curves[k] = {"lr": 10**grid, "accuracy": smooth}
            i = int(np.nanargmax(smooth))
            best[k] = {"learning_rate": 10 ** grid[i], "accuracy": smooth[i]}
    plot["curves"] = curves
    effect = {
        "compared": f"{top} - {runner}",
        "estimate": head.estimate,
        "unit": "accuracy (fraction)",
        "margin": opts.practical_margin,
        "ranking": ranking,
        "pairs": [c.as_dict() for c in pairs.values()],
        "configurations": {k: len(g) for k, g in groups.items()},
        "pruned_included": pruned,
        "without_pruned": without_pruned,
        "matched_on": ["learning rate", *ctx.matching_keys("bn_placement")],
        "matching_decades": opts.smoothing_decades,
        "smoothed_best": best,
    }
    if best:
        verdict += "; smoothed best learning rate " + ", ".join(
            f"{k} {lr_text(float(np.log10(b['learning_rate'])))}" for k, b in best.items()
        )
    return finding(
        Practice.PLACEMENT,
        verdict,
        strength,
        effect,
        head.ci95,
        sample_size=head.n_a + head.n_b,
        plot=plot,
    )


def _score(name: str, pairs: dict[tuple[str, str], Comparison]) -> float:
    """A placement's mean matched difference against the others (0 if none is defined)."""
    signed = [
        c.estimate if a == name else -c.estimate
        for (a, b), c in pairs.items()
        if name in (a, b) and np.isfinite(c.estimate)
    ]
    return float(np.mean(signed)) if signed else 0.0
