"""Helpers of the reliability suite: the API as a real process, PostgreSQL probes, trial audits.

Workers come from tests/support.py (``WorkerPool``); everything here talks to 127.0.0.1 only.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import optuna
import sqlalchemy as sa
from optuna.trial import TrialState

from search.states import StudyStatus
from search.storage import get_engine, get_storage
from search.studies import get_study_row
from tests import support
from tests.support import WorkerPool, worker_env

PG_VERSION = (
    next(iter(sorted(os.listdir("/etc/postgresql"))), "")
    if os.path.isdir("/etc/postgresql")
    else ""
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- the API as a real process ------------------------------------------------------------------


class ApiProcess:
    """``python -m uvicorn --factory service.app:create_app`` on a free port, logs to a file.

    Settings come from the environment (``BNSWEEP_*``), as in production; the test plugins are on
    the path so specs may name the test models.
    """

    def __init__(self, db_url: str, **settings: Any) -> None:
        self.db_url = db_url
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = worker_env()
        self.env.update(
            {
                "BNSWEEP_DATABASE_URL": db_url,
                "BNSWEEP_AUTH": "true",
                "BNSWEEP_REAPER_INTERVAL_S": "1",
            }
        )
        self.env.update({f"BNSWEEP_{k.upper()}": str(v) for k, v in settings.items()})
        self.log = tempfile.NamedTemporaryFile(prefix="bnsweep-api-", suffix=".log")  # noqa: SIM115 (closed in close)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 60) -> ApiProcess:
        cmd = [
            sys.executable, "-m", "uvicorn", "--factory", "service.app:create_app",
            "--host", "127.0.0.1", "--port", str(self.port), "--log-level", "info",
        ]  # fmt: skip
        self.proc = subprocess.Popen(cmd, env=self.env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + patient(timeout_s)
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"API exited with {self.proc.returncode}:\n{self.log_text()}")
            try:
                httpx.get(f"{self.url}/openapi.json", timeout=1)
                return self
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"API did not start:\n{self.log_text()}") from None
                time.sleep(0.1)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.proc = None

    def close(self) -> None:
        self.stop()
        self.log.close()

    def log_text(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text(errors="replace")

    def client(self, key: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)

    def cpu_seconds(self) -> float:
        """CPU time the API process has used so far: what a request costs the server, whatever
        else keeps this machine's cores busy (wall time is not)."""
        assert self.proc is not None
        return cpu_seconds(self.proc.pid)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (Linux ``/proc/<pid>/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --- timing on a loaded machine -----------------------------------------------------------------


def slowdown(cpu_s: float = 0.05) -> float:
    """How many times its CPU time a CPU-bound task takes now: 1 with a core to itself, about N
    when N runnable threads share one (at most 50)."""
    wall, cpu = time.perf_counter(), time.thread_time()
    while time.thread_time() - cpu < cpu_s:
        pass
    return min(50.0, max(1.0, (time.perf_counter() - wall) / (time.thread_time() - cpu)))


def patient(seconds: float) -> float:
    """A liveness guard ("this should have happened by now") of ``seconds`` on an idle machine,
    stretched by the slowdown measured now. Guards only: what a test asserts about time is
    derived from intervals and measured lateness (``SchedulingSlack``)."""
    return seconds * slowdown()


def wait_for(predicate: Any, timeout: float, every: float = 0.1) -> None:
    """tests.support.wait_for with a patient timeout."""
    support.wait_for(predicate, patient(timeout), every)


class PatientWorkerPool(WorkerPool):
    """A WorkerPool whose ``wait`` is patient the same way."""

    def wait(self, timeout: float) -> None:
        super().wait(patient(timeout))


class SchedulingSlack(threading.Thread):
    """Measures how late this machine runs a timer: a thread sleeps ``tick_s`` again and again and
    records the largest overshoot. Time bounds are then the configured intervals plus a multiple
    of the slack measured during the scenario itself, not constants that a busy machine exceeds.
    """

    def __init__(self, tick_s: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.tick_s = tick_s
        self.stop_event = threading.Event()
        self.worst_s = 0.0

    def run(self) -> None:
        while not self.stop_event.is_set():
            started = time.monotonic()
            time.sleep(self.tick_s)
            self.worst_s = max(self.worst_s, time.monotonic() - started - self.tick_s)

    def __enter__(self) -> SchedulingSlack:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop_event.set()
        self.join(timeout=5)


def max_overlap(intervals: Iterable[tuple[datetime, datetime]]) -> int:
    """The most intervals open at one instant (an interval ending as another starts: not both)."""
    spans = list(intervals)
    events = sorted(
        [(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans],
        key=lambda e: (e[0], e[1]),  # at equal times, ends before starts
    )
    open_now = peak = 0
    for _, delta in events:
        open_now += delta
        peak = max(peak, open_now)
    return peak


class ConnectionsByApplication(threading.Thread):
    """Samples ``pg_stat_activity`` every ``every_s``: per application name (one per worker
    process: ``PGAPPNAME``), the most connections seen at once."""

    def __init__(self, url: str, prefix: str, every_s: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.prefix = prefix
        self.every_s = every_s
        self.engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
        self.stop_event = threading.Event()
        self.peak: defaultdict[str, int] = defaultdict(int)
        self.samples = 0

    def run(self) -> None:
        query = sa.text(
            "SELECT application_name, count(*) FROM pg_stat_activity "
            "WHERE application_name LIKE :prefix GROUP BY application_name"
        )
        with self.engine.connect() as conn:
            while not self.stop_event.wait(self.every_s):
                for name, count in conn.execute(query, {"prefix": self.prefix + "%"}):
                    self.peak[name] = max(self.peak[name], count)
                self.samples += 1
                conn.rollback()  # a fresh snapshot of pg_stat_activity next time

    def __enter__(self) -> ConnectionsByApplication:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop_event.set()
        self.join(timeout=5)
        self.engine.dispose()


# --- PostgreSQL -----------------------------------------------------------------------------------


# A private server instead of the shared cluster (its data directory; BNSWEEP_TEST_PG_URL names
# its port): the outage tests then stop that one, and others' tests on the shared one go on.
PG_DATA = os.environ.get("BNSWEEP_TEST_PG_DATA")


def _pg_ctl_command(action: str) -> list[str]:
    if PG_DATA is None:
        return ["pg_ctlcluster", "--skip-systemctl-redirect", PG_VERSION, "main", action]
    pg_ctl = f"/usr/lib/postgresql/{PG_VERSION}/bin/pg_ctl"
    command = [pg_ctl, "-D", PG_DATA, "-w", "-m", "fast", action]
    if action != "stop":  # the server's output to a file: a pipe would keep run() waiting
        command += ["-l", os.path.join(PG_DATA, "server.log")]
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


def pg_ctl(action: str) -> None:
    """Stop, start or restart the local PostgreSQL cluster (the test runs as root or postgres)."""
    subprocess.run(_pg_ctl_command(action), check=True, timeout=60, capture_output=True)


def ensure_postgres_running() -> None:
    """Start the cluster unless it runs (for ``finally`` blocks: never leave it stopped)."""
    subprocess.run(
        _pg_ctl_command("start"),
        check=False,  # an error exit: already running
        timeout=60,
        capture_output=True,
    )


def wait_for_postgres(url: str, timeout_s: float = 30) -> None:
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            try:
                with engine.connect() as conn:
                    conn.execute(sa.select(1))
                return
            except sa.exc.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
    finally:
        engine.dispose()


def connections_to(conn: sa.Connection, database: str) -> int:
    """Backends connected to ``database``, not counting the caller's."""
    return conn.execute(
        sa.text(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = :db AND pid <> pg_backend_pid()"
        ),
        {"db": database},
    ).scalar_one()


# --- auditing a study ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Audit:
    """What a finished study looks like from Optuna's tables."""

    expected: int
    finished: int
    running: int
    waiting: int
    failed: int
    finished_twice: int  # trials that finished along with a retry of theirs (or two retries)
    unretried_failures: int  # FAIL trials whose worker died/stopped but that have no retry

    @property
    def lost(self) -> int:
        return max(0, self.expected - self.finished)

    def figures(self) -> dict[str, int]:
        return {
            "trials_finished": self.finished,
            "trials_expected": self.expected,
            "trials_lost": self.lost,
            "finished_twice": self.finished_twice,
            "left_running": self.running,
            "left_waiting": self.waiting,
            "failed_then_retried": self.failed - self.unretried_failures,
        }


def trials_of(url: str, name: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=get_storage(url)).get_trials()


FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def audit(url: str, name: str, expected: int) -> Audit:
    trials = trials_of(url, name)
    by_state = Counter(t.state for t in trials)
    # A retry names the first trial of its line (``failed_trial``) and every trial it replaces
    # (``retry_history``): Optuna's RetryHeartbeatStaleTrialCallback. A line may finish once.
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
    finished_per_line = Counter(
        t.system_attrs.get("failed_trial", t.number) for t in trials if t.state in FINISHED
    )
    unretried = [
        t
        for t in trials
        if t.state is TrialState.FAIL
        and t.user_attrs.get("status") in (None, "interrupted")  # died (stale) or stopped
        and t.number not in retried
    ]
    return Audit(
        expected=expected,
        finished=by_state[TrialState.COMPLETE] + by_state[TrialState.PRUNED],
        running=by_state[TrialState.RUNNING],
        waiting=by_state[TrialState.WAITING],
        failed=by_state[TrialState.FAIL],
        finished_twice=sum(n - 1 for n in finished_per_line.values() if n > 1),
        unretried_failures=len(unretried),
    )


def log_problems(text: str, needles: tuple[str, ...]) -> list[str]:
    """Lines of a log that contain any of ``needles``."""
    return [line for line in text.splitlines() if any(n in line for n in needles)]


def assert_accounted_for(url: str, name: str, n_trials: int, figures: dict[str, Any]) -> None:
    """Exactly ``n_trials`` finished, no trial finished along with its retry, nothing RUNNING or
    WAITING (a retry left queued in a completed study), every dead trial retried."""
    result = audit(url, name, n_trials)
    figures.update(result.figures())
    assert result.finished == n_trials
    assert result.finished_twice == 0
    assert result.running == 0
    assert result.waiting == 0
    assert result.unretried_failures == 0
    assert get_study_row(get_engine(url), name).status == StudyStatus.COMPLETED
