"""Study lifecycle in the database: claims, cancel, delete, reap (real SQLite file)."""

from __future__ import annotations

import time

import optuna
import pytest
import sqlalchemy as sa

from search.db import StudyRow
from search.errors import StudyStateError
from search.states import StudyStatus
from search.storage import get_engine, get_storage
from search.studies import cancel_study, claim_slot, delete_study, get_study_row, reap
from tests.support import make_study, tiny_spec


def test_dead_workers_slot_blocks_delete_only_until_its_grace_period(sqlite_url, migrate):
    migrate(sqlite_url)
    engine, storage = get_engine(sqlite_url), get_storage(sqlite_url)
    spec = tiny_spec("orphaned")
    study_id = make_study(sqlite_url, spec)
    assert claim_slot(engine, "dead-worker", [study_id], grace_period_s=60) is not None
    with pytest.raises(StudyStateError, match="is running; cancel it first"):
        delete_study(engine, storage, study_id, grace_period_s=60)
    cancel_study(engine, study_id)
    with pytest.raises(StudyStateError, match="still has a trial stopping"):
        delete_study(engine, storage, study_id, grace_period_s=60)
    time.sleep(1.1)  # SQLite's CURRENT_TIMESTAMP has one-second resolution
    delete_study(engine, storage, study_id, grace_period_s=1)
    assert spec.name not in [s.study_name for s in optuna.get_all_study_summaries(storage)]


def test_reap_releases_a_dead_workers_slot_of_a_cancelled_study(sqlite_url, migrate):
    migrate(sqlite_url)
    engine, storage = get_engine(sqlite_url), get_storage(sqlite_url)
    study_id = make_study(sqlite_url, tiny_spec("reaped"))
    claim_slot(engine, "dead-worker", [study_id], grace_period_s=60)
    cancel_study(engine, study_id)
    time.sleep(1.1)
    reap(engine, storage, grace_period_s=1)
    delete_study(engine, storage, study_id, grace_period_s=3600)  # nothing left to release


def test_deleting_a_queued_study_keeps_workers_away_from_it(sqlite_url, migrate):
    migrate(sqlite_url)
    engine, storage = get_engine(sqlite_url), get_storage(sqlite_url)
    study_id = make_study(sqlite_url, tiny_spec("queued"))
    assert get_study_row(engine, study_id).status == StudyStatus.QUEUED
    delete_study(engine, storage, study_id, grace_period_s=30)
    assert claim_slot(engine, "w", [study_id], grace_period_s=30) is None


def test_a_stored_spec_that_no_longer_validates_fails_its_study_not_the_claim(sqlite_url, migrate):
    migrate(sqlite_url)
    engine = get_engine(sqlite_url)
    study_id = make_study(sqlite_url, tiny_spec("old-schema"))
    with engine.begin() as conn:
        conn.execute(
            sa.update(StudyRow).where(StudyRow.id == study_id).values(spec={"name": "old"})
        )
    assert claim_slot(engine, "w", [study_id], grace_period_s=30) is None
    row = get_study_row(engine, study_id)
    assert row.status == StudyStatus.FAILED
    assert row.status_reason.startswith("stored spec is no longer valid: ")
