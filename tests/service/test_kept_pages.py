"""Trial pages kept encoded (service.queries.trial_page_json): a page of finished trials is served
again without reading its trials while the study's tally is unchanged; any trial that starts or
ends makes a new page; a page with an unfinished trial is never kept. SQLite and PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Iterator

import optuna
import pytest

import migrations
from search.states import TrialStateName
from search.storage import get_engine, get_storage
from service.queries import PAGES, trial_page, trial_page_json
from tests.bulk import build_study, study_row
from tests.dbmeter import Meter


@pytest.fixture(scope="module")
def url(db_url: str) -> str:
    migrations.upgrade(db_url)
    return db_url


@pytest.fixture
def meter(url: str) -> Iterator[Meter]:
    PAGES._pages.clear()
    yield Meter([get_engine(url)])


def _statements(meter: Meter) -> int:
    return meter.usage.statements


def test_a_page_of_finished_trials_is_kept_until_a_trial_starts_or_ends(url, meter) -> None:
    study_id = build_study(url, "kept-pages", 30)
    row, engine = study_row(url, study_id), get_engine(url)
    first = trial_page_json(engine, row, limit=10)
    fresh = json.loads(trial_page(engine, row, limit=10).model_dump_json())
    assert json.loads(first) == fresh
    before = _statements(meter)
    assert trial_page_json(engine, row, limit=10) == first
    kept_cost = _statements(meter) - before  # the tally's check only: no trial read

    study = optuna.load_study(study_name="kept-pages", storage=get_storage(url))
    running = study.ask()  # starts: the tally changes, the last page now shows it
    last = json.loads(trial_page_json(engine, row, offset=30, limit=10))
    assert last["total"] == 31 and [t["state"] for t in last["items"]] == ["running"]
    before = _statements(meter)
    trial_page_json(engine, row, offset=30, limit=10)
    assert _statements(meter) - before > kept_cost  # a page with a running trial: read again

    study.tell(running, 0.5)  # ends: the page shows it finished
    last = json.loads(trial_page_json(engine, row, offset=30, limit=10))
    assert [t["state"] for t in last["items"]] == [TrialStateName.COMPLETE.value]
    assert json.loads(trial_page_json(engine, row, limit=10))["total"] == 31
