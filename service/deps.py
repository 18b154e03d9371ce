"""Dependencies as ``Annotated`` aliases, so route signatures read like prose."""

from __future__ import annotations

from typing import Annotated

import optuna
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.engine import Engine
from starlette.concurrency import run_in_threadpool

from service.analyses import AnalysisCache
from service.auth import Caller, authenticate, bearer_token, identify
from service.settings import Settings


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def _engine(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


def _storage(request: Request) -> optuna.storages.RDBStorage:
    storage: optuna.storages.RDBStorage = request.app.state.storage.get()
    return storage


def _analyses(request: Request) -> AnalysisCache:
    analyses: AnalysisCache = request.app.state.analyses
    return analyses


SettingsDep = Annotated[Settings, Depends(_settings)]
EngineDep = Annotated[Engine, Depends(_engine)]
StorageDep = Annotated[optuna.storages.RDBStorage, Depends(_storage)]
AnalysesDep = Annotated[AnalysisCache, Depends(_analyses)]

# auto_error=False: a missing header is our 401 with our body, not FastAPI's 403.
_bearer = HTTPBearer(auto_error=False, description="An API key from `bnsweep keys create`.")


async def _write_key(
    settings: SettingsDep,
    engine: EngineDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Caller | None:
    """The caller's key for a write (401/403 without a valid one); None when auth is off."""
    if not settings.auth:
        return None
    token = credentials.credentials if credentials else None
    return await run_in_threadpool(authenticate, engine, token)


async def _read_key(request: Request, settings: SettingsDep, engine: EngineDep) -> Caller | None:
    """The caller's key for a read if it sent a valid one, else None (an anonymous reader).

    Reads are open, so the header is read here rather than declared: declared, OpenAPI would
    say reads need a key.
    """
    token = bearer_token(request.headers.get("authorization"))
    if not settings.auth or token is None:
        return None
    return await run_in_threadpool(identify, engine, token)


WriteKey = Annotated[Caller | None, Depends(_write_key)]
ReadKey = Annotated[Caller | None, Depends(_read_key)]
