"""Placement-aware building blocks: BN layers (ghost batches), ordered blocks, init, precise BN.

One rule decides biases everywhere: a linear/conv layer *directly* followed by BN has no bias
(BN's mean subtraction would cancel it and its shift parameter replaces it); any other layer keeps
its bias.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from models.config import Init, Placement, TrainConfig
from models.errors import ConfigError

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

    def check_placement(self, allowed: Iterable[Placement | str], model: str) -> None:
        """Raise ConfigError (field ``bn_placement``) unless the placement is in ``allowed``."""
        allowed = [Placement(p) for p in allowed]
        if self.placement not in allowed:
            raise ConfigError(
                "bn_placement",
                f"{self.placement.value!r} is not supported by model {model!r}; "
                f"supported: {', '.join(p.value for p in allowed)}",
            )


# --- ghost batch normalization ------------------------------------------------------------------


class _GhostBatchNorm(_BatchNorm):
    """BN whose training-mode statistics come from virtual batches of ``ghost_batch_size`` samples.

    Each chunk is normalized with its own mean and (biased) variance; the running statistics are
    updated as if BN had seen the chunks one after another (closed form, no Python loop). A final
    chunk of one sample is merged into the previous chunk (its variance would be undefined).
    Evaluation mode is plain BN with running statistics.
    """

    def __init__(self, num_features: int, ghost_batch_size: int | None = None, **kwargs) -> None:
        super().__init__(num_features, **kwargs)
        self.ghost_batch_size = ghost_batch_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.ghost_batch_size
        if not self.training or g is None or x.shape[0] <= g:
            return super().forward(x)
        self._check_input_dim(x)
        n = x.shape[0]
        full, rest = divmod(n, g)
        if rest == 1:  # merge a lone sample into the last full chunk
            if full == 1:  # g + 1 samples: that chunk is the whole batch
                return super().forward(x)
            full, rest = full - 1, g + 1
        head = x[: full * g].reshape(full, g, *x.shape[1:])
        y_head, mean_h, var_h = self._normalize_chunks(head)
        if rest == 0:
            y, means, variances = y_head.reshape_as(x), mean_h, var_h
        else:
            tail = x[full * g :].unsqueeze(0)
            y_tail, mean_t, var_t = self._normalize_chunks(tail)
            y = torch.cat([y_head.reshape(full * g, *x.shape[1:]), y_tail[0]])
            means, variances = torch.cat([mean_h, mean_t]), torch.cat([var_h, var_t])
        if self.track_running_stats and self.running_mean is not None:
            self._update_running_stats(means, variances)
        return y

    def _normalize_chunks(
        self, chunks: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Normalize (k, m, C, *S) per chunk; return output, means and unbiased variances (k, C)."""
        dims = (1, *range(3, chunks.dim()))
        mean = chunks.mean(dim=dims, keepdim=True)
        var = chunks.var(dim=dims, unbiased=False, keepdim=True)
        y = (chunks - mean) * torch.rsqrt(var + self.eps)
        if self.affine:
            shape = (1, 1, -1) + (1,) * (chunks.dim() - 3)
            y = y * self.weight.view(shape) + self.bias.view(shape)
        count = chunks.numel() // (chunks.shape[0] * chunks.shape[2])
        k, c = chunks.shape[0], chunks.shape[2]
        unbiased = var.detach().reshape(k, c) * (count / max(count - 1, 1))
        return y, mean.detach().reshape(k, c), unbiased

    @torch.no_grad()
    def _update_running_stats(self, means: torch.Tensor, variances: torch.Tensor) -> None:
        k = means.shape[0]
        tracked = int(self.num_batches_tracked)
        self.num_batches_tracked.add_(k)
        if self.momentum is None:  # cumulative average, as PyTorch does with momentum=None
            total = tracked + k
            self.running_mean.mul_(tracked / total).add_(means.sum(0) / total)
            self.running_var.mul_(tracked / total).add_(variances.sum(0) / total)
            return
        m = self.momentum
        # Sequential EMA over k chunks: r_k = (1-m)^k r_0 + sum_i m (1-m)^(k-1-i) s_i.
        powers = torch.arange(k - 1, -1, -1, device=means.device, dtype=means.dtype)
        weights = (m * (1 - m) ** powers).unsqueeze(1)
        self.running_mean.mul_((1 - m) ** k).add_((weights * means).sum(0))
        self.running_var.mul_((1 - m) ** k).add_((weights * variances).sum(0))


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
