"""How many members to fuse: chosen by measurement, per fusion key and device.

Whether fusing pays depends on the model, the batch size and the device: on a 2-core CPU eight
cnn1d trials at batch 32 ran 2.7x faster fused, at batch 128 slower (0.85x). So the group size is
measured, not guessed: a few training steps at each candidate K after a warm-up step, fused (K >
1) and unfused (K = 1, ``train``'s own step), in members x samples per second; the K with the
most wins. On CUDA a K must also fit: the peak memory per member measured at smaller K times K
must stay within ``MEMORY_HEADROOM`` of the free memory. The answer is cached in-process.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

import torch

from models.config import TrainConfig
from models.data import Dataset, load_dataset
from models.device import resolve_device
from models.fused import FusedGroup, fusion_key
from models.train import is_oom, make_optimizer, place_model, release_memory, train_step
from models.validate import check_config

MEMORY_HEADROOM = 0.8  # share of the free device memory a fused group may plan to use

_BEST: dict[tuple[Hashable, int], int] = {}  # (fusion key, max_k) -> K; the key holds the device


@dataclass(frozen=True)
class Measurement:
    """Training throughput of one group size."""

    samples_per_s: float  # members x samples per second
    peak_bytes: int  # device memory the model, optimizer and steps took at their peak (CUDA)


def fused_throughput(
    config: TrainConfig,
    data: Dataset | None = None,
    ks: Sequence[int] = (1, 2, 4, 8),
    steps: int = 3,
) -> dict[int, float]:
    """Members x samples per second of training ``config`` at each group size in ``ks``.

    K = 1 is the unfused trainer's step; sizes that run out of memory are left out.
    """
    return {k: m.samples_per_s for k, m in measure(config, data, ks, steps).items()}


def best_group_size(
    config: TrainConfig, data: Dataset | None = None, max_k: int = 16, steps: int = 3
) -> int:
    """The group size in [1, max_k] with the best measured throughput for ``config``'s fusion key
    (1 if it cannot fuse); measured once per fusion key, device and ``max_k`` in this process.

    Candidates are 1, 2, 4, ... up to ``max_k`` (and ``max_k``).
    """
    key = fusion_key(config)
    if key is None or max_k <= 1:
        return 1
    cached = _BEST.get((key, max_k))
    if cached is not None:
        return cached
    ks = sorted({*(2**i for i in range(max_k.bit_length()) if 2**i <= max_k), max_k})
    measured = measure(config, data, ks, steps)
    best = max(measured, key=lambda k: measured[k].samples_per_s, default=1)
    _BEST[(key, max_k)] = best
    return best


def measure(
    config: TrainConfig, data: Dataset | None, ks: Sequence[int], steps: int
) -> dict[int, Measurement]:
    """Throughput and peak memory of ``steps`` training steps at each group size, smallest first.

    Stops at the first size that runs out of memory or, on CUDA, would not fit in the free
    memory at the peak per member measured so far.
    """
    device = resolve_device(config.device)
    if data is None:
        data = load_dataset(config.dataset, config.dataset_params, device=device)
    data = data.to(device)
    n = len(data.y_train)
    gen = torch.Generator().manual_seed(config.seed)
    idx = torch.randperm(n, generator=gen)[: config.batch_size].to(device)
    cuda = device.type == "cuda"
    out: dict[int, Measurement] = {}
    for k in sorted(ks):
        if cuda and out:
            per_member = max(m.peak_bytes / j for j, m in out.items())
            free, _ = torch.cuda.mem_get_info(device)
            if k * per_member > MEMORY_HEADROOM * free:
                break
        measured: Measurement | None = None
        try:
            measured = _measure_one(config, data, device, k, idx, steps)
        except Exception as exc:  # out of memory ends the search; anything else is a bug
            if not is_oom(exc):
                raise
        if measured is None:
            release_memory(device)  # outside the except block: its frames hold the memory
            break
        out[k] = measured
    return out


def _measure_one(
    config: TrainConfig,
    data: Dataset,
    device: torch.device,
    k: int,
    idx: torch.Tensor,
    steps: int,
) -> Measurement:
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device) if cuda else 0
    step = _step_function(config, data, device, k, idx)
    step()  # warm-up: cuDNN's algorithm search, the allocator, lazy initialization
    if cuda:
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if cuda:
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) - base if cuda else 0
    return Measurement(k * len(idx) * steps / elapsed, peak)


def _step_function(
    config: TrainConfig, data: Dataset, device: torch.device, k: int, idx: torch.Tensor
) -> Callable[[], object]:
    """One training step on the batch ``idx``: ``train``'s own for K = 1, a fused group's else."""
    if k == 1:
        entry, model_params = check_config(config)
        model, autocast, prepare = place_model(config, entry.builder, model_params, data, device)
        optimizer = make_optimizer(config, model)
        model.train()
        x, y = prepare(data.x_train[idx]), data.y_train[idx]
        return lambda: train_step(model, optimizer, x, y, autocast)
    group = FusedGroup([config] * k, data, device)
    group.model.train()
    fused_x = group.inputs(data.x_train[idx], shared=True)
    fused_y = data.y_train[idx].unsqueeze(1).expand(-1, k)
    return lambda: group.step(fused_x, fused_y, 1.0)
