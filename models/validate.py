"""Checks of a TrainConfig that need no data: field values, names, parameters, placement."""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from enum import StrEnum
from typing import Any

from models.config import Placement, TrainConfig
from models.errors import ConfigError
from models.registry import MODELS, Entry

# (field, lowest allowed, highest allowed); None = unbounded. Inclusive unless noted in the check.
_RANGES: tuple[tuple[str, float | None, float | None], ...] = (
    ("batch_size", 1, None),
    ("epochs", 1, None),
    ("momentum", 0.0, 1.0),
    ("weight_decay", 0.0, None),
    ("warmup_epochs", 0.0, None),
    ("bn_momentum", 0.0, 1.0),
    ("ghost_batch_size", 2, None),
    ("precise_bn_batches", 0, None),
    ("init_std", 0.0, None),
)


def check_config(config: TrainConfig) -> tuple[Entry, dict[str, Any]]:
    """Validate ``config``; return the model's registry entry and its resolved parameters.

    Raises:
        ConfigError: naming the offending field (``batch_size``, ``model.params.width``, ...).
    """
    for name, low, high in _RANGES:
        value = getattr(config, name)
        if value is None:
            continue
        if low is not None and value < low:
            raise ConfigError(name, f"must be >= {low}, got {value!r}")
        if high is not None and value > high:
            raise ConfigError(name, f"must be <= {high}, got {value!r}")
    if not config.learning_rate > 0:
        raise ConfigError("learning_rate", f"must be > 0, got {config.learning_rate!r}")
    if not config.bn_eps > 0:
        raise ConfigError("bn_eps", f"must be > 0, got {config.bn_eps!r}")
    if config.nesterov and config.momentum == 0:
        raise ConfigError("nesterov", "needs momentum > 0")
    if config.bn_placement is not Placement.NONE and config.batch_size < 2:
        raise ConfigError("batch_size", "must be >= 2 with batch normalization")
    entry = MODELS.get(config.model, "model")
    params = entry.resolve_params(config.model_params, "model.params")
    allowed = entry.tags.get("placements")
    if allowed is not None and config.bn_placement.value not in allowed:
        raise ConfigError(
            "bn_placement",
            f"{config.bn_placement.value!r} is not supported by model {config.model!r}; "
            f"supported: {', '.join(allowed)}",
        )
    return entry, params


def config_from_dict(data: Mapping[str, Any]) -> TrainConfig:
    """A TrainConfig from plain data (YAML, JSON), with type checks naming the field.

    Raises:
        ConfigError: unknown keys, values of the wrong type, unknown enum values.
    """
    if not isinstance(data, Mapping):
        raise ConfigError("config", f"must be a mapping of TrainConfig fields, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    hints = typing.get_type_hints(TrainConfig)
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(unknown[0], f"unknown field; known: {', '.join(fields)}")
    values = {name: _coerce(name, hints[name], value) for name, value in data.items()}
    return TrainConfig(**values)


def _coerce(name: str, hint: Any, value: Any) -> Any:
    """``value`` checked against the field's type ``hint`` (int accepted for float)."""
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if value is None:
        if type(None) in options:
            return None
        raise ConfigError(name, "must not be null")
    for option in options:
        origin = typing.get_origin(option) or option
        if isinstance(origin, type) and issubclass(origin, StrEnum):
            try:
                return origin(value)
            except ValueError:
                choices = ", ".join(e.value for e in origin)
                raise ConfigError(name, f"must be one of {choices}, got {value!r}") from None
        if origin is Mapping and isinstance(value, Mapping):
            if not all(isinstance(k, str) for k in value):
                raise ConfigError(name, "keys must be strings")
            return dict(value)
        if origin is bool and isinstance(value, bool):
            return value
        if origin is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if origin is float and isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if origin is str and isinstance(value, str):
            return value
    raise ConfigError(name, f"must be of type {hint}, got {value!r}")
