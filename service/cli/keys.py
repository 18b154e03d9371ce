"""``bnsweep keys``: API keys for writes, straight in the database (the API has no key
management)."""

from __future__ import annotations

from typing import Annotated

import typer

from service.cli.common import StorageOpt, storage_url

app = typer.Typer(help="API keys for writes (stored hashed; a key is shown once).")
NameArg = Annotated[str, typer.Argument(help="Key name")]


@app.command("create")
def create(name: NameArg, storage: StorageOpt = None) -> None:
    """Create a key and print it (this is the only time it is shown)."""
    from search.storage import get_engine
    from service.auth import create_key

    typer.echo(create_key(get_engine(storage_url(storage)), name))


@app.command("list")
def list_keys(storage: StorageOpt = None) -> None:
    """Key names, prefixes and states (never the keys)."""
    from search.storage import get_engine
    from service.auth import list_keys

    for key in list_keys(get_engine(storage_url(storage))):
        state = f"revoked {key.revoked_at:%Y-%m-%d %H:%M}" if key.revoked_at else "active"
        typer.echo(f"{key.name}\t{key.prefix}…\t{state}")


@app.command("revoke")
def revoke(name: NameArg, storage: StorageOpt = None) -> None:
    """Revoke a key: writes with it answer 403 from now on."""
    from search.storage import get_engine
    from service.auth import revoke_key

    revoke_key(get_engine(storage_url(storage)), name)
    typer.echo(f"key {name!r} revoked")
