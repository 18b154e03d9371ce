"""Database connections, and the one module that knows Optuna's internals.

One SQLAlchemy engine for our tables, one Optuna RDBStorage for Optuna's. Everything private of
Optuna bnsweep relies on (its table models, a trial's and a study's ids and storage, creating a
trial with fixed parameters) is reached through the functions at the end of this module, so an
Optuna upgrade touches this file only.

Pool sizing: a process holds two pools (ours and Optuna's) of ``pool_size`` connections plus as
many overflow ones. A worker uses ``pool_size=1``: its main thread and its heartbeat thread each
need one connection at most, so it holds at most 4 (about 2.6 on average, measured with 32 workers:
83 connections). Optuna's own heartbeat thread is never started (workers use ask/tell). The API
passes a larger ``pool_size`` for concurrent requests.
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import optuna
import sqlalchemy as sa
from optuna.distributions import BaseDistribution
from optuna.storages._rdb import models as _optuna_models
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine

from search.states import TrialStateName

# Heartbeats, fail_stale_trials and the retry callback are "experimental" in Optuna 5 by label
# only; they are the crash recovery we rely on, so their warnings would be noise in every log.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

WORKER_POOL_SIZE = 1
SQLITE_TIMEOUT_S = 30
DEFAULT_HEARTBEAT_INTERVAL_S = 5
DEFAULT_GRACE_PERIOD_S = 30


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


_DRIVERS = {
    # psycopg 3 for PostgreSQL (pg8000 breaks past 32,767 trials); PyMySQL for MySQL/MariaDB.
    "postgresql://": "postgresql+psycopg://",
    "postgres://": "postgresql+psycopg://",
    "mysql://": "mysql+pymysql://",
    "mariadb://": "mysql+pymysql://",
}


def normalize_url(url: str) -> str:
    """A database URL with bnsweep's driver when it names none."""
    for prefix, driver in _DRIVERS.items():
        if url.startswith(prefix):
            return driver + url.removeprefix(prefix)
    return url


def is_mysql(url: str) -> bool:
    return url.startswith(("mysql", "mariadb"))


def engine_kwargs(url: str, pool_size: int = WORKER_POOL_SIZE) -> dict[str, Any]:
    """Connection options shared by our engine and Optuna's storage (at most 2 × pool_size)."""
    if is_sqlite(url):
        return {"connect_args": {"timeout": SQLITE_TIMEOUT_S}}
    # MySQL/MariaDB default to REPEATABLE READ: a claim's count after its row lock must see
    # what committed meanwhile, as it does on PostgreSQL's default READ COMMITTED.
    isolation = {"isolation_level": "READ COMMITTED"} if is_mysql(url) else {}
    return isolation | {
        "pool_size": pool_size,
        "max_overflow": pool_size,
        "pool_pre_ping": True,  # Optuna sets it for MySQL only; a restarted PostgreSQL needs it too
        "pool_recycle": 300,
    }


def get_engine(url: str, pool_size: int = WORKER_POOL_SIZE) -> Engine:
    """The process-wide engine for bnsweep's tables (one per database, however the URL is
    spelled)."""
    return _engine(normalize_url(url), pool_size)


_LOCKED = "bnsweep_locked"  # execution option: this transaction reads, then writes


@functools.cache
def _engine(url: str, pool_size: int) -> Engine:
    """Create the engine for a normalized URL (SQLite: WAL, and see ``locked_transaction``)."""
    engine = sa.create_engine(url, **engine_kwargs(url, pool_size))
    if is_sqlite(url):

        @event.listens_for(engine, "connect")
        def _sqlite_setup(dbapi_conn: Any, _: Any) -> None:
            dbapi_conn.isolation_level = None  # let the "begin" hook below control transactions
            dbapi_conn.execute("PRAGMA journal_mode=WAL")  # readers never wait for the writer

        @event.listens_for(engine, "begin")
        def _begin(conn: Connection) -> None:
            immediate = conn.get_execution_options().get(_LOCKED, False)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


@contextlib.contextmanager
def locked_transaction(engine: Engine) -> Iterator[Connection]:
    """A transaction for read-then-write units (claims, status changes).

    On PostgreSQL it is a plain transaction; callers lock rows with ``FOR UPDATE``. SQLite ignores
    ``FOR UPDATE``, and a deferred transaction that reads then writes can fail to upgrade its lock
    under contention, so here it starts with ``BEGIN IMMEDIATE``: the write lock taken up front
    serializes these units the way the row lock does on PostgreSQL. Plain reads and single writes
    use ``engine.connect()`` / ``engine.begin()`` and take no lock up front.
    """
    with engine.connect() as conn:
        conn.execution_options(**{_LOCKED: True})
        with conn.begin():
            yield conn


def create_optuna_schema(url: str) -> None:
    """Create Optuna's tables (or check their version) once, before any worker starts."""
    url = normalize_url(url)
    storage = optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs(url))
    storage.engine.dispose()


@functools.cache
def get_storage(
    url: str,
    *,
    heartbeat_interval_s: int = DEFAULT_HEARTBEAT_INTERVAL_S,
    grace_period_s: int = DEFAULT_GRACE_PERIOD_S,
    pool_size: int = WORKER_POOL_SIZE,
) -> optuna.storages.RDBStorage:
    """Optuna's storage with heartbeats and a stale-trial retry callback (one per process and
    settings: each holds a connection pool).

    Opened with ``skip_table_creation``: the schema is created once by ``bnsweep migrate``, so
    parallel starts never race on Optuna's own ``alembic_version``.
    """
    from search.retry import RetryFromSpec

    url = normalize_url(url)
    return optuna.storages.RDBStorage(
        url,
        engine_kwargs=engine_kwargs(url, pool_size),
        heartbeat_interval=heartbeat_interval_s,
        grace_period=grace_period_s,
        heartbeat_stale_trial_callback=RetryFromSpec(),
        skip_table_creation=True,
    )


# --- Optuna's internals, in one place -------------------------------------------------------------

TRIALS = _optuna_models.TrialModel.__table__
"""Optuna's ``trials`` table (study_id, number, state, datetime_start/complete)."""
TRIAL_HEARTBEATS = _optuna_models.TrialHeartbeatModel.__table__
TRIAL_VALUES = _optuna_models.TrialValueModel.__table__
TRIAL_PARAMS = _optuna_models.TrialParamModel.__table__
TRIAL_USER_ATTRS = _optuna_models.TrialUserAttributeModel.__table__
STUDIES = _optuna_models.StudyModel.__table__


def trial_state_name(state: TrialState | str) -> str:
    """A value of the trials table's state column as the API spells it (``complete``); drivers
    return Optuna's enum or its name."""
    name = state.name if isinstance(state, TrialState) else str(state)
    return TrialStateName(name).value


def trial_id_of(trial: optuna.Trial | FrozenTrial) -> int:
    """The storage's id of a trial (Optuna keeps it private; trial numbers are per study)."""
    return int(trial._trial_id)


def study_id_of(study: optuna.Study) -> int:
    """The storage's id of a study."""
    return int(study._study_id)


def storage_of(study: optuna.Study) -> optuna.storages.BaseStorage:
    """The storage a study reads and writes."""
    return study._storage


def distribution_contains(dist: BaseDistribution, value: object) -> bool:
    """Whether ``value`` lies in ``dist`` (Optuna's check is private)."""
    try:
        return bool(dist._contains(dist.to_internal_repr(value)))
    except (TypeError, ValueError):
        return False


def ask_with_fixed_params(
    study: optuna.Study, fixed: dict[str, object], dists: dict[str, BaseDistribution]
) -> optuna.Trial:
    """A new RUNNING trial whose ``fixed`` params are set and whose others the sampler chooses.

    What ``enqueue_trial(fixed)`` + ``ask()`` do, without the queue: a WAITING trial could be
    popped by another worker's ``ask``. The trial is created RUNNING with Optuna's own
    ``fixed_params`` system attr, which ``Trial`` honours when it suggests.
    """
    storage = storage_of(study)
    template = FrozenTrial(
        number=-1,
        state=TrialState.RUNNING,
        value=None,
        values=None,
        datetime_start=datetime.now(),
        datetime_complete=None,
        params={},
        distributions={},
        user_attrs={},
        system_attrs={"fixed_params": fixed},
        intermediate_values={},
        trial_id=-1,
    )
    new_id = storage.create_new_trial(study_id_of(study), template_trial=template)
    trial = optuna.Trial(study, new_id)
    for name, dist in dists.items():
        trial._suggest(name, dist)
    return trial
