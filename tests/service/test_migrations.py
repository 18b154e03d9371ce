"""Our migrations beside Optuna's schema: up and down, never touching Optuna's version table."""

from __future__ import annotations

import optuna
import pytest
import sqlalchemy as sa

import migrations

OURS = {"bnsweep_studies", "bnsweep_slots", "bnsweep_workers", "bnsweep_api_keys"}

# Both tests share the module's database and rely on running in file order on one xdist worker.
pytestmark = pytest.mark.xdist_group("migrations")


def _tables(url: str) -> set[str]:
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        return set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()


def _optuna_version(url: str) -> str:
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            return conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar_one()
    finally:
        engine.dispose()


def test_upgrade_and_downgrade_on_an_empty_database(db_url):
    assert _tables(db_url) == set()
    migrations.upgrade(db_url)
    assert OURS | {"studies", "trials", "alembic_version", "bnsweep_alembic_version"} <= _tables(
        db_url
    )
    assert migrations.current(db_url) is not None
    optuna_version = _optuna_version(db_url)
    migrations.downgrade(db_url)
    assert not OURS & _tables(db_url)
    assert {"studies", "trials"} <= _tables(db_url)
    assert _optuna_version(db_url) == optuna_version
    assert migrations.current(db_url) is None


def test_upgrade_beside_existing_optuna_tables(db_url):
    optuna.storages.RDBStorage(db_url).remove_session()  # Optuna made its schema first
    optuna_version = _optuna_version(db_url)
    study = optuna.create_study(study_name="pre-existing", storage=db_url)
    migrations.upgrade(db_url)
    assert _tables(db_url) >= OURS
    assert _optuna_version(db_url) == optuna_version
    migrations.downgrade(db_url)
    assert not OURS & _tables(db_url)
    assert optuna.load_study(study_name="pre-existing", storage=db_url)._study_id == study._study_id


def test_migrations_build_exactly_the_tables_the_code_declares(db_url):
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    import service.db  # noqa: F401  (registers the API keys table on the metadata)
    from migrations.env_support import include_object
    from search.db import Base

    migrations.upgrade(db_url)
    engine = sa.create_engine(migrations.alembic_config(db_url).get_main_option("sqlalchemy.url"))
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(
                conn,
                opts={"include_object": include_object, "version_table": migrations.VERSION_TABLE},
            )
            diff = compare_metadata(context, Base.metadata)
    finally:
        engine.dispose()
        migrations.downgrade(db_url)
    assert diff == []
