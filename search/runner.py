"""Run a whole study locally, without the HTTP service: create (or resume) it, run its workers,
report progress, and return when it has ended.

Low fixed cost: one worker runs in this process (torch, the dataset and the database connections
are already here; only extra workers are spawned), progress is read by a thread beside it, and the
call returns as soon as the study has ended — no polling delay at the end.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import optuna

from search.errors import StudyNotFoundError, StudyStateError
from search.spec import StudySpec
from search.states import StudyStatus, TrialCounts
from search.storage import get_engine, get_storage
from search.studies import (
    counts_for,
    create_study,
    get_study_row,
)
from search.worker import Worker, WorkerOptions, spawn_workers


@dataclass(frozen=True)
class Progress:
    status: StudyStatus
    counts: TrialCounts
    n_trials: int
    best_value: float | None


def ensure_study(url: str, spec: StudySpec) -> int:
    """The id of the study named ``spec.name``: created if new, resumed if it exists with this
    very spec; a different spec under the same name is an error."""
    engine = get_engine(url)
    try:
        row = get_study_row(engine, spec.name)
    except StudyNotFoundError:
        return create_study(engine, get_storage(url), spec).id
    if row.spec != spec.to_json_dict():
        raise StudyStateError(
            f"a study named {spec.name!r} exists with a different spec; choose another name"
        )
    return row.id


def progress(url: str, study_id: int) -> Progress:
    engine = get_engine(url)
    row = get_study_row(engine, study_id)
    spec = StudySpec.model_validate(row.spec)
    counts = counts_for(engine, row.optuna_study_id)
    best = None
    if not spec.is_multi_objective and counts.complete:
        study = optuna.load_study(study_name=row.name, storage=get_storage(url))
        best = study.best_value
    return Progress(StudyStatus(row.status), counts, spec.budget.n_trials, best)


def run_study(
    url: str,
    spec: StudySpec,
    n_workers: int = 1,
    device: str = "auto",
    on_progress: Callable[[Progress], None] | None = None,
    poll_s: float = 1.0,
    fuse: int | Literal["auto"] | None = None,
) -> Progress:
    """Create or resume the study and run it to its end with ``n_workers`` local workers: one in
    this process (the calling thread: SIGINT/SIGTERM stop it cleanly), the others spawned.

    Args:
        fuse: Trials per fused model for these workers (None: the spec's ``execution.fuse``).
    """
    study_id = ensure_study(url, spec)
    threads = max(1, (os.cpu_count() or 1) // n_workers)  # the workers share the cores
    options = WorkerOptions(
        storage_url=url,
        device=device,
        study_name=spec.name,
        exit_when_done=True,
        poll_s=poll_s,
        cpu_threads=threads,
        fuse=fuse,
    )
    children = spawn_workers(options, [device] * (n_workers - 1))
    done = threading.Event()
    reporter = threading.Thread(
        target=_report_until, args=(done, url, study_id, on_progress, poll_s), daemon=True
    )
    if on_progress:
        reporter.start()
    try:
        Worker(options).run()
        for child in children:
            child.join()
    finally:
        done.set()
        for child in children:
            if child.is_alive():
                child.terminate()  # SIGTERM: the worker fails its trial cleanly and queues a retry
        for child in children:
            child.join()
        if reporter.is_alive():
            reporter.join()
    final = progress(url, study_id)
    if on_progress:
        on_progress(final)
    return final


def _report_until(
    done: threading.Event,
    url: str,
    study_id: int,
    on_progress: Callable[[Progress], None] | None,
    every_s: float,
) -> None:
    """Call ``on_progress`` every ``every_s`` until ``done`` (a thread beside the worker)."""
    assert on_progress is not None
    while not done.wait(every_s):
        on_progress(progress(url, study_id))
