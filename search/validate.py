"""A study spec from JSON/YAML, validated once at the edge: types (search/spec.py), then the checks
that need the registry and the operator's caps. Errors are SpecError naming the field and the
reason. Nothing here loads data: datasets declare their training-set size.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from models.config import Home, Kind, Optimizer, Placement, SettingInfo, setting_by_spec_name
from models.errors import ConfigError, first_line, reason_of
from models.estimate import RunEstimate, human_bytes, human_count, size_on_meta
from models.registry import DATASETS, MODELS
from search.errors import SpecError
from search.limits import Limits
from search.optuna_map import check_sampler_and_pruner
from search.spec import (
    Choices,
    Fixed,
    Range,
    SearchSpace,
    StudySpec,
    Training,
    dimension_values,
)

# --- parsing --------------------------------------------------------------------------------------

MAX_YAML_EVENTS = 50_000  # a spec is a few hundred nodes; a bound keeps parsing time bounded

try:  # libyaml: parsing in C is 10-50x faster than the pure-Python loader
    from yaml import CSafeLoader as _SafeLoader
except ImportError:  # pragma: no cover - PyYAML built without libyaml
    from yaml import SafeLoader as _SafeLoader  # type: ignore[assignment]


def _field_path(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc]
    if len(parts) >= 3 and parts[0] == "search_space" and parts[2] in ("fixed", "choices", "range"):
        del parts[2]  # the dimension's form (a union tag), not a field the user wrote
    return ".".join(parts) or "spec"


_SECTIONS: dict[str, type[BaseModel]] = {"search_space": SearchSpace, "training": Training}


def parse_spec(data: Any, limits: Limits | None = None) -> StudySpec:
    """Validate a spec given as a mapping; raise SpecError naming the field and the reason."""
    if not isinstance(data, Mapping):
        raise SpecError("spec", "must be a mapping (JSON object / YAML mapping)")
    try:
        spec = StudySpec.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        reason = reason_of(error)
        section = _SECTIONS.get(str(error["loc"][0]))
        if error["type"] == "extra_forbidden" and len(error["loc"]) == 2 and section:
            reason = f"unknown setting; known: {', '.join(section.model_fields)}"
        raise SpecError(_field_path(error["loc"]), reason) from None
    except RecursionError:
        raise SpecError("spec", "nested too deeply") from None
    validate_spec(spec, limits or Limits())
    return spec


def load_yaml(text: str | bytes) -> Any:
    """YAML (or JSON) as plain data with the safe C loader: no tags, no aliases (nested aliases
    expand exponentially once the data is walked: "billion laughs"), at most
    ``MAX_YAML_EVENTS`` parser events. SpecError otherwise."""
    try:
        for count, event in enumerate(yaml.parse(text, Loader=_SafeLoader)):
            if isinstance(event, yaml.AliasEvent):
                raise SpecError("spec", "not valid YAML/JSON: aliases are not allowed")
            if count > MAX_YAML_EVENTS:
                raise SpecError("spec", f"too large: more than {MAX_YAML_EVENTS} YAML nodes")
        return yaml.load(text, Loader=_SafeLoader)
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise SpecError("spec", f"not valid YAML/JSON: {problem}") from None
    except RecursionError:
        raise SpecError("spec", "nested too deeply") from None


def parse_spec_text(text: str | bytes, limits: Limits | None = None) -> StudySpec:
    """Validate a spec given as YAML or JSON text (JSON is YAML)."""
    return parse_spec(load_yaml(text), limits)


# --- checks that need the registry or the caps ----------------------------------------------------


def validate_spec(spec: StudySpec, limits: Limits) -> None:
    """Checks that need the registry or the caps. Raises SpecError."""
    _check_caps(spec, limits)
    train_size = _check_components(spec)
    _check_dimensions(spec, train_size)
    _check_resources(spec, limits)
    try:
        check_sampler_and_pruner(spec)
    except ConfigError as exc:
        raise SpecError(exc.field, exc.reason) from None
    _check_enqueued(spec)


def _check_caps(spec: StudySpec, limits: Limits) -> None:
    epochs = [spec.training.epochs] + [v for _, v in _values(spec, "epochs")]
    caps = [
        ("budget.n_trials", spec.budget.n_trials, limits.max_n_trials),
        ("training.epochs", max(epochs), limits.max_epochs),
        ("budget.timeout_seconds", spec.budget.timeout_seconds, limits.max_timeout_seconds),
        ("budget.max_parallel", spec.budget.max_parallel, limits.max_parallel),
    ]
    for field_path, value, cap in caps:
        if isinstance(value, int | float) and value > cap:
            raise SpecError(field_path, f"must be <= {cap} (server cap), got {value}")


def _check_resources(spec: StudySpec, limits: Limits) -> None:
    """The largest trial the spec allows within the server's caps on dataset bytes, parameters and
    trial memory, estimated without building anything (models/estimate.py): the model is built on
    the meta device at each placement the spec allows, at its largest batch size."""
    dataset = DATASETS.get(spec.dataset.name)
    if dataset.data_shape is None:
        return  # a plug-in that declares no shape: only the worker checks, once data is loaded
    shape = dataset.data_shape(dataset.resolve_params(spec.dataset.params, "dataset.params"))
    if shape.nbytes > limits.max_dataset_bytes:
        raise SpecError(
            "dataset.params",
            f"the dataset would hold ~{human_bytes(shape.nbytes)} ({shape.samples:,} samples of "
            f"{list(shape.input_shape)}, float32), over the server cap of "
            f"{human_bytes(limits.max_dataset_bytes)} (BNSWEEP_MAX_DATASET_BYTES)",
        )
    model_params = MODELS.get(spec.model.name).resolve_params(spec.model.params, "model.params")
    batch_where, batch = max(_values(spec, "batch_size"), key=lambda item: float(item[1]))
    smallest = int(min(float(v) for _, v in _values(spec, "batch_size")))
    adamw = any(str(v) == Optimizer.ADAMW.value for _, v in _values(spec, "optimizer"))
    optimizer = Optimizer.ADAMW if adamw else Optimizer.SGD
    worst: RunEstimate | None = None
    for placement in {Placement(str(v)) for _, v in _values(spec, "bn_placement")}:
        try:
            size = size_on_meta(spec.model.name, model_params, shape, placement, forward=False)
            if size.params > limits.max_params:
                raise SpecError(
                    "model.params",
                    f"the model would have {human_count(size.params)} parameters, over the server "
                    f"cap of {human_count(limits.max_params)} (BNSWEEP_MAX_PARAMS)",
                )
            size = size_on_meta(spec.model.name, model_params, shape, placement)
        except SpecError:
            raise
        except ConfigError as exc:  # e.g. the model cannot take the dataset's sample shape
            raise SpecError(exc.field, exc.reason) from None
        except Exception as exc:  # a plug-in that cannot be built or run on the meta device
            raise SpecError(
                "model.name", f"cannot be sized on the meta device: {first_line(exc)}"
            ) from None
        run = RunEstimate(size, int(batch), optimizer)
        if worst is None or run.total_bytes > worst.total_bytes:
            worst = run
    cap = limits.max_trial_memory_bytes
    if worst is None or worst.total_bytes <= cap:
        return
    largest = _largest_batch(worst, smallest, int(batch), cap)
    where, hint = (
        (f"search_space.batch_size{batch_where}", f"; batch sizes up to {largest} fit")
        if largest is not None
        else ("model.params", "")
    )
    raise SpecError(
        where,
        f"a trial would need {worst.describe()}, over the server cap of {human_bytes(cap)} "
        f"(BNSWEEP_MAX_TRIAL_MEMORY_BYTES){hint}",
    )


def _largest_batch(run: RunEstimate, low: int, high: int, cap: int) -> int | None:
    """The largest batch size in [low, high] at which ``run`` fits ``cap`` (memory grows with the
    batch size), or None if not even ``low`` does."""

    def fits(batch_size: int) -> bool:
        return RunEstimate(run.size, batch_size, run.optimizer).total_bytes <= cap

    if not fits(low):
        return None
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if fits(middle) else (low, middle - 1)
    return low


def _check_components(spec: StudySpec) -> int:
    """Resolve model and dataset through the registry; return the declared training-set size."""
    try:
        dataset = DATASETS.get(spec.dataset.name, "dataset.name")
        params = dataset.resolve_params(spec.dataset.params, "dataset.params")
        MODELS.get(spec.model.name, "model.name").resolve_params(spec.model.params, "model.params")
        assert dataset.train_size is not None  # the registry requires it of every dataset
        return int(dataset.train_size(params))
    except SpecError:
        raise
    except ConfigError as exc:
        raise SpecError(exc.field, exc.reason) from None


def _values(spec: StudySpec, name: str) -> list[tuple[str, Any]]:
    """Every value a search dimension names, labelled by where it sits."""
    dim = spec.search_space.dimensions().get(name)
    return [] if dim is None else dimension_values(dim)


def _check_dimensions(spec: StudySpec, train_size: int) -> None:
    given_in_training = spec.training.model_fields_set
    for name, dim in spec.search_space.dimensions().items():
        info = setting_by_spec_name(name)
        assert info is not None  # the search space only has declared settings
        path = f"search_space.{name}"
        if info.setting.home is Home.TRAINING and name in given_in_training:
            raise SpecError(path, f"is also set in training.{name}: set it in one place")
        _check_dimension(path, info, dim)
    for where, value in _values(spec, "batch_size"):
        if value > train_size:
            raise SpecError(
                f"search_space.batch_size{where}",
                f"must be <= {train_size} (the training-set size), got {int(value)}",
            )
    nesterov = [spec.training.nesterov] + [v for _, v in _values(spec, "nesterov")]
    if any(nesterov) and any(v == 0 for _, v in _values(spec, "momentum")):
        raise SpecError(
            "training.nesterov", "needs momentum > 0, but search_space.momentum allows 0"
        )
    model = MODELS.get(spec.model.name)
    for where, value in _values(spec, "bn_placement"):
        try:
            model.check_placement(str(value), f"search_space.bn_placement{where}")
        except ConfigError as exc:
            raise SpecError(exc.field, exc.reason) from None


def _check_dimension(path: str, info: SettingInfo, dim: Fixed | Choices | Range) -> None:
    """Each value of ``dim`` within the setting's declared type and bounds."""
    if isinstance(dim, Range):
        if info.kind not in (Kind.INT, Kind.FLOAT):
            raise SpecError(path, "is categorical: give a value or choices, not a range")
        if info.kind is Kind.INT:
            for attr in ("low", "high", "step"):
                value = getattr(dim, attr)
                if value is not None and not float(value).is_integer():
                    raise SpecError(f"{path}.{attr}", f"must be an integer, got {value}")
    if info.kind is Kind.OTHER:
        raise SpecError(path, "cannot be searched")
    for where, value in dimension_values(dim):
        if isinstance(dim, Range) and info.kind is Kind.INT:
            value = int(value)
        if isinstance(value, float) and not math.isfinite(value):
            raise SpecError(f"{path}{where}", "must be a finite number")
        try:
            info.check(value, f"{path}{where}")
        except ConfigError as exc:
            raise SpecError(exc.field, exc.reason) from None


def _check_enqueued(spec: StudySpec) -> None:
    """Each enqueued configuration names searched dimensions only, with values inside them."""
    searched = spec.search_space.searched()
    for i, point in enumerate(spec.enqueue):
        for name, value in point.items():
            path = f"enqueue.{i}.{name}"
            dim = searched.get(name)
            if dim is None:
                names = ", ".join(searched) or "none"
                raise SpecError(path, f"is not a searched dimension; searched: {names}")
            info = setting_by_spec_name(name)
            assert info is not None
            try:
                value = info.check(value, path)
            except ConfigError as exc:
                raise SpecError(exc.field, exc.reason) from None
            plain = getattr(value, "value", value)  # an enum as its spec value
            inside = (
                plain in dim.choices if isinstance(dim, Choices) else dim.low <= plain <= dim.high
            )
            if not inside:
                raise SpecError(path, f"{plain!r} is outside search_space.{name}")
