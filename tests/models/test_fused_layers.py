"""Fused layers and optimizers against K unfused ones, step by step (tolerance: float32 rounding,
rtol/atol 1e-5; the layers see identical inputs, so no training amplifies the differences)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from models.fused_layers import FusionError, fuse_models, keep_members
from models.fused_optim import FusedAdamW, FusedSGD
from models.layers import GhostBatchNorm1d, GhostBatchNorm2d, recompute_bn_stats

TOL = {"rtol": 1e-5, "atol": 1e-5}
MOMENTA = (0.1, 0.3, 0.05)


def member_major(xs: list[torch.Tensor]) -> torch.Tensor:
    """K members' inputs (N, C, *S) side by side: (N, K * C, *S)."""
    return torch.cat(xs, dim=1)


@pytest.mark.parametrize(
    ("cls", "shape", "ghost"),
    [
        (GhostBatchNorm1d, (30, 4), None),
        (GhostBatchNorm1d, (30, 4, 5), 8),
        (GhostBatchNorm2d, (33, 3, 4, 4), 8),  # a lone last sample merges into the last chunk
        (GhostBatchNorm2d, (16, 3, 4, 4), None),
    ],
)
def test_fused_bn_keeps_each_members_statistics_with_its_own_momentum(
    cls: type[nn.Module], shape: tuple[int, ...], ghost: int | None
) -> None:
    torch.manual_seed(0)
    bns = [cls(shape[1], ghost_batch_size=ghost, momentum=m) for m in MOMENTA]
    for k, bn in enumerate(bns):
        with torch.no_grad():
            bn.weight.uniform_(0.5, 2)
            bn.bias.uniform_(-1, 1)
            bn.running_mean.fill_(0.1 * k)
    fused = fuse_models([nn.Sequential(bn) for bn in bns])
    for _ in range(3):
        xs = [torch.randn(*shape) * (k + 1) + k for k in range(len(bns))]
        torch.testing.assert_close(
            fused(member_major(xs)),
            member_major([bn(x) for bn, x in zip(bns, xs, strict=True)]),
            **TOL,
        )
    (layer,) = [m for m in fused.modules() if hasattr(m, "bn_momentum")]
    for k, bn in enumerate(bns):
        torch.testing.assert_close(layer.running_mean[k], bn.running_mean, **TOL)
        torch.testing.assert_close(layer.running_var[k], bn.running_var, **TOL)
    fused.eval()
    for bn in bns:
        bn.eval()
    xs = [torch.randn(*shape) for _ in bns]
    torch.testing.assert_close(
        fused(member_major(xs)), member_major([bn(x) for bn, x in zip(bns, xs, strict=True)]), **TOL
    )


def test_precise_bn_on_a_fused_model_is_each_members_true_average() -> None:
    torch.manual_seed(0)
    bns = [GhostBatchNorm1d(4, ghost_batch_size=8, momentum=m) for m in MOMENTA]
    fused = fuse_models([nn.Sequential(bn) for bn in bns])
    batches = [[torch.randn(24, 4) + k for k in range(3)] for _ in range(4)]
    assert recompute_bn_stats(fused, (member_major(b) for b in batches)) == 4
    for k, bn in enumerate(bns):
        recompute_bn_stats(bn, (b[k] for b in batches))
        torch.testing.assert_close(fused[0].running_mean[k], bn.running_mean, **TOL)
        torch.testing.assert_close(fused[0].running_var[k], bn.running_var, **TOL)


def test_fused_linear_and_conv_compute_each_member_and_drop_members_on_request() -> None:
    torch.manual_seed(0)
    models = [
        nn.Sequential(nn.Conv1d(2, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(15, 4))
        for _ in range(3)
    ]
    fused = fuse_models(models)
    xs = [torch.randn(6, 2, 5) for _ in models]
    out = fused(member_major(xs))
    torch.testing.assert_close(
        out, member_major([m(x) for m, x in zip(models, xs, strict=True)]), **TOL
    )
    keep_members(fused, [0, 2])
    out = fused(member_major([xs[0], xs[2]]))
    torch.testing.assert_close(out, member_major([models[0](xs[0]), models[2](xs[2])]), **TOL)
    assert all(p.shape[0] == 2 for p in fused.parameters())


@pytest.mark.parametrize(
    ("layer", "message"),
    [
        (nn.Dropout(0.5), "Dropout"),
        (nn.Tanh(), "Tanh"),
        (nn.LayerNorm(4), "LayerNorm"),
    ],
)
def test_layers_without_a_fused_form_are_refused(layer: nn.Module, message: str) -> None:
    with pytest.raises(FusionError, match=message):
        fuse_models([nn.Sequential(nn.Linear(4, 4), layer) for _ in range(2)])


def test_a_parent_with_parameters_of_its_own_is_refused() -> None:
    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.scale = nn.Parameter(torch.ones(()))
            self.linear = nn.Linear(4, 4)

    with pytest.raises(FusionError, match="parameters of its own"):
        fuse_models([Scaled(), Scaled()])


# --- optimizers ---------------------------------------------------------------------------------


def members_and_fused(k: int) -> tuple[list[nn.Parameter], nn.Parameter]:
    torch.manual_seed(0)
    params = [nn.Parameter(torch.randn(3, 4)) for _ in range(k)]
    return params, nn.Parameter(torch.stack([p.detach() for p in params]))


@pytest.mark.parametrize("nesterov", [False, True])
def test_fused_sgd_steps_each_member_as_torch_sgd(nesterov: bool) -> None:
    lr, momentum, decay = [0.1, 0.02, 0.5], [0.9, 0.5, 0.8], [5e-4, 0.0, 1e-2]
    params, fused = members_and_fused(3)
    optims = [
        torch.optim.SGD(
            [p], lr=lr[k], momentum=momentum[k], weight_decay=decay[k], nesterov=nesterov
        )
        for k, p in enumerate(params)
    ]
    fused_opt = FusedSGD([fused], lr, momentum, decay, nesterov)
    for step in range(4):
        factor = 1 / (step + 1)
        grads = torch.randn(3, 3, 4)
        for k, (p, opt) in enumerate(zip(params, optims, strict=True)):
            p.grad = grads[k].clone()
            opt.param_groups[0]["lr"] = lr[k] * factor
            opt.step()
        fused.grad = grads.clone()
        fused_opt.step(factor)
    torch.testing.assert_close(fused.detach(), torch.stack([p.detach() for p in params]), **TOL)


def test_fused_adamw_steps_each_member_as_torch_adamw_and_drops_members() -> None:
    lr, beta1, decay = [1e-2, 3e-3, 1e-3], [0.9, 0.5, 0.8], [5e-4, 0.0, 1e-1]
    params, fused = members_and_fused(3)
    optims = [
        torch.optim.AdamW([p], lr=lr[k], betas=(beta1[k], 0.999), weight_decay=decay[k])
        for k, p in enumerate(params)
    ]
    fused_opt = FusedAdamW([fused], lr, beta1, decay)
    for step in range(4):
        if step == 2:  # member 1 leaves: the others go on as before
            fused.data = fused.data[[0, 2]]
            fused_opt.keep_members([0, 2])
            del params[1], optims[1]
        grads = torch.randn(len(params), 3, 4)
        for k, (p, opt) in enumerate(zip(params, optims, strict=True)):
            p.grad = grads[k].clone()
            opt.step()
        fused.grad = grads.clone()
        fused_opt.step(1.0)
    torch.testing.assert_close(fused.detach(), torch.stack([p.detach() for p in params]), **TOL)
