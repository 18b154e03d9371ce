"""Insights: each BN practice's verdict follows the evidence planted in the trials."""

from __future__ import annotations

from typing import Any

import numpy as np
import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import FrozenTrial

from search.insights import study_insights, superiority
from tests.support import tiny_spec

SPEC = tiny_spec(
    "insights",
    search_space={
        "batch_size": {"choices": [32, 64, 128, 256]},
        "learning_rate": {"low": 0.001, "high": 1.0, "log": True},
        "bn_momentum": {"low": 0.001, "high": 0.5, "log": True},
        "bn_placement": {"choices": ["before_activation", "after_activation", "none"]},
    },
)
DISTS = {
    "batch_size": CategoricalDistribution([32, 64, 128, 256]),
    "learning_rate": FloatDistribution(0.001, 10.0, log=True),
    "bn_momentum": FloatDistribution(0.001, 0.5, log=True),
    "bn_placement": CategoricalDistribution(["before_activation", "after_activation", "none"]),
}


def trial(value: float, attrs: dict[str, Any] | None = None, **params: Any) -> FrozenTrial:
    base = {
        "batch_size": 64,
        "learning_rate": 0.1,
        "bn_momentum": 0.1,
        "bn_placement": "before_activation",
    }
    return optuna.create_trial(
        value=value,
        params=base | params,
        distributions=DISTS,
        user_attrs={"status": "ok"} | (attrs or {}),
    )


def finding(result: dict[str, Any], practice: str) -> dict[str, Any]:
    (f,) = [f for f in result["findings"] if f["practice"] == practice]
    return f


def test_superiority_is_a_probability_of_beating() -> None:
    assert superiority([3, 4], [1, 2]) == 1.0
    assert superiority([1], [1]) == 0.5
    assert superiority([1, 3], [2]) == 0.5


def test_placement_that_wins_every_comparison_is_strong_evidence() -> None:
    rng = np.random.default_rng(0)
    trials = [
        trial(0.9 + 0.01 * rng.standard_normal(), bn_placement="before_activation")
        for _ in range(5)
    ]
    trials += [
        trial(0.8 + 0.01 * rng.standard_normal(), bn_placement="after_activation") for _ in range(5)
    ]
    trials += [trial(0.0, {"status": "diverged"}, bn_placement="none") for _ in range(2)]
    trials += [trial(0.6, bn_placement="none") for _ in range(3)]
    f = finding(study_insights(trials, SPEC), "bn_placement")
    assert f["strength"] == "strong"
    assert f["evidence"]["ranking"] == ["before_activation", "after_activation", "none"]
    assert f["evidence"]["groups"]["none"]["diverged"] == 2
    assert f["verdict"].startswith("placement before_activation did best")


def test_mixed_placements_are_weak_evidence_and_two_trials_are_not_enough() -> None:
    mixed = [trial(v, bn_placement="before_activation") for v in (0.8, 0.7, 0.9)]
    mixed += [trial(v, bn_placement="none") for v in (0.85, 0.75, 0.8)]
    assert finding(study_insights(mixed, SPEC), "bn_placement")["strength"] == "weak"
    few = [trial(0.9, bn_placement="before_activation"), trial(0.5, bn_placement="none")] * 2
    assert finding(study_insights(few, SPEC), "bn_placement")["strength"] == "insufficient data"


def test_best_lr_proportional_to_batch_size_reads_as_linear_scaling() -> None:
    trials = []
    for bs in (32, 64, 128, 256):
        best_lr = 0.4 * bs / 256
        for lr, value in ((best_lr, 0.95), (best_lr * 4, 0.7), (best_lr / 4, 0.8)):
            trials.append(trial(value, batch_size=bs, learning_rate=lr))
    f = finding(study_insights(trials, SPEC), "batch_size_x_learning_rate")
    assert abs(f["evidence"]["log_log_slope"] - 1.0) < 1e-6
    assert "linear scaling rule" in f["verdict"]
    assert f["evidence"]["by_batch_size"]["128"]["best_learning_rate"] == 0.2


def test_bn_momentum_trend_and_eval_mode_gap_are_found() -> None:
    trials = []
    for m in np.geomspace(0.001, 0.5, 12):
        gap = 0.2 * (1 - np.log(m / 0.001) / np.log(500))  # large gap at low momentum
        trials.append(
            trial(
                0.7 + 0.05 * np.log10(m / 0.001),
                bn_momentum=float(m),
                attrs={"test_accuracy": 0.9 - gap, "test_accuracy_batch_stats": 0.9},
            )
        )
    result = study_insights(trials, SPEC)
    momentum = finding(result, "bn_momentum")
    assert momentum["strength"] == "strong" and momentum["verdict"].startswith("higher")
    eval_mode = finding(result, "eval_mode_statistics")
    assert eval_mode["evidence"]["median_gap_points"] > 5
    assert "raise it or use precise BN" in eval_mode["verdict"]


def test_minimized_metric_ranks_lower_values_first() -> None:
    spec = tiny_spec(
        "loss",
        objective={"metric": "val_loss"},
        search_space={"bn_placement": {"choices": ["before_activation", "none"]}},
    )
    trials = [trial(0.2, bn_placement="before_activation") for _ in range(3)]
    trials += [trial(0.9, bn_placement="none") for _ in range(3)]
    result = study_insights(trials, spec)
    assert result["direction"] == "minimize"
    assert finding(result, "bn_placement")["evidence"]["ranking"][0] == "before_activation"
