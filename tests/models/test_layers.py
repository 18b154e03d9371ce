"""Placement order, bias rule, BN settings, init and ghost BN of every built-in model."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from models.config import Init, Placement, TrainConfig
from models.errors import ConfigError
from models.layers import (
    ACTIVATION_TYPES,
    LINEAR_TYPES,
    GhostBatchNorm1d,
    GhostBatchNorm2d,
    NormSpec,
    init_weights,
)
from models.registry import MODELS
from models.validate import check_config

# (model, input shape, params): small enough to build and run in milliseconds.
MODEL_CASES = [
    ("mlp", (40,), {"width": 16, "depth": 2}),
    ("cnn1d", (40,), {"channels": 8, "depth": 3}),
    ("cnn2d", (1, 8, 8), {"channels": 8, "depth": 2}),
    ("cnn2d", (3, 32, 32), {"channels": 4, "depth": 3}),
    ("resnet", (3, 32, 32), {"depth": 1, "width": 8}),
    ("resnet", (1, 8, 8), {"depth": 2, "width": 4}),
]


def build(name: str, shape: tuple[int, ...], params: dict, norm: NormSpec) -> nn.Module:
    return MODELS.get(name).builder(shape, 10, norm, **params)


def placements_of(name: str) -> list[Placement]:
    return [Placement(p) for p in MODELS.get(name).tags["placements"]]


def execution_order(model: nn.Module, shape: tuple[int, ...]) -> list[nn.Module]:
    """Leaf modules in the order a forward pass runs them."""
    order: list[nn.Module] = []
    hooks = [
        m.register_forward_hook(lambda mod, *_: order.append(mod))
        for m in model.modules()
        if not list(m.children())
    ]
    model.train()
    model(torch.randn(4, *shape))
    for h in hooks:
        h.remove()
    return order


def model_cases():
    for name, shape, params in MODEL_CASES:
        for placement in placements_of(name):
            yield pytest.param(name, shape, params, placement, id=f"{name}-{shape}-{placement}")


@pytest.mark.parametrize(("name", "shape", "params", "placement"), list(model_cases()))
def test_layer_order_and_bias_rule_hold_for_every_model_and_placement(
    name: str, shape: tuple[int, ...], params: dict, placement: Placement
) -> None:
    model = build(name, shape, params, NormSpec(placement=placement))
    order = [m for m in execution_order(model, shape) if not isinstance(m, nn.Identity)]
    bns = [i for i, m in enumerate(order) if isinstance(m, _BatchNorm)]
    if placement is Placement.NONE:
        assert not bns
    else:
        assert bns
    for i in bns:
        before, after = order[i - 1] if i else None, order[i + 1] if i + 1 < len(order) else None
        if placement is Placement.BEFORE_ACTIVATION:
            assert isinstance(before, LINEAR_TYPES), f"BN #{i} not right after a conv/linear"
        elif placement is Placement.AFTER_ACTIVATION:
            assert isinstance(before, ACTIVATION_TYPES), f"BN #{i} not right after an activation"
        elif placement is Placement.PRE_ACTIVATION:
            assert isinstance(after, ACTIVATION_TYPES), f"BN #{i} not right before an activation"
    if placement is Placement.PRE_ACTIVATION:
        # Data flow, not execution order, decides here: every conv feeds the residual stream,
        # whose every consumer starts with BN, so no conv has a bias; the classifier has one.
        convs = [m for m in order if isinstance(m, nn.Conv2d)]
        assert all(c.bias is None for c in convs)
        assert isinstance(order[-1], nn.Linear) and order[-1].bias is not None
        return
    # Bias rule: a conv/linear directly followed by BN has no bias; every other one has one.
    for i, module in enumerate(order):
        if isinstance(module, LINEAR_TYPES):
            followed_by_bn = i + 1 < len(order) and isinstance(order[i + 1], _BatchNorm)
            assert (module.bias is None) == followed_by_bn, f"{module} at {i}"


@pytest.mark.parametrize(("name", "shape", "params"), [c[:3] for c in MODEL_CASES])
def test_bn_momentum_eps_and_ghost_size_reach_every_bn_layer(
    name: str, shape: tuple[int, ...], params: dict
) -> None:
    norm = NormSpec(bn_momentum=0.37, bn_eps=1e-3, ghost_batch_size=4)
    bns = [m for m in build(name, shape, params, norm).modules() if isinstance(m, _BatchNorm)]
    assert bns
    assert all(b.momentum == 0.37 and b.eps == 1e-3 and b.ghost_batch_size == 4 for b in bns)


@pytest.mark.parametrize("name", ["mlp", "cnn1d", "cnn2d"])
def test_pre_activation_is_rejected_by_models_other_than_resnet(name: str) -> None:
    # One check, from the registry's placements tag, before anything is built.
    assert "pre_activation" not in MODELS.get(name).tags["placements"]
    with pytest.raises(ConfigError) as err:
        check_config(TrainConfig(model=name, bn_placement="pre_activation"))
    assert err.value.field == "bn_placement"


def test_one_dimensional_input_is_reshaped_inside_the_model() -> None:
    model = build("cnn1d", (40,), {"channels": 4}, NormSpec())
    assert model(torch.randn(5, 40)).shape == (5, 10)
    assert build("cnn1d", (1, 40), {"channels": 4}, NormSpec())(torch.randn(5, 1, 40)).shape == (
        5,
        10,
    )


# --- init ---------------------------------------------------------------------------------------


def first_weight(model: nn.Module) -> torch.Tensor:
    return next(m for m in model.modules() if isinstance(m, LINEAR_TYPES)).weight.detach().clone()


def test_init_kinds_differ_depend_on_seed_and_reset_bn_and_biases() -> None:
    model = build(
        "cnn2d", (1, 8, 8), {"channels": 8}, NormSpec(placement=Placement.AFTER_ACTIVATION)
    )
    weights = {}
    for init in Init:
        init_weights(model, init, init_std=0.02, seed=1)
        weights[init] = first_weight(model)
    assert not torch.equal(weights[Init.KAIMING], weights[Init.XAVIER])
    assert weights[Init.NORMAL].std().item() == pytest.approx(0.02, rel=0.3)
    init_weights(model, Init.KAIMING, seed=2)
    assert not torch.equal(first_weight(model), weights[Init.KAIMING])
    init_weights(model, Init.KAIMING, seed=1)
    assert torch.equal(first_weight(model), weights[Init.KAIMING])
    for m in model.modules():
        if isinstance(m, _BatchNorm):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)
        elif isinstance(m, LINEAR_TYPES) and m.bias is not None:
            assert torch.all(m.bias == 0)


# --- ghost batch norm ---------------------------------------------------------------------------


def manual_ghost_bn(bn: nn.BatchNorm1d | nn.BatchNorm2d, x: torch.Tensor, sizes: list[int]):
    """Reference: plain BN applied chunk after chunk (updates ``bn``'s running statistics)."""
    outs = [bn(chunk) for chunk in torch.split(x, sizes)]
    return torch.cat(outs)


@pytest.mark.parametrize(
    ("cls", "plain", "shape", "sizes"),
    [
        (GhostBatchNorm1d, nn.BatchNorm1d, (32, 6), [8, 8, 8, 8]),
        (GhostBatchNorm1d, nn.BatchNorm1d, (30, 6, 5), [8, 8, 8, 6]),
        (GhostBatchNorm2d, nn.BatchNorm2d, (33, 3, 4, 4), [8, 8, 8, 9]),  # lone sample merged
        (GhostBatchNorm1d, nn.BatchNorm1d, (9, 6), [9]),  # g + 1: one chunk, the whole batch
        (GhostBatchNorm1d, nn.BatchNorm1d, (17, 6), [8, 9]),  # 2g + 1
        (GhostBatchNorm1d, nn.BatchNorm1d, (10, 6), [8, 2]),  # g + 2
    ],
)
@pytest.mark.parametrize("momentum", [0.1, None])
def test_ghost_bn_normalizes_each_chunk_and_updates_running_stats_chunk_by_chunk(
    cls, plain, shape, sizes, momentum
) -> None:
    torch.manual_seed(0)
    x = torch.randn(*shape) * 3 + 1
    ghost = cls(shape[1], ghost_batch_size=8, momentum=momentum)
    ref = plain(shape[1], momentum=momentum)
    with torch.no_grad():
        for bn in (ghost, ref):
            bn.weight.copy_(torch.linspace(0.5, 2, shape[1]))
            bn.bias.copy_(torch.linspace(-1, 1, shape[1]))
            bn.running_mean.fill_(0.3)
    out = ghost(x)
    expected = manual_ghost_bn(ref, x, sizes)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ghost.running_mean, ref.running_mean)
    torch.testing.assert_close(ghost.running_var, ref.running_var)
    assert int(ghost.num_batches_tracked) == int(ref.num_batches_tracked) == len(sizes)


def test_ghost_bn_equals_plain_bn_when_ghost_size_is_the_batch_and_in_eval() -> None:
    torch.manual_seed(0)
    x = torch.randn(16, 4, 5, 5)
    ghost, ref = GhostBatchNorm2d(4, ghost_batch_size=16), nn.BatchNorm2d(4)
    torch.testing.assert_close(ghost(x), ref(x))
    torch.testing.assert_close(ghost.running_var, ref.running_var)
    ghost.eval(), ref.eval()
    torch.testing.assert_close(ghost(x), ref(x))


def test_ghost_bn_gradients_flow_to_input_and_affine_parameters() -> None:
    x = torch.randn(16, 3, requires_grad=True)
    bn = GhostBatchNorm1d(3, ghost_batch_size=4)
    bn(x).pow(2).sum().backward()
    assert x.grad is not None and bn.weight.grad is not None and bn.bias.grad is not None
