"""Study analysis, the ground floor: trials read into records, the failed-to-train rule, the
statistics primitives and the strength labels."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from search.analysis import (
    AnalysisOptions,
    Strength,
    _stats,
    analyze_study,
    infer_val_size,
    read_study,
)
from search.analysis._common import difference_strength, slope_strength
from tests.search.test_analysis import CHANCE, VAL_SIZE, make_spec, make_trial

REPO = Path(__file__).resolve().parents[2]


def _granular_fillers() -> list[optuna.trial.FrozenTrial]:
    """Enough distinct accuracies (k / 320) for the validation-set size to be inferred."""
    return [make_trial(0.01, k / VAL_SIZE) for k in range(100, 300, 15)]


def test_diverged_trial_scores_chance_not_its_penalty_and_pruned_trial_where_it_stopped() -> None:
    older_pruned = optuna.create_trial(  # no val_accuracy attr: the pruner's values hold it
        state=TrialState.PRUNED,
        user_attrs={
            "status": "pruned",
            "train_config": make_trial(0.1, 0.5).user_attrs["train_config"],
        },
        intermediate_values={1: 0.3, 2: 0.45},
    )
    trials = [
        make_trial(1.0, 0.0, status="diverged"),
        make_trial(0.1, 0.5, pruned_at=3),
        older_pruned,
    ]
    assert trials[0].value == 0.0
    diverged, pruned, older = read_study(trials, make_spec()).records
    assert diverged.accuracy == CHANCE and diverged.failure == "diverged"
    assert pruned.pruned and pruned.accuracy == 0.5 and pruned.epochs_run == 3
    assert pruned.failure is None
    assert older.accuracy == 0.45 and older.epochs_run == 2


def test_runs_that_end_at_chance_or_whose_loss_explodes_failed_to_train_without_any_nan() -> None:
    exploded = [
        {"epoch": 1, "train_loss": 2.0, "val_loss": 2.0, "val_accuracy": 0.5},
        {"epoch": 2, "train_loss": 40.0, "val_loss": 2.1, "val_accuracy": 0.6},
    ]
    trials = [make_trial(3.0, 0.14), make_trial(3.0, 0.6, history=exploded), make_trial(3.0, 0.16)]
    data = read_study(trials + _granular_fillers(), make_spec())
    t = data.thresholds
    assert t.val_size == VAL_SIZE and t.val_size_inferred
    assert t.trained_above == pytest.approx(CHANCE + 3 * math.sqrt(0.09 / VAL_SIZE))
    assert "320-sample validation set" in t.rule and "15.0%" in t.rule
    at_chance, blown_up, barely = data.records[:3]
    assert (at_chance.failure, blown_up.failure, barely.failure) == ("chance", "loss", None)
    assert all(r.status == "ok" for r in data.records)


def test_effective_learning_rate_follows_the_linear_scaling_rule_when_it_is_on() -> None:
    scaled = make_trial(0.1, 0.8, lr_scaling=True, batch_size=512)
    plain = make_trial(0.1, 0.8, batch_size=512)
    records = read_study([scaled, plain], make_spec()).records
    assert [r.log_lr for r in records] == pytest.approx([math.log10(0.2), math.log10(0.1)])


def test_failed_trials_are_counted_and_left_out_with_a_warning() -> None:
    interrupted = optuna.create_trial(
        state=TrialState.FAIL, user_attrs={"status": "interrupted", "reason": "SIGTERM"}
    )
    trials = [make_trial(0.1, 0.8), make_trial(0.1, 0.0, status="oom"), interrupted]
    report = analyze_study(trials, make_spec())
    assert report.counts.used == 1
    assert report.counts.by_state == {"complete": 1, "fail": 2}
    assert "2 failed trial(s) are left out (interrupted: 1, oom: 1)" in report.warnings


def test_trials_without_num_classes_fall_back_to_the_option_and_say_so() -> None:
    xs = np.linspace(-2.0, 1.0, 12)
    trials = [make_trial(10**x, 0.11 if x > 0 else 0.8, num_classes=None) for x in xs]
    unknown = analyze_study(trials, make_spec())
    assert unknown.thresholds.chance_accuracy is None
    assert unknown.counts.failed_to_train == 0
    assert any("number of classes is unknown" in w for w in unknown.warnings)
    given = analyze_study(trials, make_spec(), AnalysisOptions(num_classes=10))
    assert given.thresholds.chance_accuracy == CHANCE
    assert given.counts.failed_to_train == int((xs > 0).sum())


def test_validation_set_size_is_inferred_only_from_enough_distinct_accuracies() -> None:
    assert infer_val_size([k / 320 for k in range(50, 300, 7)]) == 320
    assert infer_val_size([k / 320 for k in (50, 60, 70)]) is None
    assert infer_val_size(list(np.random.default_rng(0).uniform(0.2, 0.9, 20))) is None


def test_level_window_is_where_trained_runs_most_outnumber_failures() -> None:
    x = np.arange(10.0)
    one = np.arange(10, dtype=np.int64)[None, :]
    w = _stats.level_windows(x, np.array([0, 0, 1, 1, 1, 0, 1, 1, 0, 0.0]), one, 0.5)
    assert (w.low[0], w.high[0], w.low_open[0], w.high_open[0]) == (1.5, 7.5, False, False)
    assert not _stats.level_windows(x, np.zeros(10), one, 0.5).found[0]
    everywhere = _stats.level_windows(x, np.ones(10), one, 0.5)
    assert everywhere.low_open[0] and everywhere.high_open[0]
    tied = np.array([0.0, 0.0, 1.0, 1.0, 2.0, 2.0])
    ties = _stats.level_windows(tied, np.array([1, 1, 1, 0, 0, 0.0]), one[:, :6], 0.5)
    assert ties.high[0] in (0.5, 1.5)  # an edge never falls between equal learning rates


def test_ks_two_sample_separates_shifted_samples_from_alike_ones() -> None:
    rng = np.random.default_rng(0)
    a, b, shifted = rng.normal(0, 1, 60), rng.normal(0, 1, 60), rng.normal(1.5, 1, 60)
    assert _stats.ks_two_sample(a, b)[1] > 0.05
    assert _stats.ks_two_sample(a, shifted)[1] < 1e-4


@pytest.mark.parametrize(
    ("ci", "expected"),
    [
        ((0.02, 0.05), Strength.STRONG),
        ((0.005, 0.05), Strength.MODERATE),
        ((-0.005, 0.05), Strength.WEAK),
        ((-0.005, 0.008), Strength.NO_CLEAR_WINNER),
        ((0.002, 0.008), Strength.NO_CLEAR_WINNER),
        ((-0.05, -0.02), Strength.STRONG),
        (None, Strength.INSUFFICIENT_DATA),
    ],
)
def test_difference_strength_follows_the_interval_rules(
    ci: tuple[float, float] | None, expected: Strength
) -> None:
    assert difference_strength(ci, margin=0.01) is expected


@pytest.mark.parametrize(
    ("ci", "expected"),
    [
        ((0.26, 1.32), Strength.WEAK),  # the interval: linear and square root both fit
        ((0.8, 1.2), Strength.STRONG),
        ((0.6, 1.4), Strength.MODERATE),
        ((-0.1, 0.3), Strength.STRONG),
    ],
)
def test_slope_strength_counts_the_scaling_rules_the_interval_allows(
    ci: tuple[float, float], expected: Strength
) -> None:
    assert slope_strength(ci) is expected


def test_importing_the_analysis_loads_neither_torch_nor_scipy_nor_matplotlib() -> None:
    code = (
        "import sys, search.analysis\n"
        "heavy = {'torch', 'scipy', 'matplotlib'} & {m.split('.')[0] for m in sys.modules}\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=60)
