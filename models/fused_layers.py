"""Fused layers: K models of one architecture computed as one, weights stacked member-first.

Activations are laid out member-major along the channel (or feature) axis: (N, K * C, *S), member
k's channels at [k * C, (k + 1) * C). In that layout convolutions are grouped convolutions (K
groups), BN is BN over K * C channels (each member with its own running statistics and momentum),
and activations, pooling, flatten and residual additions work unchanged; linear layers are batched
matrix products. Every fused parameter and per-member buffer has the member dimension first, so a
fused optimizer applies per-member hyperparameters along it and ``keep_members`` drops members by
slicing.

``fuse_models`` builds the fused model from K built (and initialized) models: it replaces their
leaves by fused leaves and keeps their parent modules, whose forward must only compose children
with layout-agnostic operations (as ``nn.Sequential`` and the ResNet ``BasicBlock`` do). Models opt
in with the registry tag ``fusable=True``.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from models.architectures import Reshape
from models.layers import (
    GhostBatchNorm1d,
    GhostBatchNorm2d,
    ghost_batch_norm,
    update_running_stats,
)


class FusionError(ValueError):
    """A model that has no fused form (an unknown layer, dropout, members that differ)."""


def _stack(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.stack([t.detach() for t in tensors])


class _Fused(nn.Module):
    """A fused leaf: its parameters and non-scalar buffers have the member dimension first."""

    members: int

    def keep_members(self, keep: list[int]) -> None:
        """Keep only the members at positions ``keep`` (in that order)."""
        for param in self.parameters(recurse=False):
            param.grad = None
            # In place on the Parameter object, so optimizers keep referring to it.
            param.data = param.data[torch.tensor(keep, device=param.device)]
        for name, buffer in self.named_buffers(recurse=False):
            if buffer.dim() > 0:
                setattr(self, name, buffer[torch.tensor(keep, device=buffer.device)])
        self.members = len(keep)


class FusedLinear(_Fused):
    """K linear layers as one batched matrix product: (N, K * in) -> (N, K * out)."""

    def __init__(self, layers: Sequence[nn.Linear]) -> None:
        super().__init__()
        self.members = len(layers)
        self.weight = nn.Parameter(_stack([m.weight for m in layers]))  # (K, out, in)
        self.bias: nn.Parameter | None
        if layers[0].bias is None:
            self.register_parameter("bias", None)
        else:
            self.bias = nn.Parameter(_stack([m.bias for m in layers if m.bias is not None]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        xk = x.reshape(n, self.members, -1).transpose(0, 1)  # (K, N, in)
        weight = self.weight.transpose(1, 2)  # (K, in, out)
        if self.bias is None:
            y = torch.bmm(xk, weight)
        else:
            y = torch.baddbmm(self.bias.unsqueeze(1), xk, weight)
        return y.transpose(0, 1).reshape(n, -1)

    def extra_repr(self) -> str:
        k, out, inp = self.weight.shape
        return f"members={k}, in_features={inp}, out_features={out}, bias={self.bias is not None}"


class FusedConv(_Fused):
    """K Conv1d or Conv2d layers as one grouped convolution over (N, K * C_in, *S)."""

    def __init__(self, layers: Sequence[nn.Conv1d | nn.Conv2d]) -> None:
        super().__init__()
        first = layers[0]
        if first.padding_mode != "zeros":
            raise FusionError(f"padding mode {first.padding_mode!r} has no fused form")
        self.members = len(layers)
        self.dims = 1 if isinstance(first, nn.Conv1d) else 2
        self.stride = first.stride
        self.padding = first.padding
        self.dilation = first.dilation
        self.groups = first.groups
        self.weight = nn.Parameter(_stack([m.weight for m in layers]))  # (K, out, in/groups, *k)
        self.bias: nn.Parameter | None
        if first.bias is None:
            self.register_parameter("bias", None)
        else:
            self.bias = nn.Parameter(_stack([m.bias for m in layers if m.bias is not None]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv = F.conv1d if self.dims == 1 else F.conv2d
        bias = None if self.bias is None else self.bias.reshape(-1)
        return conv(
            x,
            self.weight.flatten(0, 1),
            bias,
            self.stride,
            self.padding,
            self.dilation,
            self.groups * self.members,
        )

    def extra_repr(self) -> str:
        k, out, inp, *kernel = self.weight.shape
        return (
            f"members={k}, in_channels={inp * self.groups}, out_channels={out}, "
            f"kernel_size={tuple(kernel)}, stride={self.stride}, padding={self.padding}"
        )


class FusedBatchNorm(_Fused, _BatchNorm):
    """K BN layers (plain or ghost) as BN over K * C channels, each member with its own running
    statistics and its own ``bn_momentum``.

    torch's BN kernel takes one scalar momentum, so training mode computes the batch statistics
    with it (``momentum=1`` into scratch buffers: exactly the batch mean and unbiased variance) and
    folds them into the running statistics with ``update_running_stats`` and a per-channel
    momentum. Ghost batches use ``ghost_batch_norm``, as the unfused ``GhostBatchNorm`` does.

    ``momentum`` (torch's attribute) is only a switch here: None, as ``recompute_bn_stats`` sets it
    for precise BN, means a cumulative average over all members; otherwise each member's own
    ``bn_momentum`` (a (K, C) buffer: its momentum repeated over its channels) applies.
    """

    bn_momentum: torch.Tensor

    def __init__(self, layers: Sequence[_BatchNorm]) -> None:
        first = layers[0]
        if not (first.affine and first.track_running_stats):
            raise FusionError("BN without affine parameters or running statistics")
        if any(m.momentum is None for m in layers):
            raise FusionError("BN with a cumulative average (momentum None)")
        members, channels = len(layers), first.num_features
        super().__init__(members * channels, eps=first.eps)
        self.members = members
        self.channels = channels
        self.dims = 2 if isinstance(first, nn.BatchNorm2d) else 1
        self.ghost_batch_size: int | None = getattr(first, "ghost_batch_size", None)
        self.weight = nn.Parameter(_stack([m.weight for m in layers]))  # (K, C)
        self.bias = nn.Parameter(_stack([m.bias for m in layers]))
        self.running_mean = _stack([m.running_mean for m in layers])  # type: ignore[misc]
        self.running_var = _stack([m.running_var for m in layers])  # type: ignore[misc]
        self.num_batches_tracked = first.num_batches_tracked.detach().clone()  # type: ignore[union-attr]
        momenta = torch.tensor([float(m.momentum) for m in layers])  # type: ignore[arg-type]
        self.register_buffer("bn_momentum", momenta.unsqueeze(1).repeat(1, channels))

    def _check_input_dim(self, x: torch.Tensor) -> None:
        allowed = (4,) if self.dims == 2 else (2, 3)
        if x.dim() not in allowed:
            raise ValueError(f"expected {' or '.join(map(str, allowed))}-D input, got {x.dim()}-D")

    def keep_members(self, keep: list[int]) -> None:
        super().keep_members(keep)
        self.num_features = self.members * self.channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        weight, bias = self.weight.reshape(-1), self.bias.reshape(-1)
        running_mean = self.running_mean.view(-1)  # type: ignore[union-attr]
        running_var = self.running_var.view(-1)  # type: ignore[union-attr]
        if not self.training:
            return F.batch_norm(x, running_mean, running_var, weight, bias, False, 0.0, self.eps)
        chunked = ghost_batch_norm(x, self.ghost_batch_size, weight, bias, self.eps)
        if chunked is None:
            mean, var = torch.zeros_like(running_mean), torch.ones_like(running_var)
            y = F.batch_norm(x, mean, var, weight, bias, True, 1.0, self.eps)
            chunked = (y, mean.unsqueeze(0), var.unsqueeze(0))
        y, means, variances = chunked
        momentum = None if self.momentum is None else self.bn_momentum.view(-1)
        update_running_stats(self, means, variances, momentum)
        return y

    def extra_repr(self) -> str:
        return (
            f"members={self.members}, channels={self.channels}, eps={self.eps}, "
            f"ghost_batch_size={self.ghost_batch_size}"
        )


class FusedReshape(_Fused):
    """``Reshape`` of K members' samples: (N, K * prod(shape)) -> (N, K * shape[0], *shape[1:])."""

    def __init__(self, layers: Sequence[Reshape]) -> None:
        super().__init__()
        self.members = len(layers)
        self.shape = layers[0].shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], self.members * self.shape[0], *self.shape[1:])

    def extra_repr(self) -> str:
        return f"members={self.members}, shape={self.shape}"


# --- assembling a fused model -------------------------------------------------------------------

_BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, GhostBatchNorm1d, GhostBatchNorm2d)
# Leaves that work unchanged on member-major activations (elementwise or per channel).
_LAYOUT_AGNOSTIC = (
    nn.ReLU,
    nn.Identity,
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
)


def fuse_models(models: Sequence[nn.Module]) -> nn.Module:
    """One model computing ``models`` (K models of one architecture) side by side.

    The fused model's input is the members' inputs member-major, (N, K * C, *S) (for flat samples
    (N, K * F)); its output is (N, K * classes), member k's logits at [k * classes, (k+1) *
    classes). Parameters and running statistics are copies of the members' own.

    Raises:
        FusionError: a layer without a fused form (dropout > 0 among them), a parent module with
            parameters of its own, or members whose layers differ.
    """
    fused = copy.deepcopy(models[0])
    for name, module in list(fused.named_modules()):
        if any(True for _ in module.children()):
            own = [*module.parameters(recurse=False), *module.buffers(recurse=False)]
            if own:
                raise FusionError(f"{name or 'model'}: a parent module with parameters of its own")
            continue
        layers = [module, *(m.get_submodule(name) for m in models[1:])]
        leaf = _fuse_leaf(layers, name or "model")
        if leaf is module:
            continue
        if not name:
            return leaf
        parent, _, attr = name.rpartition(".")
        setattr(fused.get_submodule(parent), attr, leaf)
    return fused


def _fuse_leaf(layers: list[nn.Module], name: str) -> nn.Module:
    """The fused form of one leaf of K models (``layers[0]`` itself if it needs none)."""
    first, kind = layers[0], type(layers[0])
    if any(type(m) is not kind for m in layers):
        raise FusionError(f"{name}: members have different layers")
    if kind not in _BN_TYPES and any(m.extra_repr() != first.extra_repr() for m in layers):
        raise FusionError(f"{name}: members' {kind.__name__} layers differ")
    # Exact types: a subclass may have a forward of its own.
    if kind is nn.Linear:
        return FusedLinear(cast(list[nn.Linear], layers))
    if kind is nn.Conv1d or kind is nn.Conv2d:
        return FusedConv(cast(list[nn.Conv1d | nn.Conv2d], layers))
    if kind in _BN_TYPES:
        return FusedBatchNorm(cast(list[_BatchNorm], layers))
    if kind is Reshape:
        return FusedReshape(cast(list[Reshape], layers))
    if type(first) is nn.Flatten and (first.start_dim, first.end_dim) == (1, -1):
        return first
    if type(first) is nn.Dropout and first.p == 0:
        return first
    if kind in _LAYOUT_AGNOSTIC:
        return first
    raise FusionError(f"{name}: no fused form of {kind.__name__}")


def keep_members(model: nn.Module, keep: list[int]) -> None:
    """Keep only the members at positions ``keep`` of a fused model (parameters and buffers)."""
    for module in model.modules():
        if isinstance(module, _Fused):
            module.keep_members(keep)
