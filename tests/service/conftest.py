"""A real uvicorn server per test module, on the module's database (SQLite and PostgreSQL)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

import migrations
from models.registry import load_plugins
from search.storage import get_engine
from service.auth import create_key
from service.cli import main
from service.settings import Settings, get_settings
from tests.support import run_worker, start_server

MAX_BODY_BYTES = 20_000


def tiny_spec(name: str, n_trials: int = 2, **overrides: Any) -> dict[str, Any]:
    """A study whose trials take a fraction of a second on a CPU, one trial per model."""
    return {
        "name": name,
        "dataset": {"name": "synthetic", "params": {"n_samples": 200}},
        "model": {"name": "mlp", "params": {"width": 8, "depth": 1}},
        "search_space": {"batch_size": 32},
        "training": {"epochs": 1},
        "sampler": {"name": "random", "seed": 0},
        "budget": {"n_trials": n_trials},
        "execution": {"fuse": 1},
        **overrides,
    }


@dataclass
class LiveServer:
    url: str
    db_url: str
    key: str  # a valid write key
    settings: Settings

    def client(self, key: str | None = "valid") -> httpx.Client:
        """An HTTP client with the valid key, another key, or none (``key=None``)."""
        token = self.key if key == "valid" else key
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)


@pytest.fixture(scope="module")
def server(db_url: str) -> Iterator[LiveServer]:
    """The API (auth on) on a migrated database, with one valid key."""
    load_plugins()
    migrations.upgrade(db_url)
    settings = Settings(
        database_url=db_url,
        auth=True,
        max_body_bytes=MAX_BODY_BYTES,
        heartbeat_interval_s=1,
        grace_period_s=5,
        reaper_interval_s=0.5,
    )
    key = create_key(get_engine(db_url), "tests")
    uv, thread, url = start_server(settings)
    yield LiveServer(url, db_url, key, settings)
    uv.should_exit = True
    thread.join(timeout=10)


def wait_for_status(
    http: httpx.Client, study_id: int, statuses: set[str], timeout_s: float = 60
) -> dict[str, Any]:
    """Poll GET /studies/{id} until its status is one of ``statuses``."""
    deadline = time.monotonic() + timeout_s
    while True:
        study = http.get(f"/api/v1/studies/{study_id}").json()
        if study["status"] in statuses:
            return study
        if time.monotonic() > deadline:
            raise AssertionError(f"study still {study['status']} after {timeout_s}s: {study}")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def server_without_database() -> Iterator[str]:
    """The app on a PostgreSQL port where nothing listens: every query fails."""
    settings = Settings(
        database_url="postgresql+psycopg://postgres@127.0.0.1:9/none?connect_timeout=2",
        reaper_interval_s=60,
    )
    uv, thread, url = start_server(settings)
    yield url
    uv.should_exit = True
    thread.join(timeout=10)


# Helpers as fixtures: test modules here are not a package, so they cannot import this file.


@pytest.fixture(scope="session")
def spec() -> Any:
    """``spec(name, n_trials=2, **overrides)``: a tiny spec mapping."""
    return tiny_spec


@pytest.fixture(scope="session")
def worker() -> Any:
    """``worker(db_url, study_name)``: start a worker thread that runs the study to its end."""
    return run_worker


@pytest.fixture(scope="session")
def wait_for() -> Any:
    """``wait_for(http, study_id, statuses, timeout_s=60)``: poll until the status is reached."""
    return wait_for_status


@pytest.fixture
def cli(
    server: LiveServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Iterator[Any]:
    """Run ``bnsweep ARGS`` against the live server; return (exit code, stdout, stderr)."""
    monkeypatch.setenv("BNSWEEP_API_URL", server.url)
    monkeypatch.setenv("BNSWEEP_API_KEY", server.key)
    monkeypatch.setenv("BNSWEEP_DATABASE_URL", server.db_url)
    get_settings.cache_clear()

    def run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        try:
            main(list(args))
            code = 0
        except SystemExit as exc:
            code = exc.code or 0
        out, err = capsys.readouterr()
        return code, out, err

    yield run
    get_settings.cache_clear()
