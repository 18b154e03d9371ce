"""The fused executor: which configs fuse, members equal to unfused runs, faults per member, OOM.

Tolerance (the executor's numerical contract): a fused member's per-epoch train/val losses and
test loss equal those of ``train`` on its own config within rtol 1e-4 / atol 1e-6, its final BN
running statistics within rtol 1e-4 / atol 1e-4, its accuracies within one sample.

Why: fused kernels (grouped convolutions, batched matrix products, the per-member loss reduction)
sum in another order than the unfused ones, so each operation differs by float32 rounding (~1e-7
relative), and training carries that along as it carries any perturbation. Scaling the initial
weights of an unfused run by (1 + 1e-7) moves its losses by ~2e-7 and, with ghost BN (statistics
of 8-sample chunks) and bn_momentum 0.3, its running statistics by ~2e-5. Across these cases the
largest fused-vs-unfused differences are 3e-7 (losses) and 7e-7 (statistics), with 1 or 2 CPU
threads; with 300 instead of 200 samples the ghost-BN case reached 7e-6 and 1.3e-5. The bounds
leave a margin for such amplification (and other CPUs' kernels) and still catch real mistakes: a
1% change of one member's learning rate or momentum, one precise-BN batch less or another batch
order moves its losses by 3e-3 to 1e-1; a wrong BN momentum moves its running statistics. An
accuracy flips on a near tie in the logits, hence one sample. The cases are ones whose unfused
runs agree with themselves across thread counts (to 5e-7): a config can be chaotic enough that
``train`` alone differs by 5e-4 between 1 and 2 CPU threads (resnet, after_activation, Nesterov
with warm-up, seen here), and no fused run can be held closer to it than it is to itself.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import models.fused
import models.train
from models.config import TrainConfig, TrainResult, TrainStatus
from models.data import load_dataset
from models.fused import MEMBER_FIELDS, SHARED_FIELDS, fusion_key, train_fused
from models.layers import bn_layers
from models.train import train

RTOL, ATOL = 1e-4, 1e-6  # losses
STATS_RTOL, STATS_ATOL = 1e-4, 1e-4  # BN running statistics
PLUGIN_DIR = Path(__file__).parents[1] / "plugins"

# What members of a group vary: every per-member setting but precise BN (set per case).
MEMBERS: list[dict[str, Any]] = [
    {"learning_rate": 0.05, "momentum": 0.9, "weight_decay": 5e-4, "bn_momentum": 0.1, "seed": 0},
    {
        "learning_rate": 0.02,
        "momentum": 0.8,
        "weight_decay": 0.0,
        "bn_momentum": 0.3,
        "init": "xavier",
        "seed": 1,
    },
    {
        "learning_rate": 0.4,
        "lr_scaling": True,  # 0.4 * 32 / 256 = 0.05
        "momentum": 0.5,
        "weight_decay": 1e-3,
        "bn_momentum": 0.05,
        "init": "normal",
        "init_std": 0.05,
        "seed": 2,
    },
]
ADAMW = {"optimizer": "adamw", "lr_factor": 0.1}
NESTEROV = {"nesterov": True}
WARMUP = {"schedule": "warmup_cosine", "warmup_epochs": 0.5}
GHOST = {"ghost_batch_size": 8}
PRECISE = {"precise": [0, 3, 5]}  # per member; 0 = off
SAME_SEED = {"same_seed": True}  # every member seed 0: one gather per batch

CASES = [
    ("mlp", {"width": 16, "depth": 2}, [8], "before_activation", NESTEROV | WARMUP),
    ("mlp", {"width": 16, "depth": 2}, [8], "after_activation", ADAMW | GHOST | PRECISE),
    ("mlp", {"width": 16, "depth": 2}, [8], "none", SAME_SEED | {"schedule": "constant"}),
    ("cnn1d", {"channels": 4, "depth": 2}, [1, 20], "before_activation", GHOST | PRECISE),
    ("cnn1d", {"channels": 4, "depth": 2}, [20], "after_activation", ADAMW | WARMUP),
    ("cnn1d", {"channels": 4, "depth": 2}, [1, 20], "none", NESTEROV | SAME_SEED),
    ("cnn2d", {"channels": 4, "depth": 2}, [1, 8, 8], "before_activation", PRECISE | NESTEROV),
    ("cnn2d", {"channels": 4, "depth": 2}, [8, 8], "after_activation", GHOST | ADAMW),
    ("cnn2d", {"channels": 4, "depth": 2}, [1, 8, 8], "none", {}),
    ("resnet", {"depth": 1, "width": 4}, [3, 6, 6], "pre_activation", GHOST | PRECISE),
    ("resnet", {"depth": 1, "width": 4}, [3, 6, 6], "before_activation", ADAMW | SAME_SEED),
    ("resnet", {"depth": 1, "width": 4}, [3, 6, 6], "after_activation", {}),
    ("resnet", {"depth": 1, "width": 4}, [3, 6, 6], "none", NESTEROV | WARMUP),
]


def group_configs(
    model: str, params: dict[str, Any], shape: list[int], placement: str, options: dict[str, Any]
) -> list[TrainConfig]:
    """Three members of one fusion key that differ in every per-member setting."""
    options = dict(options)
    lr_factor = options.pop("lr_factor", 1.0)
    precise = options.pop("precise", [0, 0, 0])
    same_seed = options.pop("same_seed", False)
    base = TrainConfig(
        model=model,
        model_params=params,
        dataset="synthetic",
        dataset_params={"n_samples": 200, "shape": shape, "num_classes": 3},
        batch_size=32,
        epochs=2,
        bn_placement=placement,
        device="cpu",
        **options,
    )
    configs = []
    for member, precise_bn_batches in zip(MEMBERS, precise, strict=True):
        changes = member | {
            "learning_rate": member["learning_rate"] * lr_factor,
            "precise_bn_batches": precise_bn_batches,
        }
        if same_seed:
            changes["seed"] = 0
        configs.append(dataclasses.replace(base, **changes))
    return configs


@dataclasses.dataclass
class Trained:
    """The models that train() and train_fused() trained, in build order."""

    alone: list[nn.Module] = dataclasses.field(default_factory=list)
    fused: list[nn.Module] = dataclasses.field(default_factory=list)


@pytest.fixture
def trained(monkeypatch: pytest.MonkeyPatch) -> Trained:
    """Records every model train() builds and every fused model train_fused() builds."""
    seen = Trained()

    def recording(
        real: Callable[..., nn.Module], into: list[nn.Module]
    ) -> Callable[..., nn.Module]:
        def spy(*args: Any, **kwargs: Any) -> nn.Module:
            into.append(real(*args, **kwargs))
            return into[-1]

        return spy

    monkeypatch.setattr(
        models.train, "build_model", recording(models.train.build_model, seen.alone)
    )
    monkeypatch.setattr(
        models.fused, "fuse_models", recording(models.fused.fuse_models, seen.fused)
    )
    return seen


def assert_same_run(fused: TrainResult, alone: TrainResult, config: TrainConfig) -> None:
    """A fused member's result equals its unfused run's within the module's tolerance."""
    data = load_dataset(config.dataset, config.dataset_params)
    one_val, one_test = 1 / len(data.y_val) + 1e-12, 1 / len(data.y_test) + 1e-12
    assert (fused.status, fused.reason, fused.epochs_run) == (
        alone.status,
        alone.reason,
        alone.epochs_run,
    )
    for f, a in zip(fused.epochs, alone.epochs, strict=True):
        assert f.epoch == a.epoch
        assert f.train_loss == pytest.approx(a.train_loss, rel=RTOL, abs=ATOL)
        assert f.val_loss == pytest.approx(a.val_loss, rel=RTOL, abs=ATOL)
        assert abs(f.val_accuracy - a.val_accuracy) <= one_val
    if alone.test_loss is None:
        assert (fused.test_loss, fused.test_accuracy, fused.test_accuracy_batch_stats) == (
            None,
            None,
            None,
        )
        return
    assert fused.test_loss == pytest.approx(alone.test_loss, rel=RTOL, abs=ATOL)
    assert abs(fused.test_accuracy - alone.test_accuracy) <= one_test  # type: ignore[operator]
    batch_stats_gap = fused.test_accuracy_batch_stats - alone.test_accuracy_batch_stats  # type: ignore[operator]
    assert abs(batch_stats_gap) <= one_test


def assert_same_bn_statistics(fused_model: nn.Module, member: int, alone: nn.Module) -> None:
    fused_layers, alone_layers = bn_layers(fused_model), bn_layers(alone)
    assert len(fused_layers) == len(alone_layers)
    for f, a in zip(fused_layers, alone_layers, strict=True):
        for name in ("running_mean", "running_var"):
            torch.testing.assert_close(
                getattr(f, name)[member], getattr(a, name), rtol=STATS_RTOL, atol=STATS_ATOL
            )


# --- which configurations fuse ------------------------------------------------------------------


def test_every_setting_is_either_shared_or_per_member() -> None:
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    assert set(SHARED_FIELDS) | set(MEMBER_FIELDS) == fields
    assert not set(SHARED_FIELDS) & set(MEMBER_FIELDS)


def test_configs_differing_only_in_per_member_settings_share_a_fusion_key(
    tiny_config: TrainConfig,
) -> None:
    configs = group_configs("mlp", {"width": 16}, [8], "before_activation", PRECISE)
    keys = {fusion_key(c) for c in configs}
    assert len(keys) == 1 and None not in keys
    # Resolved parameters: the defaults spelled out are the same model and the same data.
    explicit = dataclasses.replace(
        tiny_config,
        model_params={"width": 32, "depth": 2},
        dataset_params={**tiny_config.dataset_params, "noise": 1.0},
    )
    implicit = dataclasses.replace(tiny_config, model_params={"width": 32})
    assert fusion_key(explicit) == fusion_key(implicit)


@pytest.mark.parametrize(
    "changes",
    [
        {"model_params": {"width": 16}},
        {"dataset_params": {"n_samples": 401, "shape": [8], "num_classes": 3}},
        {"batch_size": 33},
        {"bn_placement": "after_activation"},
        {"ghost_batch_size": 8},
        {"optimizer": "adamw"},
        {"nesterov": True},
        {"schedule": "constant"},
        {"warmup_epochs": 2.0},
        {"epochs": 4},
        {"bn_eps": 1e-3},
        {"bf16": True},
    ],
)
def test_a_different_shared_setting_is_a_different_fusion_key(
    tiny_config: TrainConfig, changes: dict[str, Any]
) -> None:
    assert fusion_key(dataclasses.replace(tiny_config, **changes)) != fusion_key(tiny_config)


def test_dropout_and_models_without_a_fused_form_cannot_fuse(tiny_config: TrainConfig) -> None:
    assert fusion_key(dataclasses.replace(tiny_config, model_params={"dropout": 0.1})) is None
    assert fusion_key(dataclasses.replace(tiny_config, model_params={"dropout": 0.0})) is not None
    load_test_plugins()
    assert fusion_key(dataclasses.replace(tiny_config, model="sleepy_mlp", model_params={})) is None


def test_configs_of_different_fusion_keys_are_refused(tiny_config: TrainConfig) -> None:
    with pytest.raises(ValueError, match="one fusion key"):
        train_fused([tiny_config, dataclasses.replace(tiny_config, batch_size=16)])
    dropout = dataclasses.replace(tiny_config, model_params={"dropout": 0.1})
    with pytest.raises(ValueError, match="one fusion key"):
        train_fused([dropout, dropout])
    with pytest.raises(ValueError, match="callbacks"):
        train_fused([tiny_config, tiny_config], on_epoch=[None])


@pytest.mark.parametrize("changes", [{}, {"model_params": {"width": 16, "dropout": 0.2}}])
def test_a_group_of_one_is_exactly_train(tiny_config: TrainConfig, changes: dict[str, Any]) -> None:
    config = dataclasses.replace(tiny_config, epochs=2, **changes)
    (fused,) = train_fused([config])
    alone = train(config)
    assert [dataclasses.replace(e, epoch_s=0, samples_per_s=0) for e in fused.epochs] == [
        dataclasses.replace(e, epoch_s=0, samples_per_s=0) for e in alone.epochs
    ]
    assert dataclasses.replace(fused, epochs=(), train_s=0) == dataclasses.replace(
        alone, epochs=(), train_s=0
    )


# --- the numerical contract ---------------------------------------------------------------------


def case_ids() -> Iterator[Any]:
    for model, params, shape, placement, options in CASES:
        tags = "+".join(k for k, v in options.items() if v) or "sgd"
        yield pytest.param(
            model, params, shape, placement, options, id=f"{model}-{placement}-{tags}"
        )


@pytest.mark.parametrize(("model", "params", "shape", "placement", "options"), list(case_ids()))
def test_fused_members_equal_their_unfused_runs(
    trained: Trained,
    model: str,
    params: dict[str, Any],
    shape: list[int],
    placement: str,
    options: dict[str, Any],
) -> None:
    configs = group_configs(model, params, shape, placement, options)
    alone = [train(c) for c in configs]
    fused = train_fused(configs)
    assert all(r.status is TrainStatus.OK for r in alone)
    for config, f, a in zip(configs, fused, alone, strict=True):
        assert_same_run(f, a, config)
    (fused_model,) = trained.fused
    for member, alone_model in enumerate(trained.alone):
        assert_same_bn_statistics(fused_model, member, alone_model)


# --- faults stay per member ---------------------------------------------------------------------


def fault_group() -> list[TrainConfig]:
    """Three cnn1d members without BN (a huge learning rate diverges there)."""
    configs = group_configs("cnn1d", {"channels": 4, "depth": 2}, [1, 20], "none", {})
    return [dataclasses.replace(c, epochs=3, schedule="constant") for c in configs]


def test_a_diverging_member_leaves_and_the_others_train_as_without_it() -> None:
    a, b, c = fault_group()
    b = dataclasses.replace(b, learning_rate=1000.0, lr_scaling=False, weight_decay=5e-4)
    with_it = train_fused([a, b, c])
    without = train_fused([a, c])
    diverged = with_it[1]
    assert diverged.status is TrainStatus.DIVERGED and diverged.epochs_run == 1
    assert diverged.reason == "training loss became nan in epoch 2"
    assert_same_run(diverged, train(b), b)
    for member, config, reference in zip([with_it[0], with_it[2]], [a, c], without, strict=True):
        assert member.status is TrainStatus.OK
        assert_same_run(member, reference, config)


def test_a_pruned_member_leaves_at_its_epoch_and_the_others_train_as_without_it() -> None:
    a, b, c = fault_group()
    seen: list[list[int]] = [[], [], []]

    def callback(member: int) -> Callable[[Any], bool]:
        def on_epoch(metrics: Any) -> bool:
            seen[member].append(metrics.epoch)
            return member == 1 and metrics.epoch == 2

        return on_epoch

    with_it = train_fused([a, b, c], on_epoch=[callback(i) for i in range(3)])
    without = train_fused([a, c])
    assert seen == [[1, 2, 3], [1, 2], [1, 2, 3]]
    pruned = with_it[1]
    assert pruned.status is TrainStatus.PRUNED and pruned.epochs_run == 2
    assert pruned.reason == "stopped by callback at epoch 2" and pruned.test_accuracy is None
    assert_same_run(pruned, train(b, on_epoch=lambda m: m.epoch == 2), b)
    for member, config, reference in zip([with_it[0], with_it[2]], [a, c], without, strict=True):
        assert_same_run(member, reference, config)


# --- out of memory ------------------------------------------------------------------------------


def load_test_plugins() -> None:
    """Register the test-only models of tests/plugins (fused_oom_mlp, sleepy_mlp, ...)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(PLUGIN_DIR))
        importlib.import_module("bnsweep_testplugins")


def oom_group(size: int, max_members: int) -> list[TrainConfig]:
    load_test_plugins()
    base = TrainConfig(
        model="fused_oom_mlp",
        model_params={"max_members": max_members},
        dataset="synthetic",
        dataset_params={"n_samples": 200, "shape": [8], "num_classes": 3},
        batch_size=32,
        epochs=2,
        device="cpu",
    )
    return [dataclasses.replace(base, seed=i, learning_rate=0.01 * (i + 1)) for i in range(size)]


@pytest.mark.parametrize(("size", "max_members"), [(4, 2), (3, 1)])
def test_out_of_memory_splits_the_group_in_halves_until_it_fits(
    size: int, max_members: int
) -> None:
    configs = oom_group(size, max_members)
    epochs: list[list[int]] = [[] for _ in configs]
    callbacks = [lambda m, seen=seen: seen.append(m.epoch) for seen in epochs]
    fused = train_fused(configs, on_epoch=callbacks)
    for config, result in zip(configs, fused, strict=True):
        assert result.status is TrainStatus.OK
        assert_same_run(result, train(config), config)
    # The first (fused) attempt failed in its first step, before any epoch was reported.
    assert epochs == [[1, 2]] * size


def test_a_member_that_does_not_fit_even_alone_is_oom_with_a_reason() -> None:
    results = train_fused(oom_group(2, max_members=0))
    assert [r.status for r in results] == [TrainStatus.OOM] * 2
    assert all("out of memory at batch size 32" in r.reason for r in results)
    assert all(r.epochs_run == 0 for r in results)
