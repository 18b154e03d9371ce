"""Fixtures for browser tests: a live server, one headless Chromium per module, a confined page.

- ``live_server`` (module): the API + dashboard under uvicorn (auth on) on a migrated SQLite file.
- ``finished_study`` (module): a study whose few tiny trials have all finished.
- ``browser`` (module): Debian's Chromium launched by Playwright, with a fresh profile.
- ``page`` (per test): a new page in its own context whose relative URLs go to the live server,
  which it reaches under a name that is not loopback (``bnsweep.test``, mapped to 127.0.0.1 inside
  Chromium), as a cluster node would be: code that skips work "on localhost" is exercised. Every
  request to another host is aborted and recorded in ``offsite_requests``; any there at the end
  of a test fails it.

Nothing here may reach off the host: Chromium's own background traffic is switched off by flags.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import optuna
import pytest

import migrations
from models.registry import load_plugins
from search.storage import get_engine, get_storage
from search.studies import get_study_row
from service.settings import Settings
from tests.support import make_study, run_worker, start_server, tiny_spec

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page, Route

BROWSER_HOST = "bnsweep.test"  # a reserved TLD (RFC 6761): never a real host
CHROMIUM_ARGS = [
    "--no-sandbox",  # we run as root
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    f"--host-resolver-rules=MAP {BROWSER_HOST} 127.0.0.1",
]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "browser: drives headless Chromium (never skipped in CI)")


@dataclass(frozen=True)
class LiveServer:
    url: str  # for HTTP clients in the tests: http://127.0.0.1:PORT
    browser_url: str  # the same server as the browser sees it: http://bnsweep.test:PORT
    db_url: str


@dataclass(frozen=True)
class FinishedStudy:
    name: str
    optuna_study_id: int  # the dashboard's id: /dashboard/studies/<id>
    n_finished: int
    best_params: dict[str, Any]


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """The app (API + dashboard, auth on) under uvicorn on a fresh, migrated SQLite file."""
    db_url = f"sqlite:///{tmp_path_factory.mktemp('browser') / 'bnsweep.db'}"
    migrations.upgrade(db_url)
    uv, thread, url = start_server(Settings(database_url=db_url, auth=True))
    port = urlsplit(url).port
    yield LiveServer(url, f"http://{BROWSER_HOST}:{port}", db_url)
    uv.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def finished_study(live_server: LiveServer) -> FinishedStudy:
    """A study over the BN settings whose 4 tiny trials have finished (seconds on a CPU)."""
    load_plugins()
    name, n_trials = "bn-in-browser", 4
    spec = tiny_spec(
        name,
        search_space={
            "batch_size": {"choices": [32, 64]},
            "learning_rate": {"low": 0.01, "high": 0.5, "log": True},
            "bn_momentum": {"low": 0.01, "high": 0.5, "log": True},
            "bn_placement": {"choices": ["before_activation", "after_activation", "none"]},
        },
        training={"epochs": 1},
        budget={"n_trials": n_trials},
    )
    make_study(live_server.db_url, spec)
    worker = run_worker(live_server.db_url, name)
    worker.join(timeout=120)
    assert not worker.is_alive(), "the study's trials did not finish in 120 s"
    row = get_study_row(get_engine(live_server.db_url), name)
    study = optuna.load_study(study_name=name, storage=get_storage(live_server.db_url))
    finished = study.get_trials(
        deepcopy=False, states=(optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    )
    assert len(finished) == n_trials, [t.state for t in study.trials]
    return FinishedStudy(name, row.optuna_study_id, len(finished), study.best_trial.params)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Headless Chromium for this module's tests; ``launch`` gives it a fresh temporary profile."""
    from tests.browser.playwright_api import CHROMIUM, sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def offsite_requests() -> list[str]:
    """URLs the test's page asked for on a host other than the live server (all aborted)."""
    return []


@pytest.fixture
def page(browser: Browser, live_server: LiveServer, offsite_requests: list[str]) -> Iterator[Page]:
    """A page confined to the live server; the test fails if it asked for anything elsewhere."""
    origin = urlsplit(live_server.browser_url)[:2]

    def confine(route: Route) -> None:
        url = route.request.url.removeprefix("blob:")
        if url.startswith("data:") or urlsplit(url)[:2] == origin:
            route.continue_()
        else:
            offsite_requests.append(route.request.url)
            route.abort("blockedbyclient")

    context = browser.new_context(
        base_url=live_server.browser_url,
        service_workers="block",  # so that every request passes through the route below
        viewport={"width": 1400, "height": 1000},
    )
    context.route("**/*", confine)
    yield context.new_page()
    context.close()
    if offsite_requests:
        pytest.fail(f"the page asked for other hosts: {offsite_requests}")
