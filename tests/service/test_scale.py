"""Reads that do not grow with the study: every read endpoint, over HTTP, on a study of 2,000
finished trials costs what it costs on one of 200: the same SQL statements, about the same rows
returned (PostgreSQL) and about the same work inside the database (SQLite's virtual-machine
steps, which count the rows a statement scans, not only those it returns).

The studies are written in bulk (tests/bulk.py), not trained. Analyses are computed once, in the
background, and served from storage: their responses say for how many trials, and whether stale.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

import migrations
from search.storage import get_engine, get_storage
from search.studies import spec_of
from service.analyses import AnalysisCache
from service.queries import importance
from service.settings import Settings
from tests.bulk import add_finished_trials, build_study, study_row
from tests.dbmeter import Meter
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
                _until_answered(http, f"/{study_id}{read}")
        yield Scale(db_url, http, meter, studies)
    uv.should_exit = True
    thread.join(timeout=10)


def _until_answered(http: httpx.Client, path: str, timeout_s: float = 600) -> None:
    """GET until 200: a report not computed within the wait bound (a loaded machine) is 503."""
    deadline = time.monotonic() + timeout_s
    while (response := http.get(path)).status_code == 503 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert response.status_code == 200, (path, response.text)


@pytest.mark.parametrize("read", READS)
def test_read_costs_the_same_at_2000_trials_as_at_200(scale, read):
    used = {}
    for n, study_id in scale.studies.items():
        scale.meter.reset()
        response = scale.http.get(f"/{study_id}{read}")
        used[n] = scale.meter.take()
        assert response.status_code == 200, response.text
    assert used[BIG].within(used[SMALL]), used


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
    add_finished_trials(scale.url, row.optuna_study_id, spec_of(row), 20, seed=99)
    # Usually fresh at the first request (a small study is computed within the wait bound); on
    # a loaded machine it may take a few more.
    after = _until_fresh(scale.http, f"/{study_id}/importance")
    report = _until_fresh(scale.http, f"/{study_id}/report")
    assert after["trials_counted"] > before["trials_counted"]
    assert report["trials_counted"] == after["trials_counted"] == after["trials_finished"]
    assert after["computed_at"] > before["computed_at"]


def _until_fresh(http: httpx.Client, path: str, timeout_s: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while (body := http.get(path).json()).get("stale", True):
        assert time.monotonic() < deadline, body
        time.sleep(0.2)
    return body


def test_an_analysis_slower_than_the_bound_is_served_stale_then_caught_up(db_url, scale):
    row = study_row(scale.url, scale.studies[SMALL])
    cache = AnalysisCache(scale.url, get_engine(scale.url), wait_s=0.0)  # waits for nothing
    cache.start()
    try:
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
