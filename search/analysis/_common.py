"""What every finding shares: the context, comparisons at matched learning rates, strength rules,
number formatting and JSON-safe effects."""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from search.analysis import _stats
from search.analysis._models import AnalysisOptions, Finding, Practice, Strength
from search.analysis._records import Point, StudyData

# Categorical settings that also stratify comparisons of the others when the study varied them.
STRATIFYING = ("bn_placement", "init", "optimizer")
SCALING_RULES = (0.0, 0.5, 1.0)  # best lr ∝ batch^slope: none, square root, linear


@dataclass(frozen=True)
class Context:
    """The study's data, the options and which settings the study searched."""

    data: StudyData
    options: AnalysisOptions
    varied: frozenset[str]  # spec dimension names that were searched

    def rng(self, label: str) -> np.random.Generator:
        return _stats.rng_for(self.options.seed, label)

    def lr_bin(self, point: Point) -> int:
        return math.floor(point.log_lr / self.options.lr_bin_decades)

    def matching_keys(self, compared: str) -> list[str]:
        """The varied categorical settings, other than ``compared``, a match must share."""
        return [k for k in STRATIFYING if k in self.varied and k != compared]

    def matching(self, compared: str) -> Callable[[Point], Hashable]:
        """What two points must share, beyond a similar learning rate, to be compared."""
        keys = self.matching_keys(compared)

        def key(point: Point) -> Hashable:
            return tuple(str(point.settings.get(k)) for k in keys)

        return key


# --- strength rules (defined in the package docstring) --------------------------------------------


def difference_strength(ci: tuple[float, float] | None, margin: float) -> Strength:
    """The strength of a difference (or slope) whose null is 0, given a practical margin."""
    if ci is None:
        return Strength.INSUFFICIENT_DATA
    lo, hi = ci
    if -margin <= lo and hi <= margin:
        return Strength.NO_CLEAR_WINNER
    if lo > margin or hi < -margin:
        return Strength.STRONG
    if lo > 0 or hi < 0:
        return Strength.MODERATE
    return Strength.WEAK


def rules_covered(ci: tuple[float, float]) -> list[float]:
    """Scaling rules (slopes 0, 0.5, 1) inside an interval."""
    return [r for r in SCALING_RULES if ci[0] <= r <= ci[1]]


def slope_strength(ci: tuple[float, float] | None) -> Strength:
    """The strength of a log-log scaling slope: how many scaling rules the interval allows."""
    if ci is None:
        return Strength.INSUFFICIENT_DATA
    if len(rules_covered(ci)) >= 2:
        return Strength.WEAK
    return Strength.STRONG if ci[1] - ci[0] <= 0.5 else Strength.MODERATE


def decisive(strength: Strength) -> bool:
    return strength in (Strength.STRONG, Strength.MODERATE)


# --- comparisons at matched learning rates --------------------------------------------------------


@dataclass(frozen=True)
class Comparison:
    """a - b at matched learning rates (and equal other varied categorical settings)."""

    a: str
    b: str
    estimate: float  # NaN when the groups never meet
    ci95: tuple[float, float] | None
    replicates: _stats.Array
    matched_a: int  # configurations of a with a neighbour from b, and vice versa
    matched_b: int
    n_a: int
    n_b: int

    def strength(self, margin: float, min_points: int) -> Strength:
        if min(self.matched_a, self.matched_b) < min_points or not math.isfinite(self.estimate):
            return Strength.INSUFFICIENT_DATA
        return difference_strength(self.ci95, margin)

    def flipped(self) -> Comparison:
        ci = None if self.ci95 is None else (-self.ci95[1], -self.ci95[0])
        return Comparison(
            self.b,
            self.a,
            -self.estimate,
            ci,
            -self.replicates,
            self.matched_b,
            self.matched_a,
            self.n_b,
            self.n_a,
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "compared": f"{self.a} - {self.b}",
            "estimate": self.estimate,
            "ci95": self.ci95,
            "configurations": {self.a: self.n_a, self.b: self.n_b},
            "matched": {self.a: self.matched_a, self.b: self.matched_b},
        }


def compare(
    ctx: Context,
    name: str,
    label: tuple[str, str],
    groups: tuple[Sequence[Point], Sequence[Point]],
    value: Callable[[Point], float | None],
    key: Callable[[Point], Hashable],
) -> Comparison:
    """a - b where both were tried at similar learning rates: a common curve over log lr
    (linear between knots ``smoothing_decades`` apart, one per level of the other varied
    categorical settings) plus a shift for a; the shift is the difference. Bootstrapped by
    resampling each group on its own. ``name`` seeds the resampling: distinct comparisons need
    distinct names."""
    a, b = ([p for p in g if value(p) is not None] for g in groups)
    if not a or not b:
        return Comparison(*label, math.nan, None, np.empty(0), 0, 0, len(a), len(b))
    points = a + b
    keys = [key(p) for p in points]
    code_of = {k: i for i, k in enumerate(sorted(set(keys), key=repr))}
    codes = np.array([code_of[k] for k in keys], dtype=np.int64)
    x = np.array([p.log_lr for p in points])
    y = np.array([value(p) for p in points], dtype=float)
    d = np.array([1.0] * len(a) + [0.0] * len(b))
    spacing = ctx.options.smoothing_decades
    rng = ctx.rng(name)
    n_boot = ctx.options.n_bootstrap
    counts = np.vstack(
        [
            np.ones(len(points)),
            np.hstack(
                [
                    _stats.resample_counts(rng, len(a), n_boot),
                    _stats.resample_counts(rng, len(b), n_boot),
                ]
            ),
        ]
    )
    delta = _stats.partially_linear(y, d, _stats.hat_basis(x, codes, spacing), counts)
    near = _stats.matched(x, codes, d, 2 * spacing)
    return Comparison(
        a=label[0],
        b=label[1],
        estimate=float(delta[0]),
        ci95=_stats.percentile_interval(delta[1:]),
        replicates=delta[1:],
        matched_a=int(near[: len(a)].sum()),
        matched_b=int(near[len(a) :].sum()),
        n_a=len(a),
        n_b=len(b),
    )


def smoothed_curve(
    log_lr: _stats.Array, y: _stats.Array, bandwidth: float, n_grid: int = 60
) -> tuple[_stats.Array, _stats.Array]:
    """Kernel-smoothed mean of ``y`` over log10 lr on a grid; NaN where no point is near."""
    grid = np.linspace(log_lr.min(), log_lr.max(), n_grid)
    kernel = _stats.kernel_weights(log_lr, grid, bandwidth)
    mass = kernel.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return grid, np.where(mass >= 0.5, (y @ kernel) / mass, np.nan)


def scatter(points: Sequence[Point]) -> list[list[float]]:
    """Plot rows: [learning rate, accuracy, share trained, pruned runs]."""
    return [[10**p.log_lr, p.accuracy, p.trained, p.pruned] for p in points]


def by_setting(points: Sequence[Point], key: Callable[[Point], str]) -> dict[str, list[Point]]:
    """Points grouped by a setting's value, groups in order of first appearance."""
    groups: dict[str, list[Point]] = {}
    for p in points:
        groups.setdefault(key(p), []).append(p)
    return groups


# --- formatting -----------------------------------------------------------------------------------


def pts(x: float) -> str:
    """An accuracy difference in points (NaN: nothing to compare)."""
    if not math.isfinite(x):
        return "an unknown amount (no comparable runs)"
    return f"{100 * x:+.1f} points"


def ci_pts(ci: tuple[float, float] | None) -> str:
    if ci is None:
        return "no interval"
    return f"95% CI {100 * ci[0]:+.1f} to {100 * ci[1]:+.1f}"


def pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def lr_text(log_lr: float) -> str:
    return f"{10**log_lr:.3g}"


def clean(value: Any) -> Any:
    """JSON-safe: numpy scalars as Python numbers, tuples as lists, NaN and inf as None."""
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple | np.ndarray):
        return [clean(v) for v in value]
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    return value


# Rows a plot keeps per series: the figures' data, not the statistics' (which use every point).
# At 100,000 trials every configuration's row made the report's JSON 18.6 MB.
MAX_PLOT_ROWS = 2_000


def thin(value: Any, max_rows: int = MAX_PLOT_ROWS) -> Any:
    """Plot data with every list longer than ``max_rows`` cut to ``max_rows`` evenly spaced
    elements (first and last kept), recursively."""
    if isinstance(value, dict):
        return {k: thin(v, max_rows) for k, v in value.items()}
    if isinstance(value, list):
        if len(value) > max_rows:
            keep = np.linspace(0, len(value) - 1, max_rows).round().astype(int)
            value = [value[i] for i in keep]
        return [thin(v, max_rows) for v in value]
    return value


def init_bn_verdict(both: str, said: str, strength: Strength, bn_matters_less: bool) -> str:
    """The initialization × BN verdict once the comparison was made (not insufficient data):
    ``both`` states the two effects, ``said`` the interaction with its interval."""
    if decisive(strength) and bn_matters_less:
        return f"{both}: BN reduces the dependence on initialization ({said}), as the article says"
    if decisive(strength):
        return (
            f"{both}: with BN the choice of initialization matters more ({said}), contrary to "
            "the article"
        )
    if strength is Strength.NO_CLEAR_WINNER:
        return (
            f"{both}: BN does not change how much initialization matters ({said}); the "
            "article's claim that BN reduces the dependence on initialization is not borne out"
        )
    return f"{both}: cannot tell whether BN changes how much it matters ({said})"


def eval_statistics_verdict(said: str, strength: Strength, estimate: float, margin: float) -> str:
    """The running- vs batch-statistics verdict once the comparison was made: ``said`` is the
    difference (running - batch) with its interval."""
    if decisive(strength) and estimate < 0:
        verdict = (
            f"running statistics scored below each test batch's own statistics ({said}): the "
            "running averages lag the weights or are too noisy — raise bn_momentum or use "
            "precise BN before trusting evaluation-mode accuracy"
        )
    elif decisive(strength):
        verdict = (
            f"running statistics scored above each test batch's own statistics ({said}): "
            "evaluating with the running averages, as the article advises, is the better choice"
        )
    elif strength is Strength.NO_CLEAR_WINNER:
        verdict = (
            f"running and batch statistics agree within ±{100 * margin:g} point ({said}): the "
            "running averages are sound, as the article's evaluation-mode advice assumes"
        )
    else:
        verdict = f"running minus batch statistics {said}: cannot tell whether they differ"
    return verdict + "; batch statistics come from test batches of the training batch size"


def finding(
    practice: Practice,
    verdict: str,
    strength: Strength,
    effect: dict[str, Any],
    ci95: tuple[float, float] | None = None,
    sample_size: int | None = None,
    plot: dict[str, Any] | None = None,
) -> Finding:
    """A study-sourced finding with JSON-safe effect and plot data (thinned: ``thin``)."""
    return Finding(
        practice=practice,
        verdict=verdict,
        strength=strength,
        effect=clean(effect),
        ci95=None if ci95 is None else (float(ci95[0]), float(ci95[1])),
        sample_size=sample_size,
        plot=thin(clean(plot or {})),
    )
