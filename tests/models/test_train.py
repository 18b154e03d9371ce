"""The trainer: accuracy, faults as statuses, determinism, precise BN, callbacks, OOM."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from models.config import Placement, TrainConfig, TrainStatus
from models.data import load_dataset
from models.errors import ConfigError, UnknownNameError
from models.layers import NormSpec, bn_layers, recompute_bn_stats
from models.registry import MODELS, Param
from models.train import train

# The MNIST-1D acceptance configuration (see docs/benchmarks.md): ~7 s on a 2-core CPU.
MNIST1D_CONFIG = TrainConfig(
    model="cnn1d",
    model_params={"channels": 64, "depth": 3, "dropout": 0.2},
    dataset="mnist1d",
    dataset_params={"num_samples": 10000},
    batch_size=64,
    learning_rate=0.05,
    momentum=0.9,
    weight_decay=5e-4,
    epochs=20,
    schedule="cosine",
    device="cpu",
)


@pytest.mark.xdist_group("mnist1d")
def test_good_config_reaches_94_percent_on_mnist1d() -> None:
    result = train(MNIST1D_CONFIG)
    assert result.status is TrainStatus.OK
    assert result.epochs_run == 20
    assert result.test_accuracy >= 0.94
    assert result.test_accuracy_batch_stats >= 0.9


def test_tiny_run_reports_every_epoch_and_test_metrics(tiny_config: TrainConfig) -> None:
    seen = []
    result = train(tiny_config, on_epoch=seen.append)
    assert result.status is TrainStatus.OK and result.device == "cpu"
    assert [m.epoch for m in seen] == [1, 2, 3] and result.epochs == tuple(seen)
    assert result.test_accuracy > 0.6 and result.test_loss is not None
    assert all(m.samples_per_s > 0 and m.epoch_s > 0 for m in seen)
    assert result.num_classes == 3


@pytest.mark.parametrize(
    "changes",
    [
        {"optimizer": "adamw", "learning_rate": 0.003, "schedule": "warmup_cosine"},
        {"nesterov": True, "schedule": "constant", "lr_scaling": True},
        {"bn_placement": "after_activation", "ghost_batch_size": 8, "precise_bn_batches": 3},
        {"bn_placement": "none", "init": "xavier"},
        {"init": "normal", "init_std": 0.1, "batch_size": 33},
    ],
)
def test_config_variants_train(tiny_config: TrainConfig, changes: dict) -> None:
    result = train(dataclasses.replace(tiny_config, **changes))
    assert result.status is TrainStatus.OK and result.test_accuracy > 0.5


@pytest.mark.parametrize(
    ("model", "params", "shape", "placement"),
    [
        ("cnn2d", {"channels": 4, "depth": 2}, [1, 8, 8], "before_activation"),
        ("resnet", {"depth": 1, "width": 4}, [3, 8, 8], "pre_activation"),
        ("resnet", {"depth": 1, "width": 4}, [3, 8, 8], "after_activation"),
        ("cnn1d", {"channels": 4}, [1, 20], "none"),
    ],
)
def test_every_model_trains_on_its_kind_of_input(
    tiny_config: TrainConfig, model: str, params: dict, shape: list[int], placement: str
) -> None:
    config = dataclasses.replace(
        tiny_config,
        model=model,
        model_params=params,
        dataset_params={"n_samples": 200, "shape": shape, "num_classes": 3},
        bn_placement=placement,
        epochs=2,
    )
    assert train(config).status is TrainStatus.OK


def test_huge_learning_rate_ends_diverged_with_a_reason(tiny_config: TrainConfig) -> None:
    config = dataclasses.replace(
        tiny_config, learning_rate=1000.0, bn_placement="none", schedule="constant", epochs=5
    )
    result = train(config)
    assert result.status is TrainStatus.DIVERGED
    assert "epoch 1" in result.reason and result.epochs_run == 0
    assert result.test_accuracy is None


def test_same_seed_gives_identical_numbers_on_cpu(tiny_config: TrainConfig) -> None:
    config = dataclasses.replace(tiny_config, model_params={"width": 32, "dropout": 0.3})
    a, b = train(config), train(config)
    assert [(m.train_loss, m.val_loss) for m in a.epochs] == [
        (m.train_loss, m.val_loss) for m in b.epochs
    ]
    assert a.test_loss == b.test_loss and a.test_accuracy == b.test_accuracy
    c = train(dataclasses.replace(config, seed=1))
    assert c.epochs[0].train_loss != a.epochs[0].train_loss


def test_callback_returning_true_prunes_at_that_epoch(tiny_config: TrainConfig) -> None:
    config = dataclasses.replace(tiny_config, epochs=6)
    result = train(config, on_epoch=lambda m: m.epoch == 2)
    assert result.status is TrainStatus.PRUNED
    assert result.epochs_run == 2 and result.reason == "stopped by callback at epoch 2"


def test_precise_bn_replaces_running_stats_and_eval_uses_them() -> None:
    data = load_dataset("synthetic", {"n_samples": 300, "shape": [8]})
    model = MODELS.get("mlp").builder((8,), 4, NormSpec(bn_momentum=0.1), width=16, depth=1)
    bn = bn_layers(model)[0]
    batches = [data.x_train[i : i + 50] for i in range(0, 200, 50)]
    model.eval()
    assert recompute_bn_stats(model, batches) == 4
    # With momentum=None over equal batches, the running mean is the mean of the batch means.
    with torch.no_grad():
        pre_bn = model[1][0](torch.cat(batches))  # the linear layer before the BN
    torch.testing.assert_close(bn.running_mean, pre_bn.mean(0), atol=1e-5, rtol=1e-5)
    assert bn.momentum == 0.1 and not model.training
    model.eval()
    x = data.x_val
    before = model(x).detach()
    bn.running_mean += 5.0
    assert not torch.allclose(model(x), before)  # eval output depends on running statistics


def test_precise_bn_changes_the_evaluation_of_a_run(tiny_config: TrainConfig) -> None:
    config = dataclasses.replace(tiny_config, bn_momentum=0.9, epochs=2)
    plain = train(config)
    precise = train(dataclasses.replace(config, precise_bn_batches=5))
    assert plain.epochs[0].train_loss == precise.epochs[0].train_loss  # same training
    assert plain.epochs[0].val_loss != precise.epochs[0].val_loss  # different BN statistics


def test_batch_stats_accuracy_leaves_running_stats_untouched(tiny_config: TrainConfig) -> None:
    # Two identical runs; the reported eval-mode test loss must match a fresh evaluation, which
    # it would not if the batch-statistics pass had updated the running statistics.
    result = train(tiny_config)
    assert result.test_accuracy_batch_stats is not None
    assert result.test_loss == train(tiny_config).test_loss


# --- out of memory ------------------------------------------------------------------------------


class _OutOfMemoryModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")


@MODELS.register("test_oom", params=(Param("unused", "int", 0),), placements=("none",))
def _build_oom(input_shape, num_classes, norm, unused=0) -> nn.Module:
    return _OutOfMemoryModel()


def test_out_of_memory_is_a_status_and_the_process_stays_usable(tiny_config: TrainConfig) -> None:
    result = train(
        dataclasses.replace(tiny_config, model="test_oom", model_params={}, bn_placement="none")
    )
    assert result.status is TrainStatus.OOM
    assert "batch size 32" in result.reason and result.epochs_run == 0
    assert train(tiny_config).status is TrainStatus.OK


# --- validation ---------------------------------------------------------------------------------


def test_unknown_model_lists_the_known_ones(tiny_config: TrainConfig) -> None:
    with pytest.raises(UnknownNameError) as err:
        train(dataclasses.replace(tiny_config, model="transformer"))
    assert err.value.field == "model" and "cnn1d" in str(err.value) and "resnet" in str(err.value)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"model_params": {"height": 3}}, "model.params.height"),
        ({"model_params": {"width": "wide"}}, "model.params.width"),
        ({"model_params": {"width": 0}}, "model.params.width"),
        ({"bn_placement": Placement.PRE_ACTIVATION}, "bn_placement"),
        ({"batch_size": 1}, "batch_size"),
        ({"learning_rate": 0.0}, "learning_rate"),
        ({"bn_momentum": 1.5}, "bn_momentum"),
        ({"device": "tpu"}, "device"),
        ({"momentum": 0.0, "nesterov": True}, "nesterov"),
    ],
)
def test_bad_configs_are_rejected_naming_the_field(
    tiny_config: TrainConfig, changes: dict, field: str
) -> None:
    with pytest.raises(ConfigError) as err:
        train(dataclasses.replace(tiny_config, **changes))
    assert err.value.field == field
