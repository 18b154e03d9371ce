"""The FastAPI app: our API under /api/v1, /healthz, /metrics, and optuna-dashboard at the root.

Migrations are not run here (``bnsweep serve`` and ``bnsweep migrate`` do it): several API
processes starting at once must not race on the schema.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from anyio import to_thread
from fastapi import FastAPI

from models import estimate
from models.errors import first_line
from search.storage import get_engine
from search.studies import reap
from service import docs, errors
from service.analyses import AnalysisCache
from service.api import studies, system
from service.dashboard import dashboard_app
from service.head import HeadAsGet
from service.limits import BodyLimit
from service.metrics import make_registry
from service.settings import Settings, get_settings
from service.state import LazyStorage

log = logging.getLogger("bnsweep.api")

DESCRIPTION = """\
Hyperparameter optimization of BatchNorm settings.

**Auth**: reads are open; every write (POST, DELETE, and the dashboard's own write API) needs
`Authorization: Bearer <key>` (`bnsweep keys create NAME`) unless the server runs with
`BNSWEEP_AUTH=off`. Errors are JSON `{"detail": ...}`; a bad spec answers 422 with the field path in
`detail[0].loc`. The Optuna dashboard is at [/dashboard](/dashboard).
"""


class Reaper(threading.Thread):
    """Fails stale trials and settles studies whose workers all died, every ``interval_s``.

    A thread, not a task on the event loop: ``reap`` is blocking database work.
    """

    def __init__(self, settings: Settings, storage: LazyStorage) -> None:
        super().__init__(name="bnsweep-reaper", daemon=True)
        self.settings = settings
        self.storage = storage
        self.stop_event = threading.Event()

    def run(self) -> None:
        s = self.settings
        while not self.stop_event.wait(s.reaper_interval_s):
            try:
                reap(
                    get_engine(s.database_url, s.db_pool_size),
                    self.storage.get(),
                    s.grace_period_s,
                )
            except Exception as exc:  # a database blip must not end housekeeping
                log.warning("reaper: %s", first_line(exc))


def _add_spec_schemas(app: FastAPI) -> None:
    """Put the spec body's schemas (parsed by hand, so FastAPI cannot see them) into the OpenAPI
    components, where the submit route's request body refers to them."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for name, definition in studies.spec_schemas().items():
                assert components.get(name, definition) == definition, f"two schemas {name!r}"
                components[name] = definition
        assert app.openapi_schema is not None
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app for ``settings`` (default: the process settings)."""
    settings = settings or get_settings()
    engine = get_engine(settings.database_url, settings.db_pool_size)
    storage = LazyStorage(settings)

    analyses = AnalysisCache(settings.database_url, engine, settings.analysis_wait_s)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # Sync routes run on this thread pool, sized to the connection pool: a read holds at
        # most two connections (its reader, and a writer while it syncs a study's summary) and
        # the pool opens 2 × db_pool_size, so a request that got a thread never waits for a
        # connection, and a slow request holds one thread, not the others.
        to_thread.current_default_thread_limiter().total_tokens = settings.db_pool_size
        reaper = Reaper(settings, storage)
        reaper.start()
        # Spec checks size models on the meta device, whose first use imports ~2 s of PyTorch:
        # done before serving, so that no request pays it and memory is flat from then on.
        await to_thread.run_sync(estimate.warm_up)
        analyses.start()
        try:
            yield
        finally:
            analyses.stop()
            reaper.stop_event.set()
            reaper.join(timeout=10)

    app = FastAPI(
        title="bnsweep",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # served offline by service.docs
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.storage = storage
    app.state.analyses = analyses
    app.state.metrics = make_registry(engine, settings.grace_period_s)
    errors.install(app)
    app.include_router(studies.router, prefix="/api/v1")
    _add_spec_schemas(app)
    app.include_router(system.api, prefix="/api/v1")
    app.include_router(system.ops)
    docs.install(app)
    # Last: the dashboard matches every path, so our routes must be tried first.
    app.mount("/", dashboard_app(storage, engine, settings.auth, app.router.routes))
    app.add_middleware(
        BodyLimit,
        max_bytes=settings.max_body_bytes,
        max_spec_bytes=settings.max_spec_bytes,
        timeout_s=settings.body_timeout_s,
    )
    app.add_middleware(HeadAsGet)  # outermost: HEAD is routed (and limited) as GET
    return app
