"""Studies of many finished trials written in bulk, for the scale tests and `bench/bench_scale.py`.

A trial here is shaped like one a bnsweep worker records (the five BN parameters, one value, an
intermediate value per epoch, a heartbeat row, and the user attrs ``search/objective.py`` writes,
``train_config`` included, ~2.5 kB of JSON in all), but is written with one multi-row INSERT per
Optuna table instead of a trial at a time through ``study.add_trials``: 100,000 trials take about
a minute on PostgreSQL instead of hours. Mix: 80% ok, 5% diverged (COMPLETE at 0.0), 12% pruned
(PRUNED with the last intermediate value, as Optuna records it), 3% out of memory (FAIL).
"""

from __future__ import annotations

import json
import math
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import optuna
import sqlalchemy as sa
from optuna.distributions import distribution_to_json
from optuna.trial import TrialState

from search.limits import Limits
from search.optuna_map import distributions
from search.spec import StudySpec
from search.storage import (
    TRIAL_HEARTBEATS,
    TRIAL_INTERMEDIATE_VALUES,
    TRIAL_PARAMS,
    TRIAL_USER_ATTRS,
    TRIAL_VALUES,
    TRIALS,
    get_engine,
    get_storage,
)
from search.studies import create_study, get_study_row
from search.validate import parse_spec

EPOCHS = 10
CHUNK = 2_000  # trials per transaction


def scale_spec(name: str, n_trials: int, *, sampler: str = "tpe", **overrides: Any) -> StudySpec:
    """The README's MNIST-1D study (five BN dimensions, median pruner) with ``n_trials``."""
    data: dict[str, Any] = {
        "name": name,
        "dataset": {"name": "mnist1d", "params": {"num_samples": 4000, "seed": 42}},
        "model": {"name": "cnn1d", "params": {"channels": 32}},
        "search_space": {
            "batch_size": {"choices": [32, 64, 128, 256]},
            "learning_rate": {"low": 0.003, "high": 1.0, "log": True},
            "momentum": {"low": 0.8, "high": 0.95},
            "bn_momentum": {"low": 0.01, "high": 0.5, "log": True},
            "bn_placement": {"choices": ["before_activation", "after_activation", "none"]},
        },
        "training": {"epochs": EPOCHS, "schedule": "cosine"},
        "objective": {"metric": "val_accuracy"},
        "sampler": {"name": sampler, "seed": 0},
        "pruner": {"name": "median", "options": {"n_startup_trials": 5, "n_warmup_steps": 2}},
        "budget": {"n_trials": n_trials, "max_parallel": 4},
        **overrides,
    }
    return parse_spec(data, Limits(max_n_trials=10**9))


def build_study(
    url: str, name: str, n_finished: int, *, seed: int = 0, **spec_overrides: Any
) -> int:
    """Create study ``name`` (``n_trials`` = ``n_finished``) with ``n_finished`` finished trials;
    return its bnsweep id. The database must be migrated."""
    spec = scale_spec(name, n_finished, **spec_overrides)
    engine = get_engine(url)
    row = create_study(engine, get_storage(url), spec)
    add_finished_trials(url, row.optuna_study_id, spec, n_finished, seed=seed)
    return row.id


def add_finished_trials(
    url: str, optuna_study_id: int, spec: StudySpec, n: int, *, seed: int = 0
) -> None:
    """Append ``n`` finished trials to an Optuna study, in bulk (numbers continue the study's)."""
    rng = random.Random(seed)
    dists = distributions(spec)
    dist_json = {k: distribution_to_json(d) for k, d in dists.items()}
    engine = get_engine(url)
    with engine.connect() as conn:
        first = conn.execute(
            sa.select(sa.func.count())
            .select_from(TRIALS)
            .where(TRIALS.c.study_id == optuna_study_id)
        ).scalar_one()
    start = datetime(2026, 1, 1, tzinfo=UTC).replace(tzinfo=None) + timedelta(seconds=first * 30)
    for lo in range(0, n, CHUNK):
        trials = [
            _trial(rng, spec, dists, first + i, start + timedelta(seconds=30 * (i - 0)))
            for i in range(lo, min(n, lo + CHUNK))
        ]
        with engine.begin() as conn:
            ids = (
                conn.execute(
                    sa.insert(TRIALS).returning(TRIALS.c.trial_id, sort_by_parameter_order=True),
                    [
                        {
                            "number": t["number"],
                            "study_id": optuna_study_id,
                            "state": t["state"],
                            "datetime_start": t["start"],
                            "datetime_complete": t["end"],
                        }
                        for t in trials
                    ],
                )
                .scalars()
                .all()
            )
            params, values, attrs, steps, beats = [], [], [], [], []
            for trial_id, t in zip(ids, trials, strict=True):
                for key, value in t["params"].items():
                    params.append(
                        {
                            "trial_id": trial_id,
                            "param_name": key,
                            "param_value": dists[key].to_internal_repr(value),
                            "distribution_json": dist_json[key],
                        }
                    )
                if t["value"] is not None:
                    values.append(_value(trial_id, 0, t["value"]))
                    if spec.is_multi_objective and t["state"] == "COMPLETE":
                        values.append(_value(trial_id, 1, t["attrs"]["train_seconds"]))
                attrs.extend(
                    {"trial_id": trial_id, "key": k, "value_json": json.dumps(v)}
                    for k, v in t["attrs"].items()
                )
                steps.extend(
                    {
                        "trial_id": trial_id,
                        "step": step,
                        "intermediate_value": v,
                        "intermediate_value_type": "FINITE",
                    }
                    for step, v in enumerate(t["curve"], start=1)
                )
                beats.append({"trial_id": trial_id, "heartbeat": t["end"]})
            for table, rows in (
                (TRIAL_PARAMS, params),
                (TRIAL_VALUES, values),
                (TRIAL_USER_ATTRS, attrs),
                (TRIAL_INTERMEDIATE_VALUES, steps),
                (TRIAL_HEARTBEATS, beats),
            ):
                if rows:
                    conn.execute(sa.insert(table), rows)


def _value(trial_id: int, objective: int, value: float) -> dict[str, Any]:
    return {"trial_id": trial_id, "objective": objective, "value": value, "value_type": "FINITE"}


def _trial(
    rng: random.Random,
    spec: StudySpec,
    dists: dict[str, Any],
    number: int,
    start: datetime,
) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for key, dist in dists.items():
        if isinstance(dist, optuna.distributions.CategoricalDistribution):
            params[key] = rng.choice(dist.choices)
        elif dist.log:
            params[key] = math.exp(rng.uniform(math.log(dist.low), math.log(dist.high)))
        else:
            params[key] = rng.uniform(dist.low, dist.high)
    roll = rng.random()
    status = (
        "ok" if roll < 0.80 else "diverged" if roll < 0.85 else "pruned" if roll < 0.97 else "oom"
    )
    if status == "pruned" and spec.is_multi_objective:  # no pruner takes two objectives
        status = "ok"
    final = min(0.99, max(0.1, rng.gauss(0.85, 0.08)))
    epochs = EPOCHS if status in ("ok", "diverged") else 3 if status == "pruned" else 0
    curve = [final * (1 - 0.5 ** (e + 1)) for e in range(epochs)]
    history = [
        {
            "epoch": e + 1,
            "train_loss": 2.3 * 0.7**e,
            "val_loss": 2.3 * 0.72**e,
            "val_accuracy": curve[e],
        }
        for e in range(epochs)
    ]
    seconds = 30 * epochs / EPOCHS + rng.random()
    config = spec.train_config(params, device="cpu").to_dict()
    state, value = TrialState.COMPLETE, curve[-1] if curve else None
    reason = ""
    if status == "diverged":
        value, reason = 0.0, "loss is not finite at epoch 4"
    elif status == "pruned":
        state = TrialState.PRUNED
    elif status == "oom":
        state, value, reason = (
            TrialState.FAIL,
            None,
            f"out of memory at batch size {params['batch_size']}",
        )
    attrs = {
        "bnsweep_version": "0.1.0",
        "torch_version": "2.13.0+cpu",
        "optuna_version": optuna.__version__,
        "device": "cpu",
        "host": "bench-host",
        "worker_id": f"bench-host:{1000 + number % 4}:0000beef",
        "seed": 0,
        "status": status,
        "reason": reason,
        "epochs_run": epochs,
        "train_seconds": seconds,
        "samples_per_second": 3600 * epochs / seconds if epochs else None,
        "val_accuracy": curve[-1] if curve else None,
        "val_loss": history[-1]["val_loss"] if history else None,
        "test_accuracy": final - 0.01 if curve else None,
        "test_accuracy_batch_stats": final - 0.03 if curve else None,
        "test_loss": 0.4 if curve else None,
        "num_classes": 10,
        "history": history,
        "train_config": config,
    }
    return {
        "number": number,
        "state": state.name,
        "start": start,
        "end": start + timedelta(seconds=seconds),
        "params": params,
        "value": value,
        "curve": curve,
        "attrs": attrs,
    }


def study_row(url: str, study_id: int) -> Any:
    return get_study_row(get_engine(url), study_id)
