"""Per-key quotas on submissions: active studies and the trials still to run in them.

Checked and the study created under one lock per key, so that concurrent submissions with one key
cannot all pass a check that only one of them fits: a lock in this process, and on PostgreSQL an
advisory lock (MySQL/MariaDB: a named lock) held on a connection of its own for the whole
submission, so that several API processes serialize too (SQLite serves one API process). With
auth off there are no quotas.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections import defaultdict
from collections.abc import Iterator

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from search.db import StudyRow
from search.spec import StudySpec
from search.states import StudyStatus
from search.storage import is_mysql, is_sqlite
from search.studies import trial_counts
from service.auth import Caller
from service.settings import Settings

_ADVISORY_CLASS = 0x626E73  # "bns": the first key of our advisory locks (the second: key id)
_LOCK_WAIT_S = 60  # a submission holds the lock for one insert: milliseconds
_process_locks: defaultdict[int, threading.Lock] = defaultdict(threading.Lock)
_process_locks_guard = threading.Lock()


class QuotaError(Exception):
    """A submission over its key's quota (HTTP 429)."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


@contextlib.contextmanager
def submission(
    engine: Engine, caller: Caller | None, spec: StudySpec, settings: Settings
) -> Iterator[None]:
    """Check ``caller``'s quotas for ``spec`` and hold its lock while the caller creates the
    study (the ``with`` body). QuotaError if the study would not fit."""
    if caller is None:  # auth off: no owners, no quotas
        yield
        return
    with _process_lock(caller.id), _advisory_lock(engine, caller.id):
        _check(engine, caller, spec, settings)
        yield


def _check(engine: Engine, caller: Caller, spec: StudySpec, settings: Settings) -> None:
    max_active = _quota(caller.max_active_studies, settings.max_active_studies_per_key)
    max_queued = _quota(caller.max_queued_trials, settings.max_queued_trials_per_key)
    active = [s.value for s in StudyStatus if s.is_active]
    with engine.connect() as conn:
        studies = conn.execute(
            sa.select(StudyRow.optuna_study_id, StudyRow.spec).where(
                StudyRow.owner == caller.name, StudyRow.status.in_(active)
            )
        ).all()
        finished = [trial_counts(conn, row.optuna_study_id).finished for row in studies]
    queued = sum(
        max(0, row.spec["budget"]["n_trials"] - done)
        for row, done in zip(studies, finished, strict=True)
    )
    if len(studies) + 1 > max_active:
        raise QuotaError(
            f"key {caller.name!r} has {len(studies)} active studies (queued, running or paused) "
            f"and a quota of {max_active}: wait for one to end, or cancel one"
        )
    if queued + spec.budget.n_trials > max_queued:
        raise QuotaError(
            f"key {caller.name!r} has {queued} trials still to run in its active studies and a "
            f"quota of {max_queued}: budget.n_trials={spec.budget.n_trials} does not fit; wait, "
            "or lower n_trials"
        )


def _quota(own: int | None, default: int) -> int:
    return default if own is None else own


@contextlib.contextmanager
def _process_lock(key_id: int) -> Iterator[None]:
    with _process_locks_guard:
        lock = _process_locks[key_id]
    with lock:
        yield


@contextlib.contextmanager
def _advisory_lock(engine: Engine, key_id: int) -> Iterator[None]:
    """PostgreSQL: a transaction-level advisory lock on its own connection (not one of the pool's,
    which the submission itself needs), released when the submission ends; MySQL/MariaDB: a named
    lock on its own connection, released likewise."""
    url = engine.url.render_as_string(hide_password=False)
    if is_sqlite(url):
        yield
        return
    if is_mysql(url):
        name = f"bnsweep-quota-{key_id}"
        with _lock_engine(url).connect() as conn:
            if conn.execute(sa.select(sa.func.get_lock(name, _LOCK_WAIT_S))).scalar() != 1:
                raise QuotaError("another submission with this key is still being checked: retry")
            try:
                yield
            finally:
                conn.execute(sa.select(sa.func.release_lock(name)))
        return
    with _lock_engine(url).begin() as conn:
        conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_ADVISORY_CLASS, key_id)))
        yield


@functools.cache
def _lock_engine(url: str) -> Engine:
    return sa.create_engine(url, poolclass=sa.pool.NullPool)
