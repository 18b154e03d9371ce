"""Findings of a confirmation study (search/confirm.py): controlled runs, one factor at a time
around the best configuration, over fresh seeds, read on the test split.

What is compared. Only planned trials (``user_attrs["plan"]``) count; a trial off the plan (the
sampler's replacement for a planned point that failed) is ignored. Each run is scored by its
**test accuracy** with BN running statistics: the test split is larger than the validation split
(MNIST-1D: 800 vs 320 samples) and no trial of either study was selected on it. A run that
diverged scores chance level and counts as failed to train, as in the study-level analysis.

Statistics. A comparison is **paired by seed** where the design pairs it (same seed: same batch
order and, for one architecture, the same initial weights; for BN momentum and precise BN even
the very same trained network) and summarized by the **mean difference over seeds with a t
interval**, mean ± t(0.975, n - 1) · sd / √n. With 3 to 5 seeds a bootstrap over seeds has too
few distinct resamples (10 with 3 seeds) for a 95% interval, while the t interval is exact for
normally distributed seed-to-seed variation and honest about how little 3 seeds say (t = 4.30).
The interval covers the variation between training runs on this test set, not the sampling error
of the test set itself, which both arms of a pair share. Where a comparison first picks something
(each placement's best learning rate, the initialization that matters most), it picks on
validation accuracy and measures on test accuracy, so the pick does not inflate the measurement.

Strength follows the study-level rules (package docstring) with the same practical margins:
``no clear winner`` when the whole interval lies within ±``practical_margin`` (1 accuracy point),
``insufficient data`` with fewer than 2 paired seeds. Learning-rate windows are known to the grid
only: each upper edge lies between the last learning rate that trained and the next one, so the
interval of a difference of edges adds that rounding (the difference of two uniform errors, as a
normal term) to the t interval, and cannot be narrower than the grid allows.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from optuna.trial import FrozenTrial, TrialState

from models.config import Placement
from search.analysis._common import (
    ci_pts,
    decisive,
    difference_strength,
    eval_statistics_verdict,
    finding,
    init_bn_verdict,
    lr_text,
    pts,
)
from search.analysis._models import (
    AnalysisOptions,
    ConfirmationInfo,
    Finding,
    Practice,
    Source,
    Strength,
    StudyReport,
)
from search.analysis._placement import article_note
from search.analysis._records import infer_val_size, read_study
from search.spec import StudySpec

PLAN_ATTR = "plan"  # search/confirm.py tags each planned trial with it
NONE = Placement.NONE.value
BEFORE = Placement.BEFORE_ACTIVATION.value
AFTER = Placement.AFTER_ACTIVATION.value
_ORDER = [p.value for p in Placement]
# Two-sided 95% t quantiles t(0.975, df) for df = 1..30; beyond, a Cornish-Fisher expansion.
_T975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip
_Z975 = 1.959964


def t975(df: int) -> float:
    """The 0.975 quantile of Student's t with ``df`` degrees of freedom (df >= 1)."""
    if df <= len(_T975):
        return _T975[df - 1]
    z = _Z975
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


# --- paired differences over seeds ----------------------------------------------------------------


@dataclass(frozen=True)
class Paired:
    """The mean of per-seed values (differences, usually) with its t interval."""

    estimate: float  # NaN without values
    ci95: tuple[float, float] | None  # None with fewer than 2 values
    n: int
    sd: float
    values: tuple[float, ...]

    def strength(self, margin: float) -> Strength:
        return difference_strength(self.ci95, margin) if self.n >= 2 else Strength.INSUFFICIENT_DATA

    def as_dict(self) -> dict[str, Any]:
        return {"estimate": self.estimate, "ci95": self.ci95, "seeds": self.n}


def mean_interval(values: Iterable[float], extra_half_width: float = 0.0) -> Paired:
    """Mean with a t interval (``extra_half_width`` combined with it in quadrature)."""
    v = np.asarray(list(values), dtype=float)
    n = int(v.size)
    if n == 0:
        return Paired(math.nan, None, 0, math.nan, ())
    mean = float(v.mean())
    if n < 2:
        return Paired(mean, None, n, math.nan, tuple(v.tolist()))
    sd = float(v.std(ddof=1))
    half = math.hypot(t975(n - 1) * sd / math.sqrt(n), extra_half_width)
    return Paired(mean, (mean - half, mean + half), n, sd, tuple(v.tolist()))


def paired(a: Mapping[int, float], b: Mapping[int, float], extra_half_width: float = 0.0) -> Paired:
    """a - b over the seeds both have."""
    seeds = sorted(a.keys() & b.keys())
    return mean_interval((a[s] - b[s] for s in seeds), extra_half_width)


def _said(p: Paired) -> str:
    if not math.isfinite(p.estimate):
        return "no paired seeds"
    return f"{pts(p.estimate)}, {ci_pts(p.ci95)}, {p.n} seeds"


def _seeds_needed(p: Paired, margin: float) -> str:
    """How many seeds would bring the interval inside the margin, if the spread stays as is."""
    if p.n < 2 or not math.isfinite(p.sd) or abs(p.estimate) >= margin or p.sd == 0:
        return ""
    room = margin - abs(p.estimate)
    n = math.ceil((2.1 * p.sd / room) ** 2)
    return f" (about {max(n, p.n + 1)} seeds would tell at this spread)"


# --- the runs ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Run:
    """One planned trial that completed, as the findings read it."""

    number: int
    seed: int
    settings: Mapping[str, Any]
    roles: tuple[Mapping[str, Any], ...]
    test: float  # test accuracy with running statistics; chance level if diverged
    test_batch: float | None
    val: float  # validation accuracy (chance if diverged): what picks are made on
    trained: bool
    probe: Mapping[float, float]  # bn_momentum -> test accuracy

    @property
    def placement(self) -> str:
        return str(self.settings["bn_placement"])

    @property
    def lr(self) -> float:
        return float(self.settings["learning_rate"])

    def role(self, factor: str) -> list[Mapping[str, Any]]:
        return [r for r in self.roles if r.get("factor") == factor]


@dataclass(frozen=True)
class _Design:
    runs: tuple[_Run, ...]
    planned: int  # planned points (spec.enqueue)
    failed: Counter[str]  # planned trials that failed, by status
    waiting: int  # planned trials not finished yet (waiting or running)
    off_plan: int  # finished trials that are not planned
    test_size: int | None
    chance: float
    options: AnalysisOptions

    def by(self, factor: str) -> list[tuple[_Run, Mapping[str, Any]]]:
        return [(r, role) for r in self.runs for role in r.role(factor)]

    @property
    def seeds(self) -> int:
        return len({r.seed for r in self.runs})


def _plan(trial: FrozenTrial) -> Mapping[str, Any] | None:
    plan = trial.user_attrs.get(PLAN_ATTR)
    return plan if isinstance(plan, Mapping) and isinstance(plan.get("roles"), list) else None


def _probe(trial: FrozenTrial) -> dict[float, float]:
    out: dict[float, float] = {}
    for pair in trial.user_attrs.get("test_accuracy_by_bn_momentum") or []:
        if isinstance(pair, list | tuple) and len(pair) == 2 and None not in pair:
            out[float(pair[0])] = float(pair[1])
    return out


def _design(trials: Sequence[FrozenTrial], spec: StudySpec, options: AnalysisOptions) -> _Design:
    data = read_study(trials, spec, options)
    chance = data.thresholds.chance_accuracy or 0.0
    records = {r.number: r for r in data.records if not r.pruned}
    runs = []
    failed: Counter[str] = Counter()
    waiting = off_plan = 0
    for t in trials:
        plan = _plan(t)
        if plan is None:
            off_plan += t.state in (TrialState.COMPLETE, TrialState.PRUNED)
            continue
        if t.state is TrialState.FAIL:
            failed[str(t.user_attrs.get("status", "unknown"))] += 1
            continue
        if t.state in (TrialState.WAITING, TrialState.RUNNING):
            waiting += 1
            continue
        record = records.get(t.number)
        if record is None:
            continue
        test = record.test_running if record.test_running is not None else chance
        runs.append(
            _Run(
                number=t.number,
                seed=int(record.settings.get("seed", 0)),
                settings=record.settings,
                roles=tuple(r for r in plan["roles"] if isinstance(r, Mapping)),
                test=test,
                test_batch=record.test_batch,
                val=record.accuracy,
                trained=record.failure is None,
                probe=_probe(t),
            )
        )
    # Retries of an interrupted point fail once and then complete: count a failure only where no
    # run of the same planned point completed.
    done = {int(p["index"]) for t in trials if t.state is TrialState.COMPLETE and (p := _plan(t))}
    failed_points = {
        int(p["index"]) for t in trials if t.state is TrialState.FAIL and (p := _plan(t))
    }
    if failed_points <= done:
        failed = Counter()
    test_values = [r.test for r in runs] + [r.test_batch for r in runs if r.test_batch]
    return _Design(
        runs=tuple(runs),
        planned=len(spec.enqueue),
        failed=failed,
        waiting=waiting,
        off_plan=off_plan,
        test_size=infer_val_size([v for v in test_values if 0 < v < 1]),
        chance=chance,
        options=options,
    )


def _confirmation(
    practice: Practice,
    verdict: str,
    strength: Strength,
    effect: dict[str, Any],
    ci95: tuple[float, float] | None = None,
    sample_size: int | None = None,
    plot: dict[str, Any] | None = None,
) -> Finding:
    made = finding(practice, verdict, strength, effect, ci95, sample_size, plot)
    return made.model_copy(update={"source": Source.CONFIRMATION})


def _by_seed(runs: Iterable[_Run], value: str = "test") -> dict[int, float]:
    """Per seed, the mean of ``value`` over the given runs (one run per seed in a design)."""
    values: dict[int, list[float]] = defaultdict(list)
    for r in runs:
        values[r.seed].append(float(getattr(r, value)))
    return {s: sum(v) / len(v) for s, v in values.items()}


def _mean(values: Iterable[float]) -> float:
    v = list(values)
    return sum(v) / len(v) if v else math.nan


# --- placement and learning-rate stability --------------------------------------------------------


@dataclass(frozen=True)
class _Grid:
    """One placement's learning-rate grid: runs per learning rate, and its pick."""

    placement: str
    runs: dict[float, list[_Run]]  # learning rate -> runs (one per seed)
    best_lr: float  # picked on mean validation accuracy

    @property
    def lrs(self) -> list[float]:
        return sorted(self.runs)

    def at_best(self) -> dict[int, float]:
        return _by_seed(self.runs[self.best_lr])

    def trained_share(self, lr: float) -> float:
        runs = self.runs[lr]
        return sum(r.trained for r in runs) / len(runs)


def _grids(design: _Design) -> dict[str, _Grid]:
    cells: dict[str, dict[float, list[_Run]]] = defaultdict(lambda: defaultdict(list))
    for run, role in design.by("lr_grid"):
        cells[str(role.get("placement", run.placement))][run.lr].append(run)
    grids = {}
    for placement in sorted(cells, key=lambda p: _ORDER.index(p) if p in _ORDER else 99):
        runs = dict(cells[placement])
        best = max(sorted(runs), key=lambda lr: _mean(r.val for r in runs[lr]))
        grids[placement] = _Grid(placement, runs, best)
    return grids


def placement_confirmation(design: _Design, grids: dict[str, _Grid]) -> Finding:
    """Each placement at its own best learning rate of the grid, paired by seed."""
    margin = design.options.practical_margin
    plot: dict[str, Any] = {
        "kind": "placement",
        "ylabel": "test accuracy",
        "points": {
            p: [[r.lr, r.test, float(r.trained), 0] for runs in g.runs.values() for r in runs]
            for p, g in grids.items()
        },
        "curves": {
            p: {"lr": g.lrs, "accuracy": [_mean(r.test for r in g.runs[lr]) for lr in g.lrs]}
            for p, g in grids.items()
        },
    }
    unit = "accuracy (fraction)"
    if len(grids) < 2:
        return _confirmation(
            Practice.PLACEMENT,
            f"only one placement ({', '.join(grids) or 'none'}) has finished planned runs",
            Strength.INSUFFICIENT_DATA,
            {"estimate": None, "unit": unit, "compared": None},
            plot=plot,
        )
    ranking = sorted(grids, key=lambda p: -_mean(r.val for r in grids[p].runs[grids[p].best_lr]))
    top, runner = ranking[:2]
    pairs = {
        f"{a} - {b}": paired(grids[a].at_best(), grids[b].at_best())
        for i, a in enumerate(ranking)
        for b in ranking[i + 1 :]
    }
    head = pairs[f"{top} - {runner}"]
    strength = head.strength(margin)
    if strength is Strength.INSUFFICIENT_DATA:
        verdict = f"too few paired seeds to compare {top} and {runner} ({_said(head)})"
    elif decisive(strength):
        verdict = (
            f"{top} beat {runner} on the test split, each at its own best learning rate of the "
            f"grid: {_said(head)}"
        )
    elif strength is Strength.NO_CLEAR_WINNER:
        verdict = (
            f"no clear winner: {top} and {runner}, each at its own best learning rate, differ by "
            f"{_said(head)}, inside the ±{100 * margin:g}-point practical margin"
        )
    else:
        verdict = (
            f"no clear winner: {top} leads {runner} by {_said(head)}, but the interval allows no "
            f"difference{_seeds_needed(head, margin)}"
        )
    verdict += article_note(top, runner, strength, "in controlled runs")
    others = [f"{k}: {_said(p)}" for k, p in pairs.items() if k != f"{top} - {runner}"]
    if others:
        verdict += "; " + "; ".join(others)
    verdict += "; best learning rates (picked on validation accuracy) " + ", ".join(
        f"{p} {lr_text(math.log10(g.best_lr))}" for p, g in grids.items()
    )
    effect = {
        "compared": f"{top} - {runner}",
        "estimate": head.estimate,
        "unit": unit,
        "margin": margin,
        "ranking": ranking,
        "pairs": {k: p.as_dict() for k, p in pairs.items()},
        "best_lr": {p: g.best_lr for p, g in grids.items()},
        "mean_test_accuracy": {p: _mean(g.at_best().values()) for p, g in grids.items()},
        "seeds": head.n,
        "picked_on": "validation accuracy (mean over seeds); measured on test accuracy",
    }
    return _confirmation(Practice.PLACEMENT, verdict, strength, effect, head.ci95, head.n, plot)


def _edge(grid: _Grid, trained: dict[float, bool]) -> tuple[float, float, bool]:
    """Upper edge of the trainable learning rates reached upwards from the grid's pick: (log10
    estimate, log10 width of the bracket it lies in, open). The estimate is the middle of the
    bracket between the last rate that trained and the next one; open: it trained up to the top
    of the grid (the edge is at least there). Failing already at the pick: the bracket below."""
    lrs = grid.lrs
    i = lrs.index(grid.best_lr)
    if not trained.get(lrs[i], False):
        below = lrs[i - 1] if i > 0 else lrs[i] / 10**0.25
        lo, hi = math.log10(below), math.log10(lrs[i])
        return (lo + hi) / 2, hi - lo, False
    while i + 1 < len(lrs) and trained.get(lrs[i + 1], False):
        i += 1
    if i + 1 == len(lrs):
        return math.log10(lrs[i]), 0.0, True
    lo, hi = math.log10(lrs[i]), math.log10(lrs[i + 1])
    return (lo + hi) / 2, hi - lo, False


def _window(grid: _Grid) -> tuple[list[float], list[bool]]:
    """The learning rates around the pick where most seeds trained: [low, high] and open ends."""
    lrs = grid.lrs
    ok = [grid.trained_share(lr) > 0.5 for lr in lrs]
    i = lrs.index(grid.best_lr)
    lo = hi = i
    while lo > 0 and ok[lo - 1]:
        lo -= 1
    while hi + 1 < len(lrs) and ok[hi + 1]:
        hi += 1
    return [lrs[lo], lrs[hi]], [lo == 0, hi == len(lrs) - 1]


def stability_confirmation(design: _Design, grids: dict[str, _Grid]) -> Finding:
    """Upper edges of the learning rates that train, per seed, with BN vs without."""
    opts = design.options
    windows = {p: _window(g) for p, g in grids.items() if any(g.trained_share(x) for x in g.lrs)}
    edges: dict[str, dict[int, tuple[float, float, bool]]] = {}
    for p, g in grids.items():
        by_seed: dict[int, dict[float, bool]] = defaultdict(dict)
        for lr, runs in g.runs.items():
            for r in runs:
                by_seed[r.seed][lr] = r.trained
        edges[p] = {s: _edge(g, t) for s, t in by_seed.items()}
    effect: dict[str, Any] = {
        "compared": None,
        "estimate": None,
        "unit": "decades of learning rate (log10)",
        "margin": opts.lr_margin_decades,
        "windows": {p: w[0] for p, w in windows.items()},
        "open_edges": {p: w[1] for p, w in windows.items()},
        "upper_edge_by_seed": {
            p: {s: 10 ** e[0] for s, e in by_seed.items()} for p, by_seed in edges.items()
        },
        "grid": {p: g.lrs for p, g in grids.items()},
        "trained_share": {p: {lr: g.trained_share(lr) for lr in g.lrs} for p, g in grids.items()},
    }
    plot = {
        "kind": "lr_windows",
        "ylabel": "test accuracy",
        "points": {
            p: [[r.lr, r.test, float(r.trained), 0] for runs in g.runs.values() for r in runs]
            for p, g in grids.items()
        },
        "windows": effect["windows"],
        "threshold": None,
        "chance": design.chance,
    }
    listed = ", ".join(
        f"{p} {lr_text(math.log10(w[0][0]))}–{lr_text(math.log10(w[0][1]))}"
        + (" (open above)" if w[1][1] else "")
        for p, w in windows.items()
    )
    described = (
        f"learning rates where most seeds trained, around each placement's own best: "
        f"{listed or 'none'}"
    )
    bn = [p for p in grids if p != NONE]
    if NONE in grids and bn:
        a = max(bn, key=lambda p: _mean(r.val for r in grids[p].runs[grids[p].best_lr]))
        b = NONE
    elif len(bn) >= 2:
        a, b = bn[0], bn[1]
    else:
        return _confirmation(
            Practice.LEARNING_RATE_STABILITY,
            described + "; nothing to compare them with",
            Strength.INSUFFICIENT_DATA,
            effect,
            plot=plot,
        )
    seeds = sorted(edges[a].keys() & edges[b].keys())
    if any(edges[b][s][2] for s in seeds):
        return _confirmation(
            Practice.LEARNING_RATE_STABILITY,
            f"{described}; {b} trained up to the top of its grid for some seeds, so where it "
            "fails is unknown and the edges cannot be compared: widen the grid "
            "(lr_offsets)",
            Strength.INSUFFICIENT_DATA,
            effect,
            plot=plot,
        )
    width = max((edges[p][s][1] for p in (a, b) for s in seeds), default=0.0)
    rounding = _Z975 * width / math.sqrt(6)  # a difference of two uniform errors of ±width/2
    diff = mean_interval((edges[a][s][0] - edges[b][s][0] for s in seeds), rounding)
    strength = diff.strength(opts.lr_margin_decades)
    effect |= {
        "compared": f"upper edge {a} - {b}",
        "estimate": diff.estimate,
        "seeds": diff.n,
        "grid_rounding_decades": rounding,
    }
    interval = (
        "no interval"
        if diff.ci95 is None
        else (f"95% CI {diff.ci95[0]:+.2f} to {diff.ci95[1]:+.2f} decades, {diff.n} seeds")
    )
    d = diff.estimate
    if strength is Strength.INSUFFICIENT_DATA:
        verdict = f"{described}; too few paired seeds to compare {a} and {b}"
    elif b == NONE and decisive(strength) and d > 0:
        verdict = (
            f"{described}; with BN ({a}) runs train up to a learning rate {d:.2f} decades "
            f"({10**d:.3g}×) higher than without ({interval}): BN allows larger learning rates, "
            "as Ioffe & Szegedy report and the article says"
        )
    elif b == NONE and decisive(strength):
        verdict = (
            f"{described}; without BN runs train up to a learning rate {-d:.2f} decades higher "
            f"({interval}): BN did not allow larger learning rates here, contrary to the article"
        )
    elif decisive(strength):
        higher, lower = (a, b) if d > 0 else (b, a)
        verdict = (
            f"{described}; {higher} trains up to a {10 ** abs(d):.3g}× larger learning rate "
            f"than {lower} ({interval})"
        )
    elif strength is Strength.NO_CLEAR_WINNER:
        verdict = f"{described}; {a} and {b} fail at about the same learning rate ({interval})"
    else:
        verdict = (
            f"{described}; the upper edge of {a} is {d:+.2f} decades from that of {b}, but the "
            f"interval ({interval}) cannot tell which trains at larger learning rates"
        )
    if any(edges[a][s][2] for s in seeds):
        verdict += f" (at least: {a} trained up to the top of its grid for some seeds)"
    return _confirmation(
        Practice.LEARNING_RATE_STABILITY, verdict, strength, effect, diff.ci95, diff.n, plot
    )


# --- BN momentum, evaluation statistics, precise BN -----------------------------------------------


def _best_runs(design: _Design) -> list[_Run]:
    return [r for r, _ in design.by("best") if r.placement != NONE]


def bn_momentum_confirmation(design: _Design) -> Finding | None:
    """Running-statistics test accuracy of each probed momentum on the same trained networks."""
    runs = [r for r in _best_runs(design) if r.probe]
    if not runs:
        return None
    margin = design.options.practical_margin
    trained = float(runs[0].settings["bn_momentum"])
    momenta = sorted({m for r in runs for m in r.probe})
    reference = {r.seed: r.probe.get(trained, r.test) for r in runs}
    by_momentum = {
        m: paired({r.seed: r.probe[m] for r in runs if m in r.probe}, reference)
        for m in momenta
        if m != trained
    }
    plot = {
        "kind": "bn_momentum",
        "points": [[m, acc, r.test_batch] for r in runs for m, acc in sorted(r.probe.items())],
    }
    unit = "accuracy (fraction)"
    if not by_momentum:
        return None
    worst = max(by_momentum, key=lambda m: abs(np.nan_to_num(by_momentum[m].estimate)))
    head = by_momentum[worst]
    strength = head.strength(margin)
    inside = [m for m, p in by_momentum.items() if p.strength(margin) is Strength.NO_CLEAR_WINNER]
    hurt = [m for m, p in by_momentum.items() if decisive(p.strength(margin)) and p.estimate < 0]
    batch = _mean(r.test_batch for r in runs if r.test_batch is not None)
    parts = [
        "bn_momentum does not enter training (BN normalizes with each batch's own statistics), "
        f"so each seed's network was trained once at bn_momentum {trained:g} and its running "
        "statistics recomputed for every probed momentum from the same batches"
    ]
    if strength is Strength.INSUFFICIENT_DATA:
        parts.append(f"too few seeds to judge ({_said(head)})")
    elif strength is Strength.NO_CLEAR_WINNER:
        parts.append(
            f"from {min(momenta):g} to {max(momenta):g} test accuracy stays within the "
            f"±{100 * margin:g}-point margin of the trained momentum (largest change at "
            f"{worst:g}: {_said(head)}): no clear winner"
        )
    else:
        direction = "lower" if head.estimate < 0 else "higher"
        parts.append(
            f"the largest change is at bn_momentum {worst:g}: {direction} test accuracy than at "
            f"{trained:g} ({_said(head)})"
        )
        small = ", ".join(f"{m:g}" for m in hurt if m < trained)
        large = ", ".join(f"{m:g}" for m in hurt if m > trained)
        if small:
            parts.append(
                f"too small, costing accuracy: {small} (running averages that lag the weights)"
            )
        if large:
            parts.append(f"too large, costing accuracy: {large} (averages over too few batches)")
        if inside:
            parts.append("within the margin: " + ", ".join(f"{m:g}" for m in inside))
    parts.append(
        "the article's claim that a higher momentum regularizes more does not apply: the "
        "momentum cannot change the trained weights, only the statistics used at evaluation"
    )
    if math.isfinite(batch):
        parts.append(
            f"with each test batch's own statistics the same networks score {100 * batch:.1f}%"
        )
    effect = {
        "compared": f"running-statistics accuracy at bn_momentum {worst:g} - at {trained:g}",
        "estimate": head.estimate,
        "unit": unit,
        "margin": margin,
        "trained_momentum": trained,
        "by_momentum": {m: p.as_dict() for m, p in by_momentum.items()},
        "accuracy_by_momentum": {
            m: _mean(r.probe[m] for r in runs if m in r.probe) for m in momenta
        },
        "batch_statistics_accuracy": batch,
        "seeds": head.n,
    }
    return _confirmation(
        Practice.BN_MOMENTUM, "; ".join(parts), strength, effect, head.ci95, head.n, plot
    )


def eval_statistics_confirmation(design: _Design) -> Finding | None:
    """Running vs each test batch's own statistics on the best configuration's networks."""
    runs = [r for r in _best_runs(design) if r.test_batch is not None]
    if not runs:
        return None
    margin = design.options.practical_margin
    gap = mean_interval(r.test - float(r.test_batch or 0.0) for r in runs)
    strength = gap.strength(margin)
    said = _said(gap)
    if strength is Strength.INSUFFICIENT_DATA:
        verdict = f"too few seeds to compare running and batch statistics ({said})"
        verdict += "; batch statistics come from test batches of the training batch size"
    else:
        verdict = eval_statistics_verdict(said, strength, gap.estimate, margin)
    effect = {
        "compared": "test accuracy with running statistics - with batch statistics",
        "estimate": gap.estimate,
        "unit": "accuracy (fraction)",
        "margin": margin,
        "seeds": gap.n,
    }
    plot = {
        "kind": "eval_pairs",
        "points": [[r.test_batch, r.test, r.settings["bn_momentum"], r.placement] for r in runs],
    }
    return _confirmation(Practice.EVAL_STATISTICS, verdict, strength, effect, gap.ci95, gap.n, plot)


def _two_arms(design: _Design, factor: str, key: str) -> dict[Any, dict[int, float]]:
    """Per level of ``key`` in the ``factor`` roles: test accuracy per seed."""
    arms: dict[Any, list[_Run]] = defaultdict(list)
    for run, role in design.by(factor):
        arms[role.get(key)].append(run)
    return {level: _by_seed(runs) for level, runs in arms.items()}


def precise_bn_confirmation(design: _Design) -> Finding | None:
    """Precise BN vs the running averages, on the same trained networks (paired by seed)."""
    arms = _two_arms(design, "precise_bn", "batches")
    on = [k for k in arms if k]
    if 0 not in arms or not on:
        return None
    batches = int(on[0])
    margin = design.options.practical_margin
    diff = paired(arms[batches], arms[0])
    strength = diff.strength(margin)
    said = _said(diff)
    if strength is Strength.INSUFFICIENT_DATA:
        verdict = f"too few seeds to judge precise BN ({said})"
    elif decisive(strength) and diff.estimate > 0:
        verdict = (
            f"precise BN ({batches} batches, recomputed before each evaluation) beat the running "
            f"averages on the same networks ({said}): the averages lag the weights; evaluate "
            "with statistics over the whole training set, as the article suggests"
        )
    elif decisive(strength):
        verdict = f"precise BN ({batches} batches) did worse than the running averages ({said})"
    elif strength is Strength.NO_CLEAR_WINNER:
        verdict = (
            f"precise BN ({batches} batches) and the running averages agree on the same "
            f"networks ({said}): either is fine here"
        )
    else:
        verdict = f"cannot tell whether precise BN ({batches} batches) helped ({said})"
    effect = {
        "compared": f"precise BN ({batches} batches) - running averages",
        "estimate": diff.estimate,
        "unit": "accuracy (fraction)",
        "margin": margin,
        "batches": batches,
        "seeds": diff.n,
    }
    plot = {
        "kind": "groups",
        "label": "test accuracy",
        "groups": {
            "running averages": list(arms[0].values()),
            f"precise BN ({batches})": list(arms[batches].values()),
        },
    }
    return _confirmation(Practice.PRECISE_BN, verdict, strength, effect, diff.ci95, diff.n, plot)


# --- initialization × BN --------------------------------------------------------------------------


def initialization_confirmation(design: _Design) -> Finding | None:
    """Each initialization with BN and without, at each placement's own best learning rate;
    the headline is BN's change of the largest init effect (paired by seed)."""
    cells: dict[tuple[str, bool], list[_Run]] = defaultdict(list)
    for run, role in design.by("init"):
        cells[(str(role.get("init")), bool(role.get("bn")))].append(run)
    if not cells:
        return None
    margin = design.options.practical_margin
    best = [r for r, _ in design.by("best")]
    reference = str(best[0].settings["init"]) if best else sorted(cells)[0][0]
    inits = sorted({i for i, _ in cells if i != reference})
    arms = sorted({bn for _, bn in cells}, reverse=True)  # with BN first

    def effect_of(init: str, bn: bool, value: str = "test") -> Paired:
        return paired(
            _by_seed(cells.get((init, bn), []), value),
            _by_seed(cells.get((reference, bn), []), value),
        )

    effects = {(i, bn): effect_of(i, bn) for i in inits for bn in arms}
    plot = {
        "kind": "init_bn",
        "reference": reference,
        "effects": [
            [i, "with BN" if bn else "without BN", p.estimate, *(p.ci95 or (None, None))]
            for (i, bn), p in effects.items()
            if p.n
        ],
    }
    unit = "accuracy (fraction)"
    if not inits:
        return _confirmation(
            Practice.INITIALIZATION,
            f"only one initialization ({reference}) was run",
            Strength.INSUFFICIENT_DATA,
            {"estimate": None, "unit": unit, "compared": None},
            plot=plot,
        )
    lead_arm = False not in arms  # without BN if run: where the init should matter most
    # Picked on validation accuracy: the init that moves accuracy most where it should matter most.
    other = max(inits, key=lambda i: abs(np.nan_to_num(effect_of(i, lead_arm, "val").estimate)))
    table = {
        f"{i} - {reference} {'with' if bn else 'without'} BN": p.as_dict()
        for (i, bn), p in effects.items()
    }
    effect: dict[str, Any] = {
        "reference": reference,
        "unit": unit,
        "margin": margin,
        "effects": table,
    }
    switch = f"{other} instead of {reference}"
    if True not in arms or False not in arms:
        p = effects[(other, arms[0])]
        strength = p.strength(margin)
        where = "with BN" if arms[0] else "without BN"
        effect |= {"compared": f"({other} - {reference}) {where}", "estimate": p.estimate}
        missing = "without" if arms[0] else "with"
        verdict = f"{where}, {switch} changes test accuracy by {_said(p)}; no runs {missing} BN"
        return _confirmation(Practice.INITIALIZATION, verdict, strength, effect, p.ci95, p.n, plot)
    with_bn = (_by_seed(cells[(other, True)]), _by_seed(cells[(reference, True)]))
    without = (_by_seed(cells[(other, False)]), _by_seed(cells[(reference, False)]))
    seeds = sorted(with_bn[0].keys() & with_bn[1].keys() & without[0].keys() & without[1].keys())
    interaction = mean_interval(
        (with_bn[0][s] - with_bn[1][s]) - (without[0][s] - without[1][s]) for s in seeds
    )
    bn_p, nobn_p = effects[(other, True)], effects[(other, False)]
    strength = interaction.strength(margin)
    effect |= {
        "compared": f"({other} - {reference}) with BN - ({other} - {reference}) without BN",
        "estimate": interaction.estimate,
        "seeds": interaction.n,
    }
    both = (
        f"{switch} changes test accuracy by {_said(nobn_p)} without BN and by {_said(bn_p)} "
        "with BN, each at its placement's own best learning rate"
    )
    said = _said(interaction)
    if strength is Strength.INSUFFICIENT_DATA:
        verdict = f"{both}: too few paired seeds to compare"
    else:
        less = abs(bn_p.estimate) < abs(nobn_p.estimate)
        verdict = init_bn_verdict(both, said, strength, less)
    return _confirmation(
        Practice.INITIALIZATION, verdict, strength, effect, interaction.ci95, interaction.n, plot
    )


# --- batch size at equal optimizer steps, ghost BN ------------------------------------------------


def batch_size_confirmation(design: _Design) -> Finding | None:
    """The best configuration at other batch sizes, epochs scaled to equal optimizer steps."""
    runs: dict[int, list[_Run]] = defaultdict(list)
    steps: dict[int, int] = {}
    for run, role in design.by("batch_size"):
        size = int(role.get("batch_size", run.settings["batch_size"]))
        runs[size].append(run)
        steps[size] = int(role.get("steps", 0))
    if len(runs) < 2:
        return None
    margin = design.options.practical_margin
    sizes = sorted(runs)
    low, high = sizes[0], sizes[-1]
    head = paired(_by_seed(runs[high]), _by_seed(runs[low]))
    strength = head.strength(margin)
    lr = lr_text(math.log10(runs[low][0].lr))
    held = f"{', '.join(f'{s}: {steps[s]}' for s in sizes)} optimizer steps, learning rate {lr}"
    said = _said(head)
    if strength is Strength.INSUFFICIENT_DATA:
        verdict = f"too few paired seeds to compare batch sizes {high} and {low} ({said})"
    elif decisive(strength):
        better, worse = (high, low) if head.estimate > 0 else (low, high)
        verdict = (
            f"at equal optimizer steps batch size {better} beat {worse} on the test split ({said})"
        )
    elif strength is Strength.NO_CLEAR_WINNER:
        verdict = (
            f"no clear winner: at equal optimizer steps batch sizes {high} and {low} differ by "
            f"{said}, inside the ±{100 * margin:g}-point margin"
        )
    else:
        verdict = (
            f"cannot tell whether batch size {high} or {low} is better at equal optimizer "
            f"steps ({said}){_seeds_needed(head, margin)}"
        )
    verdict += (
        f" ({held}; a larger batch sees proportionally more samples and averages gradients and "
        "BN statistics over more of them)"
    )
    by_size = {s: paired(_by_seed(runs[s]), _by_seed(runs[low])) for s in sizes[1:]}
    effect = {
        "compared": f"batch size {high} - {low} at equal optimizer steps",
        "estimate": head.estimate,
        "unit": "accuracy (fraction)",
        "margin": margin,
        "steps": steps,
        "epochs": {s: int(runs[s][0].settings["epochs"]) for s in sizes},
        "vs_smallest": {s: p.as_dict() for s, p in by_size.items()},
        "mean_test_accuracy": {s: _mean(_by_seed(runs[s]).values()) for s in sizes},
        "seeds": head.n,
    }
    plot = {
        "kind": "groups",
        "label": "test accuracy at equal optimizer steps",
        "groups": {str(s): list(_by_seed(runs[s]).values()) for s in sizes},
    }
    return _confirmation(
        Practice.BATCH_SIZE_LEARNING_RATE, verdict, strength, effect, head.ci95, head.n, plot
    )


def ghost_bn_confirmation(design: _Design) -> Finding | None:
    arms = _two_arms(design, "ghost_bn", "ghost_batch_size")
    ghosts = [k for k in arms if k is not None]
    if None not in arms or not ghosts:
        return None
    size = int(ghosts[0])
    margin = design.options.practical_margin
    diff = paired(arms[size], arms[None])
    strength = diff.strength(margin)
    said = _said(diff)
    if strength is Strength.INSUFFICIENT_DATA:
        verdict = f"too few seeds to judge ghost batches ({said})"
    elif decisive(strength):
        better = "better" if diff.estimate > 0 else "worse"
        verdict = f"ghost batches of {size} samples did {better} than plain BN ({said})"
    elif strength is Strength.NO_CLEAR_WINNER:
        verdict = f"ghost batches of {size} samples made no practical difference ({said})"
    else:
        verdict = f"cannot tell whether ghost batches of {size} samples helped ({said})"
    effect = {
        "compared": f"ghost batches of {size} - plain BN",
        "estimate": diff.estimate,
        "unit": "accuracy (fraction)",
        "margin": margin,
        "ghost_batch_size": size,
        "seeds": diff.n,
    }
    plot = {
        "kind": "groups",
        "label": "test accuracy",
        "groups": {"plain": list(arms[None].values()), f"ghost {size}": list(arms[size].values())},
    }
    return _confirmation(Practice.GHOST_BN, verdict, strength, effect, diff.ci95, diff.n, plot)


# --- the report -----------------------------------------------------------------------------------


def _warnings(design: _Design, status: str | None) -> list[str]:
    opts = design.options
    out = []
    finished = len({r.number for r in design.runs})
    if design.waiting or (status is not None and status in ("queued", "running", "paused")):
        out.append(
            f"the confirmation study is {status or 'still running'}: {finished} of "
            f"{design.planned} planned runs finished; its findings may still change"
        )
    if design.failed:
        listed = ", ".join(f"{k}: {n}" for k, n in sorted(design.failed.items()))
        out.append(
            f"{sum(design.failed.values())} planned run(s) failed and were not retried "
            f"({listed}): comparisons that needed them use the seeds left"
        )
    if design.off_plan:
        out.append(
            f"{design.off_plan} trial(s) off the plan (the sampler's replacements for failed "
            "planned runs) are left out of the confirmation findings"
        )
    size = f"{design.test_size} samples" if design.test_size else "size unknown"
    out.append(
        f"confirmation findings read test accuracy ({size}), a split no trial was selected on, "
        f"over {design.seeds} fresh seed(s); their 95% intervals are t intervals over seeds and "
        "cover run-to-run variation, not the sampling error of the test set itself"
    )
    if design.test_size:
        trained = [r.test for r in design.runs if r.trained]
        level = float(np.median(trained)) if trained else 0.9
        se = math.sqrt(level * (1 - level) / design.test_size)
        if 2 * se > opts.practical_margin:
            out.append(
                f"one run's test accuracy near {100 * level:.0f}% has a sampling error of "
                f"±{100 * se:.1f} points on {design.test_size} test samples, more than half the "
                f"±{100 * opts.practical_margin:g}-point margin"
            )
    return out


def analyze_confirmation(
    trials: Sequence[FrozenTrial],
    spec: StudySpec,
    options: AnalysisOptions | None = None,
    status: str | None = None,
) -> StudyReport:
    """The confirmation study's findings (``source="confirmation"``) and caveats.

    Args:
        trials: all of the confirmation study's trials, in any state.
        spec: its spec (as search/confirm.py planned it).
        options: margins as for the study-level analysis.
        status: the study's status, when known (a running study's findings may change).
    """
    options = options or AnalysisOptions()
    design = _design(trials, spec, options)
    grids = _grids(design)
    built: list[Finding | None] = []
    if grids:
        built += [placement_confirmation(design, grids), stability_confirmation(design, grids)]
    built += [
        batch_size_confirmation(design),
        bn_momentum_confirmation(design),
        eval_statistics_confirmation(design),
        precise_bn_confirmation(design),
        initialization_confirmation(design),
        ghost_bn_confirmation(design),
    ]
    findings = sorted(
        (f for f in built if f is not None), key=lambda f: _PRACTICES.index(f.practice)
    )
    data = read_study(trials, spec, options)
    info = ConfirmationInfo(
        study_name=spec.name,
        status=status,
        planned=design.planned,
        finished=len(design.runs),
        failed=sum(design.failed.values()),
        off_plan=design.off_plan,
        seeds=design.seeds,
        test_size=design.test_size,
    )
    return StudyReport(
        study_name=spec.name,
        objective_metric=spec.objective.metric.value,
        direction=spec.directions[0],
        metric="test_accuracy",
        counts=data.counts,
        thresholds=data.thresholds,
        options=options,
        findings=findings,
        warnings=_warnings(design, status),
        confirmation=info,
    )


_PRACTICES = list(Practice)


def combine_reports(study: StudyReport | None, confirmation: StudyReport) -> StudyReport:
    """One report: per practice the confirmation's findings first, then the study's (labelled
    by their ``source``); the confirmation's caveats first. Without the study (deleted), the
    confirmation's report alone."""
    if study is None:
        return confirmation
    findings = sorted(
        [*confirmation.findings, *study.findings],
        key=lambda f: (_PRACTICES.index(f.practice), f.source is not Source.CONFIRMATION),
    )
    observational = [w for w in study.warnings if "confirm with `bnsweep confirm`" in w]
    rest = [w for w in study.warnings if w not in observational]
    lead = (
        "findings marked source=study come from the search itself: observational data from an "
        "adaptive sampler, which can suggest but not prove; those marked source=confirmation come "
        f"from the controlled runs of {confirmation.study_name!r}"
    )
    return study.model_copy(
        update={
            "findings": findings,
            "warnings": [lead, *confirmation.warnings, *rest],
            "confirmation": confirmation.confirmation,
        }
    )
