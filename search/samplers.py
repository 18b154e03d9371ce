"""Sampler and pruner names → Optuna classes: the one table every other module reads."""

from __future__ import annotations

from typing import Any

import optuna
from optuna.pruners import (
    BasePruner,
    HyperbandPruner,
    MedianPruner,
    NopPruner,
    PercentilePruner,
    SuccessiveHalvingPruner,
)
from optuna.samplers import (
    BaseSampler,
    CmaEsSampler,
    GPSampler,
    NSGAIISampler,
    QMCSampler,
    RandomSampler,
    TPESampler,
)


class GridSampler(optuna.samplers.GridSampler):
    """Optuna's GridSampler without its ``study.stop()`` once the grid is covered.

    ``stop()`` raises outside ``optimize()``, and our workers use ask/tell; our budget
    (``n_trials`` <= the grid size, checked at validation) ends the study instead.
    """

    def after_trial(self, *_: Any) -> None:
        pass


SAMPLERS: dict[str, type[BaseSampler]] = {
    "tpe": TPESampler,
    "random": RandomSampler,
    "grid": GridSampler,
    "cmaes": CmaEsSampler,
    "gp": GPSampler,
    "qmc": QMCSampler,
    "nsga2": NSGAIISampler,
}
PRUNERS: dict[str, type[BasePruner]] = {
    "none": NopPruner,
    "median": MedianPruner,
    "percentile": PercentilePruner,
    "successive_halving": SuccessiveHalvingPruner,
    "hyperband": HyperbandPruner,
}
# Samplers that cannot handle more than one objective.
SINGLE_OBJECTIVE_SAMPLERS = frozenset({"cmaes"})
# Samplers whose points follow from the trial number and the seed (grid order, Sobol sequence):
# every worker must use the spec's seed itself, or parallel workers would walk different sequences.
SEQUENCE_SAMPLERS = frozenset({"grid", "qmc"})
