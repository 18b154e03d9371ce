"""/api/v1/studies: submit a spec, follow a study, read its trials and results, cancel, delete."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query, Request, Response
from fastapi.responses import HTMLResponse
from sqlalchemy.engine import Engine
from starlette.concurrency import run_in_threadpool

from search.confirm import ConfirmOptions, create_planned, prepare_confirmation
from search.errors import SpecError
from search.limits import Limits
from search.results import BestResult, TrialSummary
from search.spec import StudySpec
from search.states import StudyStatus, TrialStateName
from search.studies import (
    cancel_study,
    create_study,
    delete_study,
    get_study_row,
    list_study_rows,
    pause_study,
    resume_study,
)
from search.validate import parse_spec, parse_spec_text
from service import queries, quotas
from service.analyses import AnalysisCache
from service.auth import Caller, check_owner
from service.deps import AnalysesDep, EngineDep, ReadKey, SettingsDep, StorageDep, WriteKey
from service.queries import AnalysisPendingError, study_public
from service.schemas import (
    ConfirmCreate,
    ErrorBody,
    ImportancePublic,
    Order,
    Page,
    ReportPublic,
    SortKey,
    StudyPublic,
    StudySummary,
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
    403: {"model": ErrorBody, "description": "Revoked API key, or not the study's owner"},
}
# No control characters (PostgreSQL cannot store NUL): refused here on every backend, as 422.
_NAME_QUERY = Query(max_length=200, pattern=r"^[^\x00-\x1f\x7f]*$")
_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody, "description": "No such study"}
}
# The body is parsed by hand (JSON or YAML); this documents it for /docs and schemathesis.
_SPEC_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/StudySpec"}},
            "application/yaml": {"schema": {"type": "string"}},
        },
    }
}


def spec_schemas() -> dict[str, Any]:
    """StudySpec and the models it uses, as OpenAPI components (``_SPEC_BODY`` refers to them):
    pydantic's ``#/$defs/...`` references would point nowhere inside an OpenAPI document."""
    schema = StudySpec.model_json_schema(
        mode="validation", ref_template="#/components/schemas/{model}"
    )
    return {"StudySpec": schema, **schema.pop("$defs", {})}


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
        408: {"model": ErrorBody, "description": "Body not received in time"},
        409: {"model": ErrorBody, "description": "Name taken"},
        413: {"model": ErrorBody, "description": "Body too large"},
        422: {"model": ErrorBody, "description": "Invalid spec; `loc` names the field"},
        429: {"model": ErrorBody, "description": "Over the key's quota"},
    },
)
async def submit(
    request: Request, settings: SettingsDep, engine: EngineDep, storage: StorageDep, key: WriteKey
) -> StudyPublic:
    """Create a study from a spec (JSON, or YAML with ``Content-Type: application/yaml``); it
    belongs to the key that created it."""
    body = await request.body()  # after the key was checked (WriteKey): see service/limits.py
    content_type = request.headers.get("content-type")

    def create() -> StudyPublic:
        spec = parse_body(body, content_type, settings.limits)
        with quotas.submission(engine, key, spec, settings):
            row = create_study(engine, storage, spec, owner=key.name if key else None)
        return study_public(engine, storage, row)

    return await run_in_threadpool(create)


@router.get("")
def list_studies(
    engine: EngineDep,
    reader: ReadKey,
    status: StudyStatus | None = None,
    name: Annotated[str | None, _NAME_QUERY] = None,
    offset: Offset = 0,
    limit: Limit = 50,
) -> Page[StudySummary]:
    """Studies, newest first; filter by status or by exact name. Owners are shown to callers
    with a valid key only."""
    page, total = list_study_rows(engine, status.value if status else None, name, offset, limit)
    items = [StudySummary.from_row(r).for_reader(reader) for r in page]
    return Page[StudySummary](items=items, total=total, offset=offset, limit=limit)


@router.get("/{study_id}", responses=_NOT_FOUND)
def get_study(
    study_id: StudyId, engine: EngineDep, storage: StorageDep, reader: ReadKey
) -> StudyPublic:
    """Status, trial counts, progress and best value so far (the owner: to callers with a key)."""
    return study_public(engine, storage, get_study_row(engine, study_id)).for_reader(reader)


@router.get("/{study_id}/trials", responses=_NOT_FOUND, response_model=Page[TrialSummary])
def list_trials(
    study_id: StudyId,
    engine: EngineDep,
    state: Annotated[
        TrialStateName | None, Query(description="complete | pruned | fail | running | waiting")
    ] = None,
    sort: SortKey = SortKey.NUMBER,
    order: Order = Order.ASC,
    offset: Offset = 0,
    limit: Limit = 50,
) -> Response:
    """Trials of a study; sorting by value puts trials without one last (multi-objective: the
    first objective). State names in any case (Optuna's COMPLETE too)."""
    row = get_study_row(engine, study_id)
    body = queries.trial_page_json(engine, row, state, sort, order, offset, limit)
    return Response(body, media_type="application/json")


@router.get(
    "/{study_id}/best",
    responses={404: {"model": ErrorBody, "description": "No such study, or no complete trial"}},
)
def best(study_id: StudyId, engine: EngineDep) -> BestResult:
    """The best trial (or Pareto front) with a config ready to train."""
    return queries.best(engine, get_study_row(engine, study_id))


# Analyses are computed once per count of finished trials, in the background, and served from
# storage with that count, when they were computed and `stale` (service/analyses.py).
_ANALYSIS_RESPONSES: dict[int | str, dict[str, Any]] = {
    **_NOT_FOUND,
    503: {
        "model": ErrorBody,
        "description": "Not computed yet for this study (first request): retry after Retry-After",
    },
}


# The HTML page's errors are JSON like every other error: said so explicitly, since a model would
# be documented under the route's own media type (text/html).
_JSON_ERROR = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
_HTML_ANALYSIS_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"description": response["description"], "content": _JSON_ERROR}
    for code, response in _ANALYSIS_RESPONSES.items()
}


def _pending(exc: AnalysisPendingError) -> HTTPException:
    return HTTPException(503, str(exc), headers={"Retry-After": str(exc.retry_after_s)})


def _report(analyses: AnalysisCache, engine: Engine, study_id: int) -> Response:
    # The stored JSON as is: a report grows with the study (~2 MB at 10,000 trials), and parsing
    # and validating it again at each request would cost ~100 ms of CPU there.
    try:
        body = queries.report_json(analyses, get_study_row(engine, study_id))
    except AnalysisPendingError as exc:
        raise _pending(exc) from None
    return Response(body, media_type="application/json")


@router.get("/{study_id}/importance", responses=_NOT_FOUND)
def importance(study_id: StudyId, engine: EngineDep, analyses: AnalysesDep) -> ImportancePublic:
    """Parameter importances (Optuna's default evaluator) for the primary objective, with how
    current they are (`computed_at`, `trials_counted`, `stale`)."""
    return queries.importance(analyses, get_study_row(engine, study_id))


@router.get("/{study_id}/report", response_model=ReportPublic, responses=_ANALYSIS_RESPONSES)
def report(study_id: StudyId, engine: EngineDep, analyses: AnalysesDep) -> Response:
    """Why a configuration won: one finding per BN practice of the study (placement, learning-rate
    stability, batch size × learning rate, BN momentum, eval-mode statistics, initialization,
    ghost / precise BN), each with a verdict, an effect with its 95% interval and its source;
    and the warnings that come with reading an adaptive sampler's trials. With how current it is
    (`computed_at`, `trials_counted`, `stale`)."""
    return _report(analyses, engine, study_id)


@router.get(
    "/{study_id}/report.html",
    response_class=HTMLResponse,
    responses={
        **_HTML_ANALYSIS_RESPONSES,
        200: {"content": {"text/html": {}}, "description": "The report"},
    },
)
def report_html(study_id: StudyId, engine: EngineDep, analyses: AnalysesDep) -> HTMLResponse:
    """The report as one self-contained HTML page with its plots (no script, no CDN), drawn
    when the report was computed; headers say for how many trials and whether stale."""
    try:
        page, cached = queries.report_page(analyses, get_study_row(engine, study_id))
    except AnalysisPendingError as exc:
        raise _pending(exc) from None
    headers = {
        "X-Bnsweep-Trials-Counted": str(cached.trials_counted),
        "X-Bnsweep-Stale": str(cached.stale).lower(),
    }
    return HTMLResponse(page, headers=headers)


@router.get(
    "/{study_id}/insights",
    response_model=ReportPublic,
    responses=_ANALYSIS_RESPONSES,
    deprecated=True,
)
def insights(study_id: StudyId, engine: EngineDep, analyses: AnalysesDep) -> Response:
    """The report, under its former name."""
    return _report(analyses, engine, study_id)


@router.post(
    "/{study_id}/confirm",
    status_code=201,
    responses={
        **_WRITE_ERRORS,
        **_NOT_FOUND,
        400: {"model": ErrorBody, "description": "Body is not text (not UTF-8)"},
        409: {
            "model": ErrorBody,
            "description": "A confirmation study, no complete trial yet, or a confirmation "
            "already active",
        },
        422: {"model": ErrorBody, "description": "Invalid body, or the plan is over a server cap"},
        429: {"model": ErrorBody, "description": "Over the key's quota"},
    },
)
def confirm(
    study_id: StudyId,
    settings: SettingsDep,
    engine: EngineDep,
    storage: StorageDep,
    key: WriteKey,
    body: ConfirmCreate | None = None,
) -> StudyPublic:
    """Plan and start confirmation runs of a study (owner or admin): a linked study of its own
    (``<name>-confirm``, kind ``confirmation``, run by the same workers, fused where possible)
    that varies one factor at a time around the best configuration over fresh seeds, scored on
    the test split. The study's report then leads each practice with their findings."""
    _check_owner(engine, key, study_id)
    body = body or ConfirmCreate()
    options = ConfirmOptions(seeds=body.seeds)
    if body.lr_offsets is not None:
        options = replace(options, lr_offsets=tuple(body.lr_offsets))
    parent, plan = prepare_confirmation(engine, storage, study_id, options, settings.limits)
    with quotas.submission(engine, key, plan.spec, settings):
        row = create_planned(engine, storage, parent, plan, owner=key.name if key else None)
    return study_public(engine, storage, row)


@router.post(
    "/{study_id}/cancel",
    responses={**_WRITE_ERRORS, **_NOT_FOUND, 409: {"model": ErrorBody, "description": "Ended"}},
)
def cancel(study_id: StudyId, engine: EngineDep, storage: StorageDep, key: WriteKey) -> StudyPublic:
    """Stop a study: no new trials; running trials stop at their next epoch (owner or admin)."""
    _check_owner(engine, key, study_id)
    return study_public(engine, storage, cancel_study(engine, study_id))


@router.post(
    "/{study_id}/pause",
    responses={**_WRITE_ERRORS, **_NOT_FOUND, 409: {"model": ErrorBody, "description": "Ended"}},
)
def pause(study_id: StudyId, engine: EngineDep, storage: StorageDep, key: WriteKey) -> StudyPublic:
    """Pause a study: no new trials until resumed; running trials finish and count (owner or
    admin)."""
    _check_owner(engine, key, study_id)
    return study_public(engine, storage, pause_study(engine, study_id))


@router.post(
    "/{study_id}/resume",
    responses={
        **_WRITE_ERRORS,
        **_NOT_FOUND,
        409: {"model": ErrorBody, "description": "Not paused"},
    },
)
def resume(study_id: StudyId, engine: EngineDep, storage: StorageDep, key: WriteKey) -> StudyPublic:
    """Resume a paused study (owner or admin)."""
    _check_owner(engine, key, study_id)
    return study_public(engine, storage, resume_study(engine, study_id))


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
    key: WriteKey,
) -> None:
    """Delete a study that is not running, with its Optuna study and trials (owner or admin)."""
    _check_owner(engine, key, study_id)
    delete_study(engine, storage, study_id, settings.grace_period_s)


def _check_owner(engine: Engine, key: Caller | None, study_id: int) -> None:
    """403 unless ``key`` owns the study or is an admin key (404 first if there is none)."""
    row = get_study_row(engine, study_id)
    check_owner(key, row.name, row.owner)
