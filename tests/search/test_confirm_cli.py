"""`bnsweep confirm --storage` on a local SQLite file: plans the confirmation study, runs it with
local workers and prints the combined report; `bnsweep report --storage` prints it again.
A fused group takes only planned trials (no sampler trial while planned ones wait).

Real SQLite, a real worker in this process, real (tiny) training.
"""

from __future__ import annotations

import json

import optuna
import pytest

from search.runner import run_study
from search.storage import get_engine, get_storage
from search.studies import get_study_row
from service.cli import main
from tests.support import make_study, tiny_spec

SPACE = {
    "batch_size": 32,
    "bn_placement": "none",  # no BN at all: the shortest plan (no probe, no precise BN)
    "learning_rate": {"low": 0.01, "high": 0.3, "log": True},
    "init": {"choices": ["kaiming", "normal"]},
}


def test_confirm_with_storage_runs_the_plan_and_prints_the_combined_report(
    sqlite_url, migrate, capsys
) -> None:
    migrate(sqlite_url)
    spec = tiny_spec("local", search_space=SPACE, budget={"n_trials": 3})
    run_study(sqlite_url, spec, device="cpu", poll_s=0.1)
    capsys.readouterr()
    main(["confirm", "local", "--storage", sqlite_url, "--lr-offsets=-0.5,0,0.5", "--fuse", "8"])
    out = capsys.readouterr().out
    assert "confirmation runs: local-confirm (completed)" in out
    assert "confirmation" in out and "initialization" in out
    row = get_study_row(get_engine(sqlite_url), "local-confirm")
    assert (row.kind, row.parent_id, row.status) == ("confirmation", 1, "completed")
    trials = optuna.load_study(study_name=row.name, storage=get_storage(sqlite_url)).trials
    assert all("plan" in t.user_attrs for t in trials)  # nothing off the plan
    main(["report", "local", "--storage", sqlite_url, "--json"])
    report = json.loads(capsys.readouterr().out)
    assert report["confirmation"]["study_name"] == "local-confirm"
    assert report["findings"][0]["source"] == "confirmation"


def test_lr_offsets_without_zero_is_a_usage_error(capsys) -> None:
    with pytest.raises(SystemExit) as done:
        main(["confirm", "x", "--storage", "sqlite://", "--lr-offsets", "1,2"])
    assert done.value.code == 2
    assert "--lr-offsets: needs 0" in capsys.readouterr().err


def test_a_fused_group_takes_waiting_trials_only_while_any_wait(sqlite_url, migrate) -> None:
    """Enqueued points of two shapes and a budget of exactly those points: groups of up to 4
    take the waiting points of their shape and never a sampler trial (it would take the
    budget of a point that waits)."""
    migrate(sqlite_url)
    points = [{"batch_size": 32, "learning_rate": lr} for lr in (0.01, 0.02, 0.03)]
    points += [{"batch_size": 64, "learning_rate": lr} for lr in (0.04, 0.05)]
    spec = tiny_spec(
        "waiting-first",
        search_space={
            "batch_size": {"choices": [32, 64]},
            "learning_rate": {"low": 0.001, "high": 0.1, "log": True},
            "bn_placement": "before_activation",
        },
        budget={"n_trials": 5},
        execution={"fuse": 4},
        enqueue=points,
    )
    make_study(sqlite_url, spec)
    run_study(sqlite_url, spec, device="cpu", poll_s=0.1)
    trials = optuna.load_study(study_name=spec.name, storage=get_storage(sqlite_url)).trials
    assert sorted(t.params["learning_rate"] for t in trials) == [0.01, 0.02, 0.03, 0.04, 0.05]
    assert all(t.user_attrs.get("enqueued") for t in trials)
    assert sorted(t.user_attrs["fuse_size"] for t in trials) == [2, 2, 3, 3, 3]
