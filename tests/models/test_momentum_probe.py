"""The BN momentum probe: one training run gives the running statistics, and the test accuracy,
of every probed ``bn_momentum``.

Training normalizes with batch statistics, so the weights never depend on ``bn_momentum``: a run
with a probe trains exactly as one without, the probe at the configured momentum reproduces the
layer's own running statistics, and the probe at another momentum equals training again with that
momentum. "Equal" is float32 rounding: the probe computes each batch's mean and variance itself
(another summation order than BN's kernel, ~1e-7 relative per step, measured ≤ 1e-6 here); an
accuracy may flip on a near tie, hence one test sample.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from models.config import TrainConfig
from models.data import load_dataset
from models.fused import FusedGroup, train_fused
from models.layers import attach_momentum_probe, bn_layers, probed_statistics
from models.train import batch_bounds, build_model, epoch_batches, make_optimizer, train
from models.validate import check_config

DATA = {"n_samples": 300, "shape": [1, 16]}
MOMENTA = (0.01, 0.1, 0.5)
STATS = {"rtol": 1e-5, "atol": 1e-6}


def config(**overrides: Any) -> TrainConfig:
    values: dict[str, Any] = {
        "model": "cnn1d",
        "model_params": {"channels": 4, "depth": 2},
        "dataset": "synthetic",
        "dataset_params": DATA,
        "batch_size": 32,
        "learning_rate": 0.05,
        "epochs": 2,
        "bn_momentum": 0.1,
        "device": "cpu",
    }
    return TrainConfig(**(values | overrides))


def _metrics(epoch: Any) -> tuple[float, ...]:
    return (epoch.train_loss, epoch.val_loss, epoch.val_accuracy)


@pytest.fixture(scope="module")
def data() -> Any:
    return load_dataset("synthetic", DATA, device="cpu")


def _train_layers(cfg: TrainConfig, data: Any, probe: tuple[float, ...] = ()) -> list[Any]:
    """Train ``cfg`` step by step as ``train`` does (no evaluation) and return its BN layers."""
    entry, params = check_config(cfg)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, entry.builder, params, data)
    if probe:
        attach_momentum_probe(model, probe)
    optimizer = make_optimizer(cfg, model)
    shuffle = torch.Generator().manual_seed(cfg.seed)
    model.train()
    for _ in range(cfg.epochs):
        for idx in epoch_batches(len(data.y_train), cfg, shuffle, data.device):
            loss = torch.nn.functional.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    assert len(batch_bounds(len(data.y_train), cfg)) > 1
    return bn_layers(model)


@pytest.mark.parametrize("ghost", [None, 8], ids=["plain BN", "ghost BN"])
def test_probe_reproduces_the_running_statistics_of_every_probed_momentum(data, ghost) -> None:
    probed = _train_layers(config(ghost_batch_size=ghost, epochs=1), data, MOMENTA)
    for i, momentum in enumerate(MOMENTA):
        alone = _train_layers(config(ghost_batch_size=ghost, epochs=1, bn_momentum=momentum), data)
        for layer, other in zip(probed, alone, strict=True):
            probe = layer.momentum_probe
            torch.testing.assert_close(probe.mean[i], other.running_mean, **STATS)
            torch.testing.assert_close(probe.var[i], other.running_var, **STATS)
            if momentum == 0.1:  # the configured momentum: the layer's own statistics
                torch.testing.assert_close(probe.mean[i], layer.running_mean, **STATS)
                torch.testing.assert_close(probe.var[i], layer.running_var, **STATS)


def test_a_probed_run_trains_exactly_as_one_without_and_scores_each_momentum(data) -> None:
    plain = train(config(), data)
    probed = train(config(bn_momentum_probe=MOMENTA), data)
    # Bit for bit: the probe never touches training.
    assert [_metrics(e) for e in probed.epochs] == [_metrics(e) for e in plain.epochs]
    assert (probed.test_accuracy, probed.test_loss) == (plain.test_accuracy, plain.test_loss)
    scored = dict(probed.test_accuracy_by_bn_momentum)
    assert list(scored) == list(MOMENTA)
    one_sample = 1 / len(data.y_test)
    assert scored[0.1] == pytest.approx(plain.test_accuracy, abs=one_sample)  # the trained one
    for momentum in (0.01, 0.5):  # the others: as if trained again with them
        again = train(config(bn_momentum=momentum), data)
        assert again.test_accuracy == pytest.approx(scored[momentum], abs=one_sample)
    assert plain.test_accuracy_by_bn_momentum == ()
    without_bn = train(config(bn_placement="none", bn_momentum_probe=MOMENTA), data)
    assert without_bn.to_dict()["test_accuracy_by_bn_momentum"] == []  # nothing to probe


def test_fused_members_probe_as_their_unfused_runs_even_after_one_leaves(data) -> None:
    members = [
        config(bn_momentum_probe=MOMENTA, seed=0),
        config(bn_momentum_probe=MOMENTA, seed=1, learning_rate=1e3, bn_momentum=0.3),
        config(bn_momentum_probe=MOMENTA, seed=2, bn_momentum=0.05, init="xavier"),
    ]
    fused = train_fused(members, data)
    assert fused[1].status.value == "diverged" and fused[1].test_accuracy_by_bn_momentum == ()
    one_sample = 1 / len(data.y_test)
    for member, result in zip(members, fused, strict=True):
        if member.learning_rate > 1:
            continue
        alone = train(member, data)
        probes = (result.test_accuracy_by_bn_momentum, alone.test_accuracy_by_bn_momentum)
        assert len(probes[0]) == len(probes[1]) == len(MOMENTA)
        for (m_fused, a_fused), (m_alone, a_alone) in zip(*probes, strict=True):
            assert m_fused == m_alone
            assert a_fused == pytest.approx(a_alone, abs=one_sample)


def test_probed_statistics_are_swapped_in_for_evaluation_and_restored(data) -> None:
    group = FusedGroup([config(bn_momentum_probe=MOMENTA), config(seed=3)], data, data.device)
    group.model.train()
    group.model(group.inputs(data.x_train[:32], shared=True))
    layer = bn_layers(group.model)[0]
    before = layer.running_mean.clone()
    with probed_statistics(group.model, 0):  # momentum 0.01: a tenth of the step taken at 0.1
        torch.testing.assert_close(layer.running_mean, before / 10, **STATS)
    assert torch.equal(layer.running_mean, before)
