"""Reads that do not grow with the study: every read endpoint, over HTTP, on a study of 2,000
finished trials costs what it costs on one of 200: the same SQL statements, about the same rows
returned (PostgreSQL) and about the same work inside the database (SQLite's virtual-machine
steps, which count the rows a statement scans, not only those it returns).

The studies are written in bulk (tests/bulk.py), not trained. Analyses are computed once, in the
background, and served from storage: their responses say for how many trials, and whether stale.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from sqlalchemy import event

import migrations
from search.storage import get_engine, get_storage
from service.settings import Settings
from tests.bulk import add_finished_trials, build_study, study_row
from tests.support import start_server

SMALL, BIG = 200, 2_000
READS = [
    "",
    "/trials?limit=50",
    "/trials?offset=120&limit=50",
    "/trials?sort=value&order=desc&limit=50",
    "/trials?state=PRUNED&sort=value&limit=20",
    "/trials?state=complete&order=desc&limit=50",
    "/best",
    "/importance",
    "/report",
    "/report.html",
]
VM_STEP = 100  # SQLite calls the progress handler every this many virtual-machine instructions


@dataclass
class Usage:
    statements: int = 0
    rows: int = 0  # returned to the client (PostgreSQL's cursor rowcount)
    vm_steps: int = 0  # work inside SQLite


class Meter:
    """Database use of the request threads: background threads (``bnsweep-*``: reaper, analyses)
    are not counted."""

    def __init__(self, engines: list[Any]) -> None:
        self.usage = Usage()
        self.lock = threading.Lock()
        for engine in engines:
            event.listen(engine, "after_cursor_execute", self._statement)
            event.listen(engine, "checkout", self._checkout)
            if engine.dialect.name == "sqlite":  # connections opened before the listener
                engine.dispose()

    def _counted(self) -> bool:
        return not threading.current_thread().name.startswith("bnsweep-")

    def _statement(self, conn: Any, cursor: Any, *_: Any) -> None:
        if self._counted():
            with self.lock:
                self.usage.statements += 1
                self.usage.rows += max(0, cursor.rowcount)

    def _checkout(self, dbapi_conn: Any, *_: Any) -> None:
        if hasattr(dbapi_conn, "set_progress_handler"):  # sqlite3

            def step() -> int:
                if self._counted():
                    with self.lock:
                        self.usage.vm_steps += VM_STEP
                return 0

            dbapi_conn.set_progress_handler(step, VM_STEP)

    def measure(self, http: httpx.Client, path: str) -> tuple[httpx.Response, Usage]:
        with self.lock:
            self.usage = Usage()
        response = http.get(path)
        with self.lock:
            return response, self.usage


@dataclass
class Scale:
    url: str
    http: httpx.Client
    meter: Meter
    studies: dict[int, int]  # finished trials -> study id


@pytest.fixture(scope="module")
def scale(db_url: str) -> Iterator[Scale]:
    migrations.upgrade(db_url)
    studies = {n: build_study(db_url, f"scale-{n}", n, seed=n) for n in (SMALL, BIG)}
    settings = Settings(database_url=db_url, auth=False, reaper_interval_s=3600, analysis_wait_s=10)
    uv, thread, base = start_server(settings)
    engine = get_engine(db_url, settings.db_pool_size)
    storage = get_storage(
        db_url,
        heartbeat_interval_s=settings.heartbeat_interval_s,
        grace_period_s=settings.grace_period_s,
        pool_size=settings.db_pool_size,
    )
    meter = Meter([engine, storage.engine])
    with httpx.Client(base_url=f"{base}/api/v1/studies", timeout=120) as http:
        for study_id in studies.values():  # first reads: summaries built, analyses computed
            for read in READS:
                assert http.get(f"/{study_id}{read}").status_code == 200, read
        yield Scale(db_url, http, meter, studies)
    uv.should_exit = True
    thread.join(timeout=10)


@pytest.mark.parametrize("read", READS)
def test_read_costs_the_same_at_2000_trials_as_at_200(scale, read):
    used = {}
    for n, study_id in scale.studies.items():
        response, used[n] = scale.meter.measure(scale.http, f"/{study_id}{read}")
        assert response.status_code == 200, response.text
    small, big = used[SMALL], used[BIG]
    assert big.statements == small.statements, (small, big)
    assert big.rows <= 1.2 * small.rows + 20, (small, big)
    assert big.vm_steps <= 1.5 * small.vm_steps + 5_000, (small, big)


def test_a_page_returns_its_trials_only(scale):
    study_id = scale.studies[BIG]
    page = scale.http.get(f"/{study_id}/trials", params={"offset": 1990, "limit": 50}).json()
    assert page["total"] == BIG and [t["number"] for t in page["items"]] == list(range(1990, 2000))
    by_value = scale.http.get(
        f"/{study_id}/trials", params={"sort": "value", "order": "desc", "limit": 3}
    ).json()
    best = scale.http.get(f"/{study_id}/best").json()
    assert by_value["items"][0]["values"] == best["values"]
    assert all(t["user_attrs"]["train_config"] for t in by_value["items"])


def test_analyses_say_how_current_they_are_and_catch_up(scale):
    study_id = scale.studies[SMALL]
    before = scale.http.get(f"/{study_id}/importance").json()
    finished = scale.http.get(f"/{study_id}").json()["progress"]["finished"]
    assert before["stale"] is False and before["trials_counted"] == finished
    assert before["trials_finished"] == before["trials_counted"] and before["computed_at"]
    row = study_row(scale.url, study_id)
    from search.studies import spec_of

    add_finished_trials(scale.url, row.optuna_study_id, spec_of(row), 20, seed=99)
    # A small study's analysis is computed within the wait bound: the answer is already fresh.
    after = scale.http.get(f"/{study_id}/importance").json()
    report = scale.http.get(f"/{study_id}/report").json()
    assert after["stale"] is False and after["trials_counted"] > before["trials_counted"]
    assert report["trials_counted"] == after["trials_counted"] == after["trials_finished"]
    assert after["computed_at"] > before["computed_at"]


def test_an_analysis_slower_than_the_bound_is_served_stale_then_caught_up(db_url, scale):
    from service.analyses import AnalysisCache
    from service.queries import importance

    row = study_row(scale.url, scale.studies[SMALL])
    cache = AnalysisCache(scale.url, get_engine(scale.url), wait_s=0.0)  # waits for nothing
    cache.start()
    try:
        from search.studies import spec_of

        first = importance(cache, row)
        add_finished_trials(scale.url, row.optuna_study_id, spec_of(row), 10, seed=7)
        stale = importance(cache, row)
        assert stale.stale and stale.trials_counted == first.trials_counted
        assert stale.importances == first.importances  # the stored figures, at once
        deadline = time.monotonic() + 60
        while (fresh := importance(cache, row)).stale:
            assert time.monotonic() < deadline, "never caught up"
            time.sleep(0.1)
        assert fresh.trials_counted == fresh.trials_finished > first.trials_counted
    finally:
        cache.stop()
