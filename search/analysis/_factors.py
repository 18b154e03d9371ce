"""Settings compared level against level at matched learning rates: weight initialization (with
BN vs without: the interaction) and ghost batch normalization."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from search.analysis import _stats
from search.analysis._common import (
    Comparison,
    Context,
    ci_pts,
    compare,
    decisive,
    difference_strength,
    finding,
    init_bn_verdict,
    pts,
)
from search.analysis._models import Finding, Practice, Strength
from search.analysis._records import Point

_REFERENCE_INIT = "kaiming"


def _accuracy(point: Point) -> float:
    return point.accuracy


def _init(point: Point) -> str:
    return str(point.settings["init"])


# --- initialization -------------------------------------------------------------------------------


def _init_effects(
    ctx: Context, points: list[Point], inits: list[str], reference: str, tag: str
) -> dict[str, Comparison]:
    stratum = ctx.matching("init")
    base = [p for p in points if _init(p) == reference]
    return {
        i: compare(
            ctx,
            f"init:{tag}:{i}",
            (i, reference),
            ([p for p in points if _init(p) == i], base),
            _accuracy,
            stratum,
        )
        for i in inits
        if i != reference
    }


def initialization_finding(ctx: Context) -> Finding:
    """How much switching init moves accuracy with BN and without, and BN's share of it."""
    opts = ctx.options
    counts = Counter(_init(p) for p in ctx.data.points)
    inits = sorted(counts)
    unit = "accuracy (fraction)"
    if len(inits) < 2:
        return finding(
            Practice.INITIALIZATION,
            f"only one initialization ({', '.join(inits) or 'none'}) has finished trials",
            Strength.INSUFFICIENT_DATA,
            {"estimate": None, "unit": unit, "compared": None},
        )
    reference = _REFERENCE_INIT if _REFERENCE_INIT in counts else counts.most_common(1)[0][0]
    with_bn = _init_effects(ctx, [p for p in ctx.data.points if p.has_bn], inits, reference, "bn")
    without = _init_effects(
        ctx, [p for p in ctx.data.points if not p.has_bn], inits, reference, "none"
    )
    has_none = any(not p.has_bn for p in ctx.data.points)
    # Headline: the init that matters most where it should matter most (without BN, if tried).
    lead = without if has_none else with_bn
    other = max(lead, key=lambda i: abs(np.nan_to_num(lead[i].estimate)))
    bn, nobn = with_bn[other], without[other]
    plot = {
        "kind": "init_bn",
        "reference": reference,
        "effects": [
            [i, label, c.estimate, *(c.ci95 or (None, None))]
            for label, effects in (("with BN", with_bn), ("without BN", without))
            for i, c in effects.items()
            if min(c.n_a, c.n_b) > 0
        ],
    }
    effect: dict[str, Any] = {
        "reference": reference,
        "unit": unit,
        "margin": opts.practical_margin,
        "with_bn": {i: c.as_dict() for i, c in with_bn.items()},
        "without_bn": {i: c.as_dict() for i, c in without.items()},
    }
    switch = f"{other} instead of {reference}"
    bn_strength = bn.strength(opts.practical_margin, opts.min_points)
    if not has_none:
        effect |= {"compared": f"({other} - {reference}) with BN", "estimate": bn.estimate}
        verdict = (
            f"with BN, {switch} changes accuracy by {pts(bn.estimate)} ({ci_pts(bn.ci95)}) at "
            "matched learning rates; no runs without BN to show whether BN reduces the "
            "dependence on initialization"
        )
        return finding(
            Practice.INITIALIZATION, verdict, bn_strength, effect, bn.ci95, bn.n_a + bn.n_b, plot
        )
    interaction = float(bn.estimate - nobn.estimate)
    nobn_strength = nobn.strength(opts.practical_margin, opts.min_points)
    if Strength.INSUFFICIENT_DATA in (bn_strength, nobn_strength):
        ci, strength = None, Strength.INSUFFICIENT_DATA
    else:
        ci = _stats.percentile_interval(bn.replicates - nobn.replicates)
        strength = difference_strength(ci, opts.practical_margin)
    effect |= {
        "compared": f"({other} - {reference}) with BN - ({other} - {reference}) without BN",
        "estimate": interaction,
    }
    both = (
        f"{switch} changes accuracy by {pts(nobn.estimate)} without BN ({ci_pts(nobn.ci95)}) "
        f"and by {pts(bn.estimate)} with BN ({ci_pts(bn.ci95)}) at matched learning rates"
    )
    said = f"{pts(interaction)}, {ci_pts(ci)}"
    if strength is Strength.INSUFFICIENT_DATA:
        verdict = (
            f"too few configurations per initialization with and without BN at shared learning "
            f"rates (need {opts.min_points} each): {both}"
        )
    else:
        verdict = init_bn_verdict(both, said, strength, abs(bn.estimate) < abs(nobn.estimate))
    return finding(
        Practice.INITIALIZATION,
        verdict,
        strength,
        effect,
        ci,
        bn.n_a + bn.n_b + nobn.n_a + nobn.n_b,
        plot,
    )


# --- ghost_bn -------------------------------------------------------------------------------------


def ghost_bn_finding(ctx: Context) -> Finding:
    """Ghost batches on vs plain BN, at matched learning rates (BN configurations only)."""
    opts = ctx.options
    bn = [p for p in ctx.data.points if p.has_bn]
    on = [p for p in bn if p.ghost]
    off = [p for p in bn if not p.ghost]
    c = compare(
        ctx, "ghost_bn", ("ghost", "plain"), (on, off), _accuracy, ctx.matching("ghost_batch_size")
    )
    strength = c.strength(opts.practical_margin, opts.min_points)
    sizes = sorted({int(p.settings["ghost_batch_size"]) for p in on})
    said = f"{pts(c.estimate)}, {ci_pts(c.ci95)}"
    if strength is Strength.INSUFFICIENT_DATA:
        verdict = (
            f"too few BN configurations with and without ghost batches at shared learning rates "
            f"({len(on)} ghost, {len(off)} plain; need {opts.min_points} each)"
        )
    elif decisive(strength):
        better = "better" if c.estimate > 0 else "worse"
        verdict = (
            f"ghost batches (statistics over {', '.join(map(str, sizes))}-sample virtual "
            f"batches) did {better} than plain BN at matched learning rates ({said})"
        )
    elif strength is Strength.NO_CLEAR_WINNER:
        verdict = f"ghost batches made no practical difference at matched learning rates ({said})"
    else:
        verdict = f"cannot tell whether ghost batches helped ({said})"
    effect = c.as_dict() | {
        "estimate": c.estimate,
        "unit": "accuracy (fraction)",
        "margin": opts.practical_margin,
        "ghost_batch_sizes": sizes,
    }
    plot = {
        "kind": "groups",
        "label": "validation accuracy",
        "groups": {"ghost": [p.accuracy for p in on], "plain": [p.accuracy for p in off]},
    }
    return finding(Practice.GHOST_BN, verdict, strength, effect, c.ci95, c.n_a + c.n_b, plot)
