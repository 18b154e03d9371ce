"""Checks of a TrainConfig against the registry (names, parameters, placement): no data needed.

Field values are checked by ``TrainConfig`` itself, from its declaration (models/config.py).
"""

from __future__ import annotations

from typing import Any

from models.config import TrainConfig
from models.registry import MODELS, Entry


def check_config(config: TrainConfig) -> tuple[Entry, dict[str, Any]]:
    """Validate ``config`` against the registry; return the model's entry and its resolved
    parameters.

    Raises:
        ConfigError: naming the offending field (``model``, ``model.params.width``,
            ``bn_placement``).
    """
    entry = MODELS.get(config.model, "model")
    params = entry.resolve_params(config.model_params, "model.params")
    entry.check_placement(config.bn_placement.value, "bn_placement")
    return entry, params
