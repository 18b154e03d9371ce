"""optuna-dashboard served by our process, with its write API behind our keys.

Its JavaScript requests ``/dashboard``, ``/api/...`` and ``/static/...`` at the root, so it cannot
live under a sub-path: it is mounted at ``/`` after our routes, which match first. Its own API can
create, rename and delete studies and tell trials without any authentication. Here every request
other than GET/HEAD that reaches it needs a valid key (when auth is on), like our own writes, and
only notes may be written: a study renamed, deleted or told through the dashboard would no longer
match our row, and workers load studies by name.
"""

from __future__ import annotations

import json
import re

import optuna_dashboard
from a2wsgi import WSGIMiddleware
from sqlalchemy.engine import Engine
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from service.auth import AuthError, authenticate, bearer_token
from service.errors import DATABASE_ERRORS
from service.state import LazyStorage

READ_METHODS = frozenset({"GET", "HEAD"})
# The dashboard's only writes allowed here: notes on a study or a trial.
NOTE_PATH = re.compile(r"^/api/studies/\d+(/\d+)?/note$")
READ_ONLY = (
    "the dashboard is read-only here except notes; use the bnsweep API under /api/v1 "
    "(e.g. DELETE /api/v1/studies/{id}, POST /api/v1/studies/{id}/cancel)"
)


class WriteGuard:
    """Refuse non-GET/HEAD requests to the wrapped app unless they carry a valid key."""

    def __init__(self, app: ASGIApp, engine: Engine, auth: bool) -> None:
        self.app = app
        self.engine = engine
        self.auth = auth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] not in READ_METHODS:
            if self.auth:
                token = bearer_token(Headers(scope=scope).get("authorization"))
                try:
                    await run_in_threadpool(authenticate, self.engine, token)
                except AuthError as exc:
                    await _json(send, exc.status_code, exc.detail)
                    return
                except DATABASE_ERRORS:
                    await _json(send, 503, "database unavailable")
                    return
            if not (scope["method"] == "PUT" and NOTE_PATH.match(scope["path"])):
                await _json(send, 405, READ_ONLY)
                return
        await self.app(scope, receive, send)


async def _json(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class LazyDashboard:
    """Builds the dashboard on its first request: it needs Optuna's storage, opened lazily."""

    def __init__(self, storage: LazyStorage) -> None:
        self.storage = storage
        self._app: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._app is None:
            try:
                storage = await run_in_threadpool(self.storage.get)
            except DATABASE_ERRORS:
                await _json(send, 503, "database unavailable")
                return
            self._app = WSGIMiddleware(optuna_dashboard.wsgi(storage))  # type: ignore[assignment]
        assert self._app is not None
        await self._app(scope, receive, send)


def dashboard_app(storage: LazyStorage, engine: Engine, auth: bool) -> ASGIApp:
    """The dashboard as an ASGI app, writes guarded."""
    return WriteGuard(LazyDashboard(storage), engine, auth)
