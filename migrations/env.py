"""Alembic environment: our tables only, our own version table."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context

import service.db  # noqa: F401  (registers the service's tables on the metadata)
from migrations import TABLE_PREFIX, VERSION_TABLE
from search.db import Base

config = context.config


def include_object(
    obj: object, name: str | None, type_: str, reflected: bool, compare_to: object
) -> bool:
    """Never touch Optuna's tables (autogenerate would otherwise propose to drop them)."""
    if type_ == "table":
        return bool(name) and name.startswith(TABLE_PREFIX)
    return True


def run_migrations_online() -> None:
    engine = sa.create_engine(config.get_main_option("sqlalchemy.url"), poolclass=sa.pool.NullPool)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=Base.metadata,
            version_table=VERSION_TABLE,
            include_object=include_object,
            render_as_batch=connection.dialect.name == "sqlite",
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=Base.metadata,
        version_table=VERSION_TABLE,
        include_object=include_object,
        literal_binds=True,
    )
    with context.begin_transaction():
        context.run_migrations()
else:
    run_migrations_online()
