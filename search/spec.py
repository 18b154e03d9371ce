"""The study spec: one pydantic model, read from JSON or YAML, validated once at the edge.

A search dimension is written one of three ways::

    bn_momentum: 0.1                                 # fixed value
    bn_placement: {choices: [before_activation, none]}
    learning_rate: {low: 0.001, high: 1.0, log: true}  # range (optional step)

Everything after validation trusts the type. Validation that needs the registry (model and dataset
names and params, batch size against the training-set size) and the operator's caps runs in
``validate_spec``; errors name the field and the reason.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from enum import StrEnum
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    model_validator,
)

from models.config import Init, Optimizer, Placement, Schedule
from models.errors import ConfigError
from search.errors import SpecError

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
    if isinstance(value, Fixed | Choices | Range):
        return value
    if value is None or isinstance(value, bool | int | float | str):
        return {"value": value}
    return value


Dimension = Annotated[
    Annotated[Fixed, Tag("fixed")]
    | Annotated[Choices, Tag("choices")]
    | Annotated[Range, Tag("range")],
    Discriminator(_dimension_kind),
]


class DimKind(StrEnum):
    INT = "int"
    FLOAT = "float"
    CATEGORICAL = "categorical"


# Per dimension: (kind, allowed domain as (low, high, low_inclusive, high_inclusive) or choices).
DIMENSIONS: dict[str, tuple[DimKind, Any]] = {
    "batch_size": (DimKind.INT, (1, None, True, True)),
    "learning_rate": (DimKind.FLOAT, (0.0, 1e3, False, True)),
    "momentum": (DimKind.FLOAT, (0.0, 1.0, True, False)),
    "bn_momentum": (DimKind.FLOAT, (0.0, 1.0, False, True)),
    "bn_placement": (DimKind.CATEGORICAL, [p.value for p in Placement]),
    "weight_decay": (DimKind.FLOAT, (0.0, 1.0, True, True)),
    "optimizer": (DimKind.CATEGORICAL, [o.value for o in Optimizer]),
    "init": (DimKind.CATEGORICAL, [i.value for i in Init]),
    "ghost_batch_size": (DimKind.INT, (2, None, True, True)),  # null = off
    "precise_bn": (DimKind.INT, (0, 10_000, True, True)),  # batches; 0 = off
    "lr_scaling": (DimKind.CATEGORICAL, [False, True]),
}


class SearchSpace(_Strict):
    """The searched (or fixed) training settings. Defaults search the five BN dimensions."""

    batch_size: Dimension = Choices(choices=[32, 64, 128, 256])
    learning_rate: Dimension = Range(low=1e-3, high=1.0, log=True)
    momentum: Dimension = Range(low=0.5, high=0.99)
    bn_momentum: Dimension = Range(low=0.01, high=0.5, log=True)
    bn_placement: Dimension = Choices(choices=["before_activation", "after_activation", "none"])
    weight_decay: Dimension = Fixed(value=5e-4)
    optimizer: Dimension = Fixed(value="sgd")
    init: Dimension = Fixed(value="kaiming")
    ghost_batch_size: Dimension = Fixed(value=None)
    precise_bn: Dimension = Fixed(value=0)
    lr_scaling: Dimension = Fixed(value=False)

    @model_validator(mode="before")
    @classmethod
    def _coerce(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            return {k: _as_dimension(v) for k, v in data.items()}
        return data

    def searched(self) -> dict[str, Choices | Range]:
        """The dimensions Optuna samples (everything not fixed)."""
        return {
            name: dim for name in DIMENSIONS if not isinstance(dim := getattr(self, name), Fixed)
        }

    def fixed(self) -> dict[str, Any]:
        """The dimensions held at one value."""
        return {
            name: dim.value for name in DIMENSIONS if isinstance(dim := getattr(self, name), Fixed)
        }


# --- the rest of the spec -------------------------------------------------------------------------


# Names are shown in logs, tables and the dashboard, and PostgreSQL cannot store NUL in text:
# no control characters. Everything else (unicode, quotes, SQL-looking text) is kept verbatim.
def _no_control_characters(value: str) -> str:
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise ValueError("must not contain control characters (NUL, tab, newline, ...)")
    return value


Name = Annotated[str, AfterValidator(_no_control_characters)]


class Component(_Strict):
    """A registered model or dataset, by name, with its parameters."""

    name: Name = Field(min_length=1, max_length=100)
    params: dict[str, Any] = Field(default_factory=dict)


class Training(_Strict):
    """Fixed training settings shared by every trial."""

    epochs: int = Field(default=10, ge=1)
    schedule: Schedule = Schedule.COSINE
    warmup_epochs: float = Field(default=1.0, ge=0)
    nesterov: bool = False
    bn_eps: float = Field(default=1e-5, gt=0, le=1)
    init_std: float = Field(default=0.02, gt=0, le=10)
    seed: int = Field(
        default=0, ge=0, le=2**31 - 1
    )  # the same seed for every trial: fair comparisons
    bf16: bool = False  # CUDA only


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


SamplerName = Literal["tpe", "random", "grid", "cmaes", "gp", "qmc", "nsga2"]
PrunerName = Literal["none", "median", "percentile", "successive_halving", "hyperband"]
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
    retries: int = Field(default=1, ge=0, le=10)  # re-runs of a trial whose worker died

    @property
    def directions(self) -> list[str]:
        return [t.resolved_direction for t in self.objective.targets]

    @property
    def is_multi_objective(self) -> bool:
        return self.objective.secondary is not None

    def to_json_dict(self) -> dict[str, Any]:
        """Canonical JSON form (stored with the study)."""
        return self.model_dump(mode="json")


# --- validation at the edge -----------------------------------------------------------------------


class Limits(BaseModel):
    """Operator caps on budgets (service settings fill these)."""

    max_n_trials: int = 10_000
    max_epochs: int = 1_000
    max_timeout_seconds: float = 7 * 24 * 3600
    max_parallel: int = 1_024


def _field_path(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc]
    if len(parts) >= 3 and parts[0] == "search_space" and parts[2] in ("fixed", "choices", "range"):
        del parts[2]  # the dimension's form (a union tag), not a field the user wrote
    return ".".join(parts) or "spec"


def _first_error(exc: ValidationError) -> SpecError:
    """The first pydantic error, as a SpecError naming the field."""
    err = exc.errors()[0]
    message = str(err["msg"]).removeprefix("Value error, ")
    return SpecError(_field_path(err["loc"]), message)


def parse_spec(data: Any, limits: Limits | None = None) -> StudySpec:
    """Validate a spec given as a mapping; raise SpecError naming the field and the reason."""
    if not isinstance(data, Mapping):
        raise SpecError("spec", "must be a mapping (JSON object / YAML mapping)")
    try:
        spec = StudySpec.model_validate(data)
    except ValidationError as exc:
        raise _first_error(exc) from None
    validate_spec(spec, limits or Limits())
    return spec


class _SpecLoader(yaml.SafeLoader):
    """YAML's safe loader without aliases: a spec never needs them, and nested aliases
    ("billion laughs") expand exponentially once the data is walked."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise yaml.composer.ComposerError(None, None, "aliases are not allowed", mark)
        return super().compose_node(parent, index)


def parse_spec_text(text: str | bytes, limits: Limits | None = None) -> StudySpec:
    """Validate a spec given as YAML or JSON text (JSON is YAML). Safe loader: no tags, no
    aliases."""
    try:
        data = yaml.load(text, Loader=_SpecLoader)  # a SafeLoader: no arbitrary tags
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise SpecError("spec", f"not valid YAML/JSON: {problem}") from None
    return parse_spec(data, limits)


def validate_spec(spec: StudySpec, limits: Limits) -> None:
    """Checks that need the registry or the caps. Raises SpecError."""
    from search.optuna_map import check_sampler_and_pruner  # import cycle: optuna_map uses spec

    _check_caps(spec, limits)
    train_size = _check_components(spec)
    _check_dimensions(spec.search_space, spec.model.name, train_size, spec.training.nesterov)
    check_sampler_and_pruner(spec)


def _check_caps(spec: StudySpec, limits: Limits) -> None:
    caps = [
        ("budget.n_trials", spec.budget.n_trials, limits.max_n_trials),
        ("training.epochs", spec.training.epochs, limits.max_epochs),
        ("budget.timeout_seconds", spec.budget.timeout_seconds, limits.max_timeout_seconds),
        ("budget.max_parallel", spec.budget.max_parallel, limits.max_parallel),
    ]
    for field_path, value, cap in caps:
        if value is not None and value > cap:
            raise SpecError(field_path, f"must be <= {cap} (server cap), got {value}")


def _check_components(spec: StudySpec) -> int:
    """Resolve model and dataset through the registry; return the training-set size."""
    from models.data import train_size
    from models.registry import DATASETS, MODELS

    try:
        dataset = DATASETS.get(spec.dataset.name, "dataset.name")
        dataset.resolve_params(spec.dataset.params, "dataset.params")
        model = MODELS.get(spec.model.name, "model.name")
        model.resolve_params(spec.model.params, "model.params")
        return train_size(spec.dataset.name, spec.dataset.params)
    except SpecError:
        raise
    except ConfigError as exc:
        raise SpecError(exc.field, exc.reason) from None


def _check_dimensions(space: SearchSpace, model_name: str, train_size: int, nesterov: bool) -> None:
    from models.registry import MODELS

    for name, (kind, domain) in DIMENSIONS.items():
        dim = getattr(space, name)
        path = f"search_space.{name}"
        if isinstance(dim, Range) and kind is DimKind.CATEGORICAL:
            raise SpecError(path, "is categorical: give a value or choices, not a range")
        if isinstance(dim, Range) and kind is DimKind.INT:
            for attr in ("low", "high", "step"):
                value = getattr(dim, attr)
                if value is not None and not float(value).is_integer():
                    raise SpecError(f"{path}.{attr}", f"must be an integer, got {value}")
        for where, value in _labelled_values(dim):
            _check_value(f"{path}{where}", kind, domain, value, nullable=name == "ghost_batch_size")
    for where, value in _labelled_values(space.batch_size):
        if value > train_size:
            raise SpecError(
                f"search_space.batch_size{where}",
                f"must be <= {train_size} (the training-set size), got {int(value)}",
            )
    if nesterov and any(v == 0 for _, v in _labelled_values(space.momentum)):
        raise SpecError(
            "training.nesterov", "needs momentum > 0, but search_space.momentum allows 0"
        )
    allowed = MODELS.get(model_name).tags.get("placements")
    if allowed is not None:
        for where, value in _labelled_values(space.bn_placement):
            if value not in allowed:
                raise SpecError(
                    f"search_space.bn_placement{where}",
                    f"{value!r} is not supported by model {model_name!r}; "
                    f"supported: {', '.join(allowed)}",
                )


def _labelled_values(dim: Dimension) -> list[tuple[str, Any]]:
    if isinstance(dim, Fixed):
        return [("", dim.value)]
    if isinstance(dim, Choices):
        return [(f".choices.{i}", v) for i, v in enumerate(dim.choices)]
    return [(".low", dim.low), (".high", dim.high)]


def _check_value(path: str, kind: DimKind, domain: Any, value: Any, nullable: bool) -> None:
    if value is None:
        if nullable:
            return
        raise SpecError(path, "must not be null")
    if kind is DimKind.CATEGORICAL:
        if value not in domain or isinstance(value, bool) != isinstance(domain[0], bool):
            raise SpecError(path, f"must be one of {domain}, got {value!r}")
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SpecError(path, f"must be a number, got {value!r}")
    if not math.isfinite(value):
        raise SpecError(path, "must be a finite number")
    if kind is DimKind.INT and not float(value).is_integer():
        raise SpecError(path, f"must be an integer, got {value}")
    low, high, low_incl, high_incl = domain
    if low is not None and (value < low or (value == low and not low_incl)):
        raise SpecError(path, f"must be {'>=' if low_incl else '>'} {low}, got {value}")
    if high is not None and (value > high or (value == high and not high_incl)):
        raise SpecError(path, f"must be {'<=' if high_incl else '<'} {high}, got {value}")
