"""Fused trials through the worker: each member is an ordinary Optuna trial (own pruning, own
outcome, ``fuse_group`` / ``fuse_size`` user attrs), members share the shaping settings, budgets
hold exactly, and fusing never changes a trial's result.

Real databases (SQLite and PostgreSQL), a real worker in this process, real (tiny) training.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import optuna
import pytest
import sqlalchemy as sa
from optuna.trial import TrialState

import migrations
from search.db import SlotRow
from search.storage import get_engine, get_storage
from search.studies import get_study_row
from search.worker import Worker, WorkerOptions
from tests.support import make_study, study_counts, tiny_spec

SPACE: dict[str, Any] = {
    "batch_size": {"choices": [32, 64]},
    "bn_placement": {"choices": ["before_activation", "none"]},
    "learning_rate": {"low": 0.01, "high": 0.3, "log": True},
    "bn_momentum": {"low": 0.05, "high": 0.5, "log": True},
}


@pytest.fixture(scope="module")
def url(db_url: str) -> str:
    migrations.upgrade(db_url)
    return db_url


def _run(url: str, name: str, fuse: int | None = None) -> int:
    options = WorkerOptions(
        url, device="cpu", study_name=name, exit_when_done=True, poll_s=0.1, fuse=fuse
    )
    return Worker(options).run()


def _trials(url: str, name: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=get_storage(url)).get_trials()


def test_a_fused_study_ends_with_exactly_n_trials_in_groups_that_share_their_shape(url):
    spec = tiny_spec(
        "fused-exact",
        search_space=SPACE,
        budget={"n_trials": 7},
        execution={"fuse": 3},
        sampler={"name": "tpe", "seed": 1},
    )
    make_study(url, spec)
    assert _run(url, spec.name) == 7
    counts = study_counts(url, spec.name)
    assert (counts.finished, counts.running, counts.fail, counts.waiting) == (7, 0, 0, 0)
    groups: dict[str, list[optuna.trial.FrozenTrial]] = defaultdict(list)
    for trial in _trials(url, spec.name):
        groups[trial.user_attrs["fuse_group"]].append(trial)
    assert sorted(len(g) for g in groups.values()) == [1, 3, 3]  # 3 + 3 + what was left
    for members in groups.values():
        assert {t.user_attrs["fuse_size"] for t in members} == {len(members)}
        shapes = {(t.params["batch_size"], t.params["bn_placement"]) for t in members}
        assert len(shapes) == 1  # shaping settings shared ...
        if len(members) > 1:  # ... the sampler chose the rest per member
            assert len({t.params["learning_rate"] for t in members}) == len(members)


def test_max_parallel_caps_the_group(url):
    spec = tiny_spec(
        "fused-capped",
        search_space=SPACE,
        budget={"n_trials": 4, "max_parallel": 2},
        execution={"fuse": 4},
    )
    study_id = make_study(url, spec)
    assert _run(url, spec.name) == 4
    assert {t.user_attrs["fuse_size"] for t in _trials(url, spec.name)} == {2}
    with get_engine(url).connect() as conn:
        slots = conn.execute(
            sa.select(SlotRow.claimed_at, SlotRow.finished_at).where(SlotRow.study_id == study_id)
        ).all()
    assert len(slots) == 4


def test_a_diverging_member_does_not_take_its_group_down(url):
    spec = tiny_spec(
        "fused-diverging",
        search_space={
            "batch_size": 32,
            "bn_placement": "none",
            "learning_rate": {"choices": [1000.0, 0.05]},
            "momentum": 0.9,
            "bn_momentum": 0.1,
        },
        budget={"n_trials": 2},
        execution={"fuse": 2},
        enqueue=[{"learning_rate": 1000.0}, {"learning_rate": 0.05}],
    )
    make_study(url, spec)
    _run(url, spec.name)
    by_lr = {t.params["learning_rate"]: t for t in _trials(url, spec.name)}
    assert by_lr[1000.0].user_attrs["status"] == "diverged"
    assert by_lr[0.05].user_attrs["status"] == "ok" and by_lr[0.05].state is TrialState.COMPLETE
    assert by_lr[0.05].user_attrs["fuse_size"] == 2


def test_fusing_never_changes_a_trials_result(url):
    """The same four configurations, trained one per model and four per model, give the same
    per-epoch values (within the fused executor's stated float tolerance)."""
    points = [{"learning_rate": lr, "bn_momentum": m} for lr in (0.02, 0.1) for m in (0.05, 0.3)]
    space = SPACE | {"batch_size": 32, "bn_placement": "before_activation", "momentum": 0.9}
    results = {}
    for fuse in (1, 4):
        spec = tiny_spec(
            f"fused-equal-{fuse}",
            search_space=space,
            budget={"n_trials": 4},
            execution={"fuse": fuse},
            enqueue=points,
        )
        make_study(url, spec)
        _run(url, spec.name)
        results[fuse] = {
            (t.params["learning_rate"], t.params["bn_momentum"]): t for t in _trials(url, spec.name)
        }
    assert {t.user_attrs.get("fuse_size") for t in results[4].values()} == {4}
    for key, alone in results[1].items():
        fused = results[4][key]
        assert fused.intermediate_values.keys() == alone.intermediate_values.keys()
        for epoch, value in alone.intermediate_values.items():
            # one validation sample either way (32 samples), as the executor's contract allows
            assert fused.intermediate_values[epoch] == pytest.approx(value, abs=1.01 / 32)
        for attr in ("val_loss", "test_accuracy", "test_accuracy_batch_stats"):
            assert fused.user_attrs[attr] == pytest.approx(
                alone.user_attrs[attr], rel=1e-3, abs=0.02
            )


def test_a_worker_option_overrides_the_spec(url):
    spec = tiny_spec(
        "fused-override", search_space=SPACE, budget={"n_trials": 2}, execution={"fuse": 2}
    )
    make_study(url, spec)
    _run(url, spec.name, fuse=1)
    assert {t.user_attrs["fuse_size"] for t in _trials(url, spec.name)} == {1}
    assert get_study_row(get_engine(url), spec.name).status == "completed"


def test_auto_leaves_a_model_based_sampler_ten_rounds_of_feedback(url):
    """``fuse: auto`` with TPE: groups of at most n_trials / 10, whatever size trains fastest (an
    MLP this small trains fastest at the largest size tried, 16 on a CPU)."""
    spec = tiny_spec(
        "fused-auto-tpe",
        search_space=SPACE,
        budget={"n_trials": 20},
        execution={"fuse": "auto"},
        sampler={"name": "tpe", "seed": 0},
    )
    make_study(url, spec)
    assert _run(url, spec.name) == 20
    sizes = [t.user_attrs["fuse_size"] for t in _trials(url, spec.name)]
    assert max(sizes) <= 2
