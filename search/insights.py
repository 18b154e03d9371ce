"""Why a configuration won: which BN practice mattered on this model, with the evidence.

Each finding compares finished trials (complete, incl. diverged ones at their defined value) along
one BN practice — placement, batch size × learning rate, BN momentum, evaluation-mode statistics,
ghost batches, precise BN — and says how strong the evidence is:

- group comparisons use the probability of superiority P(a random trial of the best group beats
  one of the runner-up), a rank measure that needs no distribution assumption;
- trends use Spearman's rank correlation.
Fewer than 3 trials per group (or 5 for a trend) is "insufficient data", never a verdict.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from optuna.trial import FrozenTrial, TrialState
from scipy.stats import spearmanr

from search.spec import Metric, StudySpec

MIN_GROUP = 3
MIN_TREND = 5
ACCURACY_METRICS = {Metric.VAL_ACCURACY, Metric.BEST_VAL_ACCURACY}


@dataclass(frozen=True)
class Finding:
    """One practice's verdict, how strong the evidence is, and the numbers behind it."""

    practice: str
    verdict: str
    strength: str  # strong | moderate | weak | insufficient data
    evidence: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class _Row:
    number: int
    score: float  # the primary objective, oriented so that higher is better
    value: float  # as Optuna stores it
    settings: dict[str, Any]  # sampled params plus the spec's fixed values
    status: str
    test_accuracy: float | None
    test_accuracy_batch_stats: float | None

    @property
    def lr(self) -> float:
        """The learning rate the optimizer used (after the linear scaling rule, if on)."""
        lr = float(self.settings["learning_rate"])
        if self.settings.get("lr_scaling"):
            lr *= self.settings["batch_size"] / 256
        return lr


# --- statistics ---------------------------------------------------------------------------------


def superiority(a: Iterable[float], b: Iterable[float]) -> float:
    """P(x > y) + P(x == y) / 2 for x from ``a``, y from ``b``."""
    xs, ys = np.asarray(list(a), float), np.asarray(list(b), float)
    greater = (xs[:, None] > ys[None, :]).mean()
    ties = (xs[:, None] == ys[None, :]).mean()
    return float(greater + ties / 2)


def _strength_of_superiority(p: float) -> str:
    return "strong" if p >= 0.8 else "moderate" if p >= 0.65 else "weak"


def _strength_of_rho(rho: float) -> str:
    r = abs(rho)
    return "strong" if r >= 0.5 else "moderate" if r >= 0.3 else "weak"


def _spearman(xs: list[float], ys: list[float]) -> tuple[float, float]:
    if len(set(xs)) < 2 or len(set(ys)) < 2:
        return 0.0, 1.0
    rho, p = spearmanr(xs, ys)
    return float(rho), float(p)


def _fmt(x: float) -> str:
    return f"{x:.4g}"


# --- the findings -------------------------------------------------------------------------------


def _compare_groups(
    rows: list[_Row], practice: str, key: Callable[[_Row], Any], label: str, unit: str
) -> Finding | None:
    """Which value of a categorical setting gave better trials."""
    groups: dict[Any, list[_Row]] = defaultdict(list)
    for r in rows:
        groups[key(r)].append(r)
    if len(groups) < 2:
        return None
    table = {
        str(k): {
            "trials": len(g),
            "median": float(np.median([r.value for r in g])),
            "best": max(g, key=lambda r: r.score).value,
            "diverged": sum(r.status == "diverged" for r in g),
        }
        for k, g in groups.items()
    }
    ranked = sorted(groups, key=lambda k: float(np.median([r.score for r in groups[k]])))[::-1]
    top, runner_up = ranked[0], ranked[1]
    if min(len(groups[top]), len(groups[runner_up])) < MIN_GROUP:
        return Finding(
            practice,
            f"not enough trials per {label} to compare",
            "insufficient data",
            {"groups": table},
        )
    p = superiority([r.score for r in groups[top]], [r.score for r in groups[runner_up]])
    diff = table[str(top)]["median"] - table[str(runner_up)]["median"]
    verdict = (
        f"{label} {top} did best: median {unit} {_fmt(table[str(top)]['median'])} vs "
        f"{_fmt(table[str(runner_up)]['median'])} for {runner_up} (difference {_fmt(diff)}); "
        f"a {top} trial beats a {runner_up} trial with probability {p:.2f}"
    )
    return Finding(
        practice,
        verdict,
        _strength_of_superiority(p),
        {"groups": table, "ranking": [str(k) for k in ranked], "probability_of_superiority": p},
    )


def _batch_size_vs_lr(rows: list[_Row]) -> Finding | None:
    """Does the best learning rate grow with batch size (linear scaling rule)?"""
    buckets: dict[int, list[_Row]] = defaultdict(list)
    for r in rows:
        buckets[2 ** round(math.log2(r.settings["batch_size"]))].append(r)
    if len(buckets) < 2 or len({r.lr for r in rows}) < 2:
        return None
    table = {}
    for bs, g in sorted(buckets.items()):
        best = max(g, key=lambda r: r.score)
        stable = [r.lr for r in g if r.status != "diverged"]
        table[str(bs)] = {
            "trials": len(g),
            "best_learning_rate": best.lr,
            "best_value": best.value,
            "largest_stable_learning_rate": max(stable) if stable else None,
            "diverged": sum(r.status == "diverged" for r in g),
        }
    usable = [(int(bs), t["best_learning_rate"]) for bs, t in table.items() if t["trials"] >= 2]
    evidence: dict[str, Any] = {"by_batch_size": table}
    if len(usable) < 3:
        return Finding(
            "batch_size_x_learning_rate",
            "need at least 3 batch sizes with 2+ trials each to fit the scaling",
            "insufficient data",
            evidence,
        )
    slope = float(np.polyfit(np.log([u[0] for u in usable]), np.log([u[1] for u in usable]), 1)[0])
    evidence["log_log_slope"] = slope
    if 0.75 <= slope <= 1.25:
        shape = "consistent with the linear scaling rule (lr ∝ batch size)"
    elif 0.25 <= slope < 0.75:
        shape = "closer to square-root scaling (lr ∝ √batch size)"
    elif slope < 0.25:
        shape = "the best learning rate does not grow with batch size"
    else:
        shape = "the best learning rate grows faster than batch size"
    n = sum(t["trials"] for t in table.values())
    strength = "strong" if n >= 20 and len(usable) >= 4 else "moderate" if n >= 10 else "weak"
    verdict = f"best learning rate vs batch size has log-log slope {slope:.2f}: {shape}"
    return Finding("batch_size_x_learning_rate", verdict, strength, evidence)


def _bn_momentum(rows: list[_Row]) -> Finding | None:
    """Does the BN momentum (running-statistics update rate) move the objective?"""
    bn = [r for r in rows if r.settings.get("bn_placement") != "none"]
    values = {r.settings["bn_momentum"] for r in bn}
    if len(values) < 2:
        return None
    if len(bn) < MIN_TREND:
        return Finding(
            "bn_momentum",
            "not enough trials with BN to see a trend",
            "insufficient data",
            {"trials": len(bn)},
        )
    xs = [math.log(r.settings["bn_momentum"]) for r in bn]
    rho, p = _spearman(xs, [r.score for r in bn])
    top = sorted(bn, key=lambda r: r.score)[-max(1, len(bn) // 4) :]
    good = [r.settings["bn_momentum"] for r in top]
    direction = "higher" if rho > 0 else "lower"
    verdict = (
        f"{direction} bn_momentum went with better trials (Spearman ρ={rho:.2f}); the top quarter "
        f"used bn_momentum {_fmt(min(good))}–{_fmt(max(good))}"
    )
    if abs(rho) < 0.3:
        verdict = (
            f"bn_momentum made little difference (Spearman ρ={rho:.2f}); the top quarter "
            f"used {_fmt(min(good))}–{_fmt(max(good))}"
        )
    return Finding(
        "bn_momentum",
        verdict,
        _strength_of_rho(rho),
        {
            "spearman_rho": rho,
            "p_value": p,
            "trials": len(bn),
            "top_quarter_range": [min(good), max(good)],
        },
    )


def _eval_mode(rows: list[_Row]) -> Finding | None:
    """Running statistics (eval mode) vs the test batch's own statistics."""
    bn = [
        r
        for r in rows
        if r.settings.get("bn_placement") != "none"
        and r.status == "ok"
        and r.test_accuracy is not None
        and r.test_accuracy_batch_stats is not None
    ]
    if not bn:
        return None
    gaps = [100 * (r.test_accuracy_batch_stats - r.test_accuracy) for r in bn]  # type: ignore[operator]
    median = float(np.median(gaps))
    evidence: dict[str, Any] = {
        "trials": len(bn),
        "median_gap_points": median,
        "worst_gap_points": max(gaps),
        "note": "gap = test accuracy with batch statistics minus with running statistics",
    }
    rho = 0.0
    if len({r.settings["bn_momentum"] for r in bn}) >= 2 and len(bn) >= MIN_TREND:
        rho, _ = _spearman([math.log(r.settings["bn_momentum"]) for r in bn], gaps)
        evidence["gap_vs_bn_momentum_spearman_rho"] = rho
    if len(bn) < MIN_GROUP:
        verdict = f"only {len(bn)} finished trial(s) with BN: too few to judge eval-mode statistics"
        strength = "insufficient data"
    elif abs(median) < 0.5:
        verdict = (
            f"evaluation with running statistics matches batch statistics (median gap "
            f"{median:.2f} points): the running averages are sound"
        )
        strength = "strong" if len(bn) >= MIN_TREND else "weak"
    else:
        worse = "below" if median > 0 else "above"
        verdict = (
            f"running statistics scored a median {abs(median):.2f} points {worse} batch statistics"
        )
        if rho < -0.3:
            verdict += "; the gap grows as bn_momentum falls: raise it or use precise BN"
        strength = "strong" if abs(median) >= 1 and len(bn) >= MIN_TREND else "moderate"
    return Finding("eval_mode_statistics", verdict, strength, evidence)


# --- entry point --------------------------------------------------------------------------------


def _rows(trials: list[FrozenTrial], spec: StudySpec) -> list[_Row]:
    sign = 1.0 if spec.directions[0] == "maximize" else -1.0
    fixed = spec.search_space.fixed()
    rows = []
    for t in trials:
        if t.state is not TrialState.COMPLETE or not t.values or not math.isfinite(t.values[0]):
            continue
        rows.append(
            _Row(
                number=t.number,
                score=sign * t.values[0],
                value=t.values[0],
                settings=fixed | t.params,
                status=str(t.user_attrs.get("status", "ok")),
                test_accuracy=t.user_attrs.get("test_accuracy"),
                test_accuracy_batch_stats=t.user_attrs.get("test_accuracy_batch_stats"),
            )
        )
    return rows


def study_insights(trials: list[FrozenTrial], spec: StudySpec) -> dict[str, Any]:
    """Findings for every BN practice the study varied (or measured), strongest first."""
    rows = _rows(trials, spec)
    metric = spec.objective.metric.value
    unit = metric
    candidates = [
        _compare_groups(
            rows, "bn_placement", lambda r: r.settings["bn_placement"], "placement", unit
        ),
        _batch_size_vs_lr(rows),
        _bn_momentum(rows),
        _eval_mode(rows),
        _compare_groups(
            rows,
            "ghost_batch_size",
            lambda r: r.settings.get("ghost_batch_size") or "off",
            "ghost batch size",
            unit,
        ),
        _compare_groups(
            rows,
            "precise_bn",
            lambda r: r.settings.get("precise_bn") or "off",
            "precise BN batches",
            unit,
        ),
    ]
    order = {"strong": 0, "moderate": 1, "weak": 2, "insufficient data": 3}
    findings = sorted((f for f in candidates if f is not None), key=lambda f: order[f.strength])
    return {
        "metric": metric,
        "direction": spec.directions[0],
        "trials_used": len(rows),
        "diverged": sum(r.status == "diverged" for r in rows),
        "findings": [asdict(f) for f in findings],
    }
