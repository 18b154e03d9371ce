"""Commands that talk to the HTTP API (serve, submit, status, watch, ...) and manage API keys."""

from __future__ import annotations

import csv
import json
import os
import signal
import sys
import time
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console

from service.auth import ApiKeyError
from service.cli import USER_ERRORS, app, fail
from service.cli.search_cmds import StorageOpt, print_insights, storage_url, study_progress_bar
from service.client import ApiError, Client
from service.settings import Settings, get_settings

USER_ERRORS.extend([ApiError, ApiKeyError])

StudyArg = Annotated[str, typer.Argument(help="Study id or name")]
WORKER_STOP_TIMEOUT_S = 30.0


def _client() -> Client:
    return Client.from_settings()


def _print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2))


# --- serve ----------------------------------------------------------------------------------------


def _raise_interrupt(*_: object) -> NoReturn:
    raise KeyboardInterrupt


def start_workers(settings: Settings, count: int, device: str) -> list[BaseProcess]:
    """Start ``count`` local worker processes."""
    from search.worker import WorkerOptions, spawn_workers

    options = WorkerOptions(
        storage_url=settings.database_url,
        device=device,
        heartbeat_interval_s=settings.heartbeat_interval_s,
        grace_period_s=settings.grace_period_s,
    )
    return spawn_workers(options, [device] * count)


def stop_workers(children: list[BaseProcess]) -> None:
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
    host: Annotated[str | None, typer.Option(help="Bind address (default BNSWEEP_HOST)")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default BNSWEEP_PORT)")] = None,
    device: Annotated[str, typer.Option(help="Device of the local workers")] = "auto",
) -> None:
    """Migrate the database, then serve the API and the dashboard (and local workers)."""
    import uvicorn

    import migrations
    from service.app import create_app

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
    typer.echo(f"database: {settings.database_url}; auth {auth}; local workers: {workers}")
    try:
        uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level="info")
    except KeyboardInterrupt:
        pass
    finally:
        stop_workers(children)


# --- studies --------------------------------------------------------------------------------------


@app.command()
def submit(
    spec_file: Annotated[Path, typer.Argument(help="Study spec (YAML or JSON)")],
) -> None:
    """Submit a study spec to the API; prints the study id and its dashboard page."""
    try:
        text = spec_file.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise fail(f"cannot read {spec_file}: {getattr(exc, 'strerror', None) or exc}") from None
    client = _client()
    study = client.submit(text)
    typer.echo(
        f"study {study['id']} {study['name']!r} {study['status']}: "
        f"{client.base_url}{study['links']['dashboard']}"
    )


def _summary_lines(study: dict[str, Any]) -> list[str]:
    p = study["progress"]
    reason = f" ({study['status_reason']})" if study["status_reason"] else ""
    counts = ", ".join(f"{k} {v}" for k, v in study["trials"].items() if v)
    best = study["best_value"]
    return [
        f"study {study['id']} {study['name']!r}: {study['status']}{reason}",
        f"progress: {p['finished']}/{p['n_trials']} finished; trials: {counts or 'none yet'}",
        f"best value: {best if best is not None else '-'}",
        f"dashboard: {study['links']['dashboard']}",
    ]


@app.command()
def status(
    study: StudyArg,
    as_json: Annotated[bool, typer.Option("--json", help="Print the full JSON")] = False,
) -> None:
    """A study's status, progress and best value so far."""
    data = _client().get(study)
    if as_json:
        _print_json(data)
    else:
        typer.echo("\n".join(_summary_lines(data)))


@app.command()
def watch(
    study: StudyArg,
    interval: Annotated[float, typer.Option(min=0.1, help="Seconds between polls")] = 2.0,
) -> None:
    """Follow a study with a live progress bar until it ends."""
    client = _client()
    study_id = client.study_id(study)
    data = client.get(study_id)
    console = Console(stderr=True)
    with study_progress_bar(console) as bar:
        task = bar.add_task(data["name"], total=data["progress"]["n_trials"], detail="")
        while True:
            best = data["best_value"]
            detail = f"{data['status']} running {data['trials']['running']}" + (
                f" best {best:.4g}" if best is not None else ""
            )
            bar.update(task, completed=data["progress"]["finished"], detail=detail)
            if data["status"] not in ("queued", "running"):
                break
            time.sleep(interval)
            data = client.get(study_id)
    typer.echo("\n".join(_summary_lines(data)))


@app.command()
def trials(
    study: StudyArg,
    as_csv: Annotated[bool, typer.Option("--csv", help="CSV instead of JSON")] = False,
    state: Annotated[str | None, typer.Option(help="complete | pruned | fail | running")] = None,
    sort: Annotated[str, typer.Option(help="number | value")] = "number",
    order: Annotated[str, typer.Option(help="asc | desc")] = "asc",
) -> None:
    """Every trial of a study, as a JSON list of the API's trial objects or as CSV."""
    items = _client().all_trials(study, state=state, sort=sort, order=order)
    if not as_csv:
        _print_json(items)
        return
    params = sorted({name for t in items for name in t["params"]})
    writer = csv.writer(sys.stdout)
    writer.writerow(["number", "state", "values", *params, "status", "duration_seconds"])
    for t in items:
        values = ";".join(str(v) for v in t["values"] or [])
        writer.writerow(
            [
                t["number"],
                t["state"],
                values,
                *(t["params"].get(p, "") for p in params),
                t["user_attrs"].get("status", ""),
                t["duration_seconds"] or "",
            ]
        )


@app.command()
def cancel(study: StudyArg) -> None:
    """Cancel a study: no new trials; running ones stop at their next epoch."""
    data = _client().cancel(study)
    typer.echo(f"study {data['id']} {data['name']!r} {data['status']}")


@app.command()
def delete(study: StudyArg) -> None:
    """Delete a study that is not running (with its Optuna study and trials)."""
    _client().delete(study)
    typer.echo(f"study {study} deleted")


@app.command()
def importance(study: StudyArg) -> None:
    """Parameter importances of a study's primary objective."""
    _print_json(_client().importance(study))


@app.command()
def insights(
    study: StudyArg,
    as_json: Annotated[bool, typer.Option("--json", help="Print the raw JSON")] = False,
) -> None:
    """Which BN practices mattered in a study, with the evidence."""
    result = _client().insights(study)
    if as_json:
        _print_json(result)
        return
    print_insights(result)


# --- keys (straight to the database: the API has no key management) -------------------------------

keys_app = typer.Typer(help="API keys for writes (stored hashed; a key is shown once).")
app.add_typer(keys_app, name="keys")


def _engine(storage: str | None):
    from search.storage import get_engine

    return get_engine(storage_url(storage))


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Argument(help="Key name")], storage: StorageOpt = None
) -> None:
    """Create a key and print it (this is the only time it is shown)."""
    from service.auth import create_key

    typer.echo(create_key(_engine(storage), name))


@keys_app.command("list")
def keys_list(storage: StorageOpt = None) -> None:
    """Key names, prefixes and states (never the keys)."""
    from service.auth import list_keys

    for key in list_keys(_engine(storage)):
        state = f"revoked {key.revoked_at:%Y-%m-%d %H:%M}" if key.revoked_at else "active"
        typer.echo(f"{key.name}\t{key.prefix}…\t{state}")


@keys_app.command("revoke")
def keys_revoke(
    name: Annotated[str, typer.Argument(help="Key name")], storage: StorageOpt = None
) -> None:
    """Revoke a key: writes with it answer 403 from now on."""
    from service.auth import revoke_key

    revoke_key(_engine(storage), name)
    typer.echo(f"key {name!r} revoked")
