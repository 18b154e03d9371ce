"""The trainer: ``train(config, data, on_epoch) -> TrainResult``.

Pure: no Optuna, HTTP or SQL. Data lives on the device for the whole run (batches are index slices
of a per-epoch permutation, no DataLoader); the loss is accumulated on the device and read once per
epoch, so the training step never waits for the host. Faults (divergence, out of memory, a stop
requested by the callback) end the run with a status, not an exception.

The helpers below the run (schedule, batching, evaluation, device setup) are shared with the fused
executor (``models.fused``), which trains K configurations as one model: evaluation works on
``members`` models side by side, whose logits are laid out member-major, (N, K * classes).
"""

from __future__ import annotations

import contextlib
import copy
import gc
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

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
from models.estimate import memory_refusal
from models.layers import (
    NormSpec,
    attach_momentum_probe,
    bn_layers,
    init_weights,
    probed_momenta,
    probed_statistics,
    recompute_bn_stats,
)
from models.validate import check_config

EpochCallback = Callable[[EpochMetrics], bool | None]
Autocast = Callable[[], contextlib.AbstractContextManager[Any]]
Prepare = Callable[[torch.Tensor], torch.Tensor]
EVAL_BATCH_SIZE = 1024  # evaluation needs no gradients: big batches are cheaper


class _Stop(Exception):
    """Ends the epoch loop early with a status (internal control flow)."""

    def __init__(self, status: TrainStatus, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class FinalMetrics:
    """Test-set metrics of one trained model: loss and accuracy with BN running statistics, and
    accuracy with each test batch's own statistics."""

    loss: float
    accuracy: float
    accuracy_batch_stats: float


@dataclass
class _Run:
    """Mutable state of one run that must survive an exception (epochs done so far)."""

    history: list[EpochMetrics]
    num_classes: int = 0
    final: FinalMetrics | None = None
    probe: tuple[tuple[float, float], ...] = ()


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
    oom_message = ""
    try:
        # Before anything is loaded or built: a run that cannot fit is `oom` without allocating.
        if (refusal := memory_refusal(config, device, data)) is not None:
            raise _Stop(TrainStatus.OOM, refusal)
        if data is None:
            data = load_dataset(config.dataset, config.dataset_params, device=device)
        run.num_classes = data.num_classes
        _fit(config, entry.builder, model_params, data, device, on_epoch, run)
        status, reason = TrainStatus.OK, ""
    except _Stop as stop:
        status, reason = stop.status, stop.reason
    except Exception as exc:  # only out-of-memory becomes a result; anything else is a bug
        if not is_oom(exc):
            raise
        oom_message = oom_reason(config, exc)
    if oom_message:
        # Outside the except block: the traceback (and with it the model, optimizer and
        # activations held by its frames) is gone, so the memory can actually be released.
        status, reason = TrainStatus.OOM, oom_message
        release_memory(device)
    final = run.final
    return TrainResult(
        status=status,
        epochs=tuple(run.history),
        device=str(device),
        train_s=time.perf_counter() - start,
        test_accuracy=final.accuracy if final else None,
        test_accuracy_batch_stats=final.accuracy_batch_stats if final else None,
        test_loss=final.loss if final else None,
        num_classes=run.num_classes,
        reason=reason,
        test_accuracy_by_bn_momentum=run.probe if final else (),
    )


def is_oom(exc: BaseException) -> bool:
    """Whether ``exc`` says the device ran out of memory (on the CPU: the allocator's failure,
    ``DefaultCPUAllocator: can't allocate memory``, or numpy's MemoryError)."""
    if isinstance(exc, torch.cuda.OutOfMemoryError | MemoryError):
        return True
    message = str(exc)
    return isinstance(exc, RuntimeError) and (
        "out of memory" in message or "can't allocate memory" in message
    )


def oom_reason(config: TrainConfig, exc: BaseException) -> str:
    """The reason recorded for a run that ran out of memory."""
    return f"out of memory at batch size {config.batch_size}: {first_line(exc)}"


def release_memory(device: torch.device) -> None:
    """Return freed memory after an out-of-memory fault (call outside the ``except`` block)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# --- the run ------------------------------------------------------------------------------------


def _fit(
    config: TrainConfig,
    builder: Callable[..., nn.Module],
    model_params: dict[str, Any],
    data: Dataset,
    device: torch.device,
    on_epoch: EpochCallback | None,
    run: _Run,
) -> None:
    data = data.to(device)
    torch.manual_seed(config.seed)  # dropout and anything else drawing from the global RNG
    model, autocast, prepare = place_model(config, builder, model_params, data, device)
    if config.bn_momentum_probe:
        attach_momentum_probe(model, config.bn_momentum_probe)
    optimizer = make_optimizer(config, model)
    batches_per_epoch = len(batch_bounds(len(data.y_train), config))
    lr_at = lr_factor(config, batches_per_epoch)
    base_lr = config.effective_learning_rate
    shuffle = torch.Generator().manual_seed(config.seed)
    precise_gen = torch.Generator().manual_seed(config.seed + 1)
    use_precise_bn = config.precise_bn_batches > 0 and bool(bn_layers(model))

    def evaluate_val() -> tuple[float, float]:
        if use_precise_bn:
            with autocast():
                _precise_bn(model, data, config, precise_gen, prepare)
        with autocast():
            losses, accuracies = evaluate(model, data.x_val, data.y_val, prepare)
        return losses[0], accuracies[0]

    step = 0
    for epoch in range(1, config.epochs + 1):
        # --- train one epoch
        t0 = time.perf_counter()
        model.train()
        loss_sum = torch.zeros((), device=device)
        seen = 0
        for idx in epoch_batches(len(data.y_train), config, shuffle, device):
            for group in optimizer.param_groups:
                group["lr"] = base_lr * lr_at(step)  # a Python float: no host-device sync
            loss = train_step(
                model, optimizer, prepare(data.x_train[idx]), data.y_train[idx], autocast
            )
            loss_sum += loss.detach().float()
            seen += len(idx)
            step += 1
        train_loss = (loss_sum / batches_per_epoch).item()  # the one sync of the epoch
        train_s = time.perf_counter() - t0
        if not math.isfinite(train_loss):
            raise _Stop(TrainStatus.DIVERGED, diverged_reason("training", train_loss, epoch))

        # --- validate, report
        val_loss, val_accuracy = evaluate_val()
        if not math.isfinite(val_loss):
            raise _Stop(TrainStatus.DIVERGED, diverged_reason("validation", val_loss, epoch))
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
            raise _Stop(TrainStatus.PRUNED, pruned_reason(epoch))

    # --- test: running statistics, then each test batch's own statistics (and probed momenta)
    run.final = final_metrics(model, data, config.batch_size, autocast, prepare)[0]
    run.probe = probe_accuracies(model, data, autocast, prepare)[0]


def diverged_reason(phase: str, loss: float, epoch: int) -> str:
    """Why a run diverged: ``phase`` is "training" or "validation"."""
    return f"{phase} loss became {loss} in epoch {epoch}"


def pruned_reason(epoch: int) -> str:
    """Why a run stopped when its epoch callback asked it to."""
    return f"stopped by callback at epoch {epoch}"


def build_model(
    config: TrainConfig,
    builder: Callable[..., nn.Module],
    model_params: dict[str, Any],
    data: Dataset,
) -> nn.Module:
    """The model ``config`` names, initialized with its own seed (on the CPU)."""
    norm = NormSpec.from_config(config)
    model = builder(data.input_shape, data.num_classes, norm, **model_params)
    init_weights(model, config.init, config.init_std, seed=config.seed)
    return model


def place_model(
    config: TrainConfig,
    builder: Callable[..., nn.Module],
    model_params: dict[str, Any],
    data: Dataset,
    device: torch.device,
) -> tuple[nn.Module, Autocast, Prepare]:
    """The model built by ``build_model`` on ``device`` in its memory format, with the autocast
    and the input preparation that go with it."""
    model = build_model(config, builder, model_params, data)
    channels_last = uses_channels_last(device, model)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(device, memory_format=memory_format)  # type: ignore[call-overload]
    return model, autocast_for(device, config.bf16), prepare_for(channels_last)


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    autocast: Autocast,
) -> torch.Tensor:
    """One optimization step on the batch (x, y); returns the (undetached) mean loss."""
    with autocast():
        loss = F.cross_entropy(model(x), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()  # type: ignore[no-untyped-call]
    optimizer.step()
    return loss


# --- device setup -------------------------------------------------------------------------------


def uses_channels_last(device: torch.device, model: nn.Module) -> bool:
    """Channels-last memory format: on CUDA for models with 2-D convolutions (faster kernels)."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick the fastest kernels
    return device.type == "cuda" and any(isinstance(m, nn.Conv2d) for m in model.modules())


def prepare_for(channels_last: bool) -> Prepare:
    """Converts an input batch to the model's memory format."""
    if not channels_last:
        return lambda x: x
    return lambda x: x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


def autocast_for(device: torch.device, bf16: bool) -> Autocast:
    """bf16 autocast on CUDA when asked for; a no-op context otherwise (also on CPU)."""
    if device.type == "cuda" and bf16:
        return lambda: torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext


# --- optimization -------------------------------------------------------------------------------


def make_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """SGD or AdamW with the configuration's (effective) learning rate, momentum, weight decay."""
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


def lr_factor(config: TrainConfig, batches_per_epoch: int) -> Callable[[int], float]:
    """The schedule's multiplier of the base learning rate at iteration ``step`` (0-based).

    Depends only on the schedule's shape (schedule, warm-up, epochs), so fused members with
    different learning rates share it. Stepped every iteration.
    """
    total = max(1, config.epochs * batches_per_epoch)
    warmup = (
        min(total - 1, round(config.warmup_epochs * batches_per_epoch))
        if config.schedule is Schedule.WARMUP_COSINE
        else 0
    )

    def factor(step: int) -> float:
        if config.schedule is Schedule.CONSTANT:
            return 1.0
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * progress))

    return factor


# --- batching -----------------------------------------------------------------------------------


def batch_bounds(n: int, config: TrainConfig) -> list[tuple[int, int]]:
    """(start, end) of each batch; with BN a last batch of one sample is dropped."""
    bounds = [(s, min(s + config.batch_size, n)) for s in range(0, n, config.batch_size)]
    min_size = 2 if config.bn_placement is not Placement.NONE else 1
    if bounds and bounds[-1][1] - bounds[-1][0] < min_size:
        bounds.pop()
    return bounds


def epoch_batches(
    n: int, config: TrainConfig, gen: torch.Generator, device: torch.device
) -> Iterator[torch.Tensor]:
    """Index batches of one epoch: slices of a permutation drawn from ``gen``."""
    # The permutation is drawn on the CPU so that runs on any device see the same batches.
    perm = torch.randperm(n, generator=gen).to(device, non_blocking=True)
    for start, end in batch_bounds(n, config):
        yield perm[start:end]


# --- evaluation ---------------------------------------------------------------------------------


def member_logits(output: torch.Tensor, members: int) -> torch.Tensor:
    """(N, K * classes) logits of K member models as float (N, K, classes)."""
    return output.float().reshape(output.shape[0], members, -1)


@torch.no_grad()
def evaluate(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, prepare: Prepare, members: int = 1
) -> tuple[list[float], list[float]]:
    """Per member (mean loss, accuracy) in eval mode, i.e. with BN running statistics."""
    model.eval()
    loss_sum = torch.zeros(members, device=x.device)
    correct = torch.zeros(members, device=x.device, dtype=torch.long)
    for start in range(0, len(y), EVAL_BATCH_SIZE):
        logits = member_logits(model(prepare(x[start : start + EVAL_BATCH_SIZE])), members)
        target = y[start : start + EVAL_BATCH_SIZE].unsqueeze(1).expand(-1, members)
        loss_sum += F.cross_entropy(logits.transpose(1, 2), target, reduction="none").sum(0)
        correct += (logits.argmax(2) == target).sum(0)
    n = max(1, len(y))
    return (loss_sum / n).tolist(), [c / n for c in correct.tolist()]


@torch.no_grad()
def accuracy_batch_stats(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    prepare: Prepare,
    members: int = 1,
) -> list[float]:
    """Per member accuracy with BN using each test batch's own statistics (as in training).

    Runs on a copy, so the model's running statistics stay untouched; dropout stays off.
    """
    probe = copy.deepcopy(model).eval()
    for layer in bn_layers(probe):
        layer.train()
    correct = torch.zeros(members, device=x.device, dtype=torch.long)
    counted = 0
    n = len(y)
    for start in range(0, n, batch_size):
        end = min(start + batch_size, n)
        if end - start < 2:  # BN statistics of one sample are undefined
            continue
        logits = member_logits(probe(prepare(x[start:end])), members)
        correct += (logits.argmax(2) == y[start:end].unsqueeze(1)).sum(0)
        counted += end - start
    return [c / max(1, counted) for c in correct.tolist()]


def final_metrics(
    model: nn.Module,
    data: Dataset,
    batch_size: int,
    autocast: Autocast,
    prepare: Prepare,
    members: int = 1,
) -> list[FinalMetrics]:
    """Per member test metrics: running statistics, then each test batch's own statistics."""
    with autocast():
        losses, accuracies = evaluate(model, data.x_test, data.y_test, prepare, members)
        if bn_layers(model):
            batch_stats = accuracy_batch_stats(
                model, data.x_test, data.y_test, batch_size, prepare, members
            )
        else:
            batch_stats = accuracies
    return [FinalMetrics(*m) for m in zip(losses, accuracies, batch_stats, strict=True)]


def probe_accuracies(
    model: nn.Module,
    data: Dataset,
    autocast: Autocast,
    prepare: Prepare,
    members: int = 1,
) -> list[tuple[tuple[float, float], ...]]:
    """Per member (momentum, test accuracy) with the running statistics each probed momentum
    would have given (``bn_momentum_probe``); empty tuples without a probe."""
    momenta = probed_momenta(model)
    per_member: list[list[tuple[float, float]]] = [[] for _ in range(members)]
    for index, momentum in enumerate(momenta):
        with probed_statistics(model, index), autocast():
            _, accuracies = evaluate(model, data.x_test, data.y_test, prepare, members)
        for mine, accuracy in zip(per_member, accuracies, strict=True):
            mine.append((momentum, accuracy))
    return [tuple(mine) for mine in per_member]


def _precise_bn(
    model: nn.Module,
    data: Dataset,
    config: TrainConfig,
    gen: torch.Generator,
    prepare: Prepare,
) -> None:
    """Recompute BN statistics over ``precise_bn_batches`` random training batches."""
    batches = list(epoch_batches(len(data.y_train), config, gen, data.device))
    chosen = batches[: config.precise_bn_batches]
    recompute_bn_stats(model, (prepare(data.x_train[idx]) for idx in chosen))
