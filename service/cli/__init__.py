"""The ``bnsweep`` command line: the command modules' Typer apps, combined here.

Errors a user can fix (bad flags, bad spec, unknown names, an API error) end with exit code 2
and one line on stderr. Command modules import only what their commands need, when they run:
`bnsweep --help` and the API commands start without torch, Optuna or SQLAlchemy.
"""

from __future__ import annotations

import sys

import click
import typer

# typer >= 0.2x vendors its own copy of click: its exceptions are not click's.
from typer._click import exceptions as _typer_click

from service.cli import keys, local, serve, studies, train

_EXITS = (click.exceptions.Exit, typer.Exit)
_ABORTS = (click.exceptions.Abort, typer.Abort)
_USAGE_ERRORS = (click.UsageError, _typer_click.UsageError)

app = typer.Typer(
    name="bnsweep",
    help="Hyperparameter optimization for Batch Normalization settings.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
for sub in (train.app, local.app, serve.app, studies.app):
    app.add_typer(sub)
app.add_typer(keys.app, name="keys")


def user_errors() -> tuple[type[BaseException], ...]:
    """The error types that mean "the user's input is wrong" (exit 2, one line). Imported when an
    error happens, not at start-up: they live in modules most commands never load."""
    from models.errors import ConfigError
    from search.errors import NotFoundError, StudyNotFoundError, StudyStateError
    from service.auth import ApiKeyError
    from service.client import ApiError

    return (ConfigError, NotFoundError, StudyNotFoundError, StudyStateError, ApiError, ApiKeyError)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    try:
        # Without standalone mode an Exit raised by a command comes back as its return value.
        code = app(args=argv, standalone_mode=False)
    except _EXITS as exc:
        sys.exit(exc.exit_code)
    except _ABORTS:
        sys.exit(130)
    except _USAGE_ERRORS as exc:
        typer.echo(f"error: {exc.format_message()}", err=True)
        sys.exit(2)
    except Exception as exc:
        if not isinstance(exc, user_errors()):
            raise
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
    if isinstance(code, int) and code:
        sys.exit(code)
