"""Fixtures of the reliability suite: figures per scenario, migrated PostgreSQL, worker pools, the
API as a real process.

Figures: a test takes ``figures`` (a dict) and fills it; with ``BNSWEEP_RELIABILITY_OUT`` set, each
test writes ``<dir>/<test id>.json`` (one file per test, so pytest-xdist workers never share one).
``bench/reliability.py`` collects them into docs/reliability.md.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import migrations
from search.storage import get_engine
from service.auth import create_key
from tests import support
from tests.reliability.helpers import ApiProcess, PatientWorkerPool
from tests.support import WorkerPool, load_test_plugins

OUT_ENV = "BNSWEEP_RELIABILITY_OUT"
# Heartbeat 1 s (tests/support.py), grace 5 s here: a live worker's heartbeat may be 4 s late
# before its trial is failed as stale. Under `-n 2`, 8 workers and two CPU-burning processes on 2
# cores, heartbeats were measured up to ~2 s late: the 3 s grace of the other suites is too close.
GRACE_S = 5
POLL_S = 0.2  # WorkerPool's --poll


@dataclass(frozen=True)
class Timing:
    """The intervals this suite's workers and API run with (time bounds derive from them)."""

    heartbeat_s: float
    grace_s: float
    poll_s: float


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "outage: needs the shared PostgreSQL server to itself (stops it, or holds most of its"
        " connections); run alone, after the rest (-m outage)",
    )
    config.addinivalue_line("markers", "scenario(title): the reliability scenario a test checks")


@pytest.fixture(scope="module", autouse=True)
def _suite_timing() -> Iterator[None]:
    """This suite's grace period, set before any module fixture starts a process."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(support, "GRACE_S", GRACE_S)
        yield


@pytest.fixture
def timing() -> Timing:
    return Timing(heartbeat_s=support.HEARTBEAT_S, grace_s=support.GRACE_S, poll_s=POLL_S)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Any:
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    """A dict the test fills with its figures; written to $BNSWEEP_RELIABILITY_OUT if set."""
    data: dict[str, Any] = {}
    yield data
    out = os.environ.get(OUT_ENV)
    if not out:
        return
    marker = request.node.get_closest_marker("scenario")
    call = getattr(request.node, "rep_call", None)
    record = {
        "test": request.node.nodeid,
        "scenario": marker.args[0] if marker else request.node.name,
        "outcome": call.outcome if call else "error",
        "duration_s": round(call.duration, 1) if call else None,
        "figures": data,
    }
    Path(out).mkdir(parents=True, exist_ok=True)
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.nodeid)
    (Path(out) / f"{name}.json").write_text(json.dumps(record, indent=2, default=str))


@pytest.fixture(scope="module")
def pg(pg_url: str) -> str:
    """This module's PostgreSQL database, migrated, with the test plugins loaded here too."""
    load_test_plugins()
    migrations.upgrade(pg_url)
    return pg_url


@pytest.fixture
def workers() -> Iterator[WorkerPool]:
    pool = PatientWorkerPool()
    try:
        yield pool
    finally:
        pool.stop()


@pytest.fixture(scope="module")
def api_key(pg: str) -> str:
    return create_key(get_engine(pg), "reliability")


@pytest.fixture
def api_process(pg: str) -> Iterator[Callable[..., ApiProcess]]:
    """``api_process(**settings)``: an API process on this module's database (not yet started)."""
    made: list[ApiProcess] = []

    def make(**settings: Any) -> ApiProcess:
        made.append(ApiProcess(pg, **settings))
        return made[-1]

    try:
        yield make
    finally:
        for api in made:
            api.close()


# The module API's body limits: 100 kB in general, 20 kB for a spec, 2 s to send a body.
MAX_BODY_BYTES = 100_000
MAX_SPEC_BYTES = 20_000
BODY_TIMEOUT_S = 2.0


@pytest.fixture(scope="module")
def api(pg: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiProcess]:
    """One running API process for a module (auth on, the body limits above, its own data
    dir)."""
    data_dir = tmp_path_factory.mktemp("data")
    server = ApiProcess(
        pg,
        max_body_bytes=MAX_BODY_BYTES,
        max_spec_bytes=MAX_SPEC_BYTES,
        body_timeout_s=BODY_TIMEOUT_S,
        data_dir=data_dir,
    )
    server.env["BNSWEEP_DATA_DIR"] = str(data_dir)  # where dataset paths resolve
    # tests/reliability/import_canary.py writes this file if anything ever imports it.
    server.env["BNSWEEP_CANARY_FILE"] = str(data_dir.parent / "canary-imported")
    try:
        yield server.start()
    finally:
        server.close()
