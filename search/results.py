"""Reading a study's results back, as the wire models the API returns and the client parses: a
trial, the best trial(s) with a ready-to-train config.

Light on purpose (pydantic only at import time): the CLI's API commands parse responses into
these models without importing Optuna, SQLAlchemy or torch.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import AfterValidator, BaseModel

from search.states import TrialStateName

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

    from search.spec import StudySpec


def _as_utc(value: datetime | None) -> datetime | None:
    """SQLite returns naive datetimes; every timestamp bnsweep stores is UTC."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


UtcDatetime = Annotated[datetime, AfterValidator(_as_utc)]


class TrialSummary(BaseModel):
    """One trial: number, state, values, params, user attrs, times."""

    number: int
    state: TrialStateName
    values: list[float] | None
    params: dict[str, Any]
    user_attrs: dict[str, Any]
    datetime_start: UtcDatetime | None
    datetime_complete: UtcDatetime | None
    duration_seconds: float | None

    @classmethod
    def of(cls, trial: FrozenTrial) -> TrialSummary:
        return cls(
            number=trial.number,
            state=TrialStateName(trial.state.name.lower()),
            values=trial.values,
            params=trial.params,
            user_attrs=trial.user_attrs,
            datetime_start=trial.datetime_start,
            datetime_complete=trial.datetime_complete,
            duration_seconds=trial.duration.total_seconds() if trial.duration else None,
        )


class ObjectiveName(BaseModel):
    metric: str
    direction: str


BEST_METRICS = (
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


class BestResult(BaseModel):
    """The best trial with a config ready for ``bnsweep train --config``; with two objectives,
    the Pareto front too (best on the first objective first)."""

    trial_number: int
    values: list[float]
    objectives: list[ObjectiveName]
    params: dict[str, Any]
    metrics: dict[str, Any]
    config: dict[str, Any]
    pareto_front: list[TrialSummary] | None


def best_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The best trial (single objective) or the Pareto front (two objectives), best on the first
    objective first; [] if none yet.

    Diverged trials are COMPLETE with a penalty value worse than any trained run: they are best
    only when nothing trained, and their ``status`` attr says so.
    """
    complete = TrialStateName.COMPLETE
    if not any(TrialStateName(t.state.name) is complete for t in study.get_trials(deepcopy=False)):
        return []
    if len(study.directions) == 1:
        return [study.best_trial]
    sign = 1 if study.directions[0].name == "MAXIMIZE" else -1
    return sorted(study.best_trials, key=lambda t: (-sign * t.values[0], t.number))


def best_result(spec: StudySpec, trials: list[FrozenTrial]) -> BestResult | None:
    """The best of ``trials`` (as ``best_trials`` chose them) with its ready-to-train config; None
    if there is none yet."""
    if not trials:
        return None
    best = trials[0]
    assert best.values is not None  # complete trials have values
    return BestResult(
        trial_number=best.number,
        values=best.values,
        objectives=[
            ObjectiveName(metric=t.metric.value, direction=t.resolved_direction)
            for t in spec.objective.targets
        ],
        params=best.params,
        metrics={k: best.user_attrs.get(k) for k in BEST_METRICS},
        config=spec.train_config(best.params, device="auto").to_dict(),
        pareto_front=[TrialSummary.of(t) for t in trials] if len(trials) > 1 else None,
    )
