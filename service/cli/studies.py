"""Commands on studies: submit, status, watch, trials, best, report, importance, confirm, cancel,
pause, resume, delete. Reads go through the API, or straight to a database with ``--storage``;
both answer with the same models."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from service.cli.common import JsonOpt, StorageOpt, StudyArg, fail, print_json, study_progress_bar

if TYPE_CHECKING:
    from rich.console import Console

    from search.analysis import StudyReport
    from service.client import Client
    from service.direct import DatabaseClient
    from service.schemas import StudyPublic

app = typer.Typer()


def api() -> Client:
    """The HTTP client from ``BNSWEEP_API_URL`` / ``BNSWEEP_API_KEY``."""
    from service.client import Client

    return Client.from_settings()


def reader(storage: str | None) -> Client | DatabaseClient:
    """Where reads come from: the database at ``storage`` if given, else the API."""
    if storage is None:
        return api()
    from service.direct import DatabaseClient

    return DatabaseClient(storage)


@app.command()
def submit(
    spec_file: Annotated[Path, typer.Argument(help="Study spec (YAML or JSON)")],
) -> None:
    """Submit a study spec to the API; prints the study id and its dashboard page."""
    try:
        text = spec_file.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise fail(f"cannot read {spec_file}: {getattr(exc, 'strerror', None) or exc}") from None
    client = api()
    study = client.submit(text)
    typer.echo(
        f"study {study.id} {study.name!r} {study.status.value}: "
        f"{client.base_url}{study.links.dashboard}"
    )


def summary_lines(study: StudyPublic) -> list[str]:
    """A study in four lines: status, progress, best value, dashboard link."""
    p = study.progress
    reason = f" ({study.status_reason})" if study.status_reason else ""
    counts = ", ".join(f"{k} {v}" for k, v in study.trials.items() if v)
    best = study.best_value
    return [
        f"study {study.id} {study.name!r}: {study.status.value}{reason}",
        f"progress: {p.finished}/{p.n_trials} finished; trials: {counts or 'none yet'}",
        f"best value: {best if best is not None else '-'}",
        f"dashboard: {study.links.dashboard}",
    ]


@app.command()
def status(study: StudyArg, as_json: JsonOpt = False, storage: StorageOpt = None) -> None:
    """A study's status, progress and best value so far."""
    data = reader(storage).get(study)
    if as_json:
        print_json(data)
    else:
        typer.echo("\n".join(summary_lines(data)))


@app.command()
def watch(
    study: StudyArg,
    interval: Annotated[float, typer.Option(min=0.1, help="Seconds between polls")] = 2.0,
    storage: StorageOpt = None,
) -> None:
    """Follow a study with a live progress bar until it ends."""
    from rich.console import Console

    source = reader(storage)
    data = source.get(study)
    console = Console(stderr=True)
    with study_progress_bar(console) as bar:
        task = bar.add_task(data.name, total=data.progress.n_trials, detail="")
        while True:
            best = data.best_value
            detail = f"{data.status.value} running {data.trials['running']}" + (
                f" best {best:.4g}" if best is not None else ""
            )
            bar.update(task, completed=data.progress.finished, detail=detail)
            if not data.status.is_active:
                break
            time.sleep(interval)
            data = source.get(data.id)
    typer.echo("\n".join(summary_lines(data)))


@app.command()
def trials(
    study: StudyArg,
    as_csv: Annotated[bool, typer.Option("--csv", help="CSV instead of JSON")] = False,
    state: Annotated[
        str | None, typer.Option(help="complete | pruned | fail | running | waiting (any case)")
    ] = None,
    sort: Annotated[str, typer.Option(help="number | value")] = "number",
    order: Annotated[str, typer.Option(help="asc | desc")] = "asc",
    storage: StorageOpt = None,
) -> None:
    """Every trial of a study, as a JSON list of the API's trial objects or as CSV."""
    import csv
    import sys

    from search.states import TrialStateName
    from service.schemas import Order, SortKey

    try:
        chosen = TrialStateName(state) if state else None
        sort_key, direction = SortKey(sort), Order(order)
    except ValueError as exc:
        raise fail(str(exc)) from None
    items = reader(storage).all_trials(study, chosen, sort_key, direction)
    if not as_csv:
        print_json([t.model_dump(mode="json") for t in items])
        return
    params = sorted({name for t in items for name in t.params})
    writer = csv.writer(sys.stdout)
    writer.writerow(["number", "state", "values", *params, "status", "duration_seconds"])
    for t in items:
        writer.writerow(
            [
                t.number,
                t.state.value,
                ";".join(str(v) for v in t.values or []),
                *(t.params.get(p, "") for p in params),
                t.user_attrs.get("status", ""),
                t.duration_seconds or "",
            ]
        )


@app.command()
def best(
    study: StudyArg,
    as_yaml: Annotated[
        bool,
        typer.Option("--yaml", help="Only the config, as YAML that `bnsweep train --config` takes"),
    ] = False,
    storage: StorageOpt = None,
) -> None:
    """Best configuration of a study (JSON: params, metrics, ready-to-train config)."""
    result = reader(storage).best(study)
    if as_yaml:
        import yaml

        typer.echo(yaml.safe_dump(result.config, sort_keys=False), nl=False)
        return
    print_json(result)


@app.command()
def importance(study: StudyArg, storage: StorageOpt = None) -> None:
    """Parameter importances of a study's primary objective."""
    print_json(reader(storage).importance(study))


@app.command()
def report(
    study: StudyArg,
    as_json: JsonOpt = False,
    html: Annotated[
        Path | None, typer.Option("--html", help="Also write the report as one HTML page here")
    ] = None,
    storage: StorageOpt = None,
) -> None:
    """Why a configuration won: one finding per BN practice with its effect, 95% interval and
    source, and the caveats (``--html FILE`` for the page with plots)."""
    source = reader(storage)
    result = source.report(study)
    if html is not None:
        html.write_text(source.report_html(study))
    if as_json:
        print_json(result)
    else:
        print_report(result)
    if html is not None:
        typer.echo(f"HTML report written to {html}", err=True)


@app.command()
def confirm(
    study: StudyArg,
    seeds: Annotated[int, typer.Option(min=3, max=20, help="Fresh seeds per planned point")] = 3,
    workers: Annotated[
        int, typer.Option(min=1, help="Local worker processes (with --storage)")
    ] = 1,
    lr_offsets: Annotated[
        str | None,
        typer.Option(
            help="Learning-rate grid per placement, decades from its own best rate, e.g. "
            "-1,-0.5,0,0.5,1 (must include 0; default -1,-0.5,0,0.5,1,1.5,2)"
        ),
    ] = None,
    storage: StorageOpt = None,
    device: Annotated[
        str, typer.Option(help="auto | cpu | cuda | cuda:N (with --storage)")
    ] = "auto",
    fuse: Annotated[
        str | None,
        typer.Option(help="Trials per fused model (with --storage): auto or 1..64"),
    ] = None,
) -> None:
    """Confirmation runs: a linked study that varies one factor at a time around the best
    configuration over fresh seeds, scored on the test split. With --storage: plan it (or resume
    the active one), run it here and print the combined report; else ask the API to plan it
    (its workers run it) and print the new study."""
    offsets = _offsets(lr_offsets)
    if storage is None:
        client = api()
        created = client.confirm(study, seeds, list(offsets) if offsets else None)
        typer.echo("\n".join(summary_lines(created)))
        typer.echo(f"report (when it has run): bnsweep report {study}")
        return
    _confirm_locally(study, seeds, offsets, workers, storage, device, fuse)


def _offsets(text: str | None) -> tuple[float, ...] | None:
    """``--lr-offsets``: comma-separated decades including 0; exit 2 with one line otherwise."""
    if text is None:
        return None
    try:
        offsets = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise fail(f"--lr-offsets: expected numbers like -1,-0.5,0,0.5,1; got {text!r}") from None
    if 0.0 not in offsets or not all(-4 <= o <= 4 for o in offsets):
        raise fail(f"--lr-offsets: needs 0 and values within -4..4; got {text!r}")
    return offsets


def _confirm_locally(
    study: str,
    seeds: int,
    offsets: tuple[float, ...] | None,
    workers: int,
    storage: str,
    device: str,
    fuse: str | None,
) -> None:
    from rich.console import Console

    import migrations
    from search.confirm import ConfirmOptions, confirmations_of, create_confirmation
    from search.runner import Progress, run_study
    from search.states import StudyStatus
    from search.storage import get_engine, get_storage
    from search.studies import get_study_row, spec_of
    from service.cli.common import storage_url
    from service.cli.local import parse_fuse
    from service.direct import DatabaseClient
    from service.settings import get_settings

    url = storage_url(storage)
    migrations.upgrade(url)
    engine = get_engine(url)
    parent = get_study_row(engine, int(study) if study.isdigit() else study)
    console = Console(stderr=True)
    active = [c for c in confirmations_of(engine, parent.id) if StudyStatus(c.status).is_active]
    if active:
        row = active[0]
        console.print(f"resuming confirmation study {row.id} {row.name!r}")
    else:
        options = ConfirmOptions(seeds=seeds)
        if offsets is not None:
            options = replace(options, lr_offsets=offsets)
        row = create_confirmation(
            engine, get_storage(url), parent.id, options, get_settings().limits
        )
        console.print(f"confirmation study {row.id} {row.name!r} planned")
    spec = spec_of(row)
    with study_progress_bar(console) as bar:
        task = bar.add_task(spec.name, total=spec.budget.n_trials, detail="")

        def show(p: Progress) -> None:
            detail = f"{p.status.value} running {p.counts.running} failed {p.counts.fail}"
            bar.update(task, completed=p.counts.finished, detail=detail)

        final = run_study(
            url, spec, n_workers=workers, device=device, on_progress=show, fuse=parse_fuse(fuse)
        )
    console.print(f"study {spec.name!r} {final.status.value}: {final.counts.as_dict()}")
    print_report(DatabaseClient(url).report(parent.id))  # the command's result: stdout


@app.command(hidden=True)
def insights(study: StudyArg, as_json: JsonOpt = False, storage: StorageOpt = None) -> None:
    """The report, under its former name."""
    report(study, as_json=as_json, html=None, storage=storage)


ACCURACY_UNIT = "accuracy (fraction)"


def print_report(result: StudyReport, console: Console | None = None) -> None:
    """The report: a table of the findings (practice, source, strength, effect with its 95%
    interval), then each finding's verdict in full, then the warnings."""
    from rich.console import Console
    from rich.table import Table

    counts = result.counts
    table = Table(
        title=f"BN report on {result.metric}: {result.study_name} ({counts.used} trials used)"
    )
    for column in ("practice", "source", "strength", "effect [95% CI]"):
        table.add_column(column, overflow="fold")
    for f in result.findings:
        table.add_row(f.practice, f.source, f.strength, _effect(f.effect, f.ci95))
    out = console or Console()
    info = result.confirmation
    if info is not None:
        status = f" ({info.status})" if info.status else ""
        out.print(
            f"confirmation runs: {info.study_name}{status}, {info.finished} of {info.planned} "
            f"planned runs over {info.seeds} seed(s), scored on the test split"
        )
    out.print(table)
    for f in result.findings:
        out.print(f"[bold]{f.practice}[/bold] ({f.source}, {f.strength}): {f.verdict}", end="\n\n")
    for warning in result.warnings:
        out.print(f"[yellow]warning:[/yellow] {warning}")


def _effect(effect: dict[str, Any], ci95: tuple[float, float] | None) -> str:
    """``+2.17 points [+0.29, +4.04]``: accuracies in points, other units as the report has them."""
    estimate, unit = effect.get("estimate"), str(effect.get("unit", ""))
    if estimate is None:
        return "-"
    scale = 1.0
    if unit.startswith(ACCURACY_UNIT):
        scale, unit = 100.0, "points" + unit.removeprefix(ACCURACY_UNIT)
    text = f"{estimate * scale:+.2f} {unit}".strip()
    return text if ci95 is None else f"{text} [{ci95[0] * scale:+.2f}, {ci95[1] * scale:+.2f}]"


def _change(action: str, study: str) -> None:
    data: Any = getattr(api(), action)(study)
    typer.echo(f"study {data.id} {data.name!r} {data.status.value}")


@app.command()
def cancel(study: StudyArg) -> None:
    """Cancel a study: no new trials; running ones stop at their next epoch."""
    _change("cancel", study)


@app.command()
def pause(study: StudyArg) -> None:
    """Pause a study: no new trials until resumed; running ones finish and count."""
    _change("pause", study)


@app.command()
def resume(study: StudyArg) -> None:
    """Resume a paused study."""
    _change("resume", study)


@app.command()
def delete(study: StudyArg) -> None:
    """Delete a study that is not running (with its Optuna study and trials)."""
    api().delete(study)
    typer.echo(f"study {study} deleted")
