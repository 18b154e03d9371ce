"""Workers: exact budgets, pruning, cancel, retries, clean SIGTERM (racing and killed workers:
tests/reliability/).

Real databases (a SQLite file; the local PostgreSQL where marked), real worker processes, real
(tiny) training.
"""

from __future__ import annotations

import re
import signal
import threading
import time

import optuna
import pytest
import torch
from optuna.trial import TrialState

from models.data import clear_cache
from search.results import best_result, best_trials
from search.runner import run_study
from search.states import StudyStatus
from search.storage import get_engine, get_storage
from search.studies import cancel_study, get_study_row
from search.worker import Worker, WorkerOptions, slot_devices
from service.cli import main
from tests.support import (
    load_test_plugins,
    make_study,
    study_counts,
    tiny_spec,
    wait_for,
)

SLEEPY = {"name": "sleepy_mlp", "params": {"delay_s": 0.05}}


def trials_of(url: str, name: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=get_storage(url)).get_trials()


def run_in_process(url: str, name: str) -> int:
    """One worker in this process (main thread), until the study ends."""
    options = WorkerOptions(url, device="cpu", study_name=name, exit_when_done=True, poll_s=0.1)
    return Worker(options).run()


def assert_exact(url: str, name: str, n_trials: int) -> None:
    counts = study_counts(url, name)
    assert counts.finished == n_trials
    assert counts.running == 0
    assert get_study_row(get_engine(url), name).status == StudyStatus.COMPLETED
    numbers = [t.number for t in trials_of(url, name)]
    assert len(numbers) == len(set(numbers))


# --- budgets ------------------------------------------------------------------------------------


def test_sqlite_study_with_two_worker_processes_ends_with_exactly_n_trials(sqlite_url, migrate):
    migrate(sqlite_url)
    spec = tiny_spec("two-workers", budget={"n_trials": 5})
    final = run_study(sqlite_url, spec, n_workers=2, device="cpu", poll_s=0.2)
    assert final.status is StudyStatus.COMPLETED
    assert_exact(sqlite_url, spec.name, 5)
    study = optuna.load_study(study_name=spec.name, storage=get_storage(sqlite_url))
    assert 0.0 <= study.best_value <= 1.0
    attrs = study.best_trial.user_attrs
    assert attrs["status"] == "ok" and attrs["device"] == "cpu"
    assert {"torch_version", "bnsweep_version", "worker_id", "seed", "test_accuracy"} <= set(attrs)


@pytest.mark.postgres
def test_postgres_study_with_four_workers_ends_with_exactly_n_trials(pg_url, migrate, workers):
    migrate(pg_url)
    spec = tiny_spec("four-workers", budget={"n_trials": 8})
    make_study(pg_url, spec)
    workers.start(pg_url, "--study", spec.name, "--idle-exit", "2", n=4)
    workers.wait(timeout=180)
    assert_exact(pg_url, spec.name, 8)


# --- pruning, cancel, faults --------------------------------------------------------------------


@pytest.mark.parametrize(
    "pruner",
    [
        {"name": "median", "options": {"n_startup_trials": 2, "n_warmup_steps": 0}},
        {"name": "hyperband", "options": {"min_resource": 1, "reduction_factor": 2}},
    ],
)
def test_pruner_prunes_trials_in_a_small_study(sqlite_url, migrate, pruner):
    migrate(sqlite_url)
    spec = tiny_spec(
        f"pruned-{pruner['name']}",
        search_space={
            "learning_rate": {"choices": [1e-5, 0.2]},
            "bn_placement": "none",
            "batch_size": 32,
        },
        training={"epochs": 6},
        pruner=pruner,
        budget={"n_trials": 12},
    )
    make_study(sqlite_url, spec)
    run_in_process(sqlite_url, spec.name)
    states = [t.state for t in trials_of(sqlite_url, spec.name)]
    assert TrialState.PRUNED in states
    assert_exact(sqlite_url, spec.name, 12)
    pruned = [t for t in trials_of(sqlite_url, spec.name) if t.state is TrialState.PRUNED]
    assert all(t.user_attrs["status"] == "pruned" for t in pruned)


def test_cancel_stops_a_running_study_at_the_next_epoch(sqlite_url, migrate, workers):
    load_test_plugins()
    migrate(sqlite_url)
    spec = tiny_spec("cancelled", model=SLEEPY, training={"epochs": 200})
    make_study(sqlite_url, spec)
    (proc,) = workers.start(sqlite_url, "--study", spec.name, "--idle-exit", "1")
    wait_for(lambda: study_counts(sqlite_url, spec.name).running == 1, timeout=60)
    cancel_study(get_engine(sqlite_url), spec.name)
    proc.wait(timeout=30)  # the trial stops at its next epoch, then the worker idles out
    (trial,) = trials_of(sqlite_url, spec.name)
    assert trial.state is TrialState.FAIL
    assert trial.user_attrs["status"] == "cancelled"
    assert trial.user_attrs["epochs_run"] < 200
    assert get_study_row(get_engine(sqlite_url), spec.name).status == StudyStatus.CANCELLED


def test_sigterm_leaves_nothing_running_and_the_trial_is_retried(sqlite_url, migrate, workers):
    load_test_plugins()
    migrate(sqlite_url)
    spec = tiny_spec("sigterm", model=SLEEPY, training={"epochs": 8}, budget={"n_trials": 1})
    make_study(sqlite_url, spec)
    (proc,) = workers.start(sqlite_url, "--study", spec.name)
    wait_for(lambda: study_counts(sqlite_url, spec.name).running == 1, timeout=60)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    (stopped, retry) = trials_of(sqlite_url, spec.name)
    assert stopped.state is TrialState.FAIL
    assert stopped.user_attrs["status"] == "interrupted"
    assert "SIGTERM" in stopped.user_attrs["reason"]
    assert retry.state is TrialState.WAITING
    assert retry.system_attrs["failed_trial"] == stopped.number
    assert retry.params == stopped.params
    # A new worker picks the retry up and finishes the study.
    (proc2,) = workers.start(sqlite_url, "--study", spec.name, "--idle-exit", "1")
    proc2.wait(timeout=120)
    assert_exact(sqlite_url, spec.name, 1)
    assert trials_of(sqlite_url, spec.name)[1].state is TrialState.COMPLETE


def test_oom_trials_fail_with_their_reason_and_the_worker_goes_on(sqlite_url, migrate):
    load_test_plugins()
    migrate(sqlite_url)
    spec = tiny_spec("oom", model={"name": "oom_mlp"}, budget={"n_trials": 2, "max_failed": 1})
    make_study(sqlite_url, spec)
    assert run_in_process(sqlite_url, spec.name) == 2
    trials = trials_of(sqlite_url, spec.name)
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.FAIL]
    assert all(t.user_attrs["status"] == "oom" for t in trials)
    assert all("batch" in t.user_attrs["reason"] for t in trials)
    row = get_study_row(get_engine(sqlite_url), spec.name)
    assert row.status == StudyStatus.FAILED and "max_failed=1" in row.status_reason


def test_diverged_trials_complete_with_the_defined_value(sqlite_url, migrate):
    migrate(sqlite_url)
    spec = tiny_spec(
        "diverged",
        search_space={
            "learning_rate": 1000.0,
            "bn_placement": "none",
            "momentum": 0.9,
            "batch_size": 32,
        },
        budget={"n_trials": 1},
    )
    make_study(sqlite_url, spec)
    run_in_process(sqlite_url, spec.name)
    (trial,) = trials_of(sqlite_url, spec.name)
    assert trial.state is TrialState.COMPLETE
    assert trial.value == 0.0
    assert trial.user_attrs["status"] == "diverged"
    assert "epoch" in trial.user_attrs["reason"]


def test_worker_in_a_thread_does_not_touch_signal_handlers(sqlite_url, migrate):
    migrate(sqlite_url)
    spec = tiny_spec("threaded", budget={"n_trials": 1})
    make_study(sqlite_url, spec)
    before = signal.getsignal(signal.SIGTERM)
    thread = threading.Thread(target=run_in_process, args=(sqlite_url, spec.name))
    thread.start()
    thread.join(timeout=120)
    assert signal.getsignal(signal.SIGTERM) is before
    assert_exact(sqlite_url, spec.name, 1)


def test_dataset_is_built_once_per_worker_across_trials(sqlite_url, migrate):
    load_test_plugins()
    from bnsweep_testplugins import BUILDS

    migrate(sqlite_url)
    spec = tiny_spec("cached-data", dataset={"name": "counted_synthetic"}, budget={"n_trials": 3})
    make_study(sqlite_url, spec)
    clear_cache()  # this process may have built it for an earlier test: start from none
    before = BUILDS["counted_synthetic"]
    run_in_process(sqlite_url, spec.name)
    assert BUILDS["counted_synthetic"] - before == 1  # built by the first trial, then reused
    assert_exact(sqlite_url, spec.name, 3)


def test_trials_per_device_runs_trials_side_by_side_and_stops_cleanly(sqlite_url, migrate, workers):
    load_test_plugins()
    migrate(sqlite_url)
    spec = tiny_spec("packed", model=SLEEPY, training={"epochs": 40}, budget={"n_trials": 4})
    make_study(sqlite_url, spec)
    (proc,) = workers.start(sqlite_url, "--study", spec.name, "--trials-per-device", "2")
    wait_for(lambda: study_counts(sqlite_url, spec.name).running == 2, timeout=90)
    proc.send_signal(signal.SIGTERM)  # the parent forwards it to both slots
    assert proc.wait(timeout=30) == 0
    counts = study_counts(sqlite_url, spec.name)
    assert counts.running == 0
    assert counts.fail == 2 and counts.waiting == 2  # both interrupted trials queued for retry


def test_timeout_stops_new_trials_and_completes_the_study(sqlite_url, migrate):
    load_test_plugins()
    migrate(sqlite_url)
    spec = tiny_spec(
        "timeout",
        model={"name": "sleepy_mlp", "params": {"delay_s": 0.02}},
        budget={"n_trials": 1000, "timeout_seconds": 2},
    )
    make_study(sqlite_url, spec)
    started = time.monotonic()
    run_in_process(sqlite_url, spec.name)
    row = get_study_row(get_engine(sqlite_url), spec.name)
    assert row.status == StudyStatus.COMPLETED and row.status_reason == "timeout reached"
    counts = study_counts(sqlite_url, spec.name)
    assert 1 <= counts.finished < 1000 and counts.running == 0
    assert time.monotonic() - started < 30


@pytest.mark.parametrize(
    ("gpus", "per_device", "expected"),
    [
        (None, 1, ["cpu"]),
        (None, 3, ["cpu", "cpu", "cpu"]),
        ("0,1", 2, ["cuda:0", "cuda:0", "cuda:1", "cuda:1"]),
    ],
)
def test_slot_devices_one_per_gpu_times_trials_per_device(gpus, per_device, expected):
    assert slot_devices("cpu", gpus, per_device, gpu_count=2) == expected


@pytest.mark.parametrize(
    ("gpus", "message"),
    [
        ("all", "no GPU found"),
        ("2", "no GPU 2 on this machine (2 found)"),
        ("a,b", "expected 'all' or GPU indices like 0,1; got 'a,b'"),
    ],
)
def test_slot_devices_refuses_gpus_this_machine_lacks(gpus, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        slot_devices("cpu", gpus, 1, gpu_count=0 if gpus == "all" else 2)


def test_gpus_all_without_a_gpu_is_a_usage_error(sqlite_url, capsys):
    with pytest.raises(SystemExit) as info:
        main(["worker", "--storage", sqlite_url, "--gpus", "all"])
    assert info.value.code == 2
    assert capsys.readouterr().err.strip() == "error: --gpus: no GPU found"


def test_grid_study_covers_every_point_once_and_completes(sqlite_url, migrate):
    migrate(sqlite_url)
    spec = tiny_spec(
        "grid",
        sampler={"name": "grid", "seed": 0},
        search_space={
            "batch_size": {"choices": [32, 64]},
            "learning_rate": 0.1,
            "momentum": 0.9,
            "bn_momentum": 0.1,
            "bn_placement": {"choices": ["before_activation", "none"]},
        },
        budget={"n_trials": 4},
    )
    make_study(sqlite_url, spec)
    assert run_in_process(sqlite_url, spec.name) == 4
    assert_exact(sqlite_url, spec.name, 4)
    points = {tuple(sorted(t.params.items())) for t in trials_of(sqlite_url, spec.name)}
    assert len(points) == 4


def test_diverged_trial_is_never_on_the_pareto_front(sqlite_url, migrate):
    migrate(sqlite_url)
    spec = tiny_spec(
        "pareto",
        objective={"metric": "val_accuracy", "secondary": {"metric": "train_seconds"}},
        sampler={"name": "grid", "seed": 0},
        search_space={
            "learning_rate": {"choices": [1000.0, 0.1]},
            "bn_placement": "none",
            "momentum": 0.9,
            "batch_size": 32,
            "bn_momentum": 0.1,
        },
        budget={"n_trials": 2},
    )
    make_study(sqlite_url, spec)
    run_in_process(sqlite_url, spec.name)
    study = optuna.load_study(study_name=spec.name, storage=get_storage(sqlite_url))
    diverged = [t for t in study.trials if t.user_attrs["status"] == "diverged"]
    assert len(diverged) == 1
    assert diverged[0].values[1] > max(t.values[1] for t in study.trials if t not in diverged)
    summary = best_result(spec, best_trials(study))
    assert summary is not None and summary.params["learning_rate"] == 0.1
    front = [t.number for t in summary.pareto_front or []] + [summary.trial_number]
    assert diverged[0].number not in front


def test_a_study_whose_sampler_fails_to_sample_fails_without_killing_the_worker(
    sqlite_url, migrate
):
    migrate(sqlite_url)
    spec = tiny_spec(
        "bad-sampler",
        sampler={
            "name": "tpe",
            "seed": 0,
            "options": {"n_ei_candidates": "abc", "n_startup_trials": 0},
        },
    )
    make_study(sqlite_url, spec)
    assert run_in_process(sqlite_url, spec.name) == 0  # returned: the worker survived
    row = get_study_row(get_engine(sqlite_url), spec.name)
    assert row.status == StudyStatus.FAILED
    assert row.status_reason.startswith("cannot start a trial: ")


def test_cpu_worker_uses_its_share_of_torch_threads(sqlite_url, migrate):
    migrate(sqlite_url)
    spec = tiny_spec("threads", budget={"n_trials": 1})
    make_study(sqlite_url, spec)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        options = WorkerOptions(
            sqlite_url,
            device="cpu",
            study_name=spec.name,
            exit_when_done=True,
            poll_s=0.1,
            cpu_threads=1,
        )
        Worker(options).run()
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
