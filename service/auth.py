"""API keys: created once, stored as SHA-256 hashes, checked on every write; study ownership.

Reads are open (status, trials, best, dashboard pages): the data is not secret within a team and
open reads keep dashboards and scrapers simple; only who owns a study is shown to callers with a
valid key alone. Writes (create, cancel, pause, resume, delete, and the embedded dashboard's own
write API) need ``Authorization: Bearer <key>`` unless auth is turned off. A study belongs to the
key that created it: only that key or an admin key may cancel, pause, resume or delete it.
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
class Caller:
    """The key a request authenticated with: its name, whether it is an admin key, and its own
    quotas (None: the server's defaults)."""

    id: int
    name: str
    admin: bool = False
    max_active_studies: int | None = None
    max_queued_trials: int | None = None


@dataclass(frozen=True)
class KeyInfo:
    """A stored key, without anything that could be used to authenticate."""

    name: str
    prefix: str
    created_at: datetime | None
    revoked_at: datetime | None
    admin: bool = False
    max_active_studies: int | None = None
    max_queued_trials: int | None = None


def hash_key(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def create_key(
    engine: Engine,
    name: str,
    admin: bool = False,
    max_active_studies: int | None = None,
    max_queued_trials: int | None = None,
) -> str:
    """Create a key named ``name`` and return the raw key (it is not stored).

    Args:
        admin: The key may cancel, pause, resume and delete any study, not only its own.
        max_active_studies, max_queued_trials: Quotas of this key; None: the server's defaults
            (``BNSWEEP_MAX_ACTIVE_STUDIES_PER_KEY``, ``BNSWEEP_MAX_QUEUED_TRIALS_PER_KEY``).
    """
    raw = KEY_PREFIX + secrets.token_urlsafe(32)
    try:
        with engine.begin() as conn:
            conn.execute(
                sa.insert(ApiKeyRow).values(
                    name=name,
                    key_hash=hash_key(raw),
                    prefix=raw[:_SHOWN_PREFIX_LEN],
                    admin=admin,
                    max_active_studies=max_active_studies,
                    max_queued_trials=max_queued_trials,
                )
            )
    except IntegrityError:
        raise ApiKeyError(f"a key named {name!r} already exists") from None
    return raw


def list_keys(engine: Engine) -> list[KeyInfo]:
    cols = (
        ApiKeyRow.name,
        ApiKeyRow.prefix,
        ApiKeyRow.created_at,
        ApiKeyRow.revoked_at,
        ApiKeyRow.admin,
        ApiKeyRow.max_active_studies,
        ApiKeyRow.max_queued_trials,
    )
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


def authenticate(engine: Engine, token: str | None) -> Caller:
    """The key ``token``; AuthError if missing, unknown or revoked."""
    if not token:
        raise AuthError(401, "this request needs an API key: Authorization: Bearer <key>")
    with engine.connect() as conn:
        row = conn.execute(
            sa.select(
                ApiKeyRow.id,
                ApiKeyRow.name,
                ApiKeyRow.revoked_at,
                ApiKeyRow.admin,
                ApiKeyRow.max_active_studies,
                ApiKeyRow.max_queued_trials,
            ).where(ApiKeyRow.key_hash == hash_key(token))
        ).first()
    if row is None:
        raise AuthError(401, "unknown API key")
    if row.revoked_at is not None:
        raise AuthError(403, f"API key {row.name!r} is revoked")
    return Caller(row.id, row.name, bool(row.admin), row.max_active_studies, row.max_queued_trials)


def identify(engine: Engine, token: str | None) -> Caller | None:
    """For reads, which are open: the key ``token`` if it is valid, else None (anonymous)."""
    if not token:
        return None
    try:
        return authenticate(engine, token)
    except AuthError:
        return None


def check_owner(caller: Caller | None, study_name: str, owner: str | None) -> None:
    """AuthError 403 unless ``caller`` may change the study: its owner, or an admin key. A study
    without an owner (created with auth off, or locally) is changed by admin keys only. With auth
    off (``caller`` None) anyone may."""
    if caller is None or caller.admin or (owner is not None and owner == caller.name):
        return
    whose = f"key {owner!r}" if owner else "no key (created without auth)"
    raise AuthError(
        403,
        f"study {study_name!r} belongs to {whose}; only its owner or an admin key may change it",
    )
