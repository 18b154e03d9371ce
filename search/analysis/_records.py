"""Trials → clean per-trial records → one point per distinct configuration.

A record is one COMPLETE or PRUNED trial, read from its user attrs; its ``train_config`` attr is
the truth about what it ran (the effective learning rate comes from ``TrainConfig``). FAIL trials
(oom, error, cancelled, interrupted, stale) say nothing about BN and are only counted.

- A **diverged** trial is COMPLETE at a penalty value (accuracy 0); here it scores chance level,
  what an untrained network achieves, and counts as failed to train.
- A **pruned** trial scores what it had reached at the epoch it was stopped.
- A run **failed to train** when it diverged, ended at or near chance accuracy, or its loss
  exploded (``Thresholds.rule`` says the numbers).
- Trials with identical settings (all but seed and device) are one **point**, their mean: a
  repeated configuration is not new evidence about the settings.
"""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from optuna.trial import FrozenTrial, TrialState

from models.config import TrainConfig, TrainStatus
from search.analysis._models import AnalysisOptions, Thresholds, TrialCounts
from search.spec import Metric, StudySpec

_NOT_SETTINGS = ("seed", "device")  # what may differ between repeats of one configuration
_MAX_VAL_SIZE = 100_000


@dataclass(frozen=True)
class TrialRecord:
    """One complete or pruned trial, as the analysis reads it."""

    number: int
    pruned: bool
    status: str
    settings: Mapping[str, Any]  # the TrainConfig dict the trial ran
    log_lr: float  # log10 of the effective learning rate
    epochs_run: int
    accuracy: float  # the compared metric at the last epoch reached; chance level if diverged
    test_running: float | None  # test accuracy with BN running statistics
    test_batch: float | None  # test accuracy with each test batch's statistics
    failure: str | None  # None: trained; else "diverged" | "chance" | "loss"


@dataclass(frozen=True)
class Point:
    """One distinct configuration; its runs (repeats, other seeds) averaged."""

    settings: Mapping[str, Any]
    trials: tuple[int, ...]
    seeds: int
    log_lr: float
    accuracy: float
    trained: float  # share of its runs that trained
    pruned: int  # runs stopped by the pruner
    test_running: float | None
    test_batch: float | None

    @property
    def placement(self) -> str:
        return str(self.settings["bn_placement"])

    @property
    def has_bn(self) -> bool:
        return self.placement != "none"

    @property
    def batch_size(self) -> int:
        return int(self.settings["batch_size"])

    @property
    def ghost(self) -> bool:
        """Ghost batches on: a ghost batch size below the batch size."""
        ghost = self.settings.get("ghost_batch_size")
        return ghost is not None and ghost < self.batch_size

    @property
    def precise(self) -> bool:
        return int(self.settings.get("precise_bn_batches", 0)) > 0

    @property
    def gap(self) -> float | None:
        """Running-statistics minus batch-statistics test accuracy."""
        if self.test_running is None or self.test_batch is None:
            return None
        return self.test_running - self.test_batch


@dataclass(frozen=True)
class StudyData:
    """Everything the findings read."""

    records: tuple[TrialRecord, ...]
    points: tuple[Point, ...]  # every used record, duplicates collapsed
    complete_points: tuple[Point, ...]  # the same without pruned runs
    counts: TrialCounts
    thresholds: Thresholds
    metric: str
    unreadable: int  # complete or pruned trials without a usable train_config or accuracy
    repeats_same_seed: int
    repeats_other_seed: int


def compared_metric(spec: StudySpec) -> str:
    """Comparisons read validation accuracy: the best epoch's if the study optimises that."""
    best = spec.objective.metric is Metric.BEST_VAL_ACCURACY
    return Metric.BEST_VAL_ACCURACY.value if best else Metric.VAL_ACCURACY.value


def read_study(
    trials: Sequence[FrozenTrial], spec: StudySpec, options: AnalysisOptions | None = None
) -> StudyData:
    """Clean records and points from a study's trials (all states)."""
    options = options or AnalysisOptions()
    metric = compared_metric(spec)
    thresholds = _thresholds(trials, options)
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    read = [_record(t, metric, thresholds) for t in finished]
    records = tuple(r for r in read if r is not None)
    points, same_seed, other_seed = _collapse(records)
    complete_points, _, _ = _collapse([r for r in records if not r.pruned])
    counts = TrialCounts(
        total=len(trials),
        by_state=dict(Counter(t.state.name.lower() for t in trials)),
        by_status=dict(Counter(str(t.user_attrs.get("status", "unknown")) for t in trials)),
        used=len(records),
        pruned_used=sum(r.pruned for r in records),
        diverged=sum(r.failure == "diverged" for r in records),
        failed_to_train=sum(r.failure is not None for r in records),
        configurations=len(points),
        collapsed=len(records) - len(points),
        seeds=len({r.settings.get("seed") for r in records}),
    )
    return StudyData(
        records=records,
        points=points,
        complete_points=complete_points,
        counts=counts,
        thresholds=thresholds,
        metric=metric,
        unreadable=len(finished) - len(records),
        repeats_same_seed=same_seed,
        repeats_other_seed=other_seed,
    )


# --- chance level and the failed-to-train rule ----------------------------------------------------


def _thresholds(trials: Sequence[FrozenTrial], options: AnalysisOptions) -> Thresholds:
    attrs = [t.user_attrs.get("num_classes") for t in trials]
    declared = [k for k in attrs if isinstance(k, int) and not isinstance(k, bool) and k >= 2]
    num_classes = Counter(declared).most_common(1)[0][0] if declared else options.num_classes
    val_size = options.val_size
    inferred = False
    if val_size is None:
        val_size = infer_val_size(_val_accuracies(trials))
        inferred = val_size is not None
    if num_classes is None:
        return Thresholds(
            num_classes=None,
            chance_accuracy=None,
            chance_loss=None,
            val_size=val_size,
            val_size_inferred=inferred,
            trained_above=None,
            loss_above=None,
            rule=(
                "failed to train: diverged or a non-finite loss only — the number of classes is "
                "unknown, so runs that end at chance level cannot be recognised"
            ),
        )
    chance = 1 / num_classes
    chance_loss = math.log(num_classes)
    if val_size is None:
        margin = options.chance_floor
        why = f"{100 * margin:.1f} points (floor; validation-set size unknown)"
    else:
        se = math.sqrt(chance * (1 - chance) / val_size)
        margin = max(options.chance_floor, options.chance_z * se)
        why = (
            f"{100 * margin:.1f} points = max({100 * options.chance_floor:.1f} points, "
            f"{options.chance_z:g} × the {100 * se:.2f}-point standard error at chance of a "
            f"{val_size}-sample validation set)"
        )
    trained_above = chance + margin
    loss_above = options.loss_factor * chance_loss
    return Thresholds(
        num_classes=num_classes,
        chance_accuracy=chance,
        chance_loss=chance_loss,
        val_size=val_size,
        val_size_inferred=inferred,
        trained_above=trained_above,
        loss_above=loss_above,
        rule=(
            f"failed to train: diverged, or final validation accuracy below "
            f"{100 * trained_above:.1f}% (chance {100 * chance:.1f}% + {why}), or final loss "
            f"non-finite or above {loss_above:.2f} ({options.loss_factor:g} × the chance loss "
            f"{chance_loss:.2f})"
        ),
    )


def _val_accuracies(trials: Sequence[FrozenTrial]) -> list[float]:
    values: list[Any] = []
    for t in trials:
        values.append(t.user_attrs.get("val_accuracy"))
        values.extend(e.get("val_accuracy") for e in _history(t))
    return [v for v in values if isinstance(v, float) and 0 < v < 1]


def infer_val_size(accuracies: Sequence[float], min_distinct: int = 10) -> int | None:
    """The validation-set size, from the granularity of accuracies (each is correct / size).

    The smallest size that makes every accuracy a whole number of samples, when at least
    ``min_distinct`` distinct accuracies are known (fewer could share a common factor by chance).
    """
    distinct = np.unique(np.asarray(accuracies, dtype=float))
    if distinct.size < min_distinct:
        return None
    distinct = distinct[:: max(1, distinct.size // min_distinct)][:min_distinct]
    for start in range(2, _MAX_VAL_SIZE + 1, 10_000):
        sizes = np.arange(start, min(start + 10_000, _MAX_VAL_SIZE + 1), dtype=float)
        scaled = sizes[:, None] * distinct[None, :]
        fits = np.all(np.abs(scaled - np.round(scaled)) < 1e-6, axis=1)
        if fits.any():
            return int(sizes[np.argmax(fits)])
    return None


# --- one trial ------------------------------------------------------------------------------------


def _history(trial: FrozenTrial) -> list[Mapping[str, Any]]:
    history = trial.user_attrs.get("history")
    if not isinstance(history, list):
        return []
    return [e for e in history if isinstance(e, Mapping)]


def _number(value: Any) -> float | None:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    return float(value) if ok and math.isfinite(value) else None


def _config(attrs: Mapping[str, Any]) -> TrainConfig | None:
    raw = attrs.get("train_config")
    if not isinstance(raw, Mapping):
        return None
    known = {k: v for k, v in raw.items() if k in TrainConfig.__dataclass_fields__}
    try:
        return TrainConfig(**known)
    except (TypeError, ValueError):
        return None


def _record(trial: FrozenTrial, metric: str, thresholds: Thresholds) -> TrialRecord | None:
    attrs = trial.user_attrs
    config = _config(attrs)
    if config is None or not config.effective_learning_rate > 0:
        return None
    status = str(attrs.get("status", TrainStatus.OK.value))
    pruned = trial.state is TrialState.PRUNED
    history = _history(trial)
    intermediate = [trial.intermediate_values[k] for k in sorted(trial.intermediate_values)]
    val_accuracy = _number(attrs.get("val_accuracy"))
    if val_accuracy is None and history:
        val_accuracy = _number(history[-1].get("val_accuracy"))
    if val_accuracy is None and intermediate and metric == Metric.VAL_ACCURACY.value:
        val_accuracy = _number(intermediate[-1])  # the pruner's values hold the primary metric
    diverged = status == TrainStatus.DIVERGED
    if diverged:
        accuracy: float | None = thresholds.chance_accuracy or 0.0
    elif metric == Metric.BEST_VAL_ACCURACY.value:
        accuracy = _best_accuracy(trial, history, intermediate, val_accuracy)
    else:
        accuracy = val_accuracy
    if accuracy is None:
        return None
    epochs_run = attrs.get("epochs_run")
    if not isinstance(epochs_run, int):
        epochs_run = len(history) or len(intermediate) or (0 if pruned else config.epochs)
    return TrialRecord(
        number=trial.number,
        pruned=pruned,
        status=status,
        settings=config.to_dict(),
        log_lr=math.log10(config.effective_learning_rate),
        epochs_run=epochs_run,
        accuracy=accuracy,
        test_running=_number(attrs.get("test_accuracy")),
        test_batch=_number(attrs.get("test_accuracy_batch_stats")),
        failure=_failure(attrs, history, diverged, val_accuracy, thresholds),
    )


def _best_accuracy(
    trial: FrozenTrial,
    history: list[Mapping[str, Any]],
    intermediate: list[float],
    val_accuracy: float | None,
) -> float | None:
    if trial.state is TrialState.COMPLETE and trial.values:
        return _number(trial.values[0])
    seen = [_number(e.get("val_accuracy")) for e in history] + [_number(v) for v in intermediate]
    values = [v for v in [*seen, val_accuracy] if v is not None]
    return max(values) if values else None


def _failure(
    attrs: Mapping[str, Any],
    history: list[Mapping[str, Any]],
    diverged: bool,
    val_accuracy: float | None,
    thresholds: Thresholds,
) -> str | None:
    """Why a run failed to train, or None if it trained."""
    if diverged:
        return "diverged"
    if thresholds.trained_above is not None and (
        val_accuracy is None or val_accuracy < thresholds.trained_above
    ):
        return "chance"
    # The trainer stores non-finite values as null: an attr that is present but null exploded.
    loss = _number(history[-1].get("train_loss")) if history else None
    if loss is None and "val_loss" in attrs:
        if attrs["val_loss"] is None:
            return "loss"
        loss = _number(attrs["val_loss"])
    if thresholds.loss_above is not None and loss is not None and loss > thresholds.loss_above:
        return "loss"
    return None


# --- duplicates -----------------------------------------------------------------------------------


def _key(settings: Mapping[str, Any]) -> str:
    kept = {k: v for k, v in settings.items() if k not in _NOT_SETTINGS}
    return json.dumps(kept, sort_keys=True, default=str)


def _mean(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None


def _collapse(records: Sequence[TrialRecord]) -> tuple[tuple[Point, ...], int, int]:
    """One point per distinct configuration; also how many runs repeated a configuration with
    the same seed, and with another seed."""
    groups: dict[str, list[TrialRecord]] = defaultdict(list)
    for r in records:
        groups[_key(r.settings)].append(r)
    points = []
    same_seed = other_seed = 0
    for runs in groups.values():
        seeds = len({r.settings.get("seed") for r in runs})
        same_seed += len(runs) - seeds
        other_seed += seeds - 1
        points.append(
            Point(
                settings=runs[0].settings,
                trials=tuple(r.number for r in runs),
                seeds=seeds,
                log_lr=runs[0].log_lr,
                accuracy=sum(r.accuracy for r in runs) / len(runs),
                trained=sum(r.failure is None for r in runs) / len(runs),
                pruned=sum(r.pruned for r in runs),
                test_running=_mean([r.test_running for r in runs]),
                test_batch=_mean([r.test_batch for r in runs]),
            )
        )
    return tuple(points), same_seed, other_seed
