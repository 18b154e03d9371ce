"""Workers under faults: killed, stopped, racing, crowded, and trials that diverge or run out of
memory. Real worker processes (``python -m service worker``) on a real PostgreSQL database.

Heartbeat 1 s, grace period 5 s (tests/reliability/conftest.py ``timing``). Time bounds derive from
those intervals and from what this run measured (trial durations, timer lateness), never from
constants that a loaded machine exceeds.
"""

from __future__ import annotations

import itertools
import signal
import threading
import time
from datetime import datetime

import optuna
import pytest
import sqlalchemy as sa
from optuna.trial import TrialState

from search.db import WorkerRow
from search.states import StudyStatus
from search.storage import (
    DEFAULT_GRACE_PERIOD_S,
    WORKER_POOL_SIZE,
    get_engine,
    get_storage,
)
from search.studies import claim_slot, get_study_row
from tests.reliability.helpers import (
    ConnectionsByApplication,
    PatientWorkerPool,
    SchedulingSlack,
    assert_accounted_for,
    connections_to,
    log_problems,
    max_overlap,
    patient,
    trials_of,
    wait_for,
)
from tests.support import make_study, tiny_spec

pytestmark = pytest.mark.postgres

SLEEPY = {"name": "sleepy_mlp", "params": {"delay_s": 0.05}}
# What a worker log must never contain: connection trouble, retried database steps, crashes.
LOG_PROBLEMS = (
    "OperationalError",
    "too many clients",
    "remaining connection slots",
    "database unavailable",
    "failed (retry",
    "heartbeat failed",
    "Traceback",
    "stale",
)


def busy_worker(url: str, name: str) -> tuple[int, int]:
    """(pid, trial number) of a worker training a trial of ``name`` (its heartbeat is recorded)."""
    study_id = get_study_row(get_engine(url), name).id
    with get_engine(url).connect() as conn:
        row = conn.execute(
            sa.select(WorkerRow.pid, WorkerRow.current_trial_number).where(
                WorkerRow.status == "busy", WorkerRow.current_study_id == study_id
            )
        ).first()
    if row is None or row.current_trial_number is None:
        raise LookupError
    return row.pid, row.current_trial_number


def wait_for_busy_worker(url: str, name: str, timeout: float = 90) -> tuple[int, int]:
    found: list[tuple[int, int]] = []

    def probe() -> bool:
        try:
            found.append(busy_worker(url, name))
        except LookupError:
            return False
        return True

    wait_for(probe, timeout=timeout)
    return found[-1]


def trial_by_number(url: str, name: str, number: int) -> optuna.trial.FrozenTrial:
    return next(t for t in trials_of(url, name) if t.number == number)


def retries_of(url: str, name: str, number: int) -> list[optuna.trial.FrozenTrial]:
    return [t for t in trials_of(url, name) if number in t.system_attrs.get("retry_history", [])]


def interval(trial: optuna.trial.FrozenTrial) -> tuple[datetime, datetime]:
    assert trial.datetime_start is not None and trial.datetime_complete is not None
    return trial.datetime_start, trial.datetime_complete


def seconds(span: tuple[datetime, datetime]) -> float:
    return (span[1] - span[0]).total_seconds()


def longest_claim_gap_s(trials: list[optuna.trial.FrozenTrial]) -> float:
    """The longest a worker took from telling one trial to starting its next (finish the slot,
    claim, load the study, ask): how long this run's workers needed to come back for more."""
    by_worker: dict[str, list[optuna.trial.FrozenTrial]] = {}
    for trial in trials:
        if trial.datetime_start is not None and trial.datetime_complete is not None:
            by_worker.setdefault(str(trial.user_attrs.get("worker_id")), []).append(trial)
    gaps = [
        (later.datetime_start - earlier.datetime_complete).total_seconds()
        for runs in by_worker.values()
        for earlier, later in itertools.pairwise(sorted(runs, key=interval))
        if later.datetime_start >= earlier.datetime_complete
    ]
    return max(gaps, default=0.0)


# --- 1. kill -9 ---------------------------------------------------------------------------------


@pytest.mark.scenario("1. worker killed mid-trial (kill -9)")
def test_killed_worker_trial_is_failed_and_retried(pg, workers, figures, timing):
    spec = tiny_spec("killed", model=SLEEPY, training={"epochs": 3}, budget={"n_trials": 6})
    make_study(pg, spec)
    procs = {p.pid: p for p in workers.start(pg, "--study", spec.name, "--idle-exit", "3", n=3)}
    with SchedulingSlack() as slack:
        pid, number = wait_for_busy_worker(pg, spec.name)
        time.sleep(0.3)  # well inside its training (several epochs of sleepy batches)
        procs[pid].send_signal(signal.SIGKILL)
        killed_at = time.time()
        procs[pid].wait(timeout=patient(10))
        wait_for(
            lambda: trial_by_number(pg, spec.name, number).state is TrialState.FAIL,
            timeout=timing.grace_s + 60,
        )
        wait_for(lambda: bool(retries_of(pg, spec.name, number)), timeout=30)
        workers.wait(timeout=120)
    # Both clocks are this host's: Optuna stamps datetime_complete with the failing worker's
    # local time, as time.time() is here.
    failed_at = interval(trial_by_number(pg, spec.name, number))[1].timestamp()
    kill_to_fail_s = failed_at - killed_at
    trials = trials_of(pg, spec.name)
    longest_trial_s = max(seconds(interval(t)) for t in trials if t.state is TrialState.COMPLETE)
    claim_gap_s = longest_claim_gap_s(trials)
    # The dead trial's last heartbeat is at most one interval (plus lateness) before the kill;
    # it goes stale a grace period after that heartbeat; then a surviving worker fails it at its
    # next claim, once it has finished the trial it was training and come back for more.
    earliest = timing.grace_s - timing.heartbeat_s - slack.worst_s
    latest = (
        timing.heartbeat_s
        + timing.grace_s
        + longest_trial_s
        + claim_gap_s
        + timing.poll_s
        + 4 * slack.worst_s
    )
    figures.update(
        kill_to_fail_s=round(kill_to_fail_s, 2),
        bound_earliest_s=round(earliest, 2),
        bound_latest_s=round(latest, 2),
        heartbeat_s=timing.heartbeat_s,
        grace_s=timing.grace_s,
        longest_trial_s=round(longest_trial_s, 2),
        longest_claim_gap_s=round(claim_gap_s, 2),
        timer_lateness_s=round(slack.worst_s, 3),
    )
    assert earliest <= kill_to_fail_s <= latest
    assert_accounted_for(pg, spec.name, 6, figures)
    (retry,) = retries_of(pg, spec.name, number)
    assert retry.state is TrialState.COMPLETE
    assert retry.params == trial_by_number(pg, spec.name, number).params


@pytest.mark.scenario("1. worker killed mid-trial (kill -9)")
def test_trial_orphaned_between_ask_and_first_heartbeat_is_failed_and_retried(
    pg, workers, figures, timing
):
    """A worker that dies right after ``ask`` leaves a RUNNING trial without a heartbeat row,
    which Optuna's fail_stale_trials never fails; workers must still fail and retry it."""
    spec = tiny_spec("orphan", model=SLEEPY, training={"epochs": 2}, budget={"n_trials": 3})
    study_id = make_study(pg, spec)
    # What a dying worker did: claim a slot, ask a trial, and nothing more.
    claim = claim_slot(get_engine(pg), "dead-worker", [study_id], timing.grace_s)
    assert claim is not None
    study = optuna.load_study(study_name=spec.name, storage=get_storage(pg))
    with pytest.warns(UserWarning, match="Heartbeat"):
        orphan = study.ask()
    workers.start(pg, "--study", spec.name, "--idle-exit", "3")
    workers.wait(timeout=90)
    assert trial_by_number(pg, spec.name, orphan.number).state is TrialState.FAIL
    assert_accounted_for(pg, spec.name, 3, figures)
    assert [t.state for t in retries_of(pg, spec.name, orphan.number)] == [TrialState.COMPLETE]


# --- 2. SIGTERM ---------------------------------------------------------------------------------


@pytest.mark.scenario("2. worker stopped with SIGTERM mid-trial")
def test_sigterm_leaves_nothing_running_and_others_finish_the_retry(pg, workers, figures):
    spec = tiny_spec("sigterm", model=SLEEPY, training={"epochs": 4}, budget={"n_trials": 4})
    make_study(pg, spec)
    procs = {p.pid: p for p in workers.start(pg, "--study", spec.name, "--idle-exit", "3", n=2)}
    pid, number = wait_for_busy_worker(pg, spec.name)
    time.sleep(0.3)
    procs[pid].send_signal(signal.SIGTERM)
    stopped_at = time.monotonic()
    assert procs[pid].wait(timeout=patient(30)) == 0
    figures["sigterm_to_exit_s"] = round(time.monotonic() - stopped_at, 2)

    stopped = trial_by_number(pg, spec.name, number)
    assert stopped.state is TrialState.FAIL  # at once: no grace period to wait for
    assert stopped.user_attrs["status"] == "interrupted"
    assert "SIGTERM" in stopped.user_attrs["reason"]
    assert retries_of(pg, spec.name, number), "the interrupted trial was not queued for retry"

    workers.wait(timeout=120)
    assert_accounted_for(pg, spec.name, 4, figures)
    (retry,) = retries_of(pg, spec.name, number)
    assert retry.state is TrialState.COMPLETE and retry.params == stopped.params


# --- 5. racing workers --------------------------------------------------------------------------


@pytest.mark.scenario("5. eight workers racing for slots")
@pytest.mark.parametrize("max_parallel", [2, 3])
def test_max_parallel_never_exceeded_with_eight_racing_workers(
    pg, workers, figures, max_parallel, monkeypatch
):
    """``max_parallel`` from what was recorded, not from sampling: the most trials whose
    [start, end] (Optuna's datetime_start at ask, datetime_complete at tell; one host's clock)
    overlap. A trial runs inside its slot (claimed before the ask, released after the tell), so
    with claims serialized by the study-row lock that is never above ``max_parallel``. (The slots'
    own claimed_at/finished_at are ``now()`` of their transactions, taken *before* the lock is
    granted: they overlap where the lock kept claims apart.)

    Connections are bounded per worker process: each worker gets its own application name
    (PGAPPNAME, which libpq sends), and pg_stat_activity is grouped by it.
    """
    spec = tiny_spec(
        f"racing-{max_parallel}",
        model=SLEEPY,
        budget={"n_trials": 10, "max_parallel": max_parallel},
    )
    make_study(pg, spec)
    app = f"bnsweep-racing-{max_parallel}-"
    with ConnectionsByApplication(pg, app) as connections:
        for i in range(8):
            monkeypatch.setenv("PGAPPNAME", f"{app}{i}")
            workers.start(pg, "--study", spec.name, "--idle-exit", "2")
        workers.wait(timeout=240)
    trials = trials_of(pg, spec.name)
    overlap = max_overlap(interval(t) for t in trials)
    per_process = 2 * 2 * WORKER_POOL_SIZE  # two pools (ours, Optuna's), pool_size + overflow
    figures.update(
        workers=8,
        max_parallel=max_parallel,
        max_trials_overlapping=overlap,
        workers_seen_connected=len(connections.peak),
        max_connections_per_worker=max(connections.peak.values(), default=0),
        connection_bound_per_worker=per_process,
    )
    assert overlap == max_parallel  # reached, never exceeded
    assert len(connections.peak) == 8  # every worker was seen
    assert max(connections.peak.values()) <= per_process, dict(connections.peak)
    assert_accounted_for(pg, spec.name, 10, figures)


# --- 6. many workers ----------------------------------------------------------------------------


class ConnectionSampler(threading.Thread):  # the totals; per worker: ConnectionsByApplication
    """Samples pg_stat_activity every 0.1 s: the test database's and the server's connections."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.database = sa.make_url(url).database
        self.engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
        self.stop_event = threading.Event()
        self.peak_db = self.peak_server = 0

    def run(self) -> None:
        with self.engine.connect() as conn:
            while not self.stop_event.wait(0.1):
                self.peak_db = max(self.peak_db, connections_to(conn, self.database))
                total = conn.execute(sa.text("SELECT count(*) FROM pg_stat_activity")).scalar_one()
                self.peak_server = max(self.peak_server, total)
                conn.rollback()  # a fresh snapshot of pg_stat_activity next time

    def stop(self) -> None:
        self.stop_event.set()
        self.join(timeout=5)
        self.engine.dispose()


@pytest.mark.outage  # ~70 of the server's 100 connections: never beside other tests
@pytest.mark.scenario("6. 32 workers on one PostgreSQL database")
def test_thirty_two_workers_share_one_database_without_connection_errors(
    pg, figures, monkeypatch, tmp_path
):
    n_workers, n_trials = 32, 64
    # 32 processes on 2 cores: no thread oversubscription, and the production grace period (a
    # 3 s grace is shorter than a heartbeat's worst delay on a machine this overloaded).
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setattr("tests.support.GRACE_S", DEFAULT_GRACE_PERIOD_S)
    spec = tiny_spec(
        "crowd",
        model={"name": "sleepy_mlp", "params": {"delay_s": 0.02}},
        training={"epochs": 2},
        budget={"n_trials": n_trials},
    )
    sampler = ConnectionSampler(pg)
    sampler.start()
    per_worker = ConnectionsByApplication(pg, "bnsweep-crowd-", every_s=0.2)
    per_worker.start()
    pool = PatientWorkerPool()
    started = time.monotonic()
    try:
        for i in range(n_workers):  # one application name per worker process (not this one's)
            pool.start(
                pg,
                "--study",
                spec.name,
                "--idle-exit",
                "120",
                env={"PGAPPNAME": f"bnsweep-crowd-{i}"},
            )

        def registered() -> int:
            with get_engine(pg).connect() as conn:
                return conn.execute(sa.select(sa.func.count()).select_from(WorkerRow)).scalar_one()

        # Every worker connected and polling before the study exists, so all 32 compete for it.
        wait_for(lambda: registered() == n_workers, timeout=150, every=0.5)
        ready_s = time.monotonic() - started
        make_study(pg, spec)
        run_started = time.monotonic()
        wait_for(
            lambda: get_study_row(get_engine(pg), spec.name).status == StudyStatus.COMPLETED,
            timeout=150,
            every=0.5,
        )
        run_s = time.monotonic() - run_started
        exit_codes = [p.returncode for p in pool.procs if p.poll() is not None]
    finally:
        pool.log.flush()
        log = open(pool.log.name, errors="replace").read()  # noqa: SIM115 (read before stop closes it)
        pool.stop()
        sampler.stop()
        per_worker.__exit__()
    with get_engine(pg).connect() as conn:
        ran = conn.execute(
            sa.select(sa.func.count(sa.distinct(WorkerRow.id))).where(WorkerRow.status == "stopped")
        ).scalar_one()
    ran_trials = {t.user_attrs.get("worker_id") for t in trials_of(pg, spec.name)}
    problems = log_problems(log, LOG_PROBLEMS)
    bound = 2 * 2 * WORKER_POOL_SIZE  # per process: two pools, pool_size + as many overflow
    figures.update(
        workers=n_workers,
        workers_that_ran_trials=len(ran_trials),
        workers_start_s=round(ready_s, 1),
        study_run_s=round(run_s, 1),
        pool_size=WORKER_POOL_SIZE,
        max_overflow=WORKER_POOL_SIZE,
        peak_connections_test_db=sampler.peak_db,
        peak_connections_server=sampler.peak_server,
        max_connections_per_worker=max(per_worker.peak.values(), default=0),
        connection_bound_per_worker=bound,
        log_problem_lines=len(problems),
        grace_s=DEFAULT_GRACE_PERIOD_S,
    )
    (tmp_path / "workers.log").write_text(log)
    first = log.find(problems[0]) if problems else 0
    assert exit_codes == [], f"workers died: {exit_codes}\n{log[first : first + 3000]}"
    assert problems == [], log[first : first + 3000]
    assert ran == n_workers  # every worker stopped cleanly (SIGTERM while idle)
    assert_accounted_for(pg, spec.name, n_trials, figures)
    assert len(per_worker.peak) == n_workers  # every worker was seen connected
    assert max(per_worker.peak.values()) <= bound, dict(per_worker.peak)


# --- 10. training faults ------------------------------------------------------------------------


@pytest.mark.scenario("10. divergent learning rates")
def test_divergent_trials_are_recorded_with_their_reason_and_the_study_completes(
    pg, workers, figures
):
    spec = tiny_spec(
        "divergent",
        search_space={
            "learning_rate": {"choices": [1000.0, 0.05]},
            "batch_size": {"choices": [32, 64]},
            "bn_placement": "none",
            "momentum": 0.9,
            "bn_momentum": 0.1,
        },
        sampler={"name": "grid"},
        budget={"n_trials": 4},
    )
    make_study(pg, spec)
    workers.start(pg, "--study", spec.name, "--idle-exit", "2", n=2)
    workers.wait(timeout=120)
    trials = trials_of(pg, spec.name)
    diverged = [t for t in trials if t.user_attrs.get("status") == "diverged"]
    figures.update(diverged=len(diverged), trials=len(trials))
    assert {t.params["learning_rate"] for t in diverged} == {1000.0}
    assert len(diverged) == 2  # both batch sizes at lr 1000
    assert all(t.state is TrialState.COMPLETE and t.value == 0.0 for t in diverged)
    assert all("epoch" in t.user_attrs["reason"] for t in diverged)
    assert_accounted_for(pg, spec.name, 4, figures)


@pytest.mark.scenario("10. out-of-memory trial, then another study")
def test_worker_survives_an_out_of_memory_trial_and_completes_another_study(pg, workers, figures):
    oom = tiny_spec("oom", model={"name": "oom_mlp"}, budget={"n_trials": 1, "max_failed": 0})
    after = tiny_spec("after-oom", budget={"n_trials": 2})
    make_study(pg, oom)  # older: claimed first
    make_study(pg, after)
    (proc,) = workers.start(pg, "--idle-exit", "2")  # any study
    assert proc.wait(timeout=patient(120)) == 0
    (failed,) = trials_of(pg, oom.name)
    assert failed.state is TrialState.FAIL and failed.user_attrs["status"] == "oom"
    assert "out of memory" in failed.user_attrs["reason"]
    assert get_study_row(get_engine(pg), oom.name).status == StudyStatus.FAILED
    done = trials_of(pg, after.name)
    assert {t.user_attrs["worker_id"] for t in done} == {failed.user_attrs["worker_id"]}
    figures.update(oom_trials=1, later_study_trials=len(done))
    assert_accounted_for(pg, after.name, 2, figures)
