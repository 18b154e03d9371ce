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
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import optuna
import torch
from optuna.trial import TrialState
from sqlalchemy.exc import SQLAlchemyError

from models.config import EpochMetrics, TrainConfig, TrainResult, TrainStatus
from models.fused import train_fused
from search.spec import PER_EPOCH_METRICS, Metric, StudySpec
from search.states import TrialStatus

CANCELLED_REASON = "study cancelled"
STALE_REASON = "failed as stale by another worker while training (its retry is queued)"
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


def _bnsweep_version() -> str:
    try:
        return version("bnsweep")
    except PackageNotFoundError:  # a source checkout on PYTHONPATH, not installed
        return "unknown"


def provenance(config: TrainConfig, device: str, worker_id: str) -> dict[str, Any]:
    """Where and with what a trial ran."""
    return {
        "bnsweep_version": _bnsweep_version(),
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
        # bn_momentum_probe: [momentum, test accuracy with that momentum's running statistics]
        "test_accuracy_by_bn_momentum": [
            [momentum, accuracy] for momentum, accuracy in result.test_accuracy_by_bn_momentum
        ],
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


class _Watcher:
    """One trial's epoch callback: reports to Optuna, asks the pruner, notices a cancel; and,
    once training ended, what to tell Optuna about it."""

    def __init__(
        self, spec: StudySpec, trial: optuna.Trial, should_cancel: Callable[[], bool]
    ) -> None:
        self.spec = spec
        self.trial = trial
        self.should_cancel = should_cancel
        self.reports = not spec.is_multi_objective and spec.objective.metric in PER_EPOCH_METRICS
        # By epoch: after a fused group's out-of-memory retry, epochs may be seen again.
        self.history: dict[int, EpochMetrics] = {}
        self.stopped_by: TrialStatus | None = None  # why a callback stopped the run

    def on_epoch(self, metrics: EpochMetrics) -> bool:
        self.history[metrics.epoch] = metrics
        if self.should_cancel():
            self.stopped_by = TrialStatus.CANCELLED
            return True
        if not self.reports:
            return False
        epochs = [self.history[e] for e in sorted(self.history) if e <= metrics.epoch]
        value = _epoch_value(self.spec.objective.metric, epochs)
        try:
            if math.isfinite(value):
                self.trial.report(value, metrics.epoch)
                if self.trial.should_prune():
                    self.stopped_by = TrialStatus.PRUNED
                    return True
        except optuna.exceptions.UpdateFinishedTrialError:
            # Failed as stale by another worker (our heartbeats were late): its retry is queued;
            # stop training it, and leave the other members of a fused group alone.
            self.stopped_by = TrialStatus.STALE
            return True
        except (optuna.exceptions.StorageInternalError, SQLAlchemyError):
            pass  # a database blip skips one pruning decision; training goes on
        return False

    def outcome(self, config: TrainConfig, result: TrainResult, worker_id: str) -> TrialOutcome:
        attrs = provenance(config, result.device, worker_id) | result_attrs(result)
        attrs["train_config"] = config.to_dict()
        targets = self.spec.objective.targets
        match result.status:
            case TrainStatus.OK:
                values = [metric_value(t.metric, result) for t in targets]
                return TrialOutcome(TrialState.COMPLETE, values, attrs)
            case TrainStatus.DIVERGED:
                values = [diverged_value(t.metric, result) for t in targets]
                return TrialOutcome(TrialState.COMPLETE, values, attrs)
            case TrainStatus.PRUNED if self.stopped_by is TrialStatus.CANCELLED:
                attrs |= {"status": TrialStatus.CANCELLED.value, "reason": CANCELLED_REASON}
                return TrialOutcome(TrialState.FAIL, None, attrs)
            case TrainStatus.PRUNED if self.stopped_by is TrialStatus.STALE:
                attrs |= {"status": TrialStatus.STALE.value, "reason": STALE_REASON}
                return TrialOutcome(TrialState.FAIL, None, attrs)
            case TrainStatus.PRUNED:
                return TrialOutcome(TrialState.PRUNED, None, attrs)
            case _:  # OOM
                return TrialOutcome(TrialState.FAIL, None, attrs)


def run_trials(
    spec: StudySpec,
    trials: Sequence[optuna.Trial],
    device: str,
    worker_id: str,
    should_cancel: Callable[[], bool] = lambda: False,
) -> list[TrialOutcome]:
    """Train the trials' configurations — fused into one model when there are several, which the
    caller gave the same shaping settings — and decide what to tell Optuna about each. Never
    raises for a fault of a trial: each member ends with its own outcome."""
    configs = [spec.train_config(t.params, device) for t in trials]
    watchers = [_Watcher(spec, t, should_cancel) for t in trials]
    results = train_fused(configs, on_epoch=[w.on_epoch for w in watchers])
    outcomes = [
        w.outcome(c, r, worker_id) for w, c, r in zip(watchers, configs, results, strict=True)
    ]
    group = {"fuse_group": uuid.uuid4().hex, "fuse_size": len(trials)}
    for outcome in outcomes:
        outcome.user_attrs.update(group)
    return outcomes
