"""/api/v1/studies: submit a spec, follow a study, read its trials and results, cancel, delete."""

from __future__ import annotations

import contextlib
import json
import warnings
from enum import StrEnum
from typing import Annotated, Any

import optuna
from fastapi import APIRouter, Path, Query, Request, Response
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.engine import Engine
from starlette.concurrency import run_in_threadpool

from models.errors import first_line
from search.db import StudyRow, StudyStatus
from search.errors import SpecError
from search.insights import study_insights
from search.results import best_summary, trial_summary
from search.spec import Limits, StudySpec, parse_spec, parse_spec_text
from search.studies import (
    cancel_study,
    counts_for,
    create_study,
    delete_study,
    get_study_row,
    list_study_rows,
    spec_of,
)
from service.deps import EngineDep, SettingsDep, StorageDep, WriteKey
from service.errors import NotFoundError
from service.schemas import (
    BestPublic,
    ErrorBody,
    ImportancePublic,
    InsightsPublic,
    Page,
    StudyPublic,
    StudySummary,
    TrialPublic,
)

router = APIRouter(prefix="/studies", tags=["studies"])

StudyId = Annotated[
    int, Path(ge=1, le=2**31 - 1, description="Study id (names: ?name= on the list)")
]
Offset = Annotated[int, Query(ge=0, le=2**31 - 1)]
Limit = Annotated[int, Query(ge=1, le=500)]
YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml")
_WRITE_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "No or unknown API key"},
    403: {"model": ErrorBody, "description": "Revoked API key"},
}
_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody, "description": "No such study"}
}
# The body is parsed by hand (JSON or YAML); this documents it for /docs and schemathesis.
_SPEC_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": StudySpec.model_json_schema(mode="validation")},
            "application/yaml": {"schema": {"type": "string"}},
        },
    }
}


def parse_body(body: bytes, content_type: str | None, limits: Limits) -> StudySpec:
    """A spec from a JSON or YAML request body; SpecError (422) naming the field otherwise."""
    media = (content_type or "application/json").split(";")[0].strip().lower()
    try:
        if media in YAML_TYPES:
            return parse_spec_text(body, limits)
        try:
            data = json.loads(body)
        except ValueError as exc:  # also UnicodeDecodeError
            raise SpecError("spec", f"not valid JSON: {exc}") from None
        return parse_spec(data, limits)
    except RecursionError:
        raise SpecError("spec", "nested too deeply") from None


@router.post(
    "",
    status_code=201,
    openapi_extra=_SPEC_BODY,
    responses={
        **_WRITE_ERRORS,
        409: {"model": ErrorBody, "description": "Name taken"},
        413: {"model": ErrorBody, "description": "Body too large"},
        422: {"model": ErrorBody, "description": "Invalid spec; `loc` names the field"},
    },
)
async def submit(
    request: Request, settings: SettingsDep, engine: EngineDep, storage: StorageDep, key: WriteKey
) -> StudyPublic:
    """Create a study from a spec (JSON, or YAML with ``Content-Type: application/yaml``)."""
    body = await request.body()
    content_type = request.headers.get("content-type")

    def create() -> StudyPublic:
        spec = parse_body(body, content_type, settings.limits)
        return _public(engine, storage, create_study(engine, storage, spec, owner=key))

    return await run_in_threadpool(create)


@router.get("")
def list_studies(
    engine: EngineDep,
    status: StudyStatus | None = None,
    name: Annotated[str | None, Query(max_length=200)] = None,
    offset: Offset = 0,
    limit: Limit = 50,
) -> Page[StudySummary]:
    """Studies, newest first; filter by status or by exact name."""
    page, total = list_study_rows(engine, status.value if status else None, name, offset, limit)
    items = [StudySummary.from_row(r) for r in page]
    return Page[StudySummary](items=items, total=total, offset=offset, limit=limit)


@router.get("/{study_id}", responses=_NOT_FOUND)
def get_study(study_id: StudyId, engine: EngineDep, storage: StorageDep) -> StudyPublic:
    """Status, trial counts, progress and best value so far."""
    return _public(engine, storage, get_study_row(engine, study_id))


class TrialStateName(StrEnum):
    COMPLETE = "complete"
    PRUNED = "pruned"
    FAIL = "fail"
    RUNNING = "running"
    WAITING = "waiting"


class SortKey(StrEnum):
    NUMBER = "number"
    VALUE = "value"


class Order(StrEnum):
    ASC = "asc"
    DESC = "desc"


@router.get("/{study_id}/trials", responses=_NOT_FOUND)
def list_trials(
    study_id: StudyId,
    engine: EngineDep,
    storage: StorageDep,
    state: TrialStateName | None = None,
    sort: SortKey = SortKey.NUMBER,
    order: Order = Order.ASC,
    offset: Offset = 0,
    limit: Limit = 50,
) -> Page[TrialPublic]:
    """Trials of a study; sorting by value puts trials without one last (multi-objective: the
    first objective)."""
    row = get_study_row(engine, study_id)
    states = (TrialState[state.name],) if state else None
    trials = storage.get_all_trials(row.optuna_study_id, deepcopy=False, states=states)
    trials = _sorted(trials, sort, order)
    items = [TrialPublic.model_validate(trial_summary(t)) for t in trials[offset : offset + limit]]
    return Page[TrialPublic](items=items, total=len(trials), offset=offset, limit=limit)


def _sorted(trials: list[FrozenTrial], sort: SortKey, order: Order) -> list[FrozenTrial]:
    reverse = order is Order.DESC
    if sort is SortKey.NUMBER:
        return sorted(trials, key=lambda t: t.number, reverse=reverse)
    valued = sorted((t for t in trials if t.values), key=lambda t: t.values[0], reverse=reverse)
    return valued + [t for t in trials if not t.values]


@router.get(
    "/{study_id}/best",
    responses={404: {"model": ErrorBody, "description": "No such study, or no complete trial"}},
)
def best(study_id: StudyId, engine: EngineDep, storage: StorageDep) -> BestPublic:
    """The best trial (or Pareto front) with a config ready to train."""
    row = get_study_row(engine, study_id)
    study = optuna.load_study(study_name=row.name, storage=storage)
    summary = best_summary(study, spec_of(row))
    if summary is None:
        raise NotFoundError(f"study {row.name!r} has no complete trial yet")
    return BestPublic.model_validate(summary)


@router.get("/{study_id}/importance", responses=_NOT_FOUND)
def importance(study_id: StudyId, engine: EngineDep, storage: StorageDep) -> ImportancePublic:
    """Parameter importances (Optuna's default evaluator) for the primary objective."""
    row = get_study_row(engine, study_id)
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


@router.get("/{study_id}/insights", responses=_NOT_FOUND)
def insights(study_id: StudyId, engine: EngineDep, storage: StorageDep) -> InsightsPublic:
    """Which BN practices mattered (placement, batch size × learning rate, BN momentum,
    eval-mode statistics, ghost / precise BN), with the evidence and its strength."""
    row = get_study_row(engine, study_id)
    trials = storage.get_all_trials(row.optuna_study_id, states=(TrialState.COMPLETE,))
    return InsightsPublic.model_validate(study_insights(trials, spec_of(row)))


@router.post(
    "/{study_id}/cancel",
    responses={**_WRITE_ERRORS, **_NOT_FOUND, 409: {"model": ErrorBody, "description": "Ended"}},
)
def cancel(study_id: StudyId, engine: EngineDep, storage: StorageDep, _: WriteKey) -> StudyPublic:
    """Stop a study: no new trials; running trials stop at their next epoch."""
    return _public(engine, storage, cancel_study(engine, study_id))


@router.delete(
    "/{study_id}",
    status_code=204,
    response_class=Response,
    responses={**_WRITE_ERRORS, **_NOT_FOUND, 409: {"model": ErrorBody, "description": "Running"}},
)
def delete(
    study_id: StudyId,
    settings: SettingsDep,
    engine: EngineDep,
    storage: StorageDep,
    _: WriteKey,
) -> None:
    """Delete a study that is not running, with its Optuna study and trials."""
    delete_study(engine, storage, study_id, settings.grace_period_s)


def _public(engine: Engine, storage: optuna.storages.RDBStorage, row: StudyRow) -> StudyPublic:
    """A study with its counts and best value so far (single-objective studies only)."""
    counts = counts_for(engine, row.optuna_study_id)
    best_value = None
    if counts.complete and not spec_of(row).is_multi_objective:
        # ValueError: no complete trial after all (the study was deleted meanwhile)
        with contextlib.suppress(ValueError):
            best_value = storage.get_best_trial(row.optuna_study_id).values[0]
    return StudyPublic.build(row, counts, best_value)
