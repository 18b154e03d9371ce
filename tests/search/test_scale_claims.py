"""Worker paths that do not grow with the study: claiming a slot, loading the study, adopting
orphans, failing stale trials, asking, telling and closing the slot, and the reaper's pass, cost
the same statements, rows and SQLite steps on a study of 2,000 finished trials as on one of 200
(random sampler: TPE reads every trial by design, which is Optuna's cost, not ours)."""

from __future__ import annotations

import random

import optuna
import pytest
from optuna.trial import TrialState

import migrations
from search.optuna_map import distributions, make_pruner, make_sampler
from search.storage import get_engine, get_storage, study_id_of, trial_id_of, worker_storage
from search.studies import (
    adopt_orphaned_trials,
    claim_slot,
    finish_slot,
    get_study_row,
    reap,
    set_slot_trial,
    spec_of,
)
from tests.bulk import _trial, build_study
from tests.dbmeter import Meter, Usage

SMALL, BIG = 200, 2_000


def optunas_numbering(statement: str) -> bool:
    """Optuna numbers a new trial by counting the study's earlier trials (RDBStorage.
    _create_new_trial): a count over an index that grows with the study, Optuna's own cost
    (docs/benchmarks.md has its figures). Everything else a worker does per trial must not grow."""
    return statement.startswith("SELECT count(trials.trial_id)") and "trial_id <" in statement


@pytest.fixture(scope="module")
def studies(db_url: str) -> dict[int, int]:
    migrations.upgrade(db_url)
    budget = {"n_trials": BIG + 100, "max_parallel": 4}
    return {
        n: build_study(db_url, f"claims-{n}", n, seed=n, sampler="random", budget=budget)
        for n in (SMALL, BIG)
    }


def _one_trial(url: str, study_id: int, cache: optuna.storages.BaseStorage) -> None:
    """What a worker does for one trial but train, in its order (search/worker.py)."""
    engine, storage = get_engine(url), get_storage(url)
    row = get_study_row(engine, study_id)
    spec = spec_of(row)
    claim = claim_slot(engine, "meter", [study_id], 30)
    assert claim is not None
    study = optuna.load_study(
        study_name=row.name,
        storage=cache,
        sampler=make_sampler(spec, slot_id=claim.slot_id),
        pruner=make_pruner(spec),
    )
    adopt_orphaned_trials(engine, study_id, study_id_of(study), claim.slot_id)
    optuna.storages.fail_stale_trials(study)
    trial = study.ask(fixed_distributions=distributions(spec))
    storage.record_heartbeat(trial_id_of(trial))
    set_slot_trial(engine, claim.slot_id, trial.number)
    attrs = _trial(random.Random(0), spec, distributions(spec), 0, trial.datetime_start)["attrs"]
    for key, value in attrs.items():
        cache.set_trial_user_attr(trial_id_of(trial), key, value)
    study.tell(trial, [0.5], state=TrialState.COMPLETE)
    finish_slot(engine, claim.slot_id, TrialState.COMPLETE.name)


def test_a_workers_trial_costs_the_same_at_2000_trials_as_at_200(db_url, studies):
    meter = Meter([get_engine(db_url), get_storage(db_url).engine], ignore=optunas_numbering)
    used: dict[int, Usage] = {}
    for n, study_id in studies.items():
        cache = worker_storage(get_storage(db_url))
        _one_trial(db_url, study_id, cache)  # the first: summaries synced, the cache filled
        meter.reset()
        _one_trial(db_url, study_id, cache)
        used[n] = meter.take()
    assert used[BIG].within(used[SMALL]), used


def test_the_reapers_pass_costs_the_same_at_2000_trials_as_at_200(db_url, studies):
    meter = Meter([get_engine(db_url), get_storage(db_url).engine])
    engine, storage = get_engine(db_url), get_storage(db_url)
    used: dict[int, Usage] = {}
    for n, study_id in studies.items():
        other = next(s for s in studies.values() if s != study_id)
        with engine.begin() as conn:  # only this study is active while the reaper runs
            conn.exec_driver_sql(
                "UPDATE bnsweep_studies SET status = 'paused' WHERE id = ?"
                if engine.dialect.name == "sqlite"
                else "UPDATE bnsweep_studies SET status = 'paused' WHERE id = %s",
                (other,),
            )
            conn.exec_driver_sql(
                "UPDATE bnsweep_studies SET status = 'running' WHERE id = ?"
                if engine.dialect.name == "sqlite"
                else "UPDATE bnsweep_studies SET status = 'running' WHERE id = %s",
                (study_id,),
            )
        reap(engine, storage, 30)
        meter.reset()
        reap(engine, storage, 30)
        used[n] = meter.take()
    assert used[BIG].within(used[SMALL]), used
