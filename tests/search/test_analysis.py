"""Study-level BN analysis: each verdict follows a truth planted in synthetic trials.

The trials are built as Optuna FrozenTrials with the user attrs a worker writes; each test plants
a known effect (or a known absence of one, hidden behind a sampler's bias) and checks the verdict,
its strength and its sign.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import optuna
import pytest
from optuna.trial import FrozenTrial, TrialState

from models.config import TrainConfig
from search.analysis import (
    AnalysisOptions,
    Finding,
    Practice,
    Strength,
    StudyReport,
    analyze_study,
)
from search.spec import StudySpec

CHANCE = 0.1
VAL_SIZE = 320  # accuracies are whole numbers of validation samples, as the trainer's are
BEFORE, AFTER, NONE = "before_activation", "after_activation", "none"

_DIMENSIONS: dict[str, Any] = {
    "batch_size": {"choices": [32, 64, 128, 256, 512]},
    "learning_rate": {"low": 1e-4, "high": 100.0, "log": True},
    "bn_momentum": {"low": 1e-3, "high": 0.5, "log": True},
    "bn_placement": {"choices": [BEFORE, AFTER, NONE]},
    "init": {"choices": ["kaiming", "normal"]},
    "ghost_batch_size": {"choices": [None, 16]},
    "precise_bn": {"choices": [0, 20]},
}


def make_spec(*searched: str, name: str = "analysis") -> StudySpec:
    """A spec searching ``searched`` (the analysis reads only which dimensions vary)."""
    space: dict[str, Any] = {"batch_size": 128, "bn_momentum": 0.1, "bn_placement": BEFORE}
    space |= {k: _DIMENSIONS[k] for k in ("learning_rate", *searched)}
    return StudySpec.model_validate(
        {
            "name": name,
            "dataset": {"name": "mnist1d"},
            "model": {"name": "cnn1d"},
            "search_space": space,
        }
    )


def make_trial(
    lr: float,
    accuracy: float,
    *,
    status: str = "ok",
    pruned_at: int | None = None,
    test: tuple[float, float] | None = None,
    num_classes: int | None = 10,
    history: list[dict[str, float]] | None = None,
    **settings: Any,
) -> FrozenTrial:
    """A trial as a worker records it. ``test`` = (running, batch statistics) test accuracy;
    ``settings`` are TrainConfig fields (bn_placement, batch_size, init, seed, ...)."""
    config = TrainConfig(learning_rate=lr, **settings)
    diverged = status == "diverged"
    accuracy = round(accuracy * VAL_SIZE) / VAL_SIZE
    attrs: dict[str, Any] = {
        "status": "pruned" if pruned_at else status,
        "reason": "",
        "train_config": config.to_dict(),
        "epochs_run": pruned_at or config.epochs,
        "val_accuracy": None if diverged else accuracy,
        "val_loss": None if diverged else 0.5,
        "test_accuracy": None if test is None else test[0],
        "test_accuracy_batch_stats": None if test is None else test[1],
        "train_seconds": 1.0,
    }
    if num_classes is not None:
        attrs["num_classes"] = num_classes
    if history is not None:
        attrs["history"] = history
    if pruned_at:
        steps = {e: accuracy for e in range(1, pruned_at + 1)}
        return optuna.create_trial(
            state=TrialState.PRUNED, user_attrs=attrs, intermediate_values=steps
        )
    if status in ("oom", "error"):
        return optuna.create_trial(state=TrialState.FAIL, user_attrs=attrs)
    return optuna.create_trial(value=0.0 if diverged else accuracy, user_attrs=attrs)


def bump(log_lr: float, peak: float = -1.0, width: float = 0.6, top: float = 0.9) -> float:
    """Accuracy vs log10 lr: chance far from the best learning rate, ``top`` at ``peak``."""
    return CHANCE + (top - CHANCE) * math.exp(-0.5 * ((log_lr - peak) / width) ** 2)


def get(report: StudyReport, practice: Practice) -> Finding:
    (found,) = [f for f in report.findings if f.practice is practice]
    return found


def test_placement_that_does_not_matter_is_no_clear_winner_despite_a_biased_sampler() -> None:
    rng = np.random.default_rng(1)
    trials = []
    # The same curve for both; the "sampler" gave before_activation the good learning rates.
    for _ in range(60):
        x = rng.normal(-1.0, 0.25)
        trials.append(
            make_trial(10**x, bump(x) + 0.004 * rng.standard_normal(), bn_placement=BEFORE)
        )
    for _ in range(60):
        x = rng.uniform(-3.0, 1.0)
        trials.append(
            make_trial(10**x, bump(x) + 0.004 * rng.standard_normal(), bn_placement=AFTER)
        )
    naive = np.median([t.value for t in trials[:60]]) - np.median([t.value for t in trials[60:]])
    assert naive > 0.2  # what a comparison over everything sampled would call a clear win

    report = analyze_study(trials, make_spec("bn_placement"))
    f = get(report, Practice.PLACEMENT)
    assert f.strength is Strength.NO_CLEAR_WINNER
    assert f.verdict.startswith("no clear winner")
    assert f.ci95 is not None and f.ci95[0] >= -0.01 and f.ci95[1] <= 0.01
    assert "made no measurable difference" in f.verdict  # the article's advice, said plainly
    assert any("different learning rates" in w for w in report.warnings)


def test_a_real_placement_effect_is_strong_with_the_right_sign() -> None:
    rng = np.random.default_rng(2)
    trials = []
    for placement, lift in ((BEFORE, 0.0), (AFTER, 0.05)):
        for _ in range(30):
            x = rng.uniform(-2.5, 0.5)
            acc = bump(x, top=0.85) + lift + 0.01 * rng.standard_normal()
            trials.append(make_trial(10**x, acc, bn_placement=placement))
    f = get(analyze_study(trials, make_spec("bn_placement")), Practice.PLACEMENT)
    assert f.strength is Strength.STRONG
    assert f.effect["compared"] == f"{AFTER} - {BEFORE}"
    assert f.ci95 is not None and f.ci95[0] < 0.05 < f.ci95[1] and f.ci95[0] > 0.01
    assert "contradicts the article" in f.verdict


def test_runs_without_bn_that_end_at_chance_above_a_learning_rate_narrow_its_window() -> None:
    rng = np.random.default_rng(3)
    trials = []
    for placement, breaks_at in ((BEFORE, 0.5), (NONE, -0.5)):
        for _ in range(40):
            x = rng.uniform(-3.0, 1.5)
            # Above its breaking point a run ends at chance, status ok: no NaN, no "diverged".
            acc = 0.85 if x < breaks_at else CHANCE + 0.01 * rng.random()
            trials.append(
                make_trial(10**x, acc + 0.005 * rng.standard_normal(), bn_placement=placement)
            )
    stable_by_status = max(t.user_attrs["train_config"]["learning_rate"] for t in trials[40:])
    assert stable_by_status > 10  # "largest lr that did not diverge" would say 10+ for none

    report = analyze_study(trials, make_spec("bn_placement"))
    f = get(report, Practice.LEARNING_RATE_STABILITY)
    _, high_none = f.effect["windows"][NONE]
    _, high_bn = f.effect["windows"][BEFORE]
    assert 10**-0.7 < high_none < 10**-0.3
    assert 10**0.3 < high_bn < 10**0.7
    assert f.strength is Strength.STRONG
    assert f.ci95 is not None and f.ci95[0] < 1.0 < f.ci95[1]
    assert "BN trains at larger learning rates" in f.verdict
    assert "below 15.0%" in f.verdict  # the threshold, from the 320-sample validation set
    assert report.counts.diverged == 0 and report.counts.failed_to_train > 15


def test_duplicates_are_collapsed_and_do_not_tighten_the_interval() -> None:
    rng = np.random.default_rng(4)
    base: list[dict[str, Any]] = []
    for i in range(20):
        x = rng.uniform(-2.0, 0.0)
        acc = bump(x) + 0.01 * rng.standard_normal()
        batch = acc + 0.003 * rng.standard_normal()
        placement = (BEFORE, AFTER)[i % 2]
        base.append(
            dict(lr=10**x, accuracy=acc, test=(batch - 0.02, batch), bn_placement=placement)
        )

    def study(copies: int) -> StudyReport:
        trials = [make_trial(**kw) for kw in base for _ in range(copies)]
        return analyze_study(trials, make_spec("bn_placement"))

    once, thrice = study(1), study(3)
    assert thrice.counts.used == 60 and thrice.counts.configurations == 20
    assert thrice.counts.collapsed == 40
    for practice in (Practice.EVAL_STATISTICS, Practice.PLACEMENT):
        assert get(thrice, practice).ci95 == pytest.approx(get(once, practice).ci95, abs=1e-12)
    assert any(
        "repeated the settings of another (40 with the same seed" in w for w in thrice.warnings
    )
    assert not any("repeated the settings" in w for w in once.warnings)


def test_pruned_runs_count_where_they_stopped_and_diverged_runs_at_chance() -> None:
    rng = np.random.default_rng(5)
    trials = []
    for placement in (BEFORE, AFTER):
        for _ in range(30):
            x = rng.uniform(-2.5, 1.5)
            if x < 0.0:
                acc = bump(x) + 0.005 * rng.standard_normal()
                trials.append(make_trial(10**x, acc, bn_placement=placement))
            elif placement == BEFORE:  # the pruner stopped these near chance at epoch 2
                trials.append(
                    make_trial(10**x, CHANCE + 0.002, pruned_at=2, bn_placement=placement)
                )
            else:  # these ran on until their loss became NaN
                trials.append(make_trial(10**x, 0.0, status="diverged", bn_placement=placement))
    report = analyze_study(trials, make_spec("bn_placement"))
    f = get(report, Practice.PLACEMENT)
    assert f.strength in (Strength.NO_CLEAR_WINNER, Strength.WEAK)
    # Diverged runs at the penalty 0 would put before_activation ~5 points ahead.
    assert f.ci95 is not None and f.ci95[0] < 0 < f.ci95[1]
    assert abs(f.effect["estimate"]) < 0.005
    pruned = sum(t.state is TrialState.PRUNED for t in trials)
    assert f.effect["pruned_included"] == {BEFORE: pruned, AFTER: 0}
    assert f"{pruned} pruned runs count at the epoch they reached" in f.verdict
    assert any(
        "pruner stopped placement before_activation more often" in w for w in report.warnings
    )
    assert report.counts.diverged == sum(t.user_attrs["status"] == "diverged" for t in trials)


def _scaling_study(
    slope: float, sizes: list[int], per_size: int, width: float, noise: float, seed: int
) -> list[FrozenTrial]:
    rng = np.random.default_rng(seed)
    trials = []
    for size in sizes:
        peak = -1.0 + slope * math.log10(size / 128)
        for x in rng.uniform(peak - 1.5, peak + 1.5, per_size):
            acc = bump(x, peak=peak, width=width) + noise * rng.standard_normal()
            trials.append(make_trial(10**x, acc, batch_size=size))
    return trials


def test_batch_size_slope_whose_interval_covers_half_and_one_cannot_tell_the_rules_apart() -> None:
    trials = _scaling_study(0.75, [64, 128, 256], per_size=12, width=0.9, noise=0.03, seed=6)
    f = get(analyze_study(trials, make_spec("batch_size")), Practice.BATCH_SIZE_LEARNING_RATE)
    assert f.ci95 is not None and f.ci95[0] <= 0.5 and f.ci95[1] >= 1.0
    assert f.strength is Strength.WEAK
    assert f.verdict.startswith("cannot tell linear from square-root scaling")
    assert "4× fewer optimizer steps" in f.verdict  # the fixed-epoch confound


def test_clear_linear_scaling_is_recognised() -> None:
    trials = _scaling_study(
        1.0, [32, 64, 128, 256, 512], per_size=30, width=0.3, noise=0.005, seed=7
    )
    f = get(analyze_study(trials, make_spec("batch_size")), Practice.BATCH_SIZE_LEARNING_RATE)
    assert f.ci95 is not None and f.ci95[0] > 0.5 and f.ci95[0] <= 1.0 <= f.ci95[1]
    assert f.strength is Strength.STRONG
    assert "linear scaling rule" in f.verdict


def _momentum_study(staleness: float, coupled: bool, seed: int) -> list[FrozenTrial]:
    """bn_momentum moves only the running statistics (by ``staleness`` per decade); a coupled
    sampler pairs small bn_momentum with poor learning rates."""
    rng = np.random.default_rng(seed)
    trials = []
    for _ in range(40):
        u = rng.uniform(-3.0, -0.3)  # log10 bn_momentum
        x = -2.6 + 0.5 * (u + 3.0) + 0.1 * rng.standard_normal() if coupled else rng.uniform(-2, 0)
        batch = bump(x) + 0.005 * rng.standard_normal()
        running = batch + staleness * (u + 0.3) + 0.002 * rng.standard_normal()
        trials.append(make_trial(10**x, running, test=(running, batch), bn_momentum=10**u))
    return trials


def test_bn_momentum_effect_is_read_through_the_running_statistics() -> None:
    f = get(
        analyze_study(_momentum_study(0.03, coupled=False, seed=8), make_spec("bn_momentum")),
        Practice.BN_MOMENTUM,
    )
    assert f.strength is Strength.STRONG
    assert f.ci95 is not None and f.ci95[0] < 0.03 < f.ci95[1]
    assert "running averages go stale" in f.verdict


def test_bn_momentum_association_built_by_the_sampler_is_not_called_an_effect() -> None:
    report = analyze_study(_momentum_study(0.0, coupled=True, seed=9), make_spec("bn_momentum"))
    f = get(report, Practice.BN_MOMENTUM)
    naive = f.effect["unadjusted_running_accuracy"]
    assert naive["estimate"] > 0.1 and naive["ci95"][0] > 0.05  # a plain correlation: "strong"
    assert f.strength is Strength.NO_CLEAR_WINNER
    assert "the sampler's doing" in f.verdict


def test_initialization_that_matters_only_without_bn_shows_bn_removing_the_dependence() -> None:
    rng = np.random.default_rng(10)
    trials = []
    cells = {(BEFORE, "kaiming"): 0.88, (BEFORE, "normal"): 0.88, (NONE, "kaiming"): 0.85}
    for placement in (BEFORE, NONE):
        for init in ("kaiming", "normal"):
            for _ in range(15):
                x = rng.uniform(-2.5, 0.0)
                acc = cells.get((placement, init), 0.3) + 0.01 * rng.standard_normal()
                trials.append(make_trial(10**x, acc, bn_placement=placement, init=init))
    f = get(analyze_study(trials, make_spec("bn_placement", "init")), Practice.INITIALIZATION)
    assert f.effect["reference"] == "kaiming"
    assert f.strength is Strength.STRONG
    assert f.ci95 is not None and f.ci95[0] < 0.55 < f.ci95[1]
    assert "BN reduces the dependence on initialization" in f.verdict


def test_precise_bn_is_judged_by_the_gap_it_closes_and_only_searched_practices_appear() -> None:
    rng = np.random.default_rng(11)
    trials = []
    for precise in (0, 20):
        for _ in range(20):
            x = rng.uniform(-2.0, 0.0)
            batch = bump(x) + 0.02 * rng.standard_normal()  # noisy: only the gap is precise
            running = batch - (0.0 if precise else 0.04) + 0.003 * rng.standard_normal()
            trials.append(
                make_trial(10**x, running, test=(running, batch), precise_bn_batches=precise)
            )
    report = analyze_study(trials, make_spec("precise_bn"))
    f = get(report, Practice.PRECISE_BN)
    assert f.strength is Strength.STRONG
    assert f.ci95 is not None and f.ci95[0] < 0.04 < f.ci95[1]
    practices = {f.practice for f in report.findings}
    assert practices == {
        Practice.PRECISE_BN,
        Practice.EVAL_STATISTICS,
        Practice.LEARNING_RATE_STABILITY,
    }


def test_report_is_deterministic_json_with_the_issue_shape() -> None:
    rng = np.random.default_rng(12)
    trials = [
        make_trial(10**x, bump(x), bn_placement=(BEFORE, AFTER, NONE)[i % 3])
        for i, x in enumerate(rng.uniform(-3, 1, 45))
    ]
    spec = make_spec("bn_placement")
    first = analyze_study(trials, spec, AnalysisOptions(seed=3)).model_dump_json()
    assert analyze_study(trials, spec, AnalysisOptions(seed=3)).model_dump_json() == first
    data = json.loads(first)
    assert "NaN" not in first and "Infinity" not in first
    for f in data["findings"]:
        assert set(f) >= {"practice", "verdict", "strength", "source", "effect", "ci95"}
        assert f["source"] == "study"
    assert data["warnings"][0].startswith("this is observational data from an adaptive sampler")
