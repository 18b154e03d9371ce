"""Placement: which BN placement gave better accuracy at the *same* learning rates.

Comparing group medians over whatever learning rates the sampler tried measures the sampler. Here
every pair of placements is compared where both were tried at similar learning rates (and equal
levels of the other varied categorical settings); runs that failed to train count at their
chance-level accuracy, pruned runs at the epoch they reached, and the verdict is checked against
the same comparison without the pruned runs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable
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


def article_note(top: str, runner: str, strength: Strength, where: str = "here") -> str:
    """What the placement finding says of the article's advice (BN before the activation)."""
    if {top, runner} == {BEFORE, AFTER}:
        if not decisive(strength):
            return (
                "; the article's advice to place BN before the activation made no measurable "
                f"difference {where}"
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
    key = ctx.matching("bn_placement")
    plot: dict[str, Any] = {
        "kind": "placement",
        "points": {k: scatter(g) for k, g in groups.items()},
    }
    if len(groups) < 2:
        return finding(
            Practice.PLACEMENT,
            f"only one placement ({', '.join(groups) or 'none'}) has finished trials",
            Strength.INSUFFICIENT_DATA,
            {"estimate": None, "unit": "accuracy", "compared": None},
            plot=plot,
        )
    pairs = {
        (a, b): compare(ctx, f"placement:{a}:{b}", (a, b), (groups[a], groups[b]), _accuracy, key)
        for a, b in combinations(groups, 2)
    }
    ranking = sorted(groups, key=lambda k: -_score(k, pairs))
    top, runner = ranking[:2]
    head = pairs[(top, runner)] if (top, runner) in pairs else pairs[(runner, top)].flipped()
    strength = head.strength(opts.practical_margin, opts.min_points)
    pruned = {k: sum(p.pruned for p in g) for k, g in groups.items()}
    without_pruned: dict[str, Any] | None = None
    if not any(p.trained for p in groups[top] + groups[runner]):
        strength = Strength.INSUFFICIENT_DATA
        verdict = f"no configuration of {top} or {runner} trained: nothing to compare"
    else:
        verdict = _headline(head, strength, ctx) + article_note(top, runner, strength)
        if pruned[top] + pruned[runner]:
            alt = _without_pruned(ctx, head, key)
            alt_strength = alt.strength(opts.practical_margin, opts.min_points)
            without_pruned = {"estimate": alt.estimate, "ci95": alt.ci95, "strength": alt_strength}
            verdict += (
                f"; {pruned[top] + pruned[runner]} pruned runs count at the epoch they reached"
            )
            if strength is not Strength.INSUFFICIENT_DATA and _conclusion(
                head, strength
            ) != _conclusion(alt, alt_strength):
                strength = Strength.WEAK
                verdict += (
                    f", and the conclusion depends on them: without pruned runs "
                    f"{pts(alt.estimate)} ({ci_pts(alt.ci95)}), so the evidence is weak"
                )
    others = [c for pair, c in pairs.items() if set(pair) != {top, runner}]
    if others:
        verdict += "; " + "; ".join(
            f"{c.a} vs {c.b}: "
            + (
                f"{pts(c.estimate)} ({ci_pts(c.ci95)})"
                if math.isfinite(c.estimate)
                else "never matched"
            )
            for c in others
        )
    plot["curves"], best = _curves(groups, ctx)
    if best:
        verdict += "; smoothed best learning rate " + ", ".join(
            f"{k} {lr_text(float(np.log10(b['learning_rate'])))}" for k, b in best.items()
        )
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
    return finding(
        Practice.PLACEMENT,
        verdict,
        strength,
        effect,
        head.ci95,
        sample_size=head.n_a + head.n_b,
        plot=plot,
    )


def _without_pruned(ctx: Context, head: Comparison, key: Callable[[Point], Hashable]) -> Comparison:
    """The headline comparison again, on complete runs only."""
    complete = placement_groups(ctx.data.complete_points)
    return compare(
        ctx,
        f"placement-complete:{head.a}:{head.b}",
        (head.a, head.b),
        (complete.get(head.a, []), complete.get(head.b, [])),
        _accuracy,
        key,
    )


def _curves(
    groups: dict[str, list[Point]], ctx: Context
) -> tuple[dict[str, Any], dict[str, dict[str, float]]]:
    """Kernel-smoothed accuracy over learning rate per placement, and where each peaks."""
    curves: dict[str, Any] = {}
    best: dict[str, dict[str, float]] = {}
    for k, g in groups.items():
        x = np.array([p.log_lr for p in g])
        if len(g) < ctx.options.min_curve_points or np.ptp(x) == 0:
            continue
        y = np.array([p.accuracy for p in g])
        grid, smooth = smoothed_curve(x, y, ctx.options.smoothing_decades)
        curves[k] = {"lr": 10**grid, "accuracy": smooth}
        i = int(np.nanargmax(smooth))
        best[k] = {"learning_rate": float(10 ** grid[i]), "accuracy": float(smooth[i])}
    return curves, best


def _score(name: str, pairs: dict[tuple[str, str], Comparison]) -> float:
    """A placement's mean matched difference against the others (0 if none is defined)."""
    signed = [
        c.estimate if a == name else -c.estimate
        for (a, b), c in pairs.items()
        if name in (a, b) and np.isfinite(c.estimate)
    ]
    return float(np.mean(signed)) if signed else 0.0
