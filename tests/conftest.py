"""Database fixtures shared by every test package: SQLite and PostgreSQL through one fixture.

- ``pg_url``: a fresh PostgreSQL database per test module (dropped afterwards), so parallel
  pytest-xdist workers never share tables. Skipped when the server is unreachable, except with
  ``CI=true``, where a missing database is a failure: CI must never silently skip PostgreSQL.
- ``mariadb_url``: the same on the local MariaDB (``mysql+pymysql``), never skipped in CI either.
- ``db_url``: parametrized ``sqlite`` / ``postgres``; tests using it run against both.
- ``storage_url``: ``sqlite`` / ``postgres`` / ``mariadb``: the storage contract (claims, exact
  budgets, retries, migrations) holds on every backend bnsweep supports.

Neither runs migrations: tests that need the schema call ``migrations.upgrade(db_url)``.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

PG_ADMIN_URL = os.environ.get(
    "BNSWEEP_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
MARIADB_ADMIN_URL = os.environ.get(
    "BNSWEEP_TEST_MARIADB_URL", "mysql+pymysql://root@127.0.0.1:3306/test"
)


def _admin_engine(url: str = PG_ADMIN_URL) -> sa.Engine:
    # AUTOCOMMIT: CREATE/DROP DATABASE cannot run inside a transaction.
    return sa.create_engine(url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)


def _unavailable(reason: str, server: str = "PostgreSQL") -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{server} is required in CI: {reason}")
    pytest.skip(f"{server} unavailable: {reason}")


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    """URL of a fresh, empty PostgreSQL database for this test module."""
    admin = _admin_engine()
    name = f"bnsweep_test_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except sa.exc.OperationalError as exc:
        admin.dispose()
        _unavailable(str(exc).splitlines()[0])
    url = sa.make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    yield url
    with admin.connect() as conn:
        # FORCE: pooled connections of engines cached per URL (search.storage) may still be open.
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="module")
def mariadb_url() -> Iterator[str]:
    """URL of a fresh, empty MariaDB database for this test module."""
    admin = _admin_engine(MARIADB_ADMIN_URL)
    name = f"bnsweep_test_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4"))
    except sa.exc.OperationalError as exc:
        admin.dispose()
        _unavailable(str(exc).splitlines()[0], "MariaDB")
    url = sa.make_url(MARIADB_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    yield url
    with admin.connect() as conn:
        conn.execute(sa.text(f"DROP DATABASE IF EXISTS `{name}`"))
    admin.dispose()


@pytest.fixture(scope="module")
def sqlite_module_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """URL of a fresh SQLite file for this test module."""
    return f"sqlite:///{tmp_path_factory.mktemp('db') / 'bnsweep.db'}"


@pytest.fixture(
    scope="module",
    params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)],
)
def db_url(request: pytest.FixtureRequest) -> str:
    """A fresh database per module: SQLite file, then PostgreSQL (same tests, both backends)."""
    return request.getfixturevalue("sqlite_module_url" if request.param == "sqlite" else "pg_url")


@pytest.fixture(
    scope="module",
    params=[
        "sqlite",
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("mariadb", marks=pytest.mark.mariadb),
    ],
)
def storage_url(request: pytest.FixtureRequest) -> str:
    """A fresh database per module on every supported backend (the storage contract)."""
    fixture = {"sqlite": "sqlite_module_url", "postgres": "pg_url", "mariadb": "mariadb_url"}
    return request.getfixturevalue(fixture[request.param])
