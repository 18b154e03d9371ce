"""The trainer: ``train(config, data, on_epoch) -> TrainResult``.

Pure: no Optuna, HTTP or SQL. Data lives on the device for the whole run (batches are index slices
of a per-epoch permutation, no DataLoader); the loss is accumulated on the device and read once per
epoch, so the training step never waits for the host. Faults (divergence, out of memory, a stop
requested by the callback) end the run with a status, not an exception.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.config import (
    EpochMetrics,
    Optimizer,
    Placement,
    Schedule,
    TrainConfig,
    TrainResult,
    TrainStatus,
)
from models.data import Dataset, load_dataset
from models.device import resolve_device
from models.errors import first_line
from models.layers import NormSpec, bn_layers, init_weights, recompute_bn_stats
from models.validate import check_config

EpochCallback = Callable[[EpochMetrics], bool | None]
EVAL_BATCH_SIZE = 1024  # evaluation needs no gradients: big batches are cheaper


class _Stop(Exception):
    """Ends the epoch loop early with a status (internal control flow)."""

    def __init__(self, status: TrainStatus, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass
class _Run:
    """Mutable state of one run that must survive an exception (epochs done so far)."""

    history: list[EpochMetrics]
    num_classes: int = 0
    test_accuracy: float | None = None
    test_accuracy_batch_stats: float | None = None
    test_loss: float | None = None


def train(
    config: TrainConfig,
    data: Dataset | None = None,
    on_epoch: EpochCallback | None = None,
) -> TrainResult:
    """Train one model as ``config`` says and report how it ended.

    Args:
        config: The run's settings (see ``models.config`` for conventions).
        data: The dataset; loaded (once per process, cached) from ``config.dataset`` if None.
        on_epoch: Called after each epoch; returning True stops the run with status ``pruned``.

    Returns:
        A TrainResult with status ok, pruned, diverged or oom and the per-epoch metrics.

    Raises:
        ConfigError: an invalid configuration (unknown names, bad parameters, bad values).
    """
    entry, model_params = check_config(config)
    device = resolve_device(config.device)
    run = _Run(history=[])
    start = time.perf_counter()
    oom_reason = ""
    try:
        if data is None:
            data = load_dataset(config.dataset, config.dataset_params, device=device)
        run.num_classes = data.num_classes
        _fit(config, entry.builder, model_params, data, device, on_epoch, run)
        status, reason = TrainStatus.OK, ""
    except _Stop as stop:
        status, reason = stop.status, stop.reason
    except Exception as exc:  # only out-of-memory becomes a result; anything else is a bug
        if not _is_oom(exc):
            raise
        oom_reason = f"out of memory at batch size {config.batch_size}: {first_line(exc)}"
    if oom_reason:
        # Outside the except block: the traceback (and with it the model, optimizer and
        # activations held by its frames) is gone, so the memory can actually be released.
        status, reason = TrainStatus.OOM, oom_reason
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return TrainResult(
        status=status,
        epochs=tuple(run.history),
        device=str(device),
        train_s=time.perf_counter() - start,
        test_accuracy=run.test_accuracy,
        test_accuracy_batch_stats=run.test_accuracy_batch_stats,
        test_loss=run.test_loss,
        num_classes=run.num_classes,
        reason=reason,
    )


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc)
    )


# --- the run ------------------------------------------------------------------------------------


def _fit(
    config: TrainConfig,
    builder: Callable[..., nn.Module],
    model_params: dict,
    data: Dataset,
    device: torch.device,
    on_epoch: EpochCallback | None,
    run: _Run,
) -> None:
    data = data.to(device)
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick the fastest kernels
    torch.manual_seed(config.seed)  # dropout and anything else drawing from the global RNG
    norm = NormSpec.from_config(config)
    model = builder(data.input_shape, data.num_classes, norm, **model_params)
    init_weights(model, config.init, config.init_std, seed=config.seed)
    channels_last = cuda and any(isinstance(m, nn.Conv2d) for m in model.modules())
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(device, memory_format=memory_format)
    autocast = (
        (lambda: torch.autocast("cuda", dtype=torch.bfloat16))
        if cuda and config.bf16
        else contextlib.nullcontext
    )

    def prepare(x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if channels_last else x

    optimizer = _optimizer(config, model)
    batches_per_epoch = len(_batch_bounds(len(data.y_train), config))
    lr_at = _schedule(config, batches_per_epoch)
    shuffle = torch.Generator().manual_seed(config.seed)
    precise_gen = torch.Generator().manual_seed(config.seed + 1)
    use_precise_bn = config.precise_bn_batches > 0 and bool(bn_layers(model))

    def evaluate_val() -> tuple[float, float]:
        if use_precise_bn:
            with autocast():
                _precise_bn(model, data, config, precise_gen, prepare)
        with autocast():
            return _evaluate(model, prepare(data.x_val), data.y_val)

    step = 0
    for epoch in range(1, config.epochs + 1):
        # --- train one epoch
        t0 = time.perf_counter()
        model.train()
        loss_sum = torch.zeros((), device=device)
        seen = 0
        for idx in _epoch_batches(len(data.y_train), config, shuffle, device):
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step)  # a Python float: no host-device sync
            with autocast():
                loss = F.cross_entropy(model(prepare(data.x_train[idx])), data.y_train[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach().float()
            seen += len(idx)
            step += 1
        train_loss = (loss_sum / batches_per_epoch).item()  # the one sync of the epoch
        train_s = time.perf_counter() - t0
        if not math.isfinite(train_loss):
            raise _Stop(TrainStatus.DIVERGED, f"training loss became {train_loss} in epoch {epoch}")

        # --- validate, report
        val_loss, val_accuracy = evaluate_val()
        if not math.isfinite(val_loss):
            raise _Stop(TrainStatus.DIVERGED, f"validation loss became {val_loss} in epoch {epoch}")
        metrics = EpochMetrics(
            epoch=epoch,
            train_loss=train_loss,
            val_loss=val_loss,
            val_accuracy=val_accuracy,
            epoch_s=time.perf_counter() - t0,
            samples_per_s=seen / train_s if train_s > 0 else float("inf"),
        )
        run.history.append(metrics)
        if on_epoch is not None and on_epoch(metrics) is True:
            # No test metrics: a pruned run is not a candidate, and they cost time.
            raise _Stop(TrainStatus.PRUNED, f"stopped by callback at epoch {epoch}")

    # --- test: running statistics, then each test batch's own statistics
    _test(model, data, config, autocast, prepare, run)


def _test(
    model: nn.Module,
    data: Dataset,
    config: TrainConfig,
    autocast: Callable[[], contextlib.AbstractContextManager],
    prepare: Callable[[torch.Tensor], torch.Tensor],
    run: _Run,
) -> None:
    with autocast():
        run.test_loss, run.test_accuracy = _evaluate(model, prepare(data.x_test), data.y_test)
        if bn_layers(model):
            run.test_accuracy_batch_stats = _accuracy_batch_stats(
                model, prepare(data.x_test), data.y_test, config.batch_size
            )
        else:
            run.test_accuracy_batch_stats = run.test_accuracy


# --- optimization -------------------------------------------------------------------------------


def _optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    lr = config.effective_learning_rate
    if config.optimizer is Optimizer.SGD:
        return torch.optim.SGD(
            model.parameters(),
            lr=lr,
            momentum=config.momentum,
            nesterov=config.nesterov,
            weight_decay=config.weight_decay,
        )
    return torch.optim.AdamW(
        model.parameters(),
        lr=lr,
        betas=(config.momentum, 0.999),
        weight_decay=config.weight_decay,
    )


def _schedule(config: TrainConfig, batches_per_epoch: int) -> Callable[[int], float]:
    """Learning rate at iteration ``step`` (0-based), stepped every iteration."""
    base = config.effective_learning_rate
    total = max(1, config.epochs * batches_per_epoch)
    warmup = (
        min(total - 1, round(config.warmup_epochs * batches_per_epoch))
        if config.schedule is Schedule.WARMUP_COSINE
        else 0
    )

    def lr_at(step: int) -> float:
        if config.schedule is Schedule.CONSTANT:
            return base
        if step < warmup:
            return base * (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return base * 0.5 * (1 + math.cos(math.pi * progress))

    return lr_at


# --- batching -----------------------------------------------------------------------------------


def _batch_bounds(n: int, config: TrainConfig) -> list[tuple[int, int]]:
    """(start, end) of each batch; with BN a last batch of one sample is dropped."""
    bounds = [(s, min(s + config.batch_size, n)) for s in range(0, n, config.batch_size)]
    min_size = 2 if config.bn_placement is not Placement.NONE else 1
    if bounds and bounds[-1][1] - bounds[-1][0] < min_size:
        bounds.pop()
    return bounds


def _epoch_batches(
    n: int, config: TrainConfig, gen: torch.Generator, device: torch.device
) -> Iterator[torch.Tensor]:
    # The permutation is drawn on the CPU so that runs on any device see the same batches.
    perm = torch.randperm(n, generator=gen).to(device, non_blocking=True)
    for start, end in _batch_bounds(n, config):
        yield perm[start:end]


# --- evaluation ---------------------------------------------------------------------------------


@torch.no_grad()
def _evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """(mean loss, accuracy) in eval mode, i.e. with BN running statistics."""
    model.eval()
    loss_sum = torch.zeros((), device=x.device)
    correct = torch.zeros((), device=x.device, dtype=torch.long)
    for start in range(0, len(y), EVAL_BATCH_SIZE):
        logits = model(x[start : start + EVAL_BATCH_SIZE]).float()
        target = y[start : start + EVAL_BATCH_SIZE]
        loss_sum += F.cross_entropy(logits, target, reduction="sum")
        correct += (logits.argmax(1) == target).sum()
    n = max(1, len(y))
    return (loss_sum / n).item(), correct.item() / n


@torch.no_grad()
def _accuracy_batch_stats(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int
) -> float:
    """Accuracy with BN using each test batch's own statistics (as in training).

    Runs on a copy, so the model's running statistics stay untouched; dropout stays off.
    """
    probe = copy.deepcopy(model).eval()
    for layer in bn_layers(probe):
        layer.train()
    correct = torch.zeros((), device=x.device, dtype=torch.long)
    counted = 0
    n = len(y)
    for start in range(0, n, batch_size):
        end = min(start + batch_size, n)
        if end - start < 2:  # BN statistics of one sample are undefined
            continue
        logits = probe(x[start:end])
        correct += (logits.argmax(1) == y[start:end]).sum()
        counted += end - start
    return correct.item() / max(1, counted)


def _precise_bn(
    model: nn.Module,
    data: Dataset,
    config: TrainConfig,
    gen: torch.Generator,
    prepare: Callable[[torch.Tensor], torch.Tensor],
) -> None:
    """Recompute BN statistics over ``precise_bn_batches`` random training batches."""
    batches = list(_epoch_batches(len(data.y_train), config, gen, data.device))
    chosen = batches[: config.precise_bn_batches]
    recompute_bn_stats(model, (prepare(data.x_train[idx]) for idx in chosen))
