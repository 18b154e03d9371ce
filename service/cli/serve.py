"""``bnsweep serve``: migrate, then the API and the dashboard (and local workers)."""

from __future__ import annotations

import os
import signal
import time
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer

from service.cli.common import shown_url

if TYPE_CHECKING:
    from multiprocessing.context import SpawnProcess

    from service.settings import Settings

app = typer.Typer()
WORKER_STOP_TIMEOUT_S = 30.0


def _raise_interrupt(*_: object) -> NoReturn:
    raise KeyboardInterrupt


def start_workers(settings: Settings, count: int, device: str) -> list[SpawnProcess]:
    """Start ``count`` local worker processes."""
    from search.worker import WorkerOptions, spawn_workers

    options = WorkerOptions(
        storage_url=settings.database_url,
        device=device,
        heartbeat_interval_s=settings.heartbeat_interval_s,
        grace_period_s=settings.grace_period_s,
    )
    return spawn_workers(options, [device] * count)


def stop_workers(children: list[SpawnProcess]) -> None:
    """SIGTERM (a worker fails its trial for retry and exits), then kill what is left."""
    for child in children:
        if child.is_alive() and child.pid is not None:
            os.kill(child.pid, signal.SIGTERM)
    deadline = time.monotonic() + WORKER_STOP_TIMEOUT_S
    for child in children:
        child.join(max(0.0, deadline - time.monotonic()))
        if child.is_alive():
            child.kill()
            child.join()


@app.command()
def serve(
    workers: Annotated[int, typer.Option(min=0, help="Local worker processes to start")] = 0,
    api_processes: Annotated[
        int,
        typer.Option(
            min=1,
            help="API processes (uvicorn workers) sharing the port; each holds its own "
            "connection pools",
        ),
    ] = 1,
    host: Annotated[str | None, typer.Option(help="Bind address (default BNSWEEP_HOST)")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default BNSWEEP_PORT)")] = None,
    device: Annotated[str, typer.Option(help="Device of the local workers")] = "auto",
) -> None:
    """Migrate the database, then serve the API and the dashboard (and local workers)."""
    import uvicorn

    import migrations
    from service.app import create_app
    from service.settings import get_settings

    settings = get_settings().model_copy(
        update={k: v for k, v in {"host": host, "port": port}.items() if v is not None}
    )
    migrations.upgrade(settings.database_url)
    # uvicorn re-raises SIGTERM after its graceful shutdown; with the default handler the process
    # would die before the workers are stopped, so turn it into the same path as Ctrl-C.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    children = start_workers(settings, workers, device)
    base = f"http://{settings.host}:{settings.port}"
    auth = "on (writes need a key)" if settings.auth else "OFF"
    typer.echo(f"bnsweep API docs: {base}/docs\nOptuna dashboard: {base}/dashboard")
    database = shown_url(settings.database_url)
    typer.echo(f"database: {database}; auth {auth}; local workers: {workers}")
    if api_processes > 1:
        typer.echo(f"API processes: {api_processes}")
    try:
        if api_processes == 1:
            app_ = create_app(settings)
            uvicorn.run(app_, host=settings.host, port=settings.port, log_level="info")
        else:
            # Each process builds its app from the environment's settings (host and port are
            # uvicorn's, given here); they share analyses through leases in the database.
            uvicorn.run(
                "service.app:create_app",
                factory=True,
                workers=api_processes,
                host=settings.host,
                port=settings.port,
                log_level="info",
            )
    except KeyboardInterrupt:
        pass
    finally:
        stop_workers(children)
