"""Models and datasets resolved by registered name only.

Built-ins register themselves on import of ``models.architectures`` and ``models.datasets``.
Users add their own through Python entry points (groups ``bnsweep.models`` and
``bnsweep.datasets``; each entry point names a module that registers on import) or, for
operators, ``BNSWEEP_PLUGINS`` (comma-separated module names imported at start-up). A request
can only *name* a registered entry; it never supplies an import path.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

from models.errors import ConfigError, UnknownNameError

_TYPES: dict[str, tuple[type, ...]] = {
    "int": (int,),
    "float": (float, int),
    "str": (str,),
    "bool": (bool,),
    "list[int]": (list, tuple),  # e.g. a tensor shape; checked element-wise
}


@dataclass(frozen=True)
class Param:
    """One parameter of a model or dataset builder, described for validation and for /registry."""

    name: str
    type: str  # "int" | "float" | "str" | "bool" | "list[int]"
    default: Any
    description: str = ""
    choices: tuple[Any, ...] | None = None
    low: float | None = None  # inclusive
    high: float | None = None  # inclusive
    nullable: bool = False

    def check(self, value: Any, field_path: str) -> Any:
        """Return ``value`` converted to this parameter's type, or raise ConfigError."""
        if value is None and self.nullable:
            return None
        types = _TYPES[self.type]
        if (isinstance(value, bool) and self.type != "bool") or not isinstance(value, types):
            raise ConfigError(field_path, f"must be of type {self.type}, got {value!r}")
        if self.type == "list[int]":
            return self._check_int_list(value, field_path)
        if self.type == "float":
            value = float(value)
            if value != value or value in (float("inf"), float("-inf")):
                raise ConfigError(field_path, "must be a finite number")
        if self.choices is not None and value not in self.choices:
            raise ConfigError(field_path, f"must be one of {list(self.choices)}, got {value!r}")
        if self.low is not None and value < self.low:
            raise ConfigError(field_path, f"must be >= {self.low}, got {value!r}")
        if self.high is not None and value > self.high:
            raise ConfigError(field_path, f"must be <= {self.high}, got {value!r}")
        return value

    def _check_int_list(self, value: list[Any] | tuple[Any, ...], field_path: str) -> list[int]:
        if not value or any(isinstance(v, bool) or not isinstance(v, int) for v in value):
            raise ConfigError(field_path, f"must be a non-empty list of integers, got {value!r}")
        for v in value:  # bounds apply to every element
            if (self.low is not None and v < self.low) or (self.high is not None and v > self.high):
                raise ConfigError(
                    field_path, f"elements must lie in [{self.low}, {self.high}], got {value!r}"
                )
        return list(value)

    def describe(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if v is not None and k != "nullable"} | {
            "nullable": self.nullable
        }


@dataclass(frozen=True)
class Entry:
    """A registered builder with its described parameters."""

    name: str
    builder: Callable[..., Any]
    params: tuple[Param, ...] = ()
    description: str = ""
    tags: Mapping[str, Any] = field(default_factory=dict)  # JSON-able facts, e.g. placements
    # Datasets: training-set size computed from resolved params without building anything.
    train_size: Callable[[dict[str, Any]], int] | None = None

    def resolve_params(self, params: Mapping[str, Any] | None, field_path: str) -> dict[str, Any]:
        """Validate ``params`` against the declared ones and fill in defaults."""
        params = dict(params or {})
        known = {p.name: p for p in self.params}
        unknown = sorted(set(params) - set(known))
        if unknown:
            raise ConfigError(
                f"{field_path}.{unknown[0]}",
                f"unknown parameter for {self.name!r}; known: {', '.join(sorted(known)) or 'none'}",
            )
        return {
            name: p.check(params[name], f"{field_path}.{name}") if name in params else p.default
            for name, p in known.items()
        }

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "params": [p.describe() for p in self.params],
            **({"tags": dict(self.tags)} if self.tags else {}),
        }


class Registry:
    """Name → Entry for one kind of thing (``"model"`` or ``"dataset"``)."""

    def __init__(self, kind: str, entry_point_group: str) -> None:
        self.kind = kind
        self.entry_point_group = entry_point_group
        self._entries: dict[str, Entry] = {}

    def register(
        self,
        name: str,
        params: tuple[Param, ...] = (),
        description: str = "",
        train_size: Callable[[dict[str, Any]], int] | None = None,
        **tags: Any,
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator registering ``builder`` under ``name`` (re-registering replaces)."""

        def decorate(builder: Callable[..., Any]) -> Callable[..., Any]:
            doc = description or (builder.__doc__ or "").strip().splitlines()[0:1]
            text = doc if isinstance(doc, str) else (doc[0] if doc else "")
            self._entries[name] = Entry(name, builder, tuple(params), text, tags, train_size)
            return builder

        return decorate

    def get(self, name: str, field_path: str | None = None) -> Entry:
        """The entry named ``name``; UnknownNameError listing the known names otherwise."""
        load_plugins()
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(
                field_path or f"{self.kind}.name", self.kind, name, list(self._entries)
            ) from None

    def names(self) -> list[str]:
        load_plugins()
        return sorted(self._entries)

    def describe(self) -> list[dict[str, Any]]:
        load_plugins()
        return [self._entries[n].describe() for n in sorted(self._entries)]


MODELS = Registry("model", "bnsweep.models")
DATASETS = Registry("dataset", "bnsweep.datasets")

_plugins_loaded = False


def load_plugins() -> None:
    """Import built-ins, entry-point plug-ins and ``BNSWEEP_PLUGINS`` modules (once per process)."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    importlib.import_module("models.architectures")
    importlib.import_module("models.datasets")
    for group in (MODELS.entry_point_group, DATASETS.entry_point_group):
        for ep in entry_points(group=group):
            ep.load()
    for module in filter(
        None, (m.strip() for m in os.environ.get("BNSWEEP_PLUGINS", "").split(","))
    ):
        importlib.import_module(module)
