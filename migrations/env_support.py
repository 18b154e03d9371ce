"""What the Alembic environment and the migration tests share: which tables are ours."""

from __future__ import annotations

from migrations import TABLE_PREFIX


def include_object(
    obj: object, name: str | None, type_: str, reflected: bool, compare_to: object
) -> bool:
    """Never touch Optuna's tables (autogenerate would otherwise propose to drop them)."""
    if type_ == "table":
        return name is not None and name.startswith(TABLE_PREFIX)
    return True
