"""The entry point: a study's trials and spec in, a report of findings and caveats out."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from itertools import combinations

import numpy as np
from optuna.trial import FrozenTrial, TrialState

from search.analysis import _stats
from search.analysis._common import Context, by_setting, lr_text
from search.analysis._factors import ghost_bn_finding, initialization_finding
from search.analysis._models import AnalysisOptions, Finding, StudyReport
from search.analysis._placement import placement_finding
from search.analysis._records import Point, read_study
from search.analysis._scaling import scaling_finding
from search.analysis._stability import stability_finding
from search.analysis._statistics import (
    bn_momentum_finding,
    eval_statistics_finding,
    precise_bn_finding,
)
from search.spec import StudySpec

OBSERVATIONAL = (
    "this is observational data from an adaptive sampler: it can suggest, not prove, which BN "
    "practice mattered; confirm with `bnsweep confirm`"
)

# Categorical settings whose groups the findings compare, with how to read a point's group.
_GROUPINGS: dict[str, tuple[str, Callable[[Point], str]]] = {
    "bn_placement": ("placement", lambda p: p.placement),
    "init": ("initialization", lambda p: str(p.settings["init"])),
    "ghost_batch_size": ("ghost batches", lambda p: "on" if p.ghost else "off"),
    "precise_bn": ("precise BN", lambda p: "on" if p.precise else "off"),
}


def analyze_study(
    trials: Sequence[FrozenTrial], spec: StudySpec, options: AnalysisOptions | None = None
) -> StudyReport:
    """Findings for every BN practice the study varied or measured, with the caveats.

    Args:
        trials: all of the study's trials, in any state.
        spec: the study's spec (which settings were searched, the objective).
        options: thresholds, margins and the bootstrap seed; defaults are documented on the model.
    """
    options = options or AnalysisOptions()
    data = read_study(trials, spec, options)
    varied = frozenset(spec.search_space.searched())
    ctx = Context(data, options, varied)
    lr_varies = "learning_rate" in varied or len({p.log_lr for p in data.points}) >= 3
    planned: list[tuple[bool, Callable[[Context], Finding]]] = [
        ("bn_placement" in varied, placement_finding),
        (lr_varies, stability_finding),
        ("batch_size" in varied and lr_varies, scaling_finding),
        ("bn_momentum" in varied, bn_momentum_finding),
        (any(p.has_bn for p in data.points), eval_statistics_finding),
        ("init" in varied, initialization_finding),
        ("ghost_batch_size" in varied, ghost_bn_finding),
        ("precise_bn" in varied, precise_bn_finding),
    ]
    return StudyReport(
        study_name=spec.name,
        objective_metric=spec.objective.metric.value,
        direction=spec.directions[0],
        metric=data.metric,
        counts=data.counts,
        thresholds=data.thresholds,
        options=options,
        findings=[build(ctx) for wanted, build in planned if wanted],
        warnings=_warnings(ctx, trials, spec),
    )


# --- warnings -------------------------------------------------------------------------------------


def _warnings(ctx: Context, trials: Sequence[FrozenTrial], spec: StudySpec) -> list[str]:
    data = ctx.data
    out = [OBSERVATIONAL]
    if spec.objective.metric.value != data.metric:
        out.append(
            f"the study optimised {spec.objective.metric.value}; these findings compare "
            f"{data.metric}"
        )
    for setting, (name, key) in _GROUPINGS.items():
        if setting in ctx.varied:
            out += _sampler_balance(ctx, name, by_setting(data.points, key))
    if "bn_placement" in ctx.varied:
        out += _pruning_balance(ctx)
    if data.counts.collapsed:
        out.append(
            f"{data.counts.collapsed} trial(s) repeated the settings of another "
            f"({data.repeats_same_seed} with the same seed, {data.repeats_other_seed} with "
            "another): each configuration counts once, at its mean, so repeats do not tighten "
            "the intervals"
        )
    seeds = {r.settings.get("seed") for r in data.records}
    if len(seeds) == 1:
        out.append(
            f"every trial used seed {next(iter(seeds))}: run-to-run noise is unmeasured, so a "
            "difference of a point or two between single runs may be noise"
        )
    out += _validation_set(ctx)
    if data.thresholds.num_classes is None:
        out.append(
            "the number of classes is unknown (older trials lack num_classes; set "
            "AnalysisOptions.num_classes): runs that end at chance level count as trained"
        )
    failed = Counter(
        str(t.user_attrs.get("status", "unknown")) for t in trials if t.state is TrialState.FAIL
    )
    if failed:
        listed = ", ".join(f"{k}: {n}" for k, n in sorted(failed.items()))
        out.append(f"{sum(failed.values())} failed trial(s) are left out ({listed})")
    if data.unreadable:
        out.append(
            f"{data.unreadable} finished trial(s) lack a usable train_config or accuracy and are "
            "left out"
        )
    return out


def _sampler_balance(ctx: Context, name: str, groups: dict[str, list[Point]]) -> list[str]:
    """Warn where the sampler gave groups different learning rates or very different counts."""
    opts = ctx.options
    out = []
    sized = {k: g for k, g in sorted(groups.items()) if len(g) >= opts.min_points}
    for a, b in combinations(sized, 2):
        xa = np.array([p.log_lr for p in sized[a]])
        xb = np.array([p.log_lr for p in sized[b]])
        _, p = _stats.ks_two_sample(xa, xb)
        if p < opts.warning_p:
            out.append(
                f"the sampler gave {name} {a} and {b} different learning rates (median "
                f"{lr_text(float(np.median(xa)))} over {xa.size} configurations vs "
                f"{lr_text(float(np.median(xb)))} over {xb.size}; two-sample KS p = {p:.2g}): "
                "their raw summaries are confounded with the learning rate, so the findings "
                "compare them at matched learning rates"
            )
    sizes = {k: len(g) for k, g in groups.items()}
    if len(sizes) >= 2 and max(sizes.values()) >= opts.imbalance_ratio * min(sizes.values()):
        listed = ", ".join(f"{k}: {n}" for k, n in sorted(sizes.items()))
        out.append(f"the sampler tried {name} values unevenly ({listed} configurations)")
    return out


def _pruning_balance(ctx: Context) -> list[str]:
    """Warn where the pruner stopped one placement's runs more often than another's."""
    runs = Counter(str(r.settings["bn_placement"]) for r in ctx.data.records)
    pruned = Counter(str(r.settings["bn_placement"]) for r in ctx.data.records if r.pruned)
    if not pruned:
        return []
    out = []
    for a, b in combinations(sorted(runs), 2):
        if pruned[a] / runs[a] < pruned[b] / runs[b]:
            a, b = b, a
        p = _stats.two_proportion_p(pruned[a], runs[a], pruned[b], runs[b])
        if p < ctx.options.warning_p:
            out.append(
                f"the pruner stopped placement {a} more often than {b} "
                f"({pruned[a]}/{runs[a]} vs {pruned[b]}/{runs[b]} runs): pruned runs count at "
                "the epoch they reached, which understates them"
            )
    return out


def _validation_set(ctx: Context) -> list[str]:
    t, opts = ctx.data.thresholds, ctx.options
    if t.val_size is None:
        return [
            "the validation-set size is unknown (set AnalysisOptions.val_size): the chance "
            "threshold uses its floor and single-run noise cannot be stated"
        ]
    trained = [p.accuracy for p in ctx.data.points if p.trained >= 0.5]
    level = float(np.median(trained)) if trained else 0.9
    se = math.sqrt(level * (1 - level) / t.val_size)
    if 2 * se <= opts.practical_margin:
        return []
    how = " (inferred from the accuracies)" if t.val_size_inferred else ""
    return [
        f"the validation set has {t.val_size} samples{how}: one run's accuracy near "
        f"{100 * level:.0f}% has a standard error of ±{100 * se:.1f} points, more than half the "
        f"±{100 * opts.practical_margin:g}-point margin"
    ]
