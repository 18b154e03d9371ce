"""Test-only registry entries, loaded by worker and server processes via BNSWEEP_PLUGINS.

- ``sleepy_mlp``: the built-in MLP that sleeps ``delay_s`` per training batch, so a test can catch a
  trial mid-training (kill a worker, cancel a study) without a big dataset.
- ``oom_mlp``: raises CUDA's out-of-memory error type in training, on any device.
- ``fused_oom_mlp``: a fusable MLP whose fused form raises that error above ``max_members``
  members (0: even alone).
- ``counted_synthetic``: a small synthetic dataset that counts how often it is built.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch
from torch import nn

from models.data import Dataset, train_size
from models.layers import NormSpec
from models.registry import DATASETS, MODELS, Param


class _Wrapped(nn.Module):
    def __init__(self, inner: nn.Module, delay_s: float = 0.0, oom: bool = False) -> None:
        super().__init__()
        self.inner = inner
        self.delay_s = delay_s
        self.oom = oom

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.oom:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        if self.training and self.delay_s:
            time.sleep(self.delay_s)
        return self.inner(x)


def _mlp(input_shape: tuple[int, ...], num_classes: int, norm: NormSpec) -> nn.Module:
    return MODELS.get("mlp").builder(input_shape, num_classes, norm, width=16, depth=1, dropout=0.0)


@MODELS.register(
    "sleepy_mlp",
    params=(Param("delay_s", "float", 0.05, "sleep per training batch", low=0.0, high=10.0),),
    description="MLP that sleeps per training batch (tests)",
    placements=("before_activation", "after_activation", "none"),
)
def sleepy_mlp(
    input_shape: tuple[int, ...], num_classes: int, norm: NormSpec, delay_s: float
) -> nn.Module:
    return _Wrapped(_mlp(input_shape, num_classes, norm), delay_s=delay_s)


@MODELS.register(
    "oom_mlp",
    description="MLP that raises CUDA's OOM error in training (tests)",
    placements=("before_activation", "after_activation", "none"),
)
def oom_mlp(input_shape: tuple[int, ...], num_classes: int, norm: NormSpec) -> nn.Module:
    return _Wrapped(_mlp(input_shape, num_classes, norm), oom=True)


class _MemoryHungry(nn.Module):
    """Runs out of memory in training once its input carries more than ``max_members`` fused
    members (the fused layout puts K members' features side by side)."""

    def __init__(self, inner: nn.Module, features: int, max_members: int) -> None:
        super().__init__()
        self.inner = inner
        self.features = features
        self.max_members = max_members

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        members = x[0].numel() // self.features
        if self.training and members > self.max_members:
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory ({members} fused members)")
        return self.inner(x)


@MODELS.register(
    "fused_oom_mlp",
    params=(Param("max_members", "int", 1, "largest group that fits", low=0, high=64),),
    description="MLP whose fused form runs out of memory above a group size (tests)",
    placements=("before_activation", "after_activation", "none"),
    fusable=True,
)
def fused_oom_mlp(
    input_shape: tuple[int, ...], num_classes: int, norm: NormSpec, max_members: int
) -> nn.Module:
    inner = _mlp(input_shape, num_classes, norm)
    return _MemoryHungry(inner, math.prod(input_shape), max_members)


# --- a dataset that counts how often it is built ------------------------------------------------

BUILDS = {"counted_synthetic": 0}
COUNTED_PARAMS = {"n_samples": 400, "shape": [8]}


@DATASETS.register(
    "counted_synthetic",
    description="the synthetic dataset, counting its builds (tests)",
    train_size=lambda _: train_size("synthetic", COUNTED_PARAMS),
)
def counted_synthetic(data_dir: Path) -> Dataset:
    BUILDS["counted_synthetic"] += 1
    synthetic = DATASETS.get("synthetic")
    params = synthetic.resolve_params(COUNTED_PARAMS, "dataset.params")
    return synthetic.builder(data_dir, **params)
