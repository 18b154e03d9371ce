"""Spec validation against the server's resource caps (search/validate.py ``_check_resources``):
each refusal names the field and the estimate, nothing is built, and the caps come from settings."""

from __future__ import annotations

from typing import Any

import pytest

from models.config import Placement
from models.layers import NormSpec
from models.registry import MODELS
from search.errors import SpecError
from search.limits import Limits
from search.validate import parse_spec
from service.settings import Settings


def spec(**sections: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": "caps",
        "dataset": {"name": "synthetic", "params": {"n_samples": 2000, "shape": [16]}},
        "model": {"name": "mlp"},
        "search_space": {"batch_size": 32},
        "budget": {"n_trials": 1},
    }
    return data | sections


def refusal(data: dict[str, Any], limits: Limits | None = None) -> SpecError:
    with pytest.raises(SpecError) as raised:
        parse_spec(data, limits)
    return raised.value


def test_defaults_fit_a_laptop_and_accept_the_examples_sizes():
    assert Limits().max_params == 100_000_000
    assert Limits().max_trial_memory_bytes == 4 * 2**30
    assert Limits().max_dataset_bytes == 2**30
    parse_spec(spec(dataset={"name": "cifar10"}, model={"name": "resnet", "params": {"depth": 3}}))
    parse_spec(spec(dataset={"name": "mnist1d"}, model={"name": "cnn1d"}))


def test_too_many_parameters_name_model_params_and_the_count():
    error = refusal(spec(model={"name": "mlp", "params": {"width": 8192, "depth": 32}}))
    assert error.field == "model.params"
    assert "2.1 G parameters" in error.reason and "BNSWEEP_MAX_PARAMS" in error.reason


def test_too_much_memory_at_the_largest_batch_size_names_that_batch_size():
    error = refusal(
        spec(
            dataset={"name": "synthetic", "params": {"n_samples": 12_000, "shape": [3, 32, 32]}},
            model={"name": "cnn2d", "params": {"channels": 64, "depth": 4}},
            search_space={"batch_size": {"choices": [32, 8192, 64]}},
        )
    )
    assert error.field == "search_space.batch_size.choices.1"
    assert "BNSWEEP_MAX_TRIAL_MEMORY_BYTES" in error.reason
    fits = int(error.reason.rsplit("batch sizes up to ", 1)[1].split()[0])
    ok = spec(
        dataset={"name": "synthetic", "params": {"n_samples": 12_000, "shape": [3, 32, 32]}},
        model={"name": "cnn2d", "params": {"channels": 64, "depth": 4}},
        search_space={"batch_size": fits},
    )
    parse_spec(ok)  # the hint is right: the largest batch size that fits does
    refusal({**ok, "search_space": {"batch_size": fits + 1}})


def test_a_model_too_big_even_at_the_smallest_batch_names_model_params():
    error = refusal(
        spec(model={"name": "mlp", "params": {"width": 4096, "depth": 8}}),
        Limits(max_trial_memory_bytes=100 * 2**20),
    )
    assert error.field == "model.params" and "batch sizes up to" not in error.reason


def test_every_placement_the_spec_allows_is_sized():
    """BN layers add parameters: a spec that allows ``before_activation`` besides ``none`` is
    sized at its largest placement."""
    model = {"name": "mlp", "params": {"width": 1000, "depth": 1}}
    sizes = {
        placement: sum(
            p.numel()
            for p in MODELS.get("mlp")
            .builder((16,), 4, NormSpec(placement), **model["params"])
            .parameters()
        )
        for placement in (Placement.NONE, Placement.BEFORE_ACTIVATION)
    }
    assert sizes[Placement.BEFORE_ACTIVATION] > sizes[Placement.NONE]
    cap = Limits(max_params=sizes[Placement.NONE])
    parse_spec(spec(model=model, search_space={"batch_size": 32, "bn_placement": "none"}), cap)
    both = {"choices": ["none", "before_activation"]}
    error = refusal(spec(model=model, search_space={"batch_size": 32, "bn_placement": both}), cap)
    assert error.field == "model.params"


def test_a_dataset_over_its_cap_names_dataset_params():
    data = spec(dataset={"name": "synthetic", "params": {"n_samples": 100_000, "shape": [100]}})
    error = refusal(data, Limits(max_dataset_bytes=10 * 2**20))
    assert error.field == "dataset.params"
    assert "38.9 MiB" in error.reason and "BNSWEEP_MAX_DATASET_BYTES" in error.reason


def test_a_model_that_cannot_take_the_dataset_is_refused_naming_the_dataset():
    error = refusal(spec(model={"name": "cnn1d"}, dataset={"name": "cifar10"}))
    assert error.field == "dataset" and "spatial dimension" in error.reason


def test_the_caps_come_from_the_settings():
    limits = Settings(max_params=5, max_trial_memory_bytes=6, max_dataset_bytes=7).limits
    assert (limits.max_params, limits.max_trial_memory_bytes, limits.max_dataset_bytes) == (5, 6, 7)
    assert Settings().limits == Limits()
