"""optuna-dashboard served by our process: its writes behind our keys, its outages as our 503s, and
JSON answers for every path under ``/api/``.

Its JavaScript requests ``/dashboard``, ``/api/...`` and ``/static/...`` at the root, so it cannot
live under a sub-path: it is mounted at ``/`` after our routes, which match first. Around it:

- ``ApiFallback``: a path under ``/api/v1`` that none of our routes serves is a JSON 404 (or 405
  when a route serves it with other methods), never the dashboard's HTML page.
- ``WriteGuard``: its own API can create, rename and delete studies and tell trials without any
  authentication. Every request other than GET/HEAD needs a valid key (when auth is on), checked
  before the body is read, and only notes may be written: a study renamed, deleted or told through
  the dashboard would no longer match our row, and workers load studies by name.
- ``OutageAware`` (WSGI): the dashboard catches every exception of its API views itself, logs it
  with a stack trace and answers ``500 {"reason": ...}``. A database outage is expected operation,
  not a bug: a SQLAlchemy ``handle_error`` hook on its storage's engine marks the request (same
  thread), and the answer becomes our ``503 {"detail": "database unavailable"}`` with one log line
  instead of a trace. Its HTML 404/405 pages under ``/api/`` become JSON.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import optuna
import optuna_dashboard
from a2wsgi import WSGIMiddleware
from sqlalchemy import event
from sqlalchemy.engine import Engine, ExceptionContext
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.routing import BaseRoute, Match, Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from models.errors import first_line
from service.auth import AuthError, authenticate, bearer_token
from service.errors import DATABASE_ERRORS, UNAVAILABLE
from service.limits import BodyError
from service.state import LazyStorage

log = logging.getLogger("bnsweep.api")

READ_METHODS = frozenset({"GET", "HEAD"})
# The dashboard's only writes allowed here: notes on a study or a trial.
NOTE_PATH = re.compile(r"^/api/studies/\d+(/\d+)?/note$")
OUR_API = "/api/v1"
_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
READ_ONLY = (
    "the dashboard is read-only here except notes; use the bnsweep API under /api/v1 "
    "(e.g. DELETE /api/v1/studies/{id}, POST /api/v1/studies/{id}/cancel)"
)
StartResponse = Callable[..., Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


async def _json(
    send: Send, status: int, detail: str, headers: Sequence[tuple[bytes, bytes]] = ()
) -> None:
    body = json.dumps({"detail": detail}).encode()
    all_headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *headers,
    ]
    if status == 401:
        all_headers += [(b"www-authenticate", b"Bearer"), (b"connection", b"close")]
    await send({"type": "http.response.start", "status": status, "headers": all_headers})
    await send({"type": "http.response.body", "body": body})


# --- /api/v1 paths we do not serve --------------------------------------------------------------


class ApiFallback:
    """JSON 404/405 for paths under ``/api/v1`` that reach the mount (no route of ours took them);
    everything else goes to ``app``."""

    def __init__(self, app: ASGIApp, routes: Sequence[BaseRoute]) -> None:
        self.app = app
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not (path == OUR_API or path.startswith(OUR_API + "/")):
            await self.app(scope, receive, send)
            return
        allowed = _methods_serving(self.routes, scope)
        if allowed:
            allow = ", ".join(sorted({*allowed, "HEAD"} if "GET" in allowed else allowed))
            await _json(send, 405, "Method Not Allowed", [(b"allow", allow.encode())])
        else:
            await _json(send, 404, "Not Found")


def _methods_serving(routes: Sequence[BaseRoute], scope: Scope) -> set[str]:
    """The methods our routes (not the dashboard's mount) serve at ``scope``'s path: each method
    tried on each route, as routing would."""
    return {
        method
        for method in _METHODS
        for route in routes
        if not isinstance(route, Mount)
        and route.matches({**scope, "method": method})[0] is Match.FULL
    }


# --- writes -------------------------------------------------------------------------------------


class WriteGuard:
    """Refuse non-GET/HEAD requests to the wrapped app unless they carry a valid key (checked
    before the body is read), and every write but a note."""

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
                    await _json(send, exc.status_code, exc.detail, [(b"connection", b"close")])
                    return
                except DATABASE_ERRORS:
                    await _json(send, 503, UNAVAILABLE)
                    return
            if not (scope["method"] == "PUT" and NOTE_PATH.match(scope["path"])):
                await _json(send, 405, READ_ONLY, [(b"connection", b"close")])
                return
            # Read here, where the body limits raise (BodyError → 413/408): inside the dashboard's
            # WSGI thread its own views would catch them as 500s.
            receive = await _buffered(receive)
        await self.app(scope, receive, send)


async def _buffered(receive: Receive) -> Receive:
    """The whole body read now, replayed to the app; then whatever ``receive`` says next."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return _replay(message, receive)
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return _replay({"type": "http.request", "body": b"".join(chunks)}, receive)


def _replay(first: Message, receive: Receive) -> Receive:
    pending = [first]

    async def replayed() -> Message:
        return pending.pop() if pending else await receive()

    return replayed


# --- outages and errors inside the dashboard ----------------------------------------------------


class _RequestState(threading.local):
    """The database error of the dashboard request this thread runs, if any."""

    db_error: BaseException | None = None


_STATE = _RequestState()


def _mark_database_error(context: ExceptionContext) -> None:
    _STATE.db_error = context.original_exception or context.sqlalchemy_exception


class _DuringOutage(logging.Filter):
    """Drops the dashboard's own log records (stack traces) while its request has hit a database
    error: that request is answered and logged as an outage instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        return _STATE.db_error is None


class OutageAware:
    """WSGI wrapper of the dashboard: 503 JSON when its request hit a database error, JSON 500 for
    any other exception (logged once), JSON bodies for its HTML 404/405 pages under ``/api/``."""

    def __init__(self, app: WsgiApp) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        _STATE.db_error = None
        captured: list[Any] = []

        def capture(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            captured[:] = [status, headers, exc_info]
            return _no_write

        where = f"{environ.get('REQUEST_METHOD')} {environ.get('PATH_INFO')}"
        try:
            result = self.app(environ, capture)
        except BodyError:
            raise
        except DATABASE_ERRORS as exc:
            return _unavailable(start_response, where, exc)
        except Exception:
            log.exception("unhandled error in the dashboard on %s", where)
            return _answer(start_response, "500 Internal Server Error", "internal server error")
        if _STATE.db_error is not None:
            getattr(result, "close", lambda: None)()
            return _unavailable(start_response, where, _STATE.db_error)
        status, headers, exc_info = captured
        code = int(status.split(" ", 1)[0])
        if code in (404, 405) and str(environ.get("PATH_INFO", "")).startswith("/api/"):
            return self._api_error(start_response, status, headers, result)
        start_response(status, headers, exc_info)
        return result

    @staticmethod
    def _api_error(
        start_response: StartResponse,
        status: str,
        headers: list[tuple[str, str]],
        result: Iterable[bytes],
    ) -> Iterable[bytes]:
        """Its 404/405 under /api/ as ``{"detail": ...}`` (its own JSON keeps its ``reason``)."""
        try:
            raw = b"".join(result)
        finally:
            getattr(result, "close", lambda: None)()
        try:
            data = json.loads(raw)
        except ValueError:
            data = None
        if isinstance(data, dict):
            data.setdefault("detail", data.get("reason") or status.split(" ", 1)[1])
        else:
            data = {"detail": status.split(" ", 1)[1]}
        kept = [(k, v) for k, v in headers if k.lower() not in ("content-type", "content-length")]
        return _answer(start_response, status, data, kept)


def _no_write(_: bytes) -> None:
    raise RuntimeError("the dashboard's WSGI write() is not supported here")


def _unavailable(start_response: StartResponse, where: str, exc: BaseException) -> list[bytes]:
    # An outage is expected operation: one line, no stack trace (as service/errors.py does).
    log.warning("database unavailable (%s): %s", where, first_line(exc))
    return _answer(start_response, "503 Service Unavailable", UNAVAILABLE)


def _answer(
    start_response: StartResponse,
    status: str,
    detail: str | dict[str, Any],
    headers: Sequence[tuple[str, str]] = (),
) -> list[bytes]:
    body = json.dumps(detail if isinstance(detail, dict) else {"detail": detail}).encode()
    start_response(
        status,
        [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(body))),
            *headers,
        ],
    )
    return [body]


def _engine_of(storage: optuna.storages.BaseStorage) -> Engine | None:
    backend = getattr(storage, "_backend", storage)  # Optuna's cache wraps an RDBStorage
    engine = getattr(backend, "engine", None)
    return engine if isinstance(engine, Engine) else None


def build_dashboard(storage: optuna.storages.BaseStorage) -> OutageAware:
    """optuna-dashboard's WSGI app on ``storage``, with exceptions passed up to ``OutageAware``."""
    bottle_app = optuna_dashboard.wsgi(storage)
    bottle_app.catchall = False  # exceptions reach OutageAware instead of an HTML 500 page
    engine = _engine_of(storage)
    if engine is not None and not event.contains(engine, "handle_error", _mark_database_error):
        event.listen(engine, "handle_error", _mark_database_error)
    for name in list(logging.root.manager.loggerDict):
        if name.startswith("optuna_dashboard"):
            logger = logging.getLogger(name)
            if not any(isinstance(f, _DuringOutage) for f in logger.filters):
                logger.addFilter(_DuringOutage())
    return OutageAware(bottle_app)


class LazyDashboard:
    """Builds the dashboard on its first request: it needs Optuna's storage, opened lazily."""

    def __init__(self, storage: LazyStorage) -> None:
        self.storage = storage
        self._app: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._app is None:
            try:
                storage = await run_in_threadpool(self.storage.get)
            except DATABASE_ERRORS as exc:
                log.warning("database unavailable (dashboard): %s", first_line(exc))
                await _json(send, 503, UNAVAILABLE)
                return
            self._app = WSGIMiddleware(build_dashboard(storage))  # type: ignore[arg-type,assignment]
        assert self._app is not None
        await self._app(scope, receive, send)


def dashboard_app(
    storage: LazyStorage, engine: Engine, auth: bool, routes: Sequence[BaseRoute]
) -> ASGIApp:
    """The dashboard as an ASGI app: /api/v1 fallbacks, writes guarded, outages as 503."""
    return ApiFallback(WriteGuard(LazyDashboard(storage), engine, auth), routes)
