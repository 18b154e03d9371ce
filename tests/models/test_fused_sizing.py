"""Choosing the group size by measurement: in range, cached, never a size that does not fit."""

from __future__ import annotations

import dataclasses
import importlib
from pathlib import Path

import pytest

import models.fused_sizing as sizing
from models.config import TrainConfig
from models.fused_sizing import best_group_size, fused_throughput

PLUGIN_DIR = Path(__file__).parents[1] / "plugins"


@pytest.fixture(autouse=True)
def _empty_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sizing, "_BEST", {})


@pytest.fixture
def measurements(monkeypatch: pytest.MonkeyPatch) -> list[list[int]]:
    """The group sizes of every measure() call."""
    calls: list[list[int]] = []
    real = sizing.measure

    def spy(config, data, ks, steps):  # type: ignore[no-untyped-def]
        calls.append(list(ks))
        return real(config, data, ks, steps)

    monkeypatch.setattr(sizing, "measure", spy)
    return calls


def test_throughput_is_measured_for_each_group_size(tiny_config: TrainConfig) -> None:
    throughput = fused_throughput(tiny_config, ks=(1, 2, 4), steps=2)
    assert sorted(throughput) == [1, 2, 4]
    assert all(v > 0 for v in throughput.values())


def test_best_group_size_is_in_range_and_measured_once_per_key(
    tiny_config: TrainConfig, measurements: list[list[int]]
) -> None:
    best = best_group_size(tiny_config, max_k=6, steps=2)
    assert 1 <= best <= 6
    assert measurements == [[1, 2, 4, 6]]
    # Per-member settings do not change the key: a cache hit, nothing measured again.
    other_member = dataclasses.replace(tiny_config, learning_rate=0.3, seed=5)
    assert best_group_size(other_member, max_k=6, steps=2) == best
    assert len(measurements) == 1
    best_group_size(dataclasses.replace(tiny_config, batch_size=64), max_k=6, steps=2)
    assert len(measurements) == 2


def test_configs_that_cannot_fuse_are_groups_of_one_without_measuring(
    tiny_config: TrainConfig, measurements: list[list[int]]
) -> None:
    dropout = dataclasses.replace(tiny_config, model_params={"dropout": 0.5})
    assert best_group_size(dropout, max_k=8) == 1
    assert best_group_size(tiny_config, max_k=1) == 1
    assert measurements == []


def test_a_group_size_that_runs_out_of_memory_is_never_chosen(
    tiny_config: TrainConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(PLUGIN_DIR))
    importlib.import_module("bnsweep_testplugins")
    config = dataclasses.replace(
        tiny_config, model="fused_oom_mlp", model_params={"max_members": 2}
    )
    assert sorted(fused_throughput(config, ks=(1, 2, 4, 8), steps=1)) == [1, 2]
    assert best_group_size(config, max_k=8, steps=1) <= 2
