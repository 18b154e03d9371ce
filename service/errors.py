"""Exceptions → HTTP, in one place. Bodies are always JSON ``{"detail": ...}``, never a traceback.

A bad spec (``ConfigError``, with its field path) answers 422 in FastAPI's own shape, so clients
parse one format for every validation error. Answers given before the request body was read (a
refused key, a body too large or too slow) close the connection: what is left of the body is
never read.
"""

from __future__ import annotations

import logging
from typing import Any

import optuna
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError, SQLAlchemyError

from models.errors import ConfigError, first_line
from search.errors import NotFoundError, StudyNotFoundError, StudyStateError
from service.auth import AuthError
from service.limits import BodyError
from service.quotas import QuotaError

log = logging.getLogger("bnsweep.api")

DATABASE_ERRORS = (SQLAlchemyError, optuna.exceptions.StorageInternalError)
UNAVAILABLE = "database unavailable"
CLOSE = {"Connection": "close"}


def spec_error_body(exc: ConfigError) -> dict[str, Any]:
    return {
        "detail": [
            {"loc": ["body", *exc.field.split(".")], "msg": exc.reason, "type": "spec_error"}
        ]
    }


async def _config_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ConfigError)
    return JSONResponse(spec_error_body(exc), status_code=422)


async def _not_found(_: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=404)


async def _conflict(_: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=409)


async def _auth(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, AuthError)
    headers = {"WWW-Authenticate": "Bearer", **CLOSE} if exc.status_code == 401 else CLOSE
    return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=headers)


async def _body(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, BodyError)
    return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=CLOSE)


async def _quota(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, QuotaError)
    return JSONResponse({"detail": exc.detail}, status_code=429)


async def _database(request: Request, exc: Exception) -> JSONResponse:
    if isinstance(exc, DataError) or isinstance(exc.__cause__, DataError):
        # A value the database cannot store (e.g. a NUL character in a text field) is the
        # client's error, not an outage: a 503 would have clients retry it forever.
        reason = first_line(exc.__cause__ or exc)
        detail = [{"loc": ["request"], "msg": f"value refused: {reason}", "type": "value_error"}]
        return JSONResponse({"detail": detail}, status_code=422)
    # An outage is expected operation (restarts, failovers): one log line, a 503 the client retries.
    log.warning(
        "database unavailable (%s %s): %s",
        request.method,
        request.url.path,
        first_line(exc),
    )
    return JSONResponse({"detail": UNAVAILABLE}, status_code=503)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return JSONResponse({"detail": "internal server error"}, status_code=500)


def install(app: FastAPI) -> None:
    """Register every handler on ``app``."""
    app.add_exception_handler(ConfigError, _config_error)
    app.add_exception_handler(StudyNotFoundError, _not_found)
    app.add_exception_handler(NotFoundError, _not_found)
    app.add_exception_handler(StudyStateError, _conflict)
    app.add_exception_handler(AuthError, _auth)
    app.add_exception_handler(BodyError, _body)
    app.add_exception_handler(QuotaError, _quota)
    for error in DATABASE_ERRORS:
        app.add_exception_handler(error, _database)
    app.add_exception_handler(Exception, _unexpected)
