"""Commands that work on the database directly: migrate, worker, run, best (with --storage)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated, Any

import optuna
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from search.errors import SpecError, StudyNotFoundError, StudyStateError
from search.insights import study_insights
from search.runner import Progress as StudyProgress
from search.runner import run_study
from search.spec import StudySpec, parse_spec_text
from search.storage import get_engine, get_storage
from search.studies import get_study_row, spec_of
from service.cli import USER_ERRORS, app, fail
from service.settings import get_settings

USER_ERRORS.extend([SpecError, StudyNotFoundError, StudyStateError])

StorageOpt = Annotated[
    str | None,
    typer.Option("--storage", help="Database URL (default: BNSWEEP_DATABASE_URL or SQLite file)."),
]


def storage_url(storage: str | None) -> str:
    return storage or get_settings().database_url


def read_spec_file(path: Path) -> StudySpec:
    """Read and validate a spec file (YAML or JSON); exit 2 with one line if unreadable."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise fail(f"cannot read {path}: {exc.strerror}") from None
    return parse_spec_text(text, get_settings().limits)


@app.command()
def migrate(storage: StorageOpt = None) -> None:
    """Create or upgrade the database schema (Optuna's tables and bnsweep's)."""
    import migrations

    url = storage_url(storage)
    migrations.upgrade(url)
    typer.echo(f"database at {url} is at revision {migrations.current(url)}")


@app.command()
def worker(
    storage: StorageOpt = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N")] = "auto",
    gpus: Annotated[str | None, typer.Option(help="all | 0,1,...: one slot per GPU")] = None,
    trials_per_device: Annotated[int, typer.Option(min=1, help="Trials at once per device")] = 1,
    study: Annotated[str | None, typer.Option(help="Only run this study (by name)")] = None,
    idle_exit: Annotated[
        float | None, typer.Option(min=0, help="Exit after this many idle seconds")
    ] = None,
    poll: Annotated[float, typer.Option(min=0.05, help="Seconds between claim attempts")] = 2.0,
) -> None:
    """Run trials of studies with budget left until stopped (SIGTERM stops cleanly)."""
    from search.worker import WorkerOptions, run_workers, slot_devices

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    settings = get_settings()
    options = WorkerOptions(
        storage_url=storage_url(storage),
        device=device,
        study_name=study,
        idle_exit_s=idle_exit,
        poll_s=poll,
        heartbeat_interval_s=settings.heartbeat_interval_s,
        grace_period_s=settings.grace_period_s,
    )
    try:
        devices = slot_devices(device, gpus, trials_per_device)
    except ValueError as exc:
        raise fail(f"--gpus: {exc}") from None
    run_workers(options, devices)


@app.command()
def run(
    spec_file: Annotated[Path, typer.Argument(help="Study spec (YAML or JSON)")],
    workers: Annotated[int, typer.Option(min=1, help="Local worker processes")] = 1,
    storage: StorageOpt = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N")] = "auto",
) -> None:
    """Run a whole study locally (no HTTP service) and print the best configuration."""
    import migrations

    spec = read_spec_file(spec_file)
    url = storage_url(storage)
    migrations.upgrade(url)
    console = Console(stderr=True)
    with study_progress_bar(console) as bar:
        task = bar.add_task(spec.name, total=spec.budget.n_trials, detail="")

        def show(p: StudyProgress) -> None:
            best = f" best {p.best_value:.4f}" if p.best_value is not None else ""
            detail = f"{p.status.value} running {p.counts.running} failed {p.counts.fail}{best}"
            bar.update(task, completed=p.counts.finished, detail=detail)

        final = run_study(url, spec, n_workers=workers, device=device, on_progress=show)
    console.print(f"study {spec.name!r} {final.status.value}: {final.counts.as_dict()}")
    trials = optuna.load_study(study_name=spec.name, storage=get_storage(url)).get_trials()
    print_insights(study_insights(trials, spec), console)
    print_best(url, spec.name)


def study_progress_bar(console: Console) -> Progress:
    """A bar for a study: name, finished/n_trials, a detail field, elapsed time."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
        console=console,
    )


def print_insights(result: dict[str, Any], console: Console | None = None) -> None:
    """BN insights as a table: practice, strength, verdict."""
    table = Table(
        title=f"BN insights on {result['metric']} ({result['trials_used']} trials, "
        f"{result['diverged']} diverged)"
    )
    for column in ("practice", "strength", "verdict"):
        table.add_column(column, overflow="fold")
    for f in result["findings"]:
        table.add_row(f["practice"], f["strength"], f["verdict"])
    (console or Console()).print(table)


def print_best(url: str, study_name: str) -> None:
    """Print the best trial of a study as JSON (exit 2 if it has none yet)."""
    from search.results import best_summary

    row = get_study_row(get_engine(url), study_name)
    study = optuna.load_study(study_name=row.name, storage=get_storage(url))
    summary = best_summary(study, spec_of(row))
    if summary is None:
        raise fail(f"study {study_name!r} has no completed trial yet")
    typer.echo(json.dumps(summary, indent=2))


@app.command()
def best(
    study: Annotated[str, typer.Argument(help="Study id or name")],
    storage: StorageOpt = None,
) -> None:
    """Best configuration of a study: from the API, or straight from the database (--storage)."""
    if storage is not None:
        print_best(storage, study)
        return
    from service.client import Client

    typer.echo(json.dumps(Client.from_settings().best(study), indent=2))
