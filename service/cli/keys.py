"""``bnsweep keys``: API keys for writes, straight in the database (the API has no key
management)."""

from __future__ import annotations

from typing import Annotated

import typer

from service.cli.common import StorageOpt, storage_url

app = typer.Typer(help="API keys for writes (stored hashed; a key is shown once).")
NameArg = Annotated[str, typer.Argument(help="Key name")]


@app.command("create")
def create(
    name: NameArg,
    admin: Annotated[
        bool, typer.Option("--admin", help="May cancel, pause, resume and delete any study")
    ] = False,
    max_active_studies: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="Queued, running and paused studies at once "
            "(default: BNSWEEP_MAX_ACTIVE_STUDIES_PER_KEY)",
        ),
    ] = None,
    max_queued_trials: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="Trials still to run across its active studies "
            "(default: BNSWEEP_MAX_QUEUED_TRIALS_PER_KEY)",
        ),
    ] = None,
    storage: StorageOpt = None,
) -> None:
    """Create a key and print it (this is the only time it is shown)."""
    from search.storage import get_engine
    from service.auth import create_key

    raw = create_key(
        get_engine(storage_url(storage)),
        name,
        admin=admin,
        max_active_studies=max_active_studies,
        max_queued_trials=max_queued_trials,
    )
    typer.echo(raw)


@app.command("list")
def list_keys(storage: StorageOpt = None) -> None:
    """Key names, prefixes, roles, quotas and states (never the keys)."""
    from search.storage import get_engine
    from service.auth import list_keys

    for key in list_keys(get_engine(storage_url(storage))):
        state = f"revoked {key.revoked_at:%Y-%m-%d %H:%M}" if key.revoked_at else "active"
        role = "admin" if key.admin else "user"
        quotas = f"studies {_quota(key.max_active_studies)}, trials {_quota(key.max_queued_trials)}"
        typer.echo(f"{key.name}\t{key.prefix}…\t{role}\t{quotas}\t{state}")


def _quota(value: int | None) -> str:
    return "default" if value is None else str(value)


@app.command("revoke")
def revoke(name: NameArg, storage: StorageOpt = None) -> None:
    """Revoke a key: writes with it answer 403 from now on."""
    from search.storage import get_engine
    from service.auth import revoke_key

    revoke_key(get_engine(storage_url(storage)), name)
    typer.echo(f"key {name!r} revoked")
