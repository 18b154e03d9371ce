"""Placement-aware building blocks: BN layers (ghost batches), ordered blocks, init, precise BN,
the BN momentum probe.

One rule decides biases everywhere: a linear/conv layer *directly* followed by BN has no bias
(BN's mean subtraction would cancel it and its shift parameter replaces it); any other layer keeps
its bias.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from models.config import Init, Placement, TrainConfig

LINEAR_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d)
ACTIVATION_TYPES = (nn.ReLU,)


@dataclass(frozen=True)
class NormSpec:
    """How every BN layer of a model is built (``bn_momentum`` in PyTorch's convention)."""

    placement: Placement = Placement.BEFORE_ACTIVATION
    bn_momentum: float | None = 0.1
    bn_eps: float = 1e-5
    ghost_batch_size: int | None = None

    @property
    def enabled(self) -> bool:
        return self.placement is not Placement.NONE

    @classmethod
    def from_config(cls, config: TrainConfig) -> NormSpec:
        """The BN settings of a training configuration."""
        return cls(
            placement=Placement(config.bn_placement),
            bn_momentum=config.bn_momentum,
            bn_eps=config.bn_eps,
            ghost_batch_size=config.ghost_batch_size,
        )


# --- ghost batch normalization ------------------------------------------------------------------


def ghost_batch_norm(
    x: torch.Tensor,
    ghost_batch_size: int | None,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """Training-mode BN of ``x`` (N, C, *S) over virtual batches of ``ghost_batch_size`` samples.

    Each chunk is normalized with its own mean and (biased) variance. A final chunk of one sample
    is merged into the previous chunk (its variance would be undefined).

    Returns:
        (output, per-chunk means, per-chunk unbiased variances), the statistics as (k, C); None
        when the batch is a single chunk, i.e. plain BN applies.
    """
    g = ghost_batch_size
    if g is None or x.shape[0] <= g:
        return None
    n = x.shape[0]
    full, rest = divmod(n, g)
    if rest == 1:  # merge a lone sample into the last full chunk
        if full == 1:  # g + 1 samples: that chunk is the whole batch
            return None
        full, rest = full - 1, g + 1
    head = x[: full * g].reshape(full, g, *x.shape[1:])
    y_head, mean_h, var_h = _normalize_chunks(head, weight, bias, eps)
    if rest == 0:
        return y_head.reshape_as(x), mean_h, var_h
    tail = x[full * g :].unsqueeze(0)
    y_tail, mean_t, var_t = _normalize_chunks(tail, weight, bias, eps)
    y = torch.cat([y_head.reshape(full * g, *x.shape[1:]), y_tail[0]])
    return y, torch.cat([mean_h, mean_t]), torch.cat([var_h, var_t])


def _normalize_chunks(
    chunks: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Normalize (k, m, C, *S) per chunk; return output, means and unbiased variances (k, C)."""
    dims = (1, *range(3, chunks.dim()))
    mean = chunks.mean(dim=dims, keepdim=True)
    var = chunks.var(dim=dims, unbiased=False, keepdim=True)
    y = (chunks - mean) * torch.rsqrt(var + eps)
    if weight is not None and bias is not None:
        shape = (1, 1, -1) + (1,) * (chunks.dim() - 3)
        y = y * weight.view(shape) + bias.view(shape)
    count = chunks.numel() // (chunks.shape[0] * chunks.shape[2])
    k, c = chunks.shape[0], chunks.shape[2]
    unbiased = var.detach().reshape(k, c) * (count / max(count - 1, 1))
    return y, mean.detach().reshape(k, c), unbiased


@torch.no_grad()
def update_running_stats(
    layer: _BatchNorm,
    means: torch.Tensor,
    variances: torch.Tensor,
    momentum: float | torch.Tensor | None,
) -> None:
    """Fold k batch statistics (k, C) into ``layer``'s running statistics as k BN steps in a row.

    Args:
        layer: Its running mean/var hold C values (any shape; updated through a flat view).
        means: Per-step means, (k, C).
        variances: Per-step unbiased variances, (k, C).
        momentum: PyTorch's convention; one float for all channels or a (C,) tensor (one per
            channel, e.g. per fused member); None = cumulative average, as PyTorch does.
    """
    assert layer.running_mean is not None and layer.running_var is not None
    assert layer.num_batches_tracked is not None
    running_mean, running_var = layer.running_mean.view(-1), layer.running_var.view(-1)
    k = means.shape[0]
    if momentum is None:  # cumulative average; reads the count, so only here (a host sync)
        tracked = int(layer.num_batches_tracked)
        total = tracked + k
        running_mean.mul_(tracked / total).add_(means.sum(0) / total)
        running_var.mul_(tracked / total).add_(variances.sum(0) / total)
    elif k == 1:  # one step (fused plain BN): r + m (s - r), two kernels
        running_mean.lerp_(means[0], momentum)
        running_var.lerp_(variances[0], momentum)
    else:
        m = momentum
        # Sequential EMA over k steps: r_k = (1-m)^k r_0 + sum_i m (1-m)^(k-1-i) s_i.
        powers = torch.arange(k - 1, -1, -1, device=means.device, dtype=means.dtype).unsqueeze(1)
        weights = m * (1 - m) ** powers  # (k, 1), or (k, C) for a per-channel momentum
        running_mean.mul_((1 - m) ** k).add_((weights * means).sum(0))
        running_var.mul_((1 - m) ** k).add_((weights * variances).sum(0))
    layer.num_batches_tracked.add_(k)


class _GhostBatchNorm(_BatchNorm):
    """BN whose training-mode statistics come from virtual batches of ``ghost_batch_size`` samples.

    See ``ghost_batch_norm``; the running statistics are updated as if BN had seen the chunks one
    after another (closed form, no Python loop). Evaluation mode is plain BN with running
    statistics.
    """

    def __init__(
        self, num_features: int, ghost_batch_size: int | None = None, **kwargs: Any
    ) -> None:
        super().__init__(num_features, **kwargs)
        self.ghost_batch_size = ghost_batch_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        self._check_input_dim(x)  # type: ignore[no-untyped-call]
        chunked = ghost_batch_norm(x, self.ghost_batch_size, self.weight, self.bias, self.eps)
        if chunked is None:
            return super().forward(x)
        y, means, variances = chunked
        if self.track_running_stats and self.running_mean is not None:
            update_running_stats(self, means, variances, self.momentum)
        return y


class GhostBatchNorm1d(_GhostBatchNorm, nn.BatchNorm1d):
    """BatchNorm1d with ghost batches (see ``_GhostBatchNorm``)."""


class GhostBatchNorm2d(_GhostBatchNorm, nn.BatchNorm2d):
    """BatchNorm2d with ghost batches (see ``_GhostBatchNorm``)."""


def batch_norm(num_features: int, norm: NormSpec, dims: int) -> nn.Module:
    """A BN layer for ``dims``-D feature maps (1 = (N, C) or (N, C, L); 2 = (N, C, H, W))."""
    cls = {1: GhostBatchNorm1d, 2: GhostBatchNorm2d}[dims]
    return cls(
        num_features,
        ghost_batch_size=norm.ghost_batch_size,
        momentum=norm.bn_momentum,
        eps=norm.bn_eps,
    )


# --- ordered blocks -----------------------------------------------------------------------------


def norm_act_block(
    make_layer: Callable[[bool], nn.Module],
    in_features: int,
    out_features: int,
    norm: NormSpec,
    dims: int,
) -> nn.Sequential:
    """``[layer, BN, activation]`` ordered by ``norm.placement``.

    Args:
        make_layer: Builds the linear/conv layer; called with ``bias`` (False when BN follows it).
        in_features: Channels entering the block (the BN's width for pre-activation).
        out_features: Channels the layer produces (the BN's width otherwise).
        norm: Placement and BN settings.
        dims: 1 for linear/Conv1d, 2 for Conv2d.

    before_activation: layer(bias=False) -> BN -> act; after_activation: layer -> act -> BN;
    none: layer -> act; pre_activation: BN -> act -> layer(bias=False), since in a pre-activation
    network every consumer of a layer's output starts with BN, which cancels a bias.
    """
    placement = norm.placement
    if placement is Placement.BEFORE_ACTIVATION:
        return nn.Sequential(make_layer(False), batch_norm(out_features, norm, dims), nn.ReLU())
    if placement is Placement.AFTER_ACTIVATION:
        return nn.Sequential(make_layer(True), nn.ReLU(), batch_norm(out_features, norm, dims))
    if placement is Placement.NONE:
        return nn.Sequential(make_layer(True), nn.ReLU())
    return nn.Sequential(batch_norm(in_features, norm, dims), nn.ReLU(), make_layer(False))


# --- initialization -----------------------------------------------------------------------------


def init_weights(model: nn.Module, init: Init | str, init_std: float = 0.02, seed: int = 0) -> None:
    """Initialize linear/conv weights by ``init``, zero their biases, set BN to weight 1, bias 0.

    Draws from a private generator seeded with ``seed``, so the result does not depend on (or
    disturb) the global RNG.
    """
    init = Init(init)
    gen = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, LINEAR_TYPES):
            # Draw on the CPU with the private generator, then copy (works for any device).
            weight = torch.empty(module.weight.shape, dtype=module.weight.dtype)
            if init is Init.KAIMING:
                nn.init.kaiming_normal_(weight, mode="fan_in", nonlinearity="relu", generator=gen)
            elif init is Init.XAVIER:
                nn.init.xavier_normal_(weight, generator=gen)
            else:
                nn.init.normal_(weight, 0.0, init_std, generator=gen)
            with torch.no_grad():
                module.weight.copy_(weight)
                if module.bias is not None:
                    module.bias.zero_()
        elif isinstance(module, _BatchNorm) and module.affine:
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


# --- precise BN ---------------------------------------------------------------------------------


def bn_layers(model: nn.Module) -> list[_BatchNorm]:
    """All BN layers of ``model``."""
    return [m for m in model.modules() if isinstance(m, _BatchNorm)]


@torch.no_grad()
def recompute_bn_stats(model: nn.Module, batches: Iterable[torch.Tensor]) -> int:
    """Replace BN running statistics by their true average over ``batches`` ("precise BN").

    The exponential running average lags behind the weights during training; averaging over a few
    batches with the final weights gives evaluation statistics that match them. Returns the number
    of batches used. Training flags and momenta are restored afterwards.
    """
    layers = bn_layers(model)
    if not layers:
        return 0
    was_training = model.training
    momenta = [layer.momentum for layer in layers]
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None  # cumulative average: every batch counts equally
    model.train()
    used = 0
    try:
        for batch in batches:
            model(batch)
            used += 1
    finally:
        for layer, momentum in zip(layers, momenta, strict=True):
            layer.momentum = momentum
        model.train(was_training)
    return used


# --- BN momentum probe --------------------------------------------------------------------------

_PROBE = "momentum_probe"  # the attribute of a BN layer that holds its MomentumProbe


class MomentumProbe:
    """The running statistics one BN layer would hold under other momenta, from the same batches.

    In training mode BN normalizes with each batch's own statistics, so neither its output nor the
    weights' trajectory depends on ``bn_momentum``: only the running averages do. The probe folds
    each training step's batch statistics into one running average per probed momentum, as the
    layer folds them into its own (ghost batches: chunk after chunk, as ``_GhostBatchNorm`` does),
    so after one run it holds what training again with each momentum would have left. It computes
    the batch statistics itself (a mean and a variance per channel and step), so they equal the
    layer's up to float32 summation order. Idle while the layer's momentum is None (precise BN's
    recomputation) and in evaluation mode.

    Statistics are (P, F): P probed momenta, F = the layer's running-statistics size (K * C in a
    fused layer, member-major).
    """

    def __init__(self, layer: _BatchNorm, momenta: Sequence[float]) -> None:
        assert layer.running_mean is not None and layer.running_var is not None
        self.momenta = tuple(float(m) for m in momenta)
        shape = (len(self.momenta), layer.running_mean.numel())
        self.mean = layer.running_mean.detach().reshape(1, -1).expand(shape).clone()
        self.var = layer.running_var.detach().reshape(1, -1).expand(shape).clone()
        self.rate = torch.tensor(self.momenta, dtype=self.mean.dtype, device=self.mean.device)
        self.rate = self.rate.unsqueeze(1)  # (P, 1)

    @torch.no_grad()
    def update(self, means: torch.Tensor, variances: torch.Tensor) -> None:
        """Fold k batch statistics (k, F) in, as k BN steps in a row (``update_running_stats``)."""
        m = self.rate
        k = means.shape[0]
        if k == 1:
            self.mean.lerp_(means.expand_as(self.mean), m)
            self.var.lerp_(variances.expand_as(self.var), m)
            return
        powers = torch.arange(k - 1, -1, -1, device=means.device, dtype=means.dtype)
        weights = m * (1 - m) ** powers  # (P, k): step i's weight after the k steps
        decay = (1 - m) ** k
        self.mean.mul_(decay).add_(weights @ means)
        self.var.mul_(decay).add_(weights @ variances)

    def keep_members(self, keep: list[int], members: int) -> None:
        """Keep the members at ``keep`` of a fused layer's probe (of ``members`` members)."""
        p = len(self.momenta)
        index = torch.tensor(keep, device=self.mean.device)
        self.mean = self.mean.reshape(p, members, -1)[:, index].reshape(p, -1)
        self.var = self.var.reshape(p, members, -1)[:, index].reshape(p, -1)


def _feed_probe(layer: nn.Module, inputs: tuple[torch.Tensor, ...], _: torch.Tensor) -> None:
    """Forward hook: this training step's batch statistics into the layer's probe."""
    probe: MomentumProbe | None = getattr(layer, _PROBE, None)
    if probe is None or not layer.training or getattr(layer, "momentum", None) is None:
        return
    with torch.no_grad():
        x = inputs[0].detach().float()
        ghost = getattr(layer, "ghost_batch_size", None)
        chunked = ghost_batch_norm(x, ghost, None, None, float(getattr(layer, "eps", 1e-5)))
        if chunked is not None:
            _, means, variances = chunked
        else:
            var, mean = torch.var_mean(x, dim=[0, *range(2, x.dim())], correction=1)
            means, variances = mean.unsqueeze(0), var.unsqueeze(0)
        probe.update(means, variances)


def attach_momentum_probe(model: nn.Module, momenta: Sequence[float]) -> int:
    """Give each BN layer of ``model`` (placed on its device) a ``MomentumProbe`` of ``momenta``,
    started from its current running statistics; returns how many layers got one."""
    layers = bn_layers(model)
    for layer in layers:
        setattr(layer, _PROBE, MomentumProbe(layer, momenta))
        layer.register_forward_hook(_feed_probe)
    return len(layers)


def probed_momenta(model: nn.Module) -> tuple[float, ...]:
    """The momenta ``model``'s BN layers probe (empty without a probe)."""
    for layer in bn_layers(model):
        probe: MomentumProbe | None = getattr(layer, _PROBE, None)
        if probe is not None:
            return probe.momenta
    return ()


def keep_probe_members(model: nn.Module, keep: list[int], members: int) -> None:
    """Keep the members at ``keep`` in the probes of a fused model (before its layers shrink)."""
    for layer in bn_layers(model):
        probe: MomentumProbe | None = getattr(layer, _PROBE, None)
        if probe is not None:
            probe.keep_members(keep, members)


@contextlib.contextmanager
def probed_statistics(model: nn.Module, index: int) -> Iterator[None]:
    """Inside: every probed BN layer's running statistics are its probe's of momentum ``index``;
    the layer's own are restored on leaving."""
    swapped: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = []
    try:
        with torch.no_grad():
            for layer in bn_layers(model):
                probe: MomentumProbe | None = getattr(layer, _PROBE, None)
                mean, var = layer.running_mean, layer.running_var
                if probe is None or mean is None or var is None:
                    continue
                swapped.append((mean, var, mean.clone(), var.clone()))
                mean.copy_(probe.mean[index].view_as(mean))
                var.copy_(probe.var[index].view_as(var))
        yield
    finally:
        with torch.no_grad():
            for mean, var, own_mean, own_var in swapped:
                mean.copy_(own_mean)
                var.copy_(own_var)
