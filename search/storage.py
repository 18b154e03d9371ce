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
import json
import warnings
from collections.abc import Container, Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

import optuna
import sqlalchemy as sa
from optuna.distributions import BaseDistribution
from optuna.storages._cached_storage import _CachedStorage, _StudyInfo
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


def _sqlite_pragmas(dbapi_conn: Any) -> None:
    """WAL (readers never wait for the writer) and ``synchronous=NORMAL``, SQLite's advice for
    WAL: a commit no longer waits for the disk (half the cost of each of a trial's writes); a
    crash of the process loses nothing, a power loss may lose the last commits, never the file."""
    dbapi_conn.execute("PRAGMA journal_mode=WAL")
    dbapi_conn.execute("PRAGMA synchronous=NORMAL")


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
            _sqlite_pragmas(dbapi_conn)

        @event.listens_for(engine, "begin")
        def _begin(conn: Connection) -> None:
            immediate = conn.get_execution_options().get(_LOCKED, False)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


@functools.cache
def read_only(engine: Engine) -> Engine:
    """``engine`` for reads that need no transaction around them: on PostgreSQL in autocommit
    (each statement sees what is committed, as it does in a READ COMMITTED transaction, and no
    BEGIN and ROLLBACK round trips per connection); SQLite's reads keep their transaction (one
    snapshot for all statements). Same pool."""
    if engine.dialect.name != "postgresql":
        return engine
    return engine.execution_options(isolation_level="AUTOCOMMIT")


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
    storage = optuna.storages.RDBStorage(
        url,
        engine_kwargs=engine_kwargs(url, pool_size),
        heartbeat_interval=heartbeat_interval_s,
        grace_period=grace_period_s,
        heartbeat_stale_trial_callback=RetryFromSpec(),
        skip_table_creation=True,
    )
    if is_sqlite(url):
        event.listen(storage.engine, "connect", lambda conn, _: _sqlite_pragmas(conn))
        storage.engine.dispose()  # the connection opened before the hook: reopened with it
    return storage


# --- Optuna's internals, in one place -------------------------------------------------------------

TRIALS = _optuna_models.TrialModel.__table__
"""Optuna's ``trials`` table (study_id, number, state, datetime_start/complete)."""
TRIAL_HEARTBEATS = _optuna_models.TrialHeartbeatModel.__table__
TRIAL_VALUES = _optuna_models.TrialValueModel.__table__
TRIAL_PARAMS = _optuna_models.TrialParamModel.__table__
TRIAL_USER_ATTRS = _optuna_models.TrialUserAttributeModel.__table__
TRIAL_SYSTEM_ATTRS = _optuna_models.TrialSystemAttributeModel.__table__
TRIAL_INTERMEDIATE_VALUES = _optuna_models.TrialIntermediateValueModel.__table__
STUDIES = _optuna_models.StudyModel.__table__
STUDY_DIRECTIONS = _optuna_models.StudyDirectionModel.__table__


def set_trial_user_attrs(study: optuna.Study, trial_id: int, attrs: dict[str, Any]) -> None:
    """Optuna's ``set_trial_user_attr`` for every item of ``attrs``, in one transaction instead
    of one each (a trial's outcome has ~20 attrs: ~20 commits, a tenth of a one-second trial on
    SQLite). UpdateFinishedTrialError if the trial has finished, as Optuna raises."""
    engine = engine_of(study)
    if engine is None:  # not an RDB storage
        for key, value in attrs.items():
            storage_of(study).set_trial_user_attr(trial_id, key, value)
        return
    with engine.begin() as conn:
        state = conn.execute(
            sa.select(TRIALS.c.state).where(TRIALS.c.trial_id == trial_id).with_for_update()
        ).scalar_one()
        if TrialState[state.name if isinstance(state, TrialState) else state].is_finished():
            raise optuna.exceptions.UpdateFinishedTrialError(
                f"trial {trial_id} has already finished and cannot be updated"
            )
        attrs_of = TRIAL_USER_ATTRS.c
        conn.execute(
            sa.delete(TRIAL_USER_ATTRS).where(
                attrs_of.trial_id == trial_id, attrs_of.key.in_(list(attrs))
            )
        )
        conn.execute(
            sa.insert(TRIAL_USER_ATTRS),
            [
                {"trial_id": trial_id, "key": k, "value_json": json.dumps(v)}
                for k, v in attrs.items()
            ],
        )


def fail_waiting_trials(conn: Connection, optuna_study_id: int, reason: str) -> int:
    """Fail a study's WAITING trials — retries and enqueued configurations that no worker will
    run, because the study ended — with user attrs ``status: cancelled`` and ``reason``, in
    ``conn``'s transaction; returns how many. A trial a worker took meanwhile is RUNNING: left."""
    waiting = TRIALS.c.state == TrialState.WAITING
    ids = list(
        conn.execute(
            sa.select(TRIALS.c.trial_id).where(TRIALS.c.study_id == optuna_study_id, waiting)
        ).scalars()
    )
    if not ids:
        return 0
    conn.execute(
        sa.update(TRIALS)
        .where(TRIALS.c.trial_id.in_(ids), waiting)
        .values(state=TrialState.FAIL, datetime_complete=datetime.now())
    )
    attrs = {"status": "cancelled", "reason": reason}
    conn.execute(
        sa.delete(TRIAL_USER_ATTRS).where(
            TRIAL_USER_ATTRS.c.trial_id.in_(ids), TRIAL_USER_ATTRS.c.key.in_(list(attrs))
        )
    )
    conn.execute(
        sa.insert(TRIAL_USER_ATTRS),
        [
            {"trial_id": tid, "key": key, "value_json": json.dumps(value)}
            for tid in ids
            for key, value in attrs.items()
        ],
    )
    return len(ids)


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


def engine_of(study: optuna.Study) -> Engine | None:
    """The SQLAlchemy engine under a study's storage (an RDBStorage, cached or not), or None."""
    storage = storage_of(study)
    backend = getattr(storage, "_backend", storage)
    engine = getattr(backend, "engine", None)
    return engine if isinstance(engine, Engine) else None


def distribution_contains(dist: BaseDistribution, value: object) -> bool:
    """Whether ``value`` lies in ``dist`` (Optuna's check is private)."""
    try:
        return bool(dist._contains(dist.to_internal_repr(value)))
    except (TypeError, ValueError):
        return False


def pop_waiting_trial(
    study: optuna.Study, fixed: dict[str, object], dists: dict[str, BaseDistribution]
) -> optuna.Trial | None:
    """A WAITING trial (enqueued, or a retry) that can take the ``fixed`` values, made RUNNING
    with them; None if there is none. A waiting trial that fixes one of them to another value is
    left alone; one that leaves it to the sampler gets it fixed first. Popping is atomic (the same
    state change ``ask`` uses): a trial another worker took meanwhile is skipped."""
    storage = storage_of(study)
    for frozen in storage.get_all_trials(
        study_id_of(study), deepcopy=False, states=(TrialState.WAITING,)
    ):
        wanted = dict(frozen.system_attrs.get("fixed_params", {}))
        if any(name in wanted and wanted[name] != value for name, value in fixed.items()):
            continue
        tid = trial_id_of(frozen)
        try:
            if wanted.keys() < (wanted | fixed).keys():
                storage.set_trial_system_attr(tid, "fixed_params", wanted | fixed)
            if not storage.set_trial_state_values(tid, state=TrialState.RUNNING):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
        trial = optuna.Trial(study, tid)
        for name, dist in dists.items():
            trial._suggest(name, dist)
        return trial
    return None


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


def stored_value(value: float | None, value_type: Any) -> float:
    """A value of Optuna's ``trial_values`` table as a float (infinities are stored by type)."""
    return float(_optuna_models.TrialValueModel.stored_repr_to_value(value, value_type))


_IDS_PER_QUERY = 1_000  # below SQLite's bound on variables per statement


def trials_by_id(
    conn: Connection, trial_ids: Iterable[int], *, details: bool = True
) -> dict[int, FrozenTrial]:
    """The trials with ``trial_ids``, as Optuna builds them, in a constant number of queries per
    thousand ids, each reading those trials' rows only (by primary key or ``trial_id`` index).
    Optuna's own reads return a study's trials all at once, or one per call. Without
    ``details``, intermediate values and system attrs are left empty (a page shows neither)."""
    ids = list(trial_ids)
    out: dict[int, FrozenTrial] = {}
    for lo in range(0, len(ids), _IDS_PER_QUERY):
        chunk = ids[lo : lo + _IDS_PER_QUERY]
        where = TRIALS.c.trial_id.in_(chunk)
        for trial in _frozen_trials(conn, where, chunk, True, details, details):
            out[trial._trial_id] = trial
    return out


class _WorkerCache(_CachedStorage):
    """Optuna's cache of finished trials (what ``load_study`` wraps an RDBStorage in), kept by a
    worker across its trials of a study, and reading WAITING trials straight from the database.

    ``load_study`` builds a new cache each time, so a worker that loaded the study for each trial
    read every trial of the study, user attrs included, on each ``ask`` (Optuna's pop of the
    waiting queue asks for all WAITING trials, and the cache answers that by reading the whole
    study first). Kept, the cache reads only trials that are new or were unfinished; asked for
    WAITING trials only, it queries the database (indexed on study and state), so a sampler that
    needs no history (random, grid, QMC) never loads the study at all. TPE and the median pruner
    read the finished trials through the cache, as Optuna does inside ``optimize``.
    """

    def get_all_trials(
        self,
        study_id: int,
        deepcopy: bool = True,
        states: Container[TrialState] | None = None,
    ) -> list[FrozenTrial]:
        if states is None or tuple(states) != (TrialState.WAITING,):  # type: ignore[arg-type]
            return super().get_all_trials(study_id, deepcopy=deepcopy, states=states)
        trials = self._backend.get_all_trials(study_id, deepcopy=deepcopy, states=states)
        with self._lock:
            # Popped, a trial is then updated through the cache, which must know it.
            info = self._studies.setdefault(study_id, _StudyInfo())
            self._add_trials_to_cache(study_id, trials)
            info.unfinished_trial_ids.update(t._trial_id for t in trials)
        return trials


def worker_storage(backend: optuna.storages.RDBStorage) -> optuna.storages.BaseStorage:
    """A storage for ``optuna.load_study`` that a worker keeps across its trials of one study."""
    return _WorkerCache(backend)


@functools.lru_cache(maxsize=1024)
def _distribution(distribution_json: str) -> BaseDistribution:
    return optuna.distributions.json_to_distribution(distribution_json)


def _local_naive(utc: datetime | None) -> datetime | None:
    """As Optuna's TrialModel returns stored times: naive, local time."""
    if utc is None:
        return None
    return utc.replace(tzinfo=UTC).astimezone().replace(tzinfo=None)


def study_trials(
    conn: Connection,
    optuna_study_id: int,
    states: Iterable[TrialState] | None = None,
    user_attrs: bool | Iterable[str] = True,
    intermediate_values: bool = True,
) -> list[FrozenTrial]:
    """A study's trials as Optuna builds them, in one query per table instead of through the
    ORM: for the analyses, which read every trial of a study. At 10,000 trials Optuna's
    ``get_all_trials`` holds ~1.3 GB at its peak (an ORM object per row) and takes ~35 s on the
    2-core machine; this reads the same rows in a fraction of both. ``user_attrs`` may name the
    attrs to read (an analysis that needs no ``train_config`` skips the bulk of the data), and
    ``intermediate_values=False`` skips those. System attrs are read too; ids ascend."""
    t = TRIALS.c
    where = t.study_id == optuna_study_id
    if states is not None:
        where = sa.and_(where, t.state.in_(list(states)))
    ids = sa.select(t.trial_id).where(where)
    return _frozen_trials(conn, where, ids, user_attrs, intermediate_values, True)


def _frozen_trials(
    conn: Connection,
    where: Any,
    ids: Any,
    user_attrs: bool | Iterable[str],
    intermediate_values: bool,
    system_attrs: bool,
) -> list[FrozenTrial]:
    """The trials matching ``where`` (on ``trials``), whose ids ``ids`` (a list, or a subquery)
    selects in the other tables."""
    t, v = TRIALS.c, TRIAL_VALUES.c
    # Values ride along with their trial (one row per objective): one round trip fewer.
    trials_query = (
        sa.select(
            t.trial_id,
            t.number,
            t.state,
            t.datetime_start,
            t.datetime_complete,
            v.objective,
            v.value,
            v.value_type,
        )
        .select_from(TRIALS.outerjoin(TRIAL_VALUES, v.trial_id == t.trial_id))
        .where(where)
        .order_by(t.trial_id, v.objective)
    )

    def rows(table: sa.Table, *columns: str, where: Any = None) -> Any:
        query = sa.select(table.c.trial_id, *(table.c[c] for c in columns)).where(
            table.c.trial_id.in_(ids)
        )
        if where is not None:
            query = query.where(where)
        # In insertion order, as Optuna's own reads return them (dict order follows).
        return conn.execute(query.order_by(*table.primary_key.columns)).all()

    params: dict[int, dict[str, Any]] = {}
    dists: dict[int, dict[str, BaseDistribution]] = {}
    for trial_id, name, value, dist_json in rows(
        TRIAL_PARAMS, "param_name", "param_value", "distribution_json"
    ):
        dist = _distribution(dist_json)
        params.setdefault(trial_id, {})[name] = dist.to_external_repr(value)
        dists.setdefault(trial_id, {})[name] = dist
    attrs: dict[int, dict[str, Any]] = {}
    if user_attrs:
        keys = None if user_attrs is True else TRIAL_USER_ATTRS.c.key.in_(list(user_attrs))
        for trial_id, key, value_json in rows(TRIAL_USER_ATTRS, "key", "value_json", where=keys):
            attrs.setdefault(trial_id, {})[key] = json.loads(value_json)
    system: dict[int, dict[str, Any]] = {}
    if system_attrs:
        for trial_id, key, value_json in rows(TRIAL_SYSTEM_ATTRS, "key", "value_json"):
            system.setdefault(trial_id, {})[key] = json.loads(value_json)
    steps: dict[int, dict[int, float]] = {}
    if intermediate_values:
        to_value = _optuna_models.TrialIntermediateValueModel.stored_repr_to_intermediate_value
        for trial_id, step, value, value_type in rows(
            TRIAL_INTERMEDIATE_VALUES, "step", "intermediate_value", "intermediate_value_type"
        ):
            steps.setdefault(trial_id, {})[step] = to_value(value, value_type)
    out: list[FrozenTrial] = []
    for row in conn.execute(trials_query).all():
        if out and out[-1]._trial_id == row.trial_id:  # its next objective
            assert out[-1].values is not None
            out[-1].values = [*out[-1].values, stored_value(row.value, row.value_type)]
            continue
        out.append(
            FrozenTrial(
                number=row.number,
                state=row.state if isinstance(row.state, TrialState) else TrialState[row.state],
                value=None,
                values=None
                if row.value_type is None
                else [stored_value(row.value, row.value_type)],
                datetime_start=_local_naive(row.datetime_start),
                datetime_complete=_local_naive(row.datetime_complete),
                params=params.get(row.trial_id, {}),
                distributions=dists.get(row.trial_id, {}),
                user_attrs=attrs.get(row.trial_id, {}),
                system_attrs=system.get(row.trial_id, {}),
                intermediate_values=steps.get(row.trial_id, {}),
                trial_id=row.trial_id,
            )
        )
    return out
