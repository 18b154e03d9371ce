"""Objective: spec + Optuna trial → TrainConfig → trainer → what to tell Optuna.

Outcome policy (one place, applied by every worker):
- ``ok``       → COMPLETE with the objective value(s).
- ``pruned``   → PRUNED (the pruner said so; Optuna keeps the last reported value).
- ``diverged`` → COMPLETE with the metric's *diverged value* (accuracy 0.0, samples/s 0.0, a loss of
  ten times chance level, ``DIVERGED_SECONDS`` of training time), so a diverged trial is
  never best nor on a Pareto front while any trial trained, samplers learn to avoid the region, and
  the trial counts toward ``n_trials``; ``status=diverged`` and the reason are user attrs.
- ``oom``      → FAIL with the reason (the config does not fit this device; no retry).
- cancelled    → FAIL with reason "study cancelled".
Every trial carries provenance user attrs (versions, device, seed, worker).
"""

from __future__ import annotations

import math
import platform
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import version
from typing import Any

import optuna
import torch
from optuna.trial import TrialState
from sqlalchemy.exc import SQLAlchemyError

from models.config import EpochMetrics, TrainConfig, TrainResult, TrainStatus
from models.train import train
from search.spec import PER_EPOCH_METRICS, Metric, StudySpec
from search.states import TrialStatus

CANCELLED_REASON = "study cancelled"
# A diverged run never reaches a trained model: its time is "never" (1e9 s, ~32 years), kept
# finite so that it stays valid JSON and a usable value for every sampler.
DIVERGED_SECONDS = 1e9


@dataclass(frozen=True)
class TrialOutcome:
    """What the worker tells Optuna about one trial."""

    state: TrialState
    values: list[float] | None
    user_attrs: dict[str, Any] = field(default_factory=dict)


def metric_value(metric: Metric, result: TrainResult) -> float:
    """The value of ``metric`` for a finished training run."""
    match metric:
        case Metric.TRAIN_SECONDS:
            return result.train_s
        case Metric.SAMPLES_PER_SECOND:
            return sum(e.samples_per_s for e in result.epochs) / len(result.epochs)
        case _:
            return _epoch_value(metric, result.epochs)


def diverged_value(metric: Metric, result: TrainResult) -> float:
    """The defined value of a diverged run: worse than any run that trained."""
    if metric in (Metric.VAL_ACCURACY, Metric.BEST_VAL_ACCURACY, Metric.SAMPLES_PER_SECOND):
        return 0.0
    if metric is Metric.TRAIN_SECONDS:  # the real time would make it the fastest trial
        return DIVERGED_SECONDS
    return 10 * math.log(max(result.num_classes, 2))  # ten times the loss of a uniform guess


def _epoch_value(metric: Metric, history: Sequence[EpochMetrics]) -> float:
    """A per-epoch metric after the epochs in ``history``."""
    last = history[-1]
    match metric:
        case Metric.BEST_VAL_ACCURACY:
            return max(e.val_accuracy for e in history)
        case Metric.VAL_LOSS:
            return last.val_loss
        case Metric.TRAIN_LOSS:
            return last.train_loss
        case _:
            return last.val_accuracy


def provenance(config: TrainConfig, device: str, worker_id: str) -> dict[str, Any]:
    """Where and with what a trial ran."""
    return {
        "bnsweep_version": version("bnsweep"),
        "torch_version": torch.__version__,
        "optuna_version": optuna.__version__,
        "device": device,
        "host": platform.node(),
        "worker_id": worker_id,
        "seed": config.seed,
    }


def result_attrs(result: TrainResult) -> dict[str, Any]:
    """Trainer results as trial user attrs (JSON-safe: no NaN)."""

    def finite(x: float | None) -> float | None:
        return x if x is not None and math.isfinite(x) else None

    last = result.last
    return {
        "status": TrialStatus(result.status.value).value,
        "reason": result.reason,
        "epochs_run": result.epochs_run,
        "train_seconds": result.train_s,
        "samples_per_second": (
            sum(e.samples_per_s for e in result.epochs) / len(result.epochs) if last else None
        ),
        "val_accuracy": finite(last.val_accuracy) if last else None,
        "val_loss": finite(last.val_loss) if last else None,
        "test_accuracy": finite(result.test_accuracy),
        "test_accuracy_batch_stats": finite(result.test_accuracy_batch_stats),
        "test_loss": finite(result.test_loss),
        "num_classes": result.num_classes,
        # Per-epoch metrics for the analysis (pruned trials compared at the epoch they reached).
        "history": [
            {
                "epoch": e.epoch,
                "train_loss": finite(e.train_loss),
                "val_loss": finite(e.val_loss),
                "val_accuracy": finite(e.val_accuracy),
            }
            for e in result.epochs
        ],
    }


def run_trial(
    spec: StudySpec,
    trial: optuna.Trial,
    device: str,
    worker_id: str,
    should_cancel: Callable[[], bool] = lambda: False,
) -> TrialOutcome:
    """Train the trial's configuration and decide what to tell Optuna. Never raises for a fault."""
    config = spec.train_config(trial.params, device)
    primary = spec.objective.metric
    report = not spec.is_multi_objective and primary in PER_EPOCH_METRICS
    history: list[EpochMetrics] = []
    stopped_by: list[str] = []

    def on_epoch(metrics: EpochMetrics) -> bool:
        history.append(metrics)
        if should_cancel():
            stopped_by.append("cancel")
            return True
        if report:
            value = _epoch_value(primary, history)
            try:
                if math.isfinite(value):
                    trial.report(value, metrics.epoch)
                    if trial.should_prune():
                        stopped_by.append("pruner")
                        return True
            except (optuna.exceptions.StorageInternalError, SQLAlchemyError):
                pass  # a database blip skips one pruning decision; training goes on
        return False

    result = train(config, on_epoch=on_epoch)
    attrs = provenance(config, result.device, worker_id) | result_attrs(result)
    attrs["train_config"] = config.to_dict()
    match result.status:
        case TrainStatus.OK:
            values = [metric_value(t.metric, result) for t in spec.objective.targets]
            return TrialOutcome(TrialState.COMPLETE, values, attrs)
        case TrainStatus.DIVERGED:
            values = [diverged_value(t.metric, result) for t in spec.objective.targets]
            return TrialOutcome(TrialState.COMPLETE, values, attrs)
        case TrainStatus.PRUNED if stopped_by == ["cancel"]:
            attrs |= {"status": TrialStatus.CANCELLED.value, "reason": CANCELLED_REASON}
            return TrialOutcome(TrialState.FAIL, None, attrs)
        case TrainStatus.PRUNED:
            return TrialOutcome(TrialState.PRUNED, None, attrs)
        case _:  # OOM
            return TrialOutcome(TrialState.FAIL, None, attrs)
