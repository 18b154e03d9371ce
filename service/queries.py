"""Reads of one study as wire models, shared by the API routes and the CLI's ``--storage`` mode
(so both answer with the same models, from the same code)."""

from __future__ import annotations

import contextlib
import warnings

import optuna
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.engine import Engine

from models.errors import first_line
from search.analysis import StudyReport, analyze_study
from search.db import StudyRow
from search.errors import NotFoundError
from search.results import BestResult, TrialSummary, best_result, best_trials
from search.states import TrialStateName
from search.studies import counts_for, spec_of
from service.schemas import ImportancePublic, Order, Page, SortKey, StudyPublic


def study_public(
    engine: Engine, storage: optuna.storages.BaseStorage, row: StudyRow
) -> StudyPublic:
    """A study with its counts and best value so far (single-objective studies only)."""
    counts = counts_for(engine, row.optuna_study_id)
    best_value = None
    if counts.complete and not spec_of(row).is_multi_objective:
        # ValueError: no complete trial after all (the study was deleted meanwhile)
        with contextlib.suppress(ValueError):
            best_value = storage.get_best_trial(row.optuna_study_id).values[0]
    return StudyPublic.build(row, counts, best_value)


def trial_page(
    storage: optuna.storages.BaseStorage,
    row: StudyRow,
    state: TrialStateName | None = None,
    sort: SortKey = SortKey.NUMBER,
    order: Order = Order.ASC,
    offset: int = 0,
    limit: int = 50,
) -> Page[TrialSummary]:
    """A page of a study's trials; sorting by value puts trials without one last."""
    states = (TrialState[state.name],) if state else None
    trials = storage.get_all_trials(row.optuna_study_id, deepcopy=False, states=states)
    trials = _sorted(trials, sort, order)
    items = [TrialSummary.of(t) for t in trials[offset : offset + limit]]
    return Page[TrialSummary](items=items, total=len(trials), offset=offset, limit=limit)


def _sorted(trials: list[FrozenTrial], sort: SortKey, order: Order) -> list[FrozenTrial]:
    reverse = order is Order.DESC
    if sort is SortKey.NUMBER:
        return sorted(trials, key=lambda t: t.number, reverse=reverse)
    valued = sorted((t for t in trials if t.values), key=lambda t: t.values[0], reverse=reverse)
    return valued + [t for t in trials if not t.values]


def best(storage: optuna.storages.BaseStorage, row: StudyRow) -> BestResult:
    """The best trial (or Pareto front) with a config ready to train; NotFoundError if none."""
    study = optuna.load_study(study_name=row.name, storage=storage)
    result = best_result(spec_of(row), best_trials(study))
    if result is None:
        raise NotFoundError(f"study {row.name!r} has no complete trial yet")
    return result


def importance(storage: optuna.storages.BaseStorage, row: StudyRow) -> ImportancePublic:
    """Parameter importances (Optuna's default evaluator) for the primary objective."""
    spec = spec_of(row)
    target = spec.objective.metric.value
    complete = storage.get_all_trials(
        row.optuna_study_id, deepcopy=False, states=(TrialState.COMPLETE,)
    )
    if len(complete) < 2:
        return ImportancePublic(
            importances={}, target=target, reason="needs at least 2 complete trials"
        )
    if not spec.search_space.searched():
        return ImportancePublic(importances={}, target=target, reason="nothing is searched")
    study = optuna.load_study(study_name=row.name, storage=storage)
    # The default evaluator (PED-ANOVA) reads the direction from a single-objective study, but
    # treats a target function as "lower is better": negate a maximized primary objective.
    sign = -1.0 if spec.objective.resolved_direction == "maximize" else 1.0
    objective = None if not spec.is_multi_objective else (lambda t: sign * t.values[0])
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*computes the importances of params")
            values = optuna.importance.get_param_importances(study, target=objective)
    except (ValueError, RuntimeError) as exc:  # e.g. every trial has the same params
        return ImportancePublic(importances={}, target=target, reason=first_line(exc))
    return ImportancePublic(importances=dict(values), target=target)


def report(storage: optuna.storages.BaseStorage, row: StudyRow) -> StudyReport:
    """Which BN practices mattered, each with a verdict, an effect and its 95% interval, and the
    caveats of reading an adaptive sampler's trials (search/analysis)."""
    trials = storage.get_all_trials(row.optuna_study_id, deepcopy=False)
    return analyze_study(trials, spec_of(row))
