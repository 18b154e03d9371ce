"""Optimizers of fused models: torch's SGD and AdamW with per-member hyperparameters.

Every parameter of a fused model has the member dimension first (``models.fused_layers``). A step
does, member by member, what ``torch.optim.SGD`` / ``torch.optim.AdamW`` do (their single-tensor
formulas, in the same order), with each member's learning rate, momentum (AdamW: beta1) and
weight decay broadcast along that dimension. The learning rate of a step is each member's base rate
times the schedule's factor, computed in float64 and rounded once, as torch rounds its Python-float
rate. ``keep_members`` drops members together with their optimizer state.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn

from models.config import Optimizer, TrainConfig

ADAMW_BETA2 = 0.999  # torch's default, as the unfused trainer uses
ADAMW_EPS = 1e-8


def _along_members(values: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """Per-member ``values`` (K,) shaped to broadcast over ``param`` (K, ...)."""
    return values.view(-1, *([1] * (param.dim() - 1)))


class FusedOptimizer:
    """Base: parameters, per-member hyperparameters (K,) and per-parameter state (K, ...)."""

    def __init__(self, params: Iterable[nn.Parameter], lr: Sequence[float]) -> None:
        self.params = list(params)
        device = self.params[0].device
        # float64: ``base * factor`` then rounds once to float32, as torch's Python-float lr does.
        self.hyper: dict[str, torch.Tensor] = {
            "lr": torch.tensor(lr, dtype=torch.float64, device=device)
        }
        self.state: list[dict[str, torch.Tensor]] = [{} for _ in self.params]

    def _add_hyper(self, name: str, values: Sequence[float], dtype: torch.dtype) -> None:
        self.hyper[name] = torch.tensor(values, dtype=dtype, device=self.params[0].device)

    def zero_grad(self) -> None:
        for param in self.params:
            param.grad = None

    def step(self, lr_factor: float) -> None:
        """One update with learning rates ``base_lr * lr_factor`` (the schedule's factor)."""
        raise NotImplementedError

    def keep_members(self, keep: list[int]) -> None:
        """Keep only the members at positions ``keep`` (the parameters are sliced by their
        modules; this slices hyperparameters and state the same way)."""
        for name, values in self.hyper.items():
            self.hyper[name] = values[torch.tensor(keep, device=values.device)]
        for state in self.state:
            for name, value in state.items():
                if value.dim() > 0:
                    state[name] = value[torch.tensor(keep, device=value.device)]


class FusedSGD(FusedOptimizer):
    """``torch.optim.SGD`` (momentum, Nesterov, weight decay; no dampening) per member."""

    def __init__(
        self,
        params: Iterable[nn.Parameter],
        lr: Sequence[float],
        momentum: Sequence[float],
        weight_decay: Sequence[float],
        nesterov: bool,
    ) -> None:
        super().__init__(params, lr)
        self.nesterov = nesterov
        self._add_hyper("momentum", momentum, torch.float32)
        self._add_hyper("weight_decay", weight_decay, torch.float32)

    @torch.no_grad()
    def step(self, lr_factor: float) -> None:
        lr = (self.hyper["lr"] * lr_factor).float()
        momentum, weight_decay = self.hyper["momentum"], self.hyper["weight_decay"]
        for param, state in zip(self.params, self.state, strict=True):
            if param.grad is None:
                continue
            m = _along_members(momentum, param)
            d_p = torch.addcmul(param.grad, param, _along_members(weight_decay, param))
            # Members with momentum 0 need no buffer in torch; with one, m * buf + d_p = d_p.
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = d_p.clone()
            else:
                buf.mul_(m).add_(d_p)
            d_p = d_p.addcmul(buf, m) if self.nesterov else buf
            param.addcmul_(d_p, _along_members(lr, param), value=-1)


class FusedAdamW(FusedOptimizer):
    """``torch.optim.AdamW`` (decoupled weight decay, no amsgrad) with per-member beta1."""

    def __init__(
        self,
        params: Iterable[nn.Parameter],
        lr: Sequence[float],
        beta1: Sequence[float],
        weight_decay: Sequence[float],
    ) -> None:
        super().__init__(params, lr)
        # float64, like torch's Python floats in the bias correction and the decay factor.
        self._add_hyper("beta1", beta1, torch.float64)
        self._add_hyper("weight_decay", weight_decay, torch.float64)
        self.steps = 0  # shared: every member steps every time

    @torch.no_grad()
    def step(self, lr_factor: float) -> None:
        self.steps += 1
        lr, beta1 = self.hyper["lr"] * lr_factor, self.hyper["beta1"]
        decay = (1 - lr * self.hyper["weight_decay"]).float()
        avg_weight = (1 - beta1).float()
        step_size = (lr / (1 - beta1**self.steps)).float()
        bias_correction2_sqrt = (1 - ADAMW_BETA2**self.steps) ** 0.5
        for param, state in zip(self.params, self.state, strict=True):
            grad = param.grad
            if grad is None:
                continue
            if not state:
                state["exp_avg"] = torch.zeros_like(param)
                state["exp_avg_sq"] = torch.zeros_like(param)
            exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
            param.mul_(_along_members(decay, param))
            exp_avg.lerp_(grad, _along_members(avg_weight, param))
            exp_avg_sq.mul_(ADAMW_BETA2).addcmul_(grad, grad, value=1 - ADAMW_BETA2)
            denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(ADAMW_EPS)
            param.addcmul_(exp_avg / denom, _along_members(step_size, param), value=-1)


def fused_optimizer(
    configs: Sequence[TrainConfig], params: Iterable[nn.Parameter]
) -> FusedOptimizer:
    """The fused form of the optimizer ``train`` builds, with each member's own hyperparameters."""
    lr = [c.effective_learning_rate for c in configs]
    momentum = [c.momentum for c in configs]
    weight_decay = [c.weight_decay for c in configs]
    if configs[0].optimizer is Optimizer.SGD:
        return FusedSGD(params, lr, momentum, weight_decay, configs[0].nesterov)
    return FusedAdamW(params, lr, momentum, weight_decay)
