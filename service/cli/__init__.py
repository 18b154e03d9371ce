"""The ``bnsweep`` command line.

Every command lives in a small module of this package and registers itself on ``app``. Errors a user
can fix (bad flags, bad spec, unknown names) end with exit code 2 and one line on stderr.
"""

from __future__ import annotations

import sys

import click
import typer

from models.errors import ConfigError

try:  # typer >= 0.2x vendors its own copy of click: its exceptions are not click's
    from typer._click import exceptions as _typer_click
except ImportError:  # pragma: no cover - older typer uses click itself
    _typer_click = click.exceptions

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

# Error types that mean "the user's input is wrong": exit 2 with one line. Other packages append
# their own (e.g. search.errors.SpecError) when their command modules are imported.
USER_ERRORS: list[type[BaseException]] = [ConfigError]


def fail(message: str) -> typer.Exit:
    """Print one error line and return the exit (code 2) to raise."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(2)


def _register_commands() -> None:
    """Import the command modules; each registers its commands on ``app`` (here, not at the top:
    they import this module)."""
    import importlib

    for module in ("train", "search_cmds", "api_cmds"):
        importlib.import_module(f"service.cli.{module}")


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    _register_commands()
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
    except tuple(USER_ERRORS) as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
    if isinstance(code, int) and code:
        sys.exit(code)
