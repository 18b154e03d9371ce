"""Alembic migrations for bnsweep's own tables, beside Optuna's in the same database.

Our history uses the version table ``bnsweep_alembic_version``; Optuna keeps its own
``alembic_version``. ``upgrade`` first lets Optuna create (or upgrade-check) its schema, once, so
workers can open their storages with ``skip_table_creation=True``.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory

VERSION_TABLE = "bnsweep_alembic_version"
TABLE_PREFIX = "bnsweep_"


def alembic_config(url: str) -> Config:
    """An Alembic config pointing at this package, for ``url``."""
    from search.storage import normalize_url

    config = Config()
    config.set_main_option("script_location", str(Path(__file__).parent))
    config.set_main_option("sqlalchemy.url", normalize_url(url).replace("%", "%%"))
    return config


def upgrade(url: str, revision: str = "head") -> None:
    """Create Optuna's tables if needed, then apply our migrations up to ``revision``.

    Nothing to do is cheap: when our schema is already at head (one query), neither Optuna's
    storage nor Alembic's machinery is started — ``bnsweep run`` pays this at every start.
    Optuna's schema was created before ours, so it exists too.
    """
    from search.storage import create_optuna_schema

    config = alembic_config(url)
    head = ScriptDirectory.from_config(config).get_current_head()
    if revision == "head" and current(url) == head:
        return
    create_optuna_schema(url)
    command.upgrade(config, revision)


def downgrade(url: str, revision: str = "base") -> None:
    """Revert our migrations down to ``revision`` (Optuna's tables are left alone)."""
    command.downgrade(alembic_config(url), revision)


def current(url: str) -> str | None:
    """Our schema revision in the database at ``url`` (None if never migrated)."""
    import sqlalchemy as sa
    from alembic.runtime.migration import MigrationContext

    from search.storage import normalize_url

    engine = sa.create_engine(normalize_url(url))
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
            return context.get_current_revision()
    finally:
        engine.dispose()
