"""Commands that work on the database directly, no server: migrate, worker, run."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import typer

from service.cli.common import StorageOpt, fail, shown_url, storage_url, study_progress_bar

if TYPE_CHECKING:
    from search.spec import StudySpec

app = typer.Typer()
DeviceOpt = Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N")]
FuseOpt = Annotated[
    str | None,
    typer.Option(
        help="Trials trained as one fused model: auto (measured per shape on this device) or "
        "1..64; default: the spec's execution.fuse. 1 = one trial per model."
    ),
]


def parse_fuse(value: str | None) -> int | Literal["auto"] | None:
    """``--fuse``: auto, or a group size in 1..64; exit 2 with one line otherwise."""
    from search.spec import MAX_FUSE

    if value is None or value == "auto":
        return value  # type: ignore[return-value]
    if value.isdigit() and 1 <= int(value) <= MAX_FUSE:
        return int(value)
    raise fail(f"--fuse: expected auto or 1..{MAX_FUSE}, got {value!r}")


def read_spec_file(path: Path) -> StudySpec:
    """Read and validate a spec file (YAML or JSON); exit 2 with one line if unreadable."""
    from search.validate import parse_spec_text
    from service.settings import get_settings

    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise fail(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    return parse_spec_text(text, get_settings().limits)


@app.command()
def migrate(storage: StorageOpt = None) -> None:
    """Create or upgrade the database schema (Optuna's tables and bnsweep's)."""
    import migrations

    url = storage_url(storage)
    migrations.upgrade(url)
    typer.echo(f"database at {shown_url(url)} is at revision {migrations.current(url)}")


@app.command()
def worker(
    storage: StorageOpt = None,
    device: DeviceOpt = "auto",
    gpus: Annotated[str | None, typer.Option(help="all | 0,1,...: one slot per GPU")] = None,
    trials_per_device: Annotated[int, typer.Option(min=1, help="Trials at once per device")] = 1,
    study: Annotated[str | None, typer.Option(help="Only run this study (by name)")] = None,
    idle_exit: Annotated[
        float | None, typer.Option(min=0, help="Exit after this many idle seconds")
    ] = None,
    poll: Annotated[float, typer.Option(min=0.05, help="Seconds between claim attempts")] = 2.0,
    fuse: FuseOpt = None,
) -> None:
    """Run trials of studies with budget left until stopped (SIGTERM stops cleanly)."""
    from search.worker import WorkerOptions, run_workers, slot_devices
    from service.settings import get_settings

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
        fuse=parse_fuse(fuse),
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
    device: DeviceOpt = "auto",
    fuse: FuseOpt = None,
) -> None:
    """Run a whole study locally (no HTTP service), print its BN findings and the best config."""
    from rich.console import Console

    import migrations
    from search.runner import Progress, run_study
    from service.cli.studies import print_report
    from service.direct import DatabaseClient

    spec = read_spec_file(spec_file)
    url = storage_url(storage)
    migrations.upgrade(url)
    console = Console(stderr=True)
    with study_progress_bar(console) as bar:
        task = bar.add_task(spec.name, total=spec.budget.n_trials, detail="")

        def show(p: Progress) -> None:
            best = f" best {p.best_value:.4f}" if p.best_value is not None else ""
            detail = f"{p.status.value} running {p.counts.running} failed {p.counts.fail}{best}"
            bar.update(task, completed=p.counts.finished, detail=detail)

        final = run_study(
            url, spec, n_workers=workers, device=device, on_progress=show, fuse=parse_fuse(fuse)
        )
    console.print(f"study {spec.name!r} {final.status.value}: {final.counts.as_dict()}")
    client = DatabaseClient(url)
    print_report(client.report(spec.name), console)
    typer.echo(client.best(spec.name).model_dump_json(indent=2))
