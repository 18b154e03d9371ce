"""Reading a study's results back: best trial(s) as a ready-to-train config."""

from __future__ import annotations

from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from search.objective import train_config
from search.spec import StudySpec


def trial_summary(trial: FrozenTrial) -> dict[str, Any]:
    """A trial as plain data: number, state, values, params, user attrs, times."""
    return {
        "number": trial.number,
        "state": trial.state.name.lower(),
        "values": trial.values,
        "params": trial.params,
        "user_attrs": trial.user_attrs,
        "datetime_start": trial.datetime_start.isoformat() if trial.datetime_start else None,
        "datetime_complete": (
            trial.datetime_complete.isoformat() if trial.datetime_complete else None
        ),
        "duration_seconds": trial.duration.total_seconds() if trial.duration else None,
    }


def best_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The best trial (single objective) or the Pareto front (two objectives), best on the first
    objective first; [] if none yet.

    Diverged trials are COMPLETE with a penalty value worse than any trained run: they are best
    only when nothing trained, and their ``status`` attr says so.
    """
    if not any(t.state is TrialState.COMPLETE for t in study.get_trials(deepcopy=False)):
        return []
    if len(study.directions) == 1:
        return [study.best_trial]
    sign = 1 if study.directions[0] == optuna.study.StudyDirection.MAXIMIZE else -1
    return sorted(study.best_trials, key=lambda t: (-sign * t.values[0], t.number))


def best_summary(study: optuna.Study, spec: StudySpec) -> dict[str, Any] | None:
    """The best result with a config ready for ``bnsweep train --config``; None if none yet."""
    trials = best_trials(study)
    if not trials:
        return None
    best = trials[0]
    config = train_config(spec, best.params, device="auto").to_dict()
    return {
        "trial_number": best.number,
        "values": best.values,
        "objectives": [
            {"metric": t.metric.value, "direction": t.resolved_direction}
            for t in spec.objective.targets
        ],
        "params": best.params,
        "metrics": {
            k: best.user_attrs.get(k)
            for k in (
                "status",
                "val_accuracy",
                "val_loss",
                "test_accuracy",
                "test_accuracy_batch_stats",
                "test_loss",
                "train_seconds",
                "samples_per_second",
                "epochs_run",
            )
        },
        "config": config,
        "pareto_front": [trial_summary(t) for t in trials] if len(trials) > 1 else None,
    }
