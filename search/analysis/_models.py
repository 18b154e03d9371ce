"""The report's wire format (pydantic v2): options, thresholds, trial counts, findings, warnings."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)


class Practice(StrEnum):
    """A BN practice of the article that a study can vary or measure."""

    PLACEMENT = "placement"
    LEARNING_RATE_STABILITY = "learning_rate_stability"
    BATCH_SIZE_LEARNING_RATE = "batch_size_learning_rate"
    BN_MOMENTUM = "bn_momentum"
    EVAL_STATISTICS = "eval_statistics"
    INITIALIZATION = "initialization"
    GHOST_BN = "ghost_bn"
    PRECISE_BN = "precise_bn"


class Strength(StrEnum):
    """How strong the evidence is, read off the 95% interval (see the package docstring)."""

    STRONG = "strong"
    MODERATE = "moderate"
    WEAK = "weak"
    NO_CLEAR_WINNER = "no clear winner"
    INSUFFICIENT_DATA = "insufficient data"


class Source(StrEnum):
    """Where a finding's evidence comes from."""

    STUDY = "study"  # the HPO study itself: observational, chosen by an adaptive sampler
    CONFIRMATION = "confirmation"  # controlled follow-up runs, one factor at a time, over seeds


class AnalysisOptions(_Frozen):
    """Thresholds and margins of the analysis; every default is stated in the report."""

    practical_margin: float = Field(default=0.01, gt=0)
    """Accuracy (fraction) within which a difference does not matter: ±1 point."""
    lr_margin_decades: float = Field(default=0.15, gt=0)
    """Learning-rate window edges closer than this (log10 units, ×1.4) do not differ."""
    chance_z: float = Field(default=3.0, ge=0)
    """Standard errors (binomial at chance, on the validation set) above chance that count as
    having trained."""
    chance_floor: float = Field(default=0.02, ge=0)
    """Smallest margin above chance (accuracy) that counts as having trained."""
    loss_factor: float = Field(default=3.0, gt=1)
    """A final loss above this many times the chance loss log(num_classes) failed to train."""
    trains_probability: float = Field(default=0.5, gt=0, lt=1)
    """The trainable window is where the fitted P(trains) reaches this."""
    smoothing_decades: float = Field(default=0.25, gt=0)
    """Gaussian kernel bandwidth (log10 units) for smoothed accuracy-vs-learning-rate curves and
    for matching learning rates (neighbours lie within two bandwidths)."""
    lr_bin_decades: float = Field(default=0.25, gt=0)
    """Width of the learning-rate bins (log10 units) of the batch size × learning rate map."""
    min_points: int = Field(default=3, ge=2)
    """Fewest distinct configurations per group for a comparison."""
    min_curve_points: int = Field(default=5, ge=3)
    """Fewest distinct configurations for a curve (a window, a smoothed optimum)."""
    min_trend_points: int = Field(default=8, ge=4)
    """Fewest distinct configurations for a regression (bn_momentum)."""
    n_bootstrap: int = Field(default=1000, ge=100)
    seed: int = 0
    """Bootstrap seed: the same trials and options give the same report."""
    num_classes: int | None = Field(default=None, ge=2)
    """Used when trials lack the ``num_classes`` attr (older trials)."""
    val_size: int | None = Field(default=None, ge=1)
    """Validation-set size; inferred from the accuracies' granularity when not given."""
    imbalance_ratio: float = Field(default=2.0, gt=1)
    """Groups whose sizes differ by this factor get a warning."""
    warning_p: float = Field(default=0.05, gt=0, lt=1)
    """p-value below which a sampler imbalance (KS, pruning rates) gets a warning."""


class Thresholds(_Frozen):
    """What the analysis counted as chance level and as having failed to train."""

    num_classes: int | None
    chance_accuracy: float | None
    chance_loss: float | None  # log(num_classes)
    val_size: int | None
    val_size_inferred: bool  # from the accuracies' granularity (each is correct / val_size)
    trained_above: float | None  # validation accuracy below this: failed to train
    loss_above: float | None  # final loss above this: failed to train
    rule: str  # the failed-to-train rule in words


class TrialCounts(_Frozen):
    """Which trials the analysis used, and what happened to the others."""

    total: int
    by_state: dict[str, int]  # Optuna states, lower case
    by_status: dict[str, int]  # trainer / worker status attr
    used: int  # complete or pruned, with a readable train_config
    pruned_used: int
    diverged: int
    failed_to_train: int  # among used: diverged, at chance or exploded loss
    configurations: int  # distinct settings after collapsing duplicates (the independent points)
    collapsed: int  # used - configurations
    seeds: int  # distinct seeds among used trials


class Finding(_Frozen):
    """One practice's verdict with its evidence.

    ``effect`` always holds ``estimate`` (the headline number, or None), ``unit`` and
    ``compared`` (what minus what); the rest is practice-specific. ``ci95`` is the 95% interval of
    ``estimate``. ``sample_size`` counts the independent units behind it: distinct configurations
    for ``source="study"``, seeds for ``source="confirmation"``. ``plot`` holds the data the
    report's figure needs, with a ``kind`` key.
    """

    practice: Practice
    verdict: str
    strength: Strength
    source: Source = Source.STUDY
    effect: dict[str, Any] = Field(default_factory=dict)
    ci95: tuple[float, float] | None = None
    sample_size: int | None = None
    plot: dict[str, Any] = Field(default_factory=dict)


class ConfirmationInfo(_Frozen):
    """The confirmation study whose findings a report carries (``source="confirmation"``)."""

    study_name: str
    study_id: int | None = None
    status: str | None = None  # the study's status when the report was made, if known
    planned: int  # planned runs (points × seeds)
    finished: int  # planned runs that completed (the findings read these)
    failed: int  # planned runs that failed and were not retried
    off_plan: int  # the sampler's replacements for failed runs (left out)
    seeds: int
    test_size: int | None  # test samples each run is scored on (inferred from the accuracies)


class StudyReport(_Frozen):
    """Findings for every BN practice a study varied or measured, and the caveats; with a
    confirmation study, its controlled findings first per practice (``confirmation`` says which
    study and how far it got)."""

    study_name: str
    objective_metric: str
    direction: str
    metric: str  # what the comparisons read: val_accuracy, or best_val_accuracy if optimised
    counts: TrialCounts
    thresholds: Thresholds
    options: AnalysisOptions
    findings: list[Finding]
    warnings: list[str]
    confirmation: ConfirmationInfo | None = None
