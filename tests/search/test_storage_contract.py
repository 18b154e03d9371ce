"""The storage contract, on SQLite, PostgreSQL and MariaDB alike: slot claims keep ``n_trials``
and ``max_parallel`` exact under racing claimers, stale trials are retried exactly ``retries``
times, seeded configurations come first, a paused study takes no trial, and a real worker runs a
study to exactly its budget.

Claims race for real (threads, each with its own connections) but train nothing: the contract is
about the database, and this keeps the module fast on three backends.
"""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

import optuna
import pytest
import sqlalchemy as sa
from optuna.trial import TrialState

import migrations
from search.db import SlotRow
from search.states import StudyStatus
from search.storage import (
    TRIAL_HEARTBEATS,
    engine_kwargs,
    get_engine,
    get_storage,
    normalize_url,
    set_trial_user_attrs,
    trial_id_of,
)
from search.studies import (
    active_study_ids,
    claim_slot,
    finish_slot,
    get_study_row,
    pause_study,
    resume_study,
)
from search.worker import Worker, WorkerOptions
from tests.support import make_study, study_counts, tiny_spec


@pytest.fixture(scope="module")
def url(storage_url: str) -> str:
    migrations.upgrade(storage_url)
    return storage_url


def _claimer(url: str, study_name: str, worker_id: str, errors: list[BaseException]) -> None:
    """Claim, ask, tell and close slots until the study takes no more, on connections of its
    own (as a separate worker process would)."""
    engine = sa.create_engine(normalize_url(url), **engine_kwargs(normalize_url(url), 2))
    storage = optuna.storages.RDBStorage(
        normalize_url(url), engine_kwargs=engine_kwargs(normalize_url(url), 2),
        skip_table_creation=True,
    )  # fmt: skip
    try:
        while True:
            ids = active_study_ids(engine, study_name)
            claim = claim_slot(engine, worker_id, ids, grace_period_s=60)
            if claim is None:
                if not ids:
                    return
                continue
            study = optuna.load_study(study_name=study_name, storage=storage)
            trial = study.ask()
            study.tell(trial, 0.5)
            finish_slot(engine, claim.slot_id, TrialState.COMPLETE.name)
    except BaseException as exc:  # reported to the test's thread
        errors.append(exc)
    finally:
        engine.dispose()
        storage.engine.dispose()


def _max_overlap(intervals: list[tuple[Any, Any]]) -> int:
    """The most intervals open at one instant (a finish at t closes before a claim at t)."""
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    peak = current = 0
    for _, step in events:
        current += step
        peak = max(peak, current)
    return peak


@pytest.mark.parametrize(("n_trials", "max_parallel"), [(12, 2)])
def test_racing_claimers_keep_n_trials_and_max_parallel_exact(
    url: str, n_trials: int, max_parallel: int
) -> None:
    spec = tiny_spec(
        f"race-{n_trials}", budget={"n_trials": n_trials, "max_parallel": max_parallel}
    )
    make_study(url, spec)
    errors: list[BaseException] = []
    threads = [
        threading.Thread(target=_claimer, args=(url, spec.name, f"w{i}", errors)) for i in range(6)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    counts = study_counts(url, spec.name)
    assert (counts.complete, counts.running, counts.waiting) == (n_trials, 0, 0)
    row = get_study_row(get_engine(url), spec.name)
    assert row.status == StudyStatus.COMPLETED
    with get_engine(url).connect() as conn:
        slots = conn.execute(
            sa.select(SlotRow.claimed_at, SlotRow.finished_at).where(SlotRow.study_id == row.id)
        ).all()
    assert len(slots) == n_trials
    assert _max_overlap([(s.claimed_at, s.finished_at) for s in slots]) <= max_parallel


def _make_stale(url: str, trial: optuna.Trial) -> None:
    """Date the trial's heartbeat an hour back, as if its worker died long ago."""
    with get_engine(url).begin() as conn:
        old = conn.execute(sa.select(sa.func.now())).scalar_one() - timedelta(hours=1)
        conn.execute(
            sa.update(TRIAL_HEARTBEATS)
            .where(TRIAL_HEARTBEATS.c.trial_id == trial_id_of(trial))
            .values(heartbeat=old)
        )


@pytest.mark.parametrize("retries", [0, 2])
def test_a_stale_trial_is_retried_exactly_retries_times(url: str, retries: int) -> None:
    spec = tiny_spec(f"retries-{retries}", retries=retries)
    make_study(url, spec)
    storage = get_storage(url, heartbeat_interval_s=1, grace_period_s=2)
    study = optuna.load_study(study_name=spec.name, storage=storage)
    for _ in range(retries + 1):
        trial = study.ask()  # pops the retry queued by the previous round, if any
        storage.record_heartbeat(trial_id_of(trial))
        _make_stale(url, trial)
        optuna.storages.fail_stale_trials(study)
    states = [t.state for t in study.get_trials()]
    assert states.count(TrialState.FAIL) == retries + 1
    # Every retry was used; none is left waiting (with 0 retries none was ever queued).
    assert TrialState.WAITING not in states
    trial = study.ask()  # a fresh trial, not a retry of a retry
    assert "failed_trial" not in storage.get_trial(trial_id_of(trial)).system_attrs


def test_enqueued_and_warm_started_configurations_come_first(url: str) -> None:
    source = tiny_spec("warm-source", search_space={"batch_size": {"choices": [32, 64]}})
    make_study(url, source)
    study = optuna.load_study(study_name=source.name, storage=get_storage(url))
    batch_sizes = optuna.distributions.CategoricalDistribution([32, 64])
    for value, batch in ((0.9, 64), (0.2, 32)):
        study.enqueue_trial({"batch_size": batch}, user_attrs={"status": "ok"})
        study.tell(study.ask({"batch_size": batch_sizes}), value)
    spec = tiny_spec(
        "seeded",
        search_space={
            "batch_size": {"choices": [32, 64]},
            "learning_rate": {"choices": [0.1, 0.3]},
        },
        enqueue=[{"learning_rate": 0.3, "batch_size": 32}],
        warm_start={"from_study": source.name, "top_k": 1},
    )
    make_study(url, spec)
    seeded = optuna.load_study(study_name=spec.name, storage=get_storage(url))
    waiting = seeded.get_trials(states=(TrialState.WAITING,))
    assert [t.system_attrs["fixed_params"] for t in waiting] == [
        {"learning_rate": 0.3, "batch_size": 32},
        {"batch_size": 64},  # the source's best
    ]


def test_a_study_that_ends_leaves_nothing_waiting_and_queues_no_retry(url: str) -> None:
    """Its budget reached, a study fails the configurations still queued in it (cancelled, with
    the reason); a trial of it that goes stale afterwards is not retried."""
    spec = tiny_spec("ends", budget={"n_trials": 1}, retries=2)
    study_id = make_study(url, spec)
    engine, storage = get_engine(url), get_storage(url, heartbeat_interval_s=1, grace_period_s=2)
    study = optuna.load_study(study_name=spec.name, storage=storage)
    study.enqueue_trial({"batch_size": 64})
    first = claim_slot(engine, "w1", [study_id], 60)
    second = claim_slot(engine, "w2", [study_id], 60)
    assert first is not None and second is None  # one trial's budget
    finisher = study.ask()  # the enqueued configuration, taken
    straggler = study.ask()  # run beside it, e.g. by a worker that lost its slot: goes stale
    study.enqueue_trial({"batch_size": 32})  # still queued when the study ends
    storage.record_heartbeat(trial_id_of(straggler))
    study.tell(finisher, 0.5)
    finish_slot(engine, first.slot_id, TrialState.COMPLETE.name)
    assert get_study_row(engine, study_id).status == StudyStatus.COMPLETED

    _make_stale(url, straggler)
    optuna.storages.fail_stale_trials(study)
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.FAIL]
    cancelled = trials[2].user_attrs
    assert cancelled["status"] == "cancelled"
    assert cancelled["reason"].startswith("the study ended (completed: 1 trials finished)")
    assert "failed_trial" not in trials[1].system_attrs  # the stale one: failed, no retry


def test_user_attrs_written_at_once_read_back_as_optunas_and_never_on_a_finished_trial(
    url: str,
) -> None:
    spec = tiny_spec("attrs-at-once")
    make_study(url, spec)
    study = optuna.load_study(study_name=spec.name, storage=get_storage(url))
    trial = study.ask()
    trial.set_user_attr("status", "running")  # one already there: replaced
    attrs = {"status": "ok", "history": [{"epoch": 1, "loss": 0.5}], "seed": 3, "note": None}
    set_trial_user_attrs(study, trial_id_of(trial), attrs)
    study.tell(trial, 0.5)
    assert study.trials[0].user_attrs == attrs
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        set_trial_user_attrs(study, trial_id_of(trial), {"status": "late"})
    assert study.trials[0].user_attrs["status"] == "ok"


def test_a_paused_study_takes_no_trial_until_resumed(url: str) -> None:
    spec = tiny_spec("paused")
    study_id = make_study(url, spec)
    engine = get_engine(url)
    pause_study(engine, study_id)
    assert active_study_ids(engine, spec.name) == []
    assert claim_slot(engine, "w", [study_id], 60) is None
    assert active_study_ids(engine, spec.name, claimable_only=False) == [study_id]
    assert resume_study(engine, study_id).status == StudyStatus.QUEUED
    claim = claim_slot(engine, "w", active_study_ids(engine, spec.name), 60)
    assert claim is not None and claim.study_id == study_id


def test_a_real_worker_runs_a_study_to_exactly_its_budget(url: str) -> None:
    spec = tiny_spec("real-worker", budget={"n_trials": 3})
    make_study(url, spec)
    options = WorkerOptions(
        url, device="cpu", study_name=spec.name, exit_when_done=True, poll_s=0.1
    )
    assert Worker(options).run() == 3
    counts = study_counts(url, spec.name)
    assert (counts.complete + counts.pruned, counts.running, counts.fail) == (3, 0, 0)
