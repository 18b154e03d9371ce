"""The study spec's types: one pydantic model, read from JSON or YAML (parsing and the checks that
need the registry live in search/validate.py).

A search dimension is written one of three ways::

    bn_momentum: 0.1                                 # fixed value
    bn_placement: {choices: [before_activation, none]}
    learning_rate: {low: 0.001, high: 1.0, log: true}  # range (optional step)

The search space and the ``training`` section are derived from the training settings' declaration
(models/config.py): every setting homed in ``search_space`` is a dimension (searched or fixed by
default), every one homed in ``training`` is a field there with the trainer's own bounds, and a
training setting may also be given in ``search_space`` to vary it per trial (e.g. ``seed``).
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    SerializerFunctionWrapHandler,
    Tag,
    TypeAdapter,
    WithJsonSchema,
    create_model,
    model_serializer,
    model_validator,
)

from models.config import SETTINGS, Home, TrainConfig, setting_by_spec_name
from search.samplers import PRUNERS, SAMPLERS

# --- dimensions -----------------------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True)


class Choices(_Strict):
    """A categorical dimension (values are checked per dimension in ``validate_spec``)."""

    choices: list[Any] = Field(min_length=1, max_length=1000)


class Range(_Strict):
    """A numeric range, inclusive; ``log`` samples on a log scale, ``step`` quantizes."""

    low: float
    high: float
    log: bool = False
    step: float | None = None

    @model_validator(mode="after")
    def _check(self) -> Range:
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) must be <= high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError("a log range needs low > 0")
        if self.step is not None and self.step <= 0:
            raise ValueError("step must be > 0")
        if self.log and self.step is not None:
            raise ValueError("log and step cannot be combined")
        return self


class Fixed(_Strict):
    """A dimension held at one value (checked per dimension in ``validate_spec``)."""

    value: Any


def _dimension_kind(value: Any) -> str:
    """Which form a dimension is written in: by its keys, so errors speak of that form only."""
    if isinstance(value, Fixed | Choices | Range):
        return type(value).__name__.lower()
    if isinstance(value, Mapping):
        if "choices" in value:
            return "choices"
        if "low" in value or "high" in value:
            return "range"
    return "fixed"


def _as_dimension(value: Any) -> Any:
    """Scalars (and null) are fixed values; mappings are parsed by their keys."""
    if value is None or isinstance(value, bool | int | float | str):
        return {"value": value}
    return value


Dimension = Annotated[
    Annotated[Fixed, Tag("fixed")]
    | Annotated[Choices, Tag("choices")]
    | Annotated[Range, Tag("range")],
    Discriminator(_dimension_kind),
]
_DIMENSION: TypeAdapter[Fixed | Choices | Range] = TypeAdapter(Dimension)


def dimension_values(dim: Fixed | Choices | Range) -> list[tuple[str, Any]]:
    """The values a dimension names, each with where it sits (``""``, ``.choices.1``, ``.low``)."""
    if isinstance(dim, Fixed):
        return [("", dim.value)]
    if isinstance(dim, Choices):
        return [(f".choices.{i}", v) for i, v in enumerate(dim.choices)]
    return [(".low", dim.low), (".high", dim.high)]


# --- the settings sections, derived from TrainConfig's declaration --------------------------------


class _Section(_Strict):
    if TYPE_CHECKING:  # fields are generated from the declaration: typed Any for the checker

        def __getattr__(self, name: str) -> Any: ...


class _SearchSpaceBase(_Section):
    """The searched (or fixed) training settings. Defaults search the five BN dimensions."""

    @model_validator(mode="before")
    @classmethod
    def _coerce(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            return {k: _as_dimension(v) for k, v in data.items()}
        return data

    @model_serializer(mode="wrap")
    def _only_given(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # Training settings are dimensions only when given: leave the others out of the JSON.
        data: dict[str, Any] = handler(self)
        return {k: v for k, v in data.items() if getattr(self, k) is not None}

    def dimensions(self) -> dict[str, Fixed | Choices | Range]:
        """Every dimension by spec name (training settings only when given here)."""
        return {n: d for n in type(self).model_fields if (d := getattr(self, n)) is not None}

    def searched(self) -> dict[str, Choices | Range]:
        """The dimensions Optuna samples (everything not fixed)."""
        return {n: d for n, d in self.dimensions().items() if not isinstance(d, Fixed)}

    def fixed(self) -> dict[str, Any]:
        """The dimensions held at one value."""
        return {n: d.value for n, d in self.dimensions().items() if isinstance(d, Fixed)}


class _TrainingBase(_Section):
    """Training settings shared by every trial (unless also given in ``search_space``)."""


def _search_space_fields() -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for info in SETTINGS.values():
        help_text = info.setting.help + (f" ({info.setting.unit})" if info.setting.unit else "")
        if info.setting.home is Home.SEARCH:
            raw = info.setting.search if info.setting.search is not None else info.default
            default = _DIMENSION.validate_python(_as_dimension(_plain(raw)))
            fields[info.spec_name] = (Dimension, Field(default=default, description=help_text))
        elif info.setting.home is Home.TRAINING:
            help_text += "; set here to vary it per trial (overrides training)"
            fields[info.spec_name] = (Dimension | None, Field(default=None, description=help_text))
    return fields


def _training_fields() -> dict[str, Any]:
    return {
        info.spec_name: (
            info.annotation,
            Field(default=info.default, description=info.setting.help),
        )
        for info in SETTINGS.values()
        if info.setting.home is Home.TRAINING
    }


def _plain(value: Any) -> Any:
    """An enum default as its plain value (spec form)."""
    return value.value if isinstance(value, StrEnum) else value


if TYPE_CHECKING:
    SearchSpace = _SearchSpaceBase
    Training = _TrainingBase
else:
    SearchSpace = create_model("SearchSpace", __base__=_SearchSpaceBase, **_search_space_fields())
    Training = create_model("Training", __base__=_TrainingBase, **_training_fields())


# --- the rest of the spec -------------------------------------------------------------------------


# Names are shown in logs, tables and the dashboard, and PostgreSQL cannot store NUL in text:
# no control characters. Everything else (unicode, quotes, SQL-looking text) is kept verbatim.
def _no_control_characters(value: str) -> str:
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise ValueError("must not contain control characters (NUL, tab, newline, ...)")
    return value


Name = Annotated[str, AfterValidator(_no_control_characters)]


def _one_of(table: Mapping[str, Any]) -> Any:
    def check(value: str) -> str:
        if value not in table:
            raise ValueError(f"must be one of {', '.join(table)}, got {value!r}")
        return value

    return AfterValidator(check)


SamplerName = Annotated[
    str, _one_of(SAMPLERS), WithJsonSchema({"type": "string", "enum": list(SAMPLERS)})
]
PrunerName = Annotated[
    str, _one_of(PRUNERS), WithJsonSchema({"type": "string", "enum": list(PRUNERS)})
]


class Component(_Strict):
    """A registered model or dataset, by name, with its parameters."""

    name: Name = Field(min_length=1, max_length=100)
    params: dict[str, Any] = Field(default_factory=dict)


class Metric(StrEnum):
    """What a trial is scored by. Per-epoch metrics are reported to Optuna for pruning."""

    VAL_ACCURACY = "val_accuracy"  # final epoch
    BEST_VAL_ACCURACY = "best_val_accuracy"  # best epoch
    VAL_LOSS = "val_loss"
    TRAIN_LOSS = "train_loss"
    TRAIN_SECONDS = "train_seconds"
    SAMPLES_PER_SECOND = "samples_per_second"


DEFAULT_DIRECTION: dict[Metric, str] = {
    Metric.VAL_ACCURACY: "maximize",
    Metric.BEST_VAL_ACCURACY: "maximize",
    Metric.VAL_LOSS: "minimize",
    Metric.TRAIN_LOSS: "minimize",
    Metric.TRAIN_SECONDS: "minimize",
    Metric.SAMPLES_PER_SECOND: "maximize",
}

PER_EPOCH_METRICS = {
    Metric.VAL_ACCURACY,
    Metric.BEST_VAL_ACCURACY,
    Metric.VAL_LOSS,
    Metric.TRAIN_LOSS,
}

Direction = Literal["maximize", "minimize"]


class Target(_Strict):
    """One objective: a metric and its direction (default: the metric's natural one)."""

    metric: Metric = Metric.VAL_ACCURACY
    direction: Direction | None = None

    @property
    def resolved_direction(self) -> str:
        return self.direction or DEFAULT_DIRECTION[self.metric]


class Objective(Target):
    """The primary objective, with an optional second one (a multi-objective study)."""

    secondary: Target | None = None

    @property
    def targets(self) -> list[Target]:
        return [self, self.secondary] if self.secondary else [self]


OptionValue = bool | int | float | str | None


class SamplerSpec(_Strict):
    name: SamplerName = "tpe"
    seed: int | None = Field(default=None, ge=0, le=2**32 - 1)
    options: dict[str, OptionValue] = Field(default_factory=dict)


class PrunerSpec(_Strict):
    name: PrunerName = "none"
    options: dict[str, OptionValue] = Field(default_factory=dict)


class Budget(_Strict):
    """How much to run: n_trials counts finished trials (complete + pruned)."""

    n_trials: int = Field(default=20, ge=1)
    timeout_seconds: float | None = Field(default=None, gt=0)
    max_parallel: int | None = Field(default=None, ge=1)  # None = as many as workers offer
    max_failed: int | None = Field(default=None, ge=0)  # None = n_trials; beyond it the study fails

    @property
    def failure_limit(self) -> int:
        return self.n_trials if self.max_failed is None else self.max_failed


MAX_FUSE = 64


class Execution(_Strict):
    """How workers run the trials (never what they compute)."""

    fuse: Literal["auto"] | Annotated[int, Field(ge=1, le=MAX_FUSE)] = Field(
        default="auto",
        description="trials trained as one fused model: auto (measured per shape), or 1..64",
    )


class WarmStart(_Strict):
    """Evaluate an earlier study's best configurations first."""

    from_study: Name = Field(min_length=1, max_length=200)
    top_k: int = Field(default=5, ge=1, le=100)


MAX_ENQUEUED = 1000


class StudySpec(_Strict):
    """A whole study: what to train, what to search, how to search it and how much."""

    name: Name = Field(min_length=1, max_length=200)
    dataset: Component
    model: Component
    search_space: SearchSpace = Field(default_factory=SearchSpace)
    training: Training = Field(default_factory=Training)
    objective: Objective = Field(default_factory=Objective)
    sampler: SamplerSpec = Field(default_factory=SamplerSpec)
    pruner: PrunerSpec = Field(default_factory=PrunerSpec)
    budget: Budget = Field(default_factory=Budget)
    execution: Execution = Field(default_factory=Execution)
    retries: int = Field(default=1, ge=0, le=10)  # re-runs of a trial whose worker died
    enqueue: list[dict[str, Any]] = Field(
        default_factory=list,
        max_length=MAX_ENQUEUED,
        description="configurations (search-space values by name) evaluated first",
    )
    warm_start: WarmStart | None = None

    @property
    def directions(self) -> list[str]:
        return [t.resolved_direction for t in self.objective.targets]

    @property
    def is_multi_objective(self) -> bool:
        return self.objective.secondary is not None

    def to_json_dict(self) -> dict[str, Any]:
        """Canonical JSON form (stored with the study)."""
        return self.model_dump(mode="json")

    def settings(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """Every training setting a trial with sampled ``params`` uses, by spec name: the
        ``training`` section, then the fixed dimensions, then the sampled values."""
        return self.training.model_dump() | self.search_space.fixed() | dict(params)

    def train_config(self, params: Mapping[str, Any], device: str = "auto") -> TrainConfig:
        """The TrainConfig of a trial with sampled ``params`` (spec names)."""
        values = {}
        for spec_name, value in self.settings(params).items():
            info = setting_by_spec_name(spec_name)
            assert info is not None, spec_name  # the sections only hold declared settings
            values[info.name] = value
        return TrainConfig(
            model=self.model.name,
            model_params=self.model.params,
            dataset=self.dataset.name,
            dataset_params=self.dataset.params,
            device=device,
            **values,
        )
