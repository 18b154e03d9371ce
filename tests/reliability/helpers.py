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
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import optuna
import sqlalchemy as sa
from optuna.trial import TrialState

from search.states import StudyStatus
from search.storage import get_engine, get_storage
from search.studies import get_study_row
from tests.support import worker_env

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

    def start(self, timeout_s: float = 30) -> ApiProcess:
        cmd = [
            sys.executable, "-m", "uvicorn", "--factory", "service.app:create_app",
            "--host", "127.0.0.1", "--port", str(self.port), "--log-level", "info",
        ]  # fmt: skip
        self.proc = subprocess.Popen(cmd, env=self.env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
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


# --- PostgreSQL -----------------------------------------------------------------------------------


def pg_ctl(action: str) -> None:
    """Stop, start or restart the local PostgreSQL cluster (the test runs as root or postgres)."""
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", PG_VERSION, "main", action],
        check=True,
        timeout=60,
        capture_output=True,
    )


def ensure_postgres_running() -> None:
    """Start the cluster unless it runs (for ``finally`` blocks: never leave it stopped)."""
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", PG_VERSION, "main", "start"],
        check=False,  # exit code 2: already running
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
    duplicated_numbers: int
    unretried_failures: int  # FAIL trials whose worker died/stopped but that have no retry

    @property
    def lost(self) -> int:
        return max(0, self.expected - self.finished)

    def figures(self) -> dict[str, int]:
        return {
            "trials_finished": self.finished,
            "trials_expected": self.expected,
            "trials_lost": self.lost,
            "trial_numbers_duplicated": self.duplicated_numbers,
            "left_running": self.running,
            "failed_then_retried": self.failed - self.unretried_failures,
        }


def trials_of(url: str, name: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=get_storage(url)).get_trials()


def audit(url: str, name: str, expected: int) -> Audit:
    trials = trials_of(url, name)
    by_state = Counter(t.state for t in trials)
    numbers = Counter(t.number for t in trials)
    # A retry lists every trial it replaces (Optuna's RetryHeartbeatStaleTrialCallback).
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
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
        duplicated_numbers=sum(n - 1 for n in numbers.values() if n > 1),
        unretried_failures=len(unretried),
    )


def log_problems(text: str, needles: tuple[str, ...]) -> list[str]:
    """Lines of a log that contain any of ``needles``."""
    return [line for line in text.splitlines() if any(n in line for n in needles)]


def assert_accounted_for(url: str, name: str, n_trials: int, figures: dict[str, Any]) -> None:
    """Exactly ``n_trials`` finished, no number twice, nothing RUNNING, every dead trial retried."""
    result = audit(url, name, n_trials)
    figures.update(result.figures())
    assert result.finished == n_trials
    assert result.duplicated_numbers == 0
    assert result.running == 0
    assert result.unretried_failures == 0
    assert get_study_row(get_engine(url), name).status == StudyStatus.COMPLETED
