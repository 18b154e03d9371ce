"""Trial tallies and summaries (search/summary.py) follow Optuna's tables, whoever writes them:
counts, best trial, Pareto front and page order equal what reading every trial gives."""

from __future__ import annotations

import optuna
import pytest
import sqlalchemy as sa
from optuna.trial import TrialState

import migrations
from search.states import TrialStateName
from search.storage import TRIALS, get_engine, get_storage, trials_by_id
from search.studies import create_study, delete_study, get_study_row, spec_of
from search.summary import front_trial_ids, page_trial_ids, refresh
from tests.bulk import build_study, scale_spec


@pytest.fixture(scope="module")
def url(db_url: str) -> str:
    migrations.upgrade(db_url)
    return db_url


def _direct_counts(url: str, optuna_study_id: int) -> dict[str, int]:
    with get_engine(url).connect() as conn:
        rows = conn.execute(
            sa.select(TRIALS.c.state, sa.func.count())
            .where(TRIALS.c.study_id == optuna_study_id)
            .group_by(TRIALS.c.state)
        ).all()
    out = dict.fromkeys(s.value for s in TrialStateName)
    out = {k: 0 for k in out}
    for state, n in rows:
        out[getattr(state, "name", state).lower()] = n
    return out


def test_tally_follows_asks_tells_and_the_queue(url):
    spec = scale_spec("follows", 10, sampler="random", pruner={"name": "none"})
    row = create_study(get_engine(url), get_storage(url), spec)
    study = optuna.load_study(study_name=row.name, storage=get_storage(url))
    oid = row.optuna_study_id
    engine = get_engine(url)
    seen = []

    def check() -> None:
        tally = refresh(engine, oid)
        assert tally.counts.as_dict() == _direct_counts(url, oid)
        seen.append(tally.counts.as_dict())

    check()  # empty
    study.enqueue_trial({"batch_size": 64})
    check()  # one waiting
    first = study.ask()
    second = study.ask()
    check()  # two running (the queued one popped)
    study.tell(first, 0.5)
    check()
    study.tell(second, state=TrialState.FAIL)
    third = study.ask()
    study.tell(third, 0.9)
    check()
    study.tell(study.ask(), state=TrialState.PRUNED)
    check()
    assert seen[1]["waiting"] == 1 and seen[2]["running"] == 2
    assert seen[-1] == {"complete": 2, "pruned": 1, "fail": 1, "running": 0, "waiting": 0}
    assert refresh(engine, oid).best_trial_id == third._trial_id
    assert refresh(engine, oid).best_value == 0.9


def test_pages_match_sorting_every_trial(url):
    study_id = build_study(url, "pages", 400, seed=3)
    row = get_study_row(get_engine(url), study_id)
    oid = row.optuna_study_id
    storage = get_storage(url)
    every = storage.get_all_trials(oid, deepcopy=False)
    engine = get_engine(url)
    refresh(engine, oid)
    for state in (None, TrialStateName.COMPLETE, TrialStateName.PRUNED, TrialStateName.FAIL):
        chosen = [t for t in every if state is None or t.state.name.lower() == state.value]
        for descending in (False, True):
            valued = sorted((t for t in chosen if t.values), key=lambda t: t.number)
            valued.sort(key=lambda t: t.values[0], reverse=descending)  # stable: ties by number
            by_value = valued + [t for t in chosen if not t.values]
            by_number = sorted(chosen, key=lambda t: t.number, reverse=descending)
            for offset, limit in ((0, 25), (37, 50), (len(chosen) - 10, 50)):
                with engine.connect() as conn:
                    got_value = page_trial_ids(conn, oid, state, True, descending, offset, limit)
                    got_number = page_trial_ids(conn, oid, state, False, descending, offset, limit)
                want_value = [t._trial_id for t in by_value[offset : offset + limit]]
                want_number = [t._trial_id for t in by_number[offset : offset + limit]]
                assert got_value == want_value, (state, descending, offset)
                assert got_number == want_number, (state, descending, offset)
    best = optuna.load_study(study_name=row.name, storage=storage).best_trial
    tally = refresh(engine, oid)
    assert tally.best_value == best.value
    assert tally.counts.as_dict() == _direct_counts(url, oid)


def test_pareto_front_matches_optunas(url):
    study_id = build_study(
        url,
        "two-objectives",
        300,
        seed=5,
        objective={"metric": "val_accuracy", "secondary": {"metric": "train_seconds"}},
        pruner={"name": "none"},
    )
    row = get_study_row(get_engine(url), study_id)
    assert spec_of(row).is_multi_objective
    storage = get_storage(url)
    oid = row.optuna_study_id
    refresh(get_engine(url), oid)
    with get_engine(url).connect() as conn:
        front = set(front_trial_ids(conn, oid))
    optunas = {
        t._trial_id for t in optuna.load_study(study_name=row.name, storage=storage).best_trials
    }
    assert front == optunas and len(front) >= 2
    with get_engine(url).connect() as conn:
        assert set(trials_by_id(conn, front)) == front


def test_deleted_study_leaves_no_summary(url):
    spec = scale_spec("deleted", 5, sampler="random")
    engine, storage = get_engine(url), get_storage(url)
    row = create_study(engine, storage, spec)
    study = optuna.load_study(study_name=row.name, storage=storage)
    study.tell(study.ask(), 0.3)
    assert refresh(engine, row.optuna_study_id).counts.complete == 1
    delete_study(engine, storage, row.id, grace_period_s=5)
    with engine.connect() as conn:
        left = conn.execute(
            sa.text("SELECT count(*) FROM bnsweep_trial_summaries WHERE optuna_study_id = :o"),
            {"o": row.optuna_study_id},
        ).scalar_one()
    assert left == 0
