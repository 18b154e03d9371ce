"""Study spec → Optuna: distributions, sampler, pruner."""

from __future__ import annotations

import math
from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from models.config import Kind, setting_by_spec_name
from models.errors import first_line
from search.errors import SpecError
from search.samplers import (
    PRUNERS,
    SAMPLERS,
    SEQUENCE_SAMPLERS,
    SINGLE_OBJECTIVE_SAMPLERS,
    GridSampler,
)
from search.spec import Choices, Range, StudySpec


def _is_int(name: str) -> bool:
    info = setting_by_spec_name(name)
    return info is not None and info.kind is Kind.INT


def distributions(spec: StudySpec) -> dict[str, BaseDistribution]:
    """The Optuna distribution of every searched dimension, in a stable order."""
    out: dict[str, BaseDistribution] = {}
    for name, dim in spec.search_space.searched().items():
        if isinstance(dim, Choices):
            out[name] = CategoricalDistribution(dim.choices)
        elif _is_int(name):
            step = int(dim.step) if dim.step is not None else 1
            out[name] = IntDistribution(int(dim.low), int(dim.high), log=dim.log, step=step)
        else:
            out[name] = FloatDistribution(dim.low, dim.high, log=dim.log, step=dim.step)
    return out


def grid_search_space(spec: StudySpec) -> dict[str, list[Any]]:
    """The grid sampler's value lists; a continuous range (no step) is an error."""
    grid: dict[str, list[Any]] = {}
    for name, dim in spec.search_space.searched().items():
        if isinstance(dim, Choices):
            grid[name] = list(dim.choices)
            continue
        assert isinstance(dim, Range)
        if dim.step is None:
            raise SpecError(
                f"search_space.{name}",
                "the grid sampler needs choices or a range with a step, not a continuous range",
            )
        # The small epsilon keeps high itself when (high - low) / step is a whole number up to
        # float error; never a point above high (momentum 1.0 breaks AdamW).
        count = math.floor((dim.high - dim.low) / dim.step + 1e-9) + 1
        if count > 10_000:
            raise SpecError(f"search_space.{name}.step", f"gives {count} grid points (max 10000)")
        values = [dim.low + i * dim.step for i in range(count)]
        if _is_int(name):
            grid[name] = [int(v) for v in values]
        else:  # 0.1 * 3 is 0.30000000000000004: round to the step's decimals
            decimals = max(0, -math.floor(math.log10(dim.step))) + 6
            grid[name] = [round(v, decimals) for v in values]
    size = math.prod(len(values) for values in grid.values())
    if spec.budget.n_trials > size:
        raise SpecError(
            "budget.n_trials",
            f"must be <= {size}, the number of grid points, got {spec.budget.n_trials}",
        )
    return grid


def make_sampler(spec: StudySpec, slot_id: int | None = None) -> optuna.samplers.BaseSampler:
    """The spec's sampler; options are passed as keyword arguments.

    Args:
        spec: The study spec.
        slot_id: The worker's slot. Random-search-like samplers get the spec's seed plus the slot
            id: seeded alike in parallel workers they would propose identical trials.
    """
    s = spec.sampler
    seed = s.seed
    if seed is not None and slot_id is not None and s.name not in SEQUENCE_SAMPLERS:
        seed += slot_id
    kwargs: dict[str, Any] = dict(s.options)
    if s.name == "grid":
        return GridSampler(grid_search_space(spec), seed=seed, **kwargs)
    return SAMPLERS[s.name](seed=seed, **kwargs)  # type: ignore[call-arg]


def make_pruner(spec: StudySpec) -> optuna.pruners.BasePruner:
    """The spec's pruner (NopPruner for "none")."""
    p = spec.pruner
    kwargs = dict(p.options)
    if p.name == "hyperband":
        kwargs.setdefault("max_resource", max_epochs(spec))
    if p.name == "percentile":
        kwargs.setdefault("percentile", 25.0)
    return PRUNERS[p.name](**kwargs)


def max_epochs(spec: StudySpec) -> int:
    """The most epochs any trial of the study trains."""
    dim = spec.search_space.dimensions().get("epochs")
    if dim is None:
        return int(spec.training.epochs)
    if isinstance(dim, Choices):
        return max(int(v) for v in dim.choices)
    return int(getattr(dim, "high", getattr(dim, "value", spec.training.epochs)))


def check_sampler_and_pruner(spec: StudySpec) -> None:
    """Raise SpecError if the sampler/pruner cannot run this spec (built once to be sure)."""
    if spec.is_multi_objective:
        if spec.sampler.name in SINGLE_OBJECTIVE_SAMPLERS:
            raise SpecError(
                "sampler.name",
                f"{spec.sampler.name!r} supports a single objective only; "
                f"for two objectives use one of: "
                f"{', '.join(n for n in SAMPLERS if n not in SINGLE_OBJECTIVE_SAMPLERS)}",
            )
        if spec.pruner.name != "none":
            raise SpecError("pruner.name", "pruning is not supported for multi-objective studies")
    for field_path, build in (("sampler.options", make_sampler), ("pruner.options", make_pruner)):
        try:
            build(spec)
        except SpecError:
            raise
        except (TypeError, ValueError) as exc:
            raise SpecError(field_path, first_line(exc)) from None
