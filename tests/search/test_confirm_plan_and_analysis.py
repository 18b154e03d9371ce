"""Confirmation runs without training: the planner's plan, and the confirmation findings on
planned trials whose results follow a truth planted by construction.

The parent study is a handful of FrozenTrials; the confirmation study's trials are the plan's
points, "run" by a known function of their settings and seed (each seed shifts every run of it
alike, as a real seed's batch order and initial weights do, plus a little noise of its own).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import optuna
import pytest
from optuna.trial import FrozenTrial, TrialState

from models.config import TrainConfig
from search.analysis import (
    Finding,
    Practice,
    Source,
    Strength,
    StudyReport,
    analyze_confirmation,
    analyze_study,
    combine_reports,
    render_html,
)
from search.confirm import ConfirmationPlan, ConfirmOptions, Factor, plan_confirmation
from search.errors import StudyStateError
from search.optuna_map import distributions
from search.validate import parse_spec

BEFORE, AFTER, NONE = "before_activation", "after_activation", "none"
TEST_SIZE, VAL_SIZE = 800, 320
PARENT_BEST_LR = {BEFORE: 0.1, AFTER: 0.1, NONE: 0.05}


def parent_spec(**space: Any) -> Any:
    return parse_spec(
        {
            "name": "parent",
            "dataset": {"name": "mnist1d", "params": {"num_samples": 4000}},
            "model": {"name": "cnn1d"},
            "search_space": {
                "batch_size": {"choices": [32, 64, 128]},
                "learning_rate": {"low": 0.001, "high": 3.0, "log": True},
                "bn_momentum": {"low": 0.01, "high": 0.5, "log": True},
                "bn_placement": {"choices": [BEFORE, AFTER, NONE]},
            }
            | space,
            "training": {"epochs": 10},
        }
    )


def parent_trials(spec: Any) -> list[FrozenTrial]:
    """Each placement best at its PARENT_BEST_LR (before_activation best overall), seed 0."""
    dists = distributions(spec)
    trials = []
    for placement, best_lr in PARENT_BEST_LR.items():
        for lr, value in ((best_lr, 0.9 if placement == BEFORE else 0.85), (best_lr * 3, 0.5)):
            params = {
                "batch_size": 64,
                "learning_rate": lr,
                "bn_momentum": 0.1,
                "bn_placement": placement,
            }
            attrs = {"status": "ok", "train_config": spec.train_config(params).to_dict()}
            trials.append(
                optuna.create_trial(
                    value=value,
                    params=params,
                    distributions={k: dists[k] for k in params},
                    user_attrs=attrs,
                )
            )
    return trials


@pytest.fixture(scope="module")
def plan() -> ConfirmationPlan:
    spec = parent_spec()
    return plan_confirmation(spec, parent_trials(spec), "parent-confirm", ConfirmOptions(seeds=3))


# --- the plan -------------------------------------------------------------------------------------


def roles(plan: ConfirmationPlan, factor: Factor) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(settings by spec name, role) of every planned point with a role of ``factor``."""
    out = []
    for point in plan.points:
        settings = plan.best | point.params
        out += [(settings, r) for r in point.roles if r["factor"] == factor.value]
    return out


def test_the_plan_varies_one_factor_at_a_time_around_the_best_over_fresh_seeds(plan) -> None:
    assert plan.best["bn_placement"] == BEFORE and plan.best["learning_rate"] == 0.1
    assert plan.seeds == (1, 2, 3)  # the parent ran seed 0: its best carries the winner's curse
    spec = plan.spec
    assert spec.budget.n_trials == len(spec.enqueue) == len(plan.points)
    assert [p.params for p in plan.points] == spec.enqueue
    assert spec.execution.fuse == "auto" and spec.pruner.name == "none"
    searched = set(spec.search_space.searched())
    assert searched == {"bn_placement", "learning_rate", "init", "batch_size", "epochs", "seed"} | {
        "precise_bn"
    }
    # Everything else is held at the best configuration's value.
    fixed = spec.search_space.fixed()
    assert fixed["bn_momentum"] == plan.best["bn_momentum"] and fixed["momentum"] == 0.9
    assert 0.1 in spec.training.bn_momentum_probe and 0.001 in spec.training.bn_momentum_probe
    # Each factor's points differ from the best only in that factor's settings (and the seed).
    allowed = {
        Factor.LR_GRID: {"bn_placement", "learning_rate"},
        Factor.INIT: {"bn_placement", "learning_rate", "init"},
        Factor.BATCH_SIZE: {"batch_size", "epochs"},
        Factor.PRECISE_BN: {"precise_bn"},
        Factor.BEST: set(),
    }
    for factor, names in allowed.items():
        for settings, _ in roles(plan, factor):
            changed = {k for k, v in settings.items() if v != plan.best[k]} - {"seed"}
            assert changed <= names, (factor, changed)
    attrs = plan.enqueue_attrs()
    assert attrs[0]["plan"]["index"] == 0 and {"factor": "best"} in attrs[0]["plan"]["roles"]


def test_each_placement_gets_a_learning_rate_grid_around_its_own_best(plan) -> None:
    grid: dict[str, set[float]] = {}
    for settings, role in roles(plan, Factor.LR_GRID):
        grid.setdefault(role["placement"], set()).add(settings["learning_rate"])
        if role["offset"] == 0:
            assert settings["learning_rate"] == pytest.approx(PARENT_BEST_LR[role["placement"]])
    assert set(grid) == {BEFORE, AFTER, NONE}
    for placement, lrs in grid.items():
        center = math.log10(PARENT_BEST_LR[placement])
        offsets = sorted(round(math.log10(lr) - center, 2) for lr in lrs)
        assert offsets == list(ConfirmOptions().lr_offsets)


def test_batch_sizes_are_compared_at_equal_optimizer_steps(plan) -> None:
    steps = {r["batch_size"]: r["steps"] for _, r in roles(plan, Factor.BATCH_SIZE)}
    epochs = {r["batch_size"]: r["epochs"] for _, r in roles(plan, Factor.BATCH_SIZE)}
    assert sorted(steps) == [32, 64, 128]
    assert epochs == {32: 5, 64: 10, 128: 20}
    reference = steps[64]
    per_epoch = {size: math.ceil(2880 / size) for size in steps}
    for size, taken in steps.items():  # equal to within one epoch's rounding
        assert abs(taken - reference) <= per_epoch[size]


def test_initializations_are_planned_with_and_without_bn(plan) -> None:
    cells = {(r["init"], r["bn"]) for _, r in roles(plan, Factor.INIT)}
    assert cells == {(i, bn) for i in ("kaiming", "xavier", "normal") for bn in (True, False)}
    for settings, _ in roles(plan, Factor.INIT):
        lr = PARENT_BEST_LR[settings["bn_placement"]]
        assert settings["learning_rate"] == pytest.approx(lr)  # its placement's own best


def test_a_study_without_a_trained_trial_cannot_be_confirmed() -> None:
    spec = parent_spec()
    failed = [optuna.create_trial(state=TrialState.FAIL, user_attrs={"status": "oom"})]
    with pytest.raises(StudyStateError, match="no complete trial"):
        plan_confirmation(spec, failed, "x-confirm")


# --- findings on planted truths ------------------------------------------------------------------


def truth(s: dict[str, Any], seed: int, rng: np.random.Generator) -> dict[str, Any]:
    """What a run of settings ``s`` "scores": placement does not matter; without BN runs fail
    above lr 0.3, with BN above 3; init normal costs 30 points without BN, nothing with BN;
    bn_momentum 0.001 costs 5 points at evaluation; batch size and precise BN do not matter."""
    bn = s["bn_placement"] != NONE
    limit = 3.0 if bn else 0.3
    lr = s["learning_rate"]
    offset = 0.02 * (seed - 2)  # every run of a seed shifted alike
    base = 0.88 - 0.08 * abs(math.log10(lr / 0.1)) + offset
    if s["init"] == "normal" and not bn:
        base -= 0.30
    diverged = lr > limit

    def acc(x: float, size: int) -> float:
        return round(min(0.99, x + 0.001 * rng.standard_normal()) * size) / size

    if diverged:
        return {"status": "diverged", "val": None, "test": None, "batch": None, "probe": []}
    test = acc(base, TEST_SIZE)
    probe = [
        [m, acc(base - (0.05 if m == 0.001 else 0.0), TEST_SIZE)] for m in (0.001, 0.01, 0.1, 0.3)
    ]
    return {
        "status": "ok",
        "val": acc(base, VAL_SIZE),
        "test": test,
        "batch": acc(base, TEST_SIZE) if bn else test,
        "probe": probe if bn else [],
    }


def run_plan(
    plan: ConfirmationPlan, fail: set[int] = frozenset(), off_plan: int = 0
) -> list[FrozenTrial]:
    """The plan's trials as workers would record them (``fail``: indices that ran out of
    memory; ``off_plan``: sampler trials that replaced them)."""
    rng = np.random.default_rng(0)
    dists = distributions(plan.spec)
    trials = []
    for i, (point, attrs) in enumerate(zip(plan.points, plan.enqueue_attrs(), strict=True)):
        config = plan.spec.train_config(point.params)
        user_attrs = dict(attrs) | {"train_config": config.to_dict(), "num_classes": 10}
        if i in fail:
            user_attrs["status"] = "oom"
            trials.append(
                optuna.create_trial(
                    state=TrialState.FAIL,
                    params=point.params,
                    distributions=dists,
                    user_attrs=user_attrs,
                )
            )
            continue
        r = truth(plan.best | point.params, int(config.seed), rng)
        user_attrs |= {
            "status": r["status"],
            "val_accuracy": r["val"],
            "val_loss": None if r["val"] is None else 0.4,
            "test_accuracy": r["test"],
            "test_accuracy_batch_stats": r["batch"],
            "test_accuracy_by_bn_momentum": r["probe"],
        }
        trials.append(
            optuna.create_trial(
                value=r["val"] or 0.0,
                params=point.params,
                distributions=dists,
                user_attrs=user_attrs,
            )
        )
    for _ in range(off_plan):
        params = dict(plan.points[0].params) | {"seed": 1}
        attrs = {"status": "ok", "train_config": TrainConfig().to_dict(), "val_accuracy": 0.5}
        trials.append(
            optuna.create_trial(value=0.5, params=params, distributions=dists, user_attrs=attrs)
        )
    for number, trial in enumerate(trials):
        trial.number = number  # as a study numbers them
    return trials


def get(report: StudyReport, practice: Practice, source: Source = Source.CONFIRMATION) -> Finding:
    (found,) = [f for f in report.findings if f.practice is practice and f.source is source]
    return found


@pytest.fixture(scope="module")
def report(plan) -> StudyReport:
    return analyze_confirmation(run_plan(plan), plan.spec)


def test_a_placement_that_does_not_matter_is_no_clear_winner(report) -> None:
    f = get(report, Practice.PLACEMENT)
    assert f.strength is Strength.NO_CLEAR_WINNER, f.verdict
    assert f.ci95 is not None and -0.01 <= f.ci95[0] <= f.ci95[1] <= 0.01
    assert f.sample_size == 3 and f.effect["best_lr"][BEFORE] == pytest.approx(0.1)


def test_a_learning_rate_that_diverges_without_bn_gives_bn_the_wider_window(report) -> None:
    f = get(report, Practice.LEARNING_RATE_STABILITY)
    # BN trains up to 3: its grid (0.01 to 10) finds the edge (1.0, the last grid point below 3),
    # so the difference is an estimate, not a lower bound.
    assert f.strength is Strength.STRONG and f.effect["estimate"] > 0.3, f.verdict
    assert "BN allows larger learning rates" in f.verdict and "at least" not in f.verdict
    windows = f.effect["windows"]
    assert windows[NONE][1] <= 0.3 < windows[BEFORE][1]


def test_init_matters_far_less_with_bn(report) -> None:
    f = get(report, Practice.INITIALIZATION)
    assert f.strength is Strength.STRONG and f.effect["estimate"] == pytest.approx(0.30, abs=0.02)
    assert "BN reduces the dependence on initialization" in f.verdict
    assert "normal - kaiming without BN" in f.effect["effects"]


def test_the_probe_finds_the_stale_momentum_and_says_momentum_cannot_regularize(report) -> None:
    f = get(report, Practice.BN_MOMENTUM)
    assert f.strength is Strength.STRONG and f.effect["estimate"] == pytest.approx(-0.05, abs=0.01)
    assert f.effect["compared"].startswith("running-statistics accuracy at bn_momentum 0.001")
    by_momentum = f.effect["by_momentum"]
    assert abs(by_momentum["0.3"]["estimate"]) < 0.01
    assert "cannot change the trained weights" in f.verdict


def test_factors_that_do_not_matter_are_no_clear_winner_with_tight_seeds(report) -> None:
    for practice in (Practice.BATCH_SIZE_LEARNING_RATE, Practice.PRECISE_BN):
        f = get(report, practice)
        assert f.strength is Strength.NO_CLEAR_WINNER, (practice, f.verdict)
    assert get(report, Practice.EVAL_STATISTICS).strength is Strength.NO_CLEAR_WINNER


def test_failed_and_off_plan_runs_are_left_out_with_a_warning(plan) -> None:
    trials = run_plan(plan, fail={1}, off_plan=1)
    report = analyze_confirmation(trials, plan.spec, status="completed")
    assert report.confirmation is not None
    assert (report.confirmation.failed, report.confirmation.off_plan) == (1, 1)
    assert report.confirmation.finished == len(plan.points) - 1
    assert any("1 planned run(s) failed" in w for w in report.warnings)
    assert any("off the plan" in w for w in report.warnings)
    assert any("test accuracy (800 samples)" in w for w in report.warnings)
    assert get(report, Practice.PLACEMENT).strength is Strength.NO_CLEAR_WINNER


def test_the_combined_report_puts_confirmation_first_and_keeps_the_study_findings(
    plan, report
) -> None:
    spec = parent_spec()
    study = analyze_study(parent_trials(spec), spec)
    combined = combine_reports(study, report)
    placement = [f for f in combined.findings if f.practice is Practice.PLACEMENT]
    assert [f.source for f in placement] == [Source.CONFIRMATION, Source.STUDY]
    assert combined.study_name == "parent" and combined.confirmation is not None
    assert "source=confirmation" in combined.warnings[0]
    assert not any("confirm with `bnsweep confirm`" in w for w in combined.warnings)
    page = render_html(combined)
    assert (
        page.count("<svg") >= len(report.findings)
        and "<script" not in page
        and 'src="http' not in page
        and "<link" not in page  # self-contained: no script, no fetched asset
    )
    assert "test accuracy" in page and "parent-confirm" in page


def test_a_confirmation_not_run_yet_adds_only_its_caveat(plan) -> None:
    waiting = [
        optuna.create_trial(state=TrialState.WAITING, user_attrs=attrs)
        for attrs in plan.enqueue_attrs()
    ]
    report = analyze_confirmation(waiting, plan.spec, status="queued")
    assert report.findings == []
    assert report.warnings[0].startswith("the confirmation study is queued: 0 of 84 planned runs")
