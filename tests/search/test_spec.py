"""Study specs: invalid ones name the field and the reason; valid ones map to Optuna exactly."""

from __future__ import annotations

from typing import Any

import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from search.errors import SpecError
from search.optuna_map import distributions, grid_search_space, make_pruner, make_sampler
from search.validate import Limits, parse_spec, parse_spec_text

BASE: dict[str, Any] = {
    "name": "s",
    "dataset": {"name": "synthetic", "params": {"n_samples": 400, "shape": [8]}},
    "model": {"name": "mlp"},
}
TWO_OBJECTIVES = {"metric": "val_accuracy", "secondary": {"metric": "train_seconds"}}

INVALID: list[tuple[dict[str, Any], str, str]] = [
    (
        {"search_space": {"learning_rate": {"low": 1, "high": 0.1}}},
        "search_space.learning_rate",
        "low (1.0) must be <= high (0.1)",
    ),
    (
        {"search_space": {"learning_rate": {"low": 0, "high": 0.1, "log": True}}},
        "search_space.learning_rate",
        "a log range needs low > 0",
    ),
    ({"search_space": {"batch_size": 0}}, "search_space.batch_size", "must be >= 1, got 0"),
    (
        {"search_space": {"batch_size": {"low": 8, "high": 100000}}},
        "search_space.batch_size.high",
        "must be <= 288 (the training-set size), got 100000",
    ),
    (
        {"search_space": {"batch_size": {"low": 1.5, "high": 8}}},
        "search_space.batch_size.low",
        "must be an integer, got 1.5",
    ),
    (
        {"search_space": {"bn_placement": "sideways"}},
        "search_space.bn_placement",
        "must be one of 'before_activation', 'after_activation', 'none' or 'pre_activation', "
        "got 'sideways'",
    ),
    (
        {"search_space": {"bn_placement": "pre_activation"}},
        "search_space.bn_placement",
        "'pre_activation' is not supported by model 'mlp'; supported: before_activation, "
        "after_activation, none",
    ),
    (
        {"search_space": {"bn_placement": {"low": 0, "high": 1}}},
        "search_space.bn_placement",
        "is categorical: give a value or choices, not a range",
    ),
    ({"search_space": {"momentum": 1.0}}, "search_space.momentum", "must be < 1.0, got 1.0"),
    (
        {"search_space": {"learning_rate": 1e308}},
        "search_space.learning_rate",
        "must be <= 1000.0, got 1e+308",
    ),
    (
        {"search_space": {"learning_rate": float("nan")}},
        "search_space.learning_rate",
        "must be a finite number",
    ),
    (
        {"search_space": {"colour": 1}},
        "search_space.colour",
        "unknown setting; known: batch_size, learning_rate, lr_scaling, optimizer, momentum, ",
    ),
    (
        {"dataset": {"name": "imagenet"}},
        "dataset.name",
        # (test plug-ins loaded by other tests in this process may add names after "cifar10")
        "unknown dataset 'imagenet'; known: cifar10, ",
    ),
    ({"model": {"name": "vit"}}, "model.name", "unknown model 'vit'; known: "),
    (
        {"model": {"name": "mlp", "params": {"width": "wide"}}},
        "model.params.width",
        "must be of type int, got 'wide'",
    ),
    (
        {"sampler": {"name": "annealing"}},
        "sampler.name",
        "must be one of tpe, random, grid, cmaes, gp, qmc, nsga2, got 'annealing'",
    ),
    (
        {"sampler": {"name": "grid"}},
        "search_space.learning_rate",
        "the grid sampler needs choices or a range with a step, not a continuous range",
    ),
    (
        {"sampler": {"name": "cmaes"}, "objective": TWO_OBJECTIVES},
        "sampler.name",
        "'cmaes' supports a single objective only; for two objectives use one of: tpe, random, "
        "grid, gp, qmc, nsga2",
    ),
    (
        {"pruner": {"name": "median"}, "objective": TWO_OBJECTIVES},
        "pruner.name",
        "pruning is not supported for multi-objective studies",
    ),
    (
        {"sampler": {"name": "tpe", "options": {"n_startup": 3}}},
        "sampler.options",
        "unexpected keyword argument 'n_startup'",
    ),
    ({"budget": {"n_trials": 20_000}}, "budget.n_trials", "must be <= 10000 (server cap)"),
    ({"training": {"epochs": 5_000}}, "training.epochs", "must be <= 1000 (server cap)"),
    ({"training": {"epochs": -1}}, "training.epochs", "must be >= 1, got -1"),
    ({"budget": {"max_parallel": 0}}, "budget.max_parallel", "must be >= 1, got 0"),
    (
        {"training": {"nesterov": True}, "search_space": {"momentum": {"low": 0, "high": 0.9}}},
        "training.nesterov",
        "needs momentum > 0, but search_space.momentum allows 0",
    ),
    (
        {
            "sampler": {"name": "grid"},
            "budget": {"n_trials": 5},
            "search_space": {
                "batch_size": 32,
                "learning_rate": {"choices": [0.1, 0.2]},
                "momentum": 0.9,
                "bn_momentum": 0.1,
                "bn_placement": "none",
            },
        },
        "budget.n_trials",
        "must be <= 2, the number of grid points, got 5",
    ),
]


@pytest.mark.parametrize(("change", "field", "reason"), INVALID)
def test_invalid_spec_names_field_and_reason(change: dict, field: str, reason: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_spec(BASE | change)
    assert info.value.field == field
    assert reason in info.value.reason


def test_unknown_dataset_lists_every_builtin_one() -> None:
    with pytest.raises(SpecError) as info:
        parse_spec(BASE | {"dataset": {"name": "imagenet"}})
    known = info.value.reason.split("known: ")[1].split(", ")
    assert {"cifar10", "digits", "fashion_mnist", "mnist", "mnist1d", "synthetic"} <= set(known)
    assert known == sorted(known)


def test_caps_come_from_the_given_limits() -> None:
    parse_spec(BASE | {"budget": {"n_trials": 50}})
    with pytest.raises(SpecError, match=r"budget\.n_trials: must be <= 10"):
        parse_spec(BASE | {"budget": {"n_trials": 50}}, Limits(max_n_trials=10))


def test_yaml_tags_and_bad_yaml_are_spec_errors() -> None:
    with pytest.raises(SpecError) as info:
        parse_spec_text("name: !!python/object/apply:os.system ['true']")
    assert info.value.field == "spec"
    with pytest.raises(SpecError, match="must be a mapping"):
        parse_spec_text("- just\n- a list\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        parse_spec_text("name: [unclosed")


def test_yaml_aliases_are_refused_before_they_expand() -> None:
    bomb = "a: &a [x, x]\nb: &b [*a, *a]\nc: &c [*b, *b]\nname: *c\n"
    with pytest.raises(SpecError) as info:
        parse_spec_text(bomb)
    assert (info.value.field, info.value.reason) == (
        "spec",
        "not valid YAML/JSON: aliases are not allowed",
    )


def test_default_space_searches_the_five_bn_dimensions() -> None:
    dists = distributions(parse_spec(BASE))
    assert dists == {
        "batch_size": CategoricalDistribution([32, 64, 128, 256]),
        "learning_rate": FloatDistribution(1e-3, 1.0, log=True),
        "momentum": FloatDistribution(0.5, 0.99),
        "bn_momentum": FloatDistribution(0.01, 0.5, log=True),
        "bn_placement": CategoricalDistribution(["before_activation", "after_activation", "none"]),
    }


def test_each_dimension_form_maps_to_its_distribution() -> None:
    spec = parse_spec_text(
        """
        name: forms
        dataset: {name: synthetic, params: {n_samples: 400, shape: [8]}}
        model: {name: mlp}
        search_space:
          batch_size: {low: 16, high: 128, log: true}
          learning_rate: 0.1
          momentum: {low: 0.8, high: 0.95, step: 0.05}
          bn_momentum: {choices: [0.01, 0.1]}
          bn_placement: none
          weight_decay: {low: 0.0001, high: 0.01, log: true}
          ghost_batch_size: {choices: [null, 16]}
          lr_scaling: {choices: [false, true]}
        """
    )
    assert distributions(spec) == {
        "batch_size": IntDistribution(16, 128, log=True),
        "momentum": FloatDistribution(0.8, 0.95, step=0.05),
        "bn_momentum": CategoricalDistribution([0.01, 0.1]),
        "weight_decay": FloatDistribution(1e-4, 1e-2, log=True),
        "ghost_batch_size": CategoricalDistribution([None, 16]),
        "lr_scaling": CategoricalDistribution([False, True]),
    }
    assert spec.search_space.fixed()["learning_rate"] == 0.1
    assert spec.search_space.fixed()["bn_placement"] == "none"


def test_grid_expands_stepped_ranges() -> None:
    spec = parse_spec(
        BASE
        | {
            "sampler": {"name": "grid"},
            "budget": {"n_trials": 12},
            "search_space": {
                "batch_size": {"low": 32, "high": 100, "step": 32},
                "learning_rate": {"choices": [0.01, 0.1]},
                "momentum": {"low": 0.5, "high": 0.99, "step": 0.1},
                "bn_momentum": 0.1,
                "bn_placement": "none",
            },
        }
    )
    assert grid_search_space(spec) == {  # never above high
        "batch_size": [32, 64, 96],
        "learning_rate": [0.01, 0.1],
        "momentum": [0.5, 0.6, 0.7, 0.8, 0.9],
    }


@pytest.mark.parametrize("sampler", ["tpe", "random", "cmaes", "gp", "qmc", "nsga2"])
def test_every_sampler_builds_with_its_seed(sampler: str) -> None:
    spec = parse_spec(BASE | {"sampler": {"name": sampler, "seed": 3}})
    assert (
        type(make_sampler(spec))
        .__name__.lower()
        .startswith(
            {
                "tpe": "tpe",
                "random": "random",
                "cmaes": "cmaes",
                "gp": "gp",
                "qmc": "qmc",
                "nsga2": "nsgaii",
            }[sampler]
        )
    )


@pytest.mark.parametrize(
    ("pruner", "cls"),
    [
        ("none", "NopPruner"),
        ("median", "MedianPruner"),
        ("percentile", "PercentilePruner"),
        ("successive_halving", "SuccessiveHalvingPruner"),
        ("hyperband", "HyperbandPruner"),
    ],
)
def test_every_pruner_builds(pruner: str, cls: str) -> None:
    assert type(make_pruner(parse_spec(BASE | {"pruner": {"name": pruner}}))).__name__ == cls


def test_two_objectives_give_two_directions() -> None:
    spec = parse_spec(BASE | {"objective": TWO_OBJECTIVES, "sampler": {"name": "nsga2"}})
    assert spec.directions == ["maximize", "minimize"]


@pytest.mark.parametrize("name", ["nul\x00byte", "new\nline", "tab\there"])
def test_names_with_control_characters_are_refused(name: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_spec(BASE | {"name": name})
    assert info.value.field == "name"
    assert info.value.reason == "must not contain control characters (NUL, tab, newline, ...)"


def test_unicode_and_sql_looking_names_are_kept_verbatim() -> None:
    name = "ok 名前 🚀 '; DROP TABLE studies; --"
    assert parse_spec(BASE | {"name": name}).name == name
