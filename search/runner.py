"""Run a whole study locally, without the HTTP service: create (or resume) it, start N worker
processes restricted to it, report progress, and return when it has ended."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

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
from search.worker import WorkerOptions, spawn_workers


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
) -> Progress:
    """Create or resume the study and run it to its end with ``n_workers`` local processes."""
    study_id = ensure_study(url, spec)
    options = WorkerOptions(
        storage_url=url, device=device, study_name=spec.name, exit_when_done=True, poll_s=poll_s
    )
    workers = spawn_workers(options, [device] * n_workers)
    try:
        while any(w.is_alive() for w in workers):
            if on_progress:
                on_progress(progress(url, study_id))
            time.sleep(poll_s)
    finally:
        for w in workers:
            if w.is_alive():
                w.terminate()  # SIGTERM: the worker fails its trial cleanly and queues a retry
        for w in workers:
            w.join()
    final = progress(url, study_id)
    if on_progress:
        on_progress(final)
    return final
