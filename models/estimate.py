"""What a training run needs, known before anything is allocated: parameters, activation memory,
optimizer state and dataset bytes.

Two users:
- Spec validation (search/validate.py) refuses a spec above the server's caps. It builds the model
  on PyTorch's ``meta`` device (shapes without storage: a 22 G-parameter MLP costs nothing) and
  runs one forward pass there to size the activations (``size_on_meta``). The first meta forward
  of a process imports PyTorch's Python decompositions (~1-3 s of CPU): the API does it once at
  start-up (``warm_up``).
- The trainer (models/train.py, models/fused.py) checks the device's free memory before it loads
  data or builds the model, and ends the run as ``oom`` instead of allocating what cannot fit
  (``memory_refusal``). It counts parameters with a meta build (no forward, no import) and, once
  they are known to fit, sizes activations with a two-sample forward of a CPU-built model: a meta
  forward would cost every worker process that import.

The memory of a training run, in float32:
- per parameter, ``PARAM_COPIES`` of 4 bytes: weights, gradients, optimizer state (SGD: one
  momentum buffer, AdamW: two), the temporaries of the foreach update, and the test-time copy that
  ``accuracy_batch_stats`` probes (measured: 5 to 6 copies with either optimizer);
- activations: the input and the output of every leaf module, per sample, plus the two largest
  again for the gradients in flight during the backward pass, times the batch size, and a quarter
  more for what autograd and the allocator keep besides (``ACTIVATION_OVERHEAD``; evaluation runs
  without gradients, 1024 samples at a time);
- the dataset on the device, as its registration declares it (``DataShape``).
Against real CPU peaks the estimate is 0.7x to 1.8x (tests/models/test_estimate.py): biased high,
so that what it lets through fits.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from models.config import Optimizer, Placement, TrainConfig
from models.data import Dataset, is_loaded
from models.layers import NormSpec
from models.registry import DATASETS, MODELS, DataShape

BYTES_PER_VALUE = 4  # float32 weights, gradients, optimizer state and activations
PARAM_COPIES = 6
ACTIVATION_OVERHEAD = 1.25
EVAL_BATCH_SIZE = 1024  # models.train.EVAL_BATCH_SIZE (not imported: train imports this module)
# A run starts only if it needs at most this part of the free memory: the estimate is not exact,
# and the allocator, the CUDA context and other slots on the device need some too.
FREE_MEMORY_FRACTION = 0.9

Builder = Callable[..., nn.Module]


# --- estimates ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSize:
    """A model's parameters and the values its leaf modules output per sample (input included)."""

    params: int
    activations_per_sample: int
    largest_per_sample: int


@dataclass(frozen=True)
class RunEstimate:
    """The device memory of one training run (``members`` fused side by side)."""

    size: ModelSize
    batch_size: int
    optimizer: Optimizer
    members: int = 1

    @property
    def params(self) -> int:
        return self.members * self.size.params

    @property
    def state_bytes(self) -> int:
        """Weights, gradients, optimizer state, update temporaries and the test-time copy."""
        return self.params * PARAM_COPIES * BYTES_PER_VALUE

    @property
    def activation_bytes(self) -> int:
        s = self.size
        training = self.batch_size * (s.activations_per_sample + 2 * s.largest_per_sample)
        evaluation = EVAL_BATCH_SIZE * 2 * s.largest_per_sample
        values = self.members * max(training, evaluation) * ACTIVATION_OVERHEAD
        return int(values * BYTES_PER_VALUE)

    @property
    def total_bytes(self) -> int:
        return self.state_bytes + self.activation_bytes

    def describe(self) -> str:
        """One phrase: the total and its parts."""
        return (
            f"~{human_bytes(self.total_bytes)} (weights, gradients and {self.optimizer.value} "
            f"state of {human_count(self.params)} parameters: {human_bytes(self.state_bytes)}, "
            f"activations at batch size {self.batch_size}: {human_bytes(self.activation_bytes)})"
        )


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError  # unreachable


def human_count(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n:.0f}"


# --- sizing a model -------------------------------------------------------------------------------


def _build(
    builder: Builder,
    model_params: Mapping[str, Any],
    shape: DataShape,
    placement: Placement,
    device: str,
) -> nn.Module:
    with torch.device(device):
        return builder(shape.input_shape, shape.num_classes, NormSpec(placement), **model_params)


def _leaf_outputs(model: nn.Module, shape: DataShape, device: str) -> tuple[int, int]:
    """(sum, largest) of the values the input and each leaf module hold for one sample, from a
    two-sample forward pass in eval mode (shapes are those of training; nothing is kept)."""
    sizes: list[int] = [math.prod(shape.input_shape)]

    def record(_: nn.Module, __: Any, output: Any) -> None:
        tensors = output if isinstance(output, tuple | list) else (output,)
        sizes.append(sum(t.numel() for t in tensors if isinstance(t, torch.Tensor)) // 2)

    leaves = [m for m in model.modules() if not any(True for _ in m.children())]
    hooks = [m.register_forward_hook(record) for m in leaves]
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(2, *shape.input_shape, device=device))
    finally:
        for hook in hooks:
            hook.remove()
    return sum(sizes), max(sizes)


def _key(model_params: Mapping[str, Any]) -> str:
    return json.dumps(dict(model_params), sort_keys=True, default=str)


@functools.lru_cache(maxsize=256)
def _size_on_meta(
    model: str, params_key: str, shape: DataShape, placement: Placement, forward: bool
) -> ModelSize:
    builder = MODELS.get(model).builder
    net = _build(builder, json.loads(params_key), shape, placement, "meta")
    params = sum(p.numel() for p in net.parameters())
    if not forward:
        return ModelSize(params, 0, 0)
    total, largest = _leaf_outputs(net, shape, "meta")
    return ModelSize(params, total, largest)


def size_on_meta(
    model: str,
    model_params: Mapping[str, Any],
    shape: DataShape,
    placement: Placement,
    forward: bool = True,
) -> ModelSize:
    """Parameters and activations of a registered model, built on the meta device (no storage).

    With ``forward=False`` only the parameters are counted (no forward pass: fast, and no import
    of PyTorch's decompositions). Results are cached per model, parameters, shape and placement.

    Raises:
        Whatever the builder or its forward raise (a plug-in that cannot run on ``meta``).
    """
    return _size_on_meta(model, _key(model_params), shape, placement, forward)


@functools.lru_cache(maxsize=64)
def _activations_on_cpu(
    model: str, params_key: str, shape: DataShape, placement: Placement
) -> tuple[int, int]:
    net = _build(MODELS.get(model).builder, json.loads(params_key), shape, placement, "cpu")
    return _leaf_outputs(net, shape, "cpu")


def warm_up() -> None:
    """Run the first meta forward of this process (it imports PyTorch's decompositions)."""
    with contextlib.suppress(Exception):
        size_on_meta("mlp", {"width": 2, "depth": 1}, DataShape((2,), 2, 2), Placement.NONE)


# --- the trainer's check --------------------------------------------------------------------------


def memory_refusal(
    config: TrainConfig, device: torch.device, data: Dataset | None = None, members: int = 1
) -> str | None:
    """Why a run of ``config`` (``members`` fused) cannot fit ``device``'s free memory, as an
    out-of-memory reason; None when it fits or cannot be told (free memory unknown, or a plug-in
    dataset that declares no ``data_shape`` and is not loaded yet).

    Nothing big is allocated: parameters are counted on the meta device first, and activations are
    sized on a CPU-built model only once the parameters are known to fit.
    """
    free = free_memory_bytes(device)
    if free is None:
        return None
    budget = int(free * FREE_MEMORY_FRACTION)
    shape, data_bytes = _data_of(config, device, data)
    if shape is None:
        return None
    params_key = _key(config.model_params)
    size = _size_on_meta(config.model, params_key, shape, config.bn_placement, False)
    run = RunEstimate(size, config.batch_size, config.optimizer, members)
    if run.state_bytes + data_bytes <= budget:
        total, largest = _activations_on_cpu(config.model, params_key, shape, config.bn_placement)
        size = ModelSize(size.params, total, largest)
        run = RunEstimate(size, config.batch_size, config.optimizer, members)
        if run.total_bytes + data_bytes <= budget:
            return None
    dataset = f" + dataset {human_bytes(data_bytes)}" if data_bytes else ""
    return (
        f"out of memory at batch size {config.batch_size}: needs {run.describe()}{dataset}, "
        f"{device} has {human_bytes(free)} free (not started: nothing was allocated)"
    )


def _data_of(
    config: TrainConfig, device: torch.device, data: Dataset | None
) -> tuple[DataShape | None, int]:
    """The dataset's shape, and the bytes it will add on ``device`` (0 if already there)."""
    if data is not None:
        samples = len(data.y_train) + len(data.y_val) + len(data.y_test)
        shape = DataShape(data.input_shape, data.num_classes, samples)
        return shape, 0 if data.device == device else shape.nbytes
    entry = DATASETS.get(config.dataset, "dataset")
    if entry.data_shape is None:
        return None, 0
    shape = entry.data_shape(entry.resolve_params(config.dataset_params, "dataset.params"))
    loaded = is_loaded(config.dataset, config.dataset_params, device)
    return shape, 0 if loaded else shape.nbytes


# --- free memory ----------------------------------------------------------------------------------


def free_memory_bytes(device: torch.device) -> int | None:
    """Memory a new run may use on ``device``: CUDA's free memory plus what PyTorch's caching
    allocator holds unused; on the CPU, the kernel's MemAvailable, bounded by the cgroup's limit
    (containers). None when unknown."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(free + cached)
    if device.type != "cpu":
        return None
    limits = [v for v in (_meminfo_available(), _cgroup_headroom()) if v is not None]
    return min(limits) if limits else None


def _meminfo_available(path: str = "/proc/meminfo") -> int | None:
    with contextlib.suppress(OSError, ValueError):
        for line in Path(path).read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    with contextlib.suppress(OSError, ValueError, AttributeError):
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return None


def _cgroup_headroom(root: str = "/sys/fs/cgroup") -> int | None:
    """The memory limit of this process's cgroup minus its usage (v2, then v1); None if none."""
    for limit_file, usage_file in (
        ("memory.max", "memory.current"),
        ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes"),
    ):
        with contextlib.suppress(OSError, ValueError):
            limit = Path(root, limit_file).read_text().strip()
            if limit == "max" or int(limit) >= 1 << 60:  # unlimited (v1 writes a huge number)
                return None
            return max(0, int(limit) - int(Path(root, usage_file).read_text()))
    return None
