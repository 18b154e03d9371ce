"""Models and datasets resolved by registered name only.

Built-ins register themselves on import of ``models.architectures`` and ``models.datasets``.
Users add their own through Python entry points (groups ``bnsweep.models`` and
``bnsweep.datasets``; each entry point names a module that registers on import) or, for
operators, ``BNSWEEP_PLUGINS`` (comma-separated module names imported at start-up). A request
can only *name* a registered entry; it never supplies an import path.
"""

from __future__ import annotations

import functools
import importlib
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, Strict, ValidationError, create_model

from models.errors import ConfigError, UnknownNameError, config_error

_PARAMS_CONFIG = ConfigDict(extra="forbid", allow_inf_nan=False)

_PYTHON_TYPES: dict[str, Any] = {"int": int, "float": float, "str": str, "bool": bool}


@dataclass(frozen=True)
class Param:
    """One parameter of a model or dataset builder, described for validation and for /registry.

    Validation is pydantic's, from the type this declaration builds (``annotation``): one engine
    for training settings, spec dimensions and builder parameters.
    """

    name: str
    type: str  # "int" | "float" | "str" | "bool" | "list[int]"
    default: Any
    description: str = ""
    choices: tuple[Any, ...] | None = None
    low: float | None = None  # inclusive
    high: float | None = None  # inclusive
    nullable: bool = False

    @property
    def annotation(self) -> Any:
        """The pydantic type of this parameter (strict numbers, bounds, choices)."""
        bounds = Field(ge=self.low, le=self.high)
        element = self.type.removeprefix("list[").removesuffix("]")
        base: Any = Annotated[_PYTHON_TYPES[element], Strict(), bounds]
        if self.choices is not None:
            base = Literal[tuple(self.choices)]
        if self.type.startswith("list["):
            base = Annotated[list[base], Field(min_length=1)]
        return base | None if self.nullable else base

    def describe(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if v is not None and k != "nullable"} | {
            "nullable": self.nullable
        }


@dataclass(frozen=True)
class DataShape:
    """What a dataset holds, declared from its parameters without building it: the shape of one
    sample, the number of classes and of samples (training, validation and test together)."""

    input_shape: tuple[int, ...]
    num_classes: int
    samples: int

    @property
    def nbytes(self) -> int:
        """Bytes of the built dataset: float32 inputs and int64 labels."""
        return self.samples * (math.prod(self.input_shape) * 4 + 8)


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
    # Datasets: what they hold, from resolved params (resource caps; optional for plug-ins).
    data_shape: Callable[[dict[str, Any]], DataShape] | None = None

    @functools.cached_property
    def params_model(self) -> type[BaseModel]:
        """A pydantic model of the declared parameters (validation and JSON Schema)."""
        fields: dict[str, Any] = {
            p.name: (p.annotation, Field(default=p.default, description=p.description))
            for p in self.params
        }
        return create_model(f"{self.name}_params", __config__=_PARAMS_CONFIG, **fields)

    def resolve_params(self, params: Mapping[str, Any] | None, field_path: str) -> dict[str, Any]:
        """Validate ``params`` against the declared ones and fill in defaults."""
        params = dict(params or {})
        known = sorted(p.name for p in self.params)
        unknown = sorted(set(params) - set(known))
        if unknown:
            raise ConfigError(
                f"{field_path}.{unknown[0]}",
                f"unknown parameter for {self.name!r}; known: {', '.join(known) or 'none'}",
            )
        try:
            return self.params_model.model_validate(params).model_dump()
        except ValidationError as exc:
            raise config_error(exc, field_path) from None

    def check_placement(self, placement: str, field_path: str) -> None:
        """ConfigError unless this model supports BN ``placement`` (its ``placements`` tag): the
        one placement check, used by the trainer and by spec validation."""
        allowed = self.tags.get("placements")
        if allowed is not None and placement not in allowed:
            raise ConfigError(
                field_path,
                f"{placement!r} is not supported by model {self.name!r}; "
                f"supported: {', '.join(allowed)}",
            )

    def describe(self) -> dict[str, Any]:
        schema = self.params_model.model_json_schema()
        schema.pop("title", None)
        return {
            "name": self.name,
            "description": self.description,
            "params": [p.describe() for p in self.params],
            "schema": schema,
            **({"tags": dict(self.tags)} if self.tags else {}),
        }


class Registry:
    """Name → Entry for one kind of thing (``"model"`` or ``"dataset"``)."""

    def __init__(self, kind: str, entry_point_group: str, sized: bool = False) -> None:
        self.kind = kind
        self.entry_point_group = entry_point_group
        self.sized = sized  # entries must declare train_size (datasets)
        self._entries: dict[str, Entry] = {}

    def register(
        self,
        name: str,
        params: tuple[Param, ...] = (),
        description: str = "",
        train_size: Callable[[dict[str, Any]], int] | None = None,
        data_shape: Callable[[dict[str, Any]], DataShape] | None = None,
        **tags: Any,
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator registering ``builder`` under ``name`` (re-registering replaces).

        Datasets must pass ``train_size``: the training-set size computed from the resolved
        parameters without building anything, so a spec validates without data. They should
        pass ``data_shape`` (sample shape, classes, samples): without it, resource caps are checked
        by the worker only, once the data is loaded (models/estimate.py).
        """
        if self.sized and train_size is None:
            raise TypeError(f"{self.kind} {name!r} must declare train_size=")

        def decorate(builder: Callable[..., Any]) -> Callable[..., Any]:
            doc = description or (builder.__doc__ or "").strip().splitlines()[0:1]
            text = doc if isinstance(doc, str) else (doc[0] if doc else "")
            self._entries[name] = Entry(
                name, builder, tuple(params), text, tags, train_size, data_shape
            )
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
DATASETS = Registry("dataset", "bnsweep.datasets", sized=True)

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
