"""What the command modules share: the error exit, the storage option, JSON and progress output.

Light on purpose: every command module imports this at start-up, and `bnsweep --help` or
`bnsweep status` must not pay for torch, Optuna or SQLAlchemy.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from pydantic import BaseModel
    from rich.console import Console
    from rich.progress import Progress

StorageOpt = Annotated[
    str | None,
    typer.Option(
        "--storage",
        help="Database URL: read it directly, no server (default for local commands: "
        "BNSWEEP_DATABASE_URL or the SQLite file).",
    ),
]
StudyArg = Annotated[str, typer.Argument(help="Study id or name")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the full JSON")]


def fail(message: str) -> typer.Exit:
    """Print one error line and return the exit (code 2) to raise."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(2)


def storage_url(storage: str | None) -> str:
    """``--storage``, else the configured database URL."""
    from service.settings import get_settings

    return storage or get_settings().database_url


def shown_url(url: str) -> str:
    """A database URL fit for logs and terminals: the password masked."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def print_json(data: BaseModel | dict[str, Any] | list[Any]) -> None:
    """A model or plain data as indented JSON on stdout."""
    if hasattr(data, "model_dump_json"):
        typer.echo(data.model_dump_json(indent=2))
    else:
        typer.echo(json.dumps(data, indent=2))


def study_progress_bar(console: Console) -> Progress:
    """A bar for a study: name, finished/n_trials, a detail field, elapsed time."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
        console=console,
    )
