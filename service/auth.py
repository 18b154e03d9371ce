"""API keys: created once, stored as SHA-256 hashes, checked on every write.

Reads are open (status, trials, best, dashboard pages): the data is not secret within a team and
open reads keep dashboards and scrapers simple. Writes (create, cancel, delete, and the embedded
dashboard's own write API) need ``Authorization: Bearer <key>`` unless auth is turned off.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from service.db import ApiKeyRow

KEY_PREFIX = "bns_"
_SHOWN_PREFIX_LEN = 10  # "bns_" + 6 characters: enough to tell keys apart in `keys list`


class AuthError(Exception):
    """A write without a usable key: 401 (missing or unknown) or 403 (revoked)."""

    def __init__(self, status_code: int, detail: str) -> None:
        super().__init__(detail)
        self.status_code = status_code
        self.detail = detail


class ApiKeyError(LookupError):
    """A key name that does not exist, or already does (CLI: exit 2)."""


@dataclass(frozen=True)
class KeyInfo:
    """A stored key, without anything that could be used to authenticate."""

    name: str
    prefix: str
    created_at: datetime | None
    revoked_at: datetime | None


def hash_key(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def create_key(engine: Engine, name: str) -> str:
    """Create a key named ``name`` and return the raw key (it is not stored)."""
    raw = KEY_PREFIX + secrets.token_urlsafe(32)
    try:
        with engine.begin() as conn:
            conn.execute(
                sa.insert(ApiKeyRow).values(
                    name=name, key_hash=hash_key(raw), prefix=raw[:_SHOWN_PREFIX_LEN]
                )
            )
    except IntegrityError:
        raise ApiKeyError(f"a key named {name!r} already exists") from None
    return raw


def list_keys(engine: Engine) -> list[KeyInfo]:
    cols = (ApiKeyRow.name, ApiKeyRow.prefix, ApiKeyRow.created_at, ApiKeyRow.revoked_at)
    with engine.connect() as conn:
        rows = conn.execute(sa.select(*cols).order_by(ApiKeyRow.id)).all()
    return [KeyInfo(*row) for row in rows]


def revoke_key(engine: Engine, name: str) -> None:
    """Revoke a key (kept, so a revoked key answers 403 rather than 401)."""
    with engine.begin() as conn:
        done = conn.execute(
            sa.update(ApiKeyRow)
            .where(ApiKeyRow.name == name, ApiKeyRow.revoked_at.is_(None))
            .values(revoked_at=sa.func.now())
        ).rowcount
    if not done:
        raise ApiKeyError(f"no active key named {name!r}")


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, else None."""
    scheme, _, token = (authorization or "").partition(" ")
    return (token.strip() or None) if scheme.lower() == "bearer" else None


def authenticate(engine: Engine, token: str | None) -> str:
    """The name of the key ``token``; AuthError if missing, unknown or revoked."""
    if not token:
        raise AuthError(401, "this request needs an API key: Authorization: Bearer <key>")
    with engine.connect() as conn:
        row = conn.execute(
            sa.select(ApiKeyRow.name, ApiKeyRow.revoked_at).where(
                ApiKeyRow.key_hash == hash_key(token)
            )
        ).first()
    if row is None:
        raise AuthError(401, "unknown API key")
    if row.revoked_at is not None:
        raise AuthError(403, f"API key {row.name!r} is revoked")
    return str(row.name)
