"""Workers, registry, health and metrics."""

from __future__ import annotations

import sqlalchemy as sa
from fastapi import APIRouter, Query, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool

from models.config import SETTINGS
from models.registry import DATASETS, MODELS
from search.samplers import PRUNERS, SAMPLERS
from service.deps import EngineDep, SettingsDep
from service.schemas import ErrorBody, Health, RegistryPublic, WorkerList
from service.workers import list_workers

api = APIRouter(tags=["system"])  # under /api/v1
ops = APIRouter(tags=["operations"])  # at the root, where probes and scrapers look


@api.get("/workers")
def workers(
    settings: SettingsDep,
    engine: EngineDep,
    all: bool = Query(False, description="Include stopped and stale workers"),
) -> WorkerList:
    """Live workers (a heartbeat within the grace period), or all with ``?all=true``."""
    return WorkerList(items=list_workers(engine, settings.grace_period_s, include_dead=all))


@api.get("/registry")
def registry() -> RegistryPublic:
    """What a spec can name: models, datasets (with their params as JSON Schema), samplers,
    pruners, and every training setting (type, bounds, unit, where a spec sets it)."""
    return RegistryPublic(
        settings={info.spec_name: info.describe() for info in SETTINGS.values()},
        models=MODELS.describe(),
        datasets=DATASETS.describe(),
        samplers=list(SAMPLERS),
        pruners=list(PRUNERS),
    )


@ops.get("/healthz", responses={503: {"model": ErrorBody, "description": "Database unreachable"}})
def healthz(engine: EngineDep) -> Health:
    """200 when the database answers; 503 otherwise."""
    with engine.connect() as conn:
        conn.execute(sa.select(1))
    return Health(database="ok")


@ops.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text"}},
)
async def metrics(request: Request) -> Response:
    """Prometheus metrics, read from the database at scrape time."""
    text = await run_in_threadpool(generate_latest, request.app.state.metrics)
    return Response(text, media_type=CONTENT_TYPE_LATEST)
