"""The fused executor: K compatible configurations trained as one model.

A small model leaves a GPU mostly idle and, on a CPU, spends a batch of 32 mostly in per-operator
overhead; training K trials as one model of K side-by-side members (``models.fused_layers``,
``models.fused_optim``, after HFTA, MLSys'21) amortizes both. Fusion is an optimisation, never a
different result: each member trains as ``train(member_config)`` would, with its own
initialization, batch order, learning rate, momentum, weight decay, BN momentum, running
statistics (and probed ones, ``bn_momentum_probe``) and precise BN, and reports its own per-epoch
metrics, test metrics and status.

Which configurations fuse: ``fusion_key``. Shared settings (``SHARED_FIELDS``) shape the model, the
data order of the group or the schedule; the others (``MEMBER_FIELDS``) may differ per member.

Numerical contract: a member's per-epoch train/val losses, val accuracies, test accuracies (running
and batch statistics) and final BN running statistics equal those of ``train`` on the same config
up to float32 rounding carried through training: grouped convolutions, batched matrix products
and the per-member loss reduction sum in another order than the unfused kernels (~1e-7 relative
per operation), and training amplifies that as it amplifies any perturbation. On CPU, over 2-3
epochs, losses agree within 1e-5 relative and BN running statistics within ~2e-5 (ghost BN's
small-chunk statistics amplify most); tests allow rtol 1e-4 (losses; statistics also atol 1e-4)
and one sample per accuracy, a near tie in the logits being able to flip. On CUDA, convolutions
run in TF32 by default (as in ``train``), cuDNN picks algorithms per shape and bf16 autocast rounds
to 8 bits: there the members are equal in distribution rather than to rounding (measured on an
H100 over 2 epochs: losses within 4e-3 relative in fp32, 4e-2 with bf16; test accuracies within 2
of 40 samples), as two unfused runs with different kernels would be.

Faults stay per member: a member that diverges, or whose callback returns True (pruned; also how
a cancelled trial stops), leaves the group at that epoch boundary: it is sliced out of every fused
parameter, buffer and optimizer state, and the others train on as if it had never been there. If
the fused group runs out of memory it is split in halves (down to single members, which run with
``train``) and the halves start again from epoch 1: a member's callback may then see epochs it has
already seen once more, with the retry's metrics (which are the ones its result holds).
"""

from __future__ import annotations

import math
import time
from collections.abc import Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import torch
import torch.nn.functional as F

from models.config import EpochMetrics, TrainConfig, TrainResult, TrainStatus
from models.data import Dataset, load_dataset
from models.device import resolve_device
from models.estimate import memory_refusal
from models.fused_layers import fuse_models, keep_members
from models.fused_optim import fused_optimizer
from models.layers import attach_momentum_probe, bn_layers, keep_probe_members, recompute_bn_stats
from models.registry import DATASETS
from models.train import (
    EpochCallback,
    autocast_for,
    batch_bounds,
    build_model,
    diverged_reason,
    epoch_batches,
    evaluate,
    final_metrics,
    is_oom,
    lr_factor,
    member_logits,
    prepare_for,
    probe_accuracies,
    pruned_reason,
    release_memory,
    train,
    uses_channels_last,
)
from models.validate import check_config

# Settings the members of a fused group share: they shape the model, the group's data order or the
# schedule. Every other setting (MEMBER_FIELDS) may differ per member.
SHARED_FIELDS: tuple[str, ...] = (
    "model",
    "model_params",
    "dataset",
    "dataset_params",
    "batch_size",
    "bn_placement",
    "ghost_batch_size",
    "optimizer",
    "nesterov",
    "schedule",
    "warmup_epochs",
    "epochs",
    "bn_eps",
    "bf16",
    "device",
    "bn_momentum_probe",  # one probe per group: its statistics ride along every member's
)
MEMBER_FIELDS: tuple[str, ...] = (
    "learning_rate",
    "lr_scaling",
    "momentum",
    "weight_decay",
    "bn_momentum",
    "init",
    "init_std",
    "seed",
    "precise_bn_batches",
)


def fusion_key(config: TrainConfig) -> Hashable | None:
    """A key equal for configurations that may train fused; None if this one cannot fuse.

    A model fuses if its registry entry has the tag ``fusable=True`` and it has no dropout
    (per-member dropout masks could not match the unfused runs' random draws).

    Raises:
        ConfigError: an invalid configuration, as ``train`` would raise.
    """
    entry, model_params = check_config(config)
    if not entry.tags.get("fusable", False) or model_params.get("dropout", 0.0) > 0:
        return None
    values: dict[str, Any] = {name: getattr(config, name) for name in SHARED_FIELDS}
    # Parameters with their defaults filled in: {} and the defaults spelled out are equal.
    values["model_params"] = model_params
    dataset = DATASETS.get(config.dataset, "dataset")
    values["dataset_params"] = dataset.resolve_params(config.dataset_params, "dataset.params")
    values["device"] = str(resolve_device(config.device))  # "auto" and what it resolves to
    return tuple((name, _hashable(values[name])) for name in SHARED_FIELDS)


def _hashable(value: Any) -> Hashable:
    if isinstance(value, Mapping):
        return tuple(sorted((k, _hashable(v)) for k, v in value.items()))
    if isinstance(value, list | tuple):
        return tuple(_hashable(v) for v in value)
    return value  # type: ignore[no-any-return]


def train_fused(
    configs: Sequence[TrainConfig],
    data: Dataset | None = None,
    on_epoch: Sequence[EpochCallback | None] | None = None,
) -> list[TrainResult]:
    """Train ``configs`` as one fused model; one TrainResult per config, in order.

    Args:
        configs: Configurations with one ``fusion_key`` (a single config of any kind runs
            ``train``).
        data: The dataset; loaded (cached) from the configs' dataset if None.
        on_epoch: One callback per config (or None): called with that member's metrics after
            each epoch; returning True stops that member (status ``pruned``). After an
            out-of-memory retry a callback may be called again for epochs it has seen.

    Returns:
        What ``train`` returns for each config (within the module's numerical contract).
        ``epoch_s``, ``samples_per_s`` and ``train_s`` are those of the fused group, in which
        every member trained its samples in that time.

    Raises:
        ConfigError: an invalid configuration.
        ValueError: configurations that do not share one fusion key, or callbacks that do not
            match the configurations one to one.
    """
    callbacks = list(on_epoch) if on_epoch is not None else [None] * len(configs)
    if len(callbacks) != len(configs):
        raise ValueError(f"{len(callbacks)} callbacks for {len(configs)} configurations")
    if len(configs) <= 1:
        return [train(c, data, cb) for c, cb in zip(configs, callbacks, strict=True)]
    keys = {fusion_key(c) for c in configs}
    if None in keys or len(keys) > 1:
        raise ValueError("train_fused needs configurations with one fusion key (see fusion_key)")
    members = [_Member(i, c, cb) for i, (c, cb) in enumerate(zip(configs, callbacks, strict=True))]
    results: list[TrainResult | None] = [None] * len(configs)
    _train_group(members, data, results)
    return cast(list[TrainResult], results)  # every member ends with a result


@dataclass
class _Member:
    """One configuration of a fused group and what it has done so far."""

    index: int  # position in train_fused's arguments
    config: TrainConfig
    on_epoch: EpochCallback | None
    history: list[EpochMetrics] = field(default_factory=list)

    def __post_init__(self) -> None:
        # Exactly train()'s generators: batch order, then precise BN's batches.
        self.shuffle = torch.Generator().manual_seed(self.config.seed)
        self.precise_gen = torch.Generator().manual_seed(self.config.seed + 1)


def _train_group(
    members: list[_Member], data: Dataset | None, results: list[TrainResult | None]
) -> None:
    """Train ``members`` fused; out of memory: again in halves from scratch, alone with train()."""
    if len(members) == 1:
        member = members[0]
        results[member.index] = train(member.config, data, member.on_epoch)
        return
    device = resolve_device(members[0].config.device)
    # A group whose estimate cannot fit the device's free memory is split before it is built.
    out_of_memory = memory_refusal(members[0].config, device, data, len(members)) is not None
    try:
        if not out_of_memory:
            _FusedRun(members, data, device, results).run()
    except Exception as exc:  # only out-of-memory is retried; anything else is a bug
        if not is_oom(exc):
            raise
        out_of_memory = True
    if out_of_memory:
        release_memory(device)  # outside the except block: the frames holding memory are gone
        remaining = [
            _Member(m.index, m.config, m.on_epoch) for m in members if results[m.index] is None
        ]
        half = (len(remaining) + 1) // 2
        for part in (remaining[:half], remaining[half:]):
            if part:
                _train_group(part, data, results)


# --- the fused group ----------------------------------------------------------------------------


class FusedGroup:
    """K configurations (one fusion key) as one fused model with its fused optimizer."""

    def __init__(self, configs: Sequence[TrainConfig], data: Dataset, device: torch.device) -> None:
        entry, model_params = check_config(configs[0])
        models = [build_model(c, entry.builder, model_params, data) for c in configs]
        self.members = len(models)
        self.channels_last = uses_channels_last(device, models[0])
        self.model = fuse_models(models).to(device)
        if configs[0].bn_momentum_probe:
            attach_momentum_probe(self.model, configs[0].bn_momentum_probe)
        self.optimizer = fused_optimizer(configs, self.model.parameters())
        self.autocast = autocast_for(device, configs[0].bf16)
        self._to_memory_format = prepare_for(self.channels_last)

    def inputs(self, x: torch.Tensor, shared: bool) -> torch.Tensor:
        """Members' samples in the fused layout (N, K * C, *S): ``x`` is one batch for every
        member (N, C, *S) if ``shared``, else one per member (K, N, C, *S)."""
        if shared:
            x = x.unsqueeze(0).expand(self.members, *x.shape)
        x = x.transpose(0, 1)  # (N, K, C, *S)
        return self._to_memory_format(x.reshape(x.shape[0], -1, *x.shape[3:]))

    def step(self, x: torch.Tensor, y: torch.Tensor, lr_factor: float) -> torch.Tensor:
        """One optimization step on fused inputs ``x`` and labels ``y`` (N, K).

        Each member's loss is its own mean cross-entropy and the total is their sum, so each
        member's gradients are those of its unfused run. Returns the members' losses (K,).
        """
        with self.autocast():
            logits = member_logits(self.model(x), self.members)  # (N, K, classes)
            losses = F.cross_entropy(logits.transpose(1, 2), y, reduction="none").mean(0)
        self.optimizer.zero_grad()
        losses.sum().backward()  # type: ignore[no-untyped-call]
        self.optimizer.step(lr_factor)
        return losses.detach()

    def keep(self, positions: list[int]) -> None:
        """Keep only the members at ``positions``: the others leave without a trace."""
        keep_probe_members(self.model, positions, self.members)
        keep_members(self.model, positions)
        self.optimizer.keep_members(positions)
        self.members = len(positions)


class _FusedRun:
    """One attempt at training a fused group; writes each member's result as it ends."""

    def __init__(
        self,
        members: list[_Member],
        data: Dataset | None,
        device: torch.device,
        results: list[TrainResult | None],
    ) -> None:
        self.active = list(members)
        self.device = device
        self.results = results
        self.start = time.perf_counter()
        first = members[0].config
        if data is None:
            data = load_dataset(first.dataset, first.dataset_params, device=device)
        self.data = data.to(device)
        self.group = FusedGroup([m.config for m in members], self.data, device)
        self.use_precise_bn = bool(bn_layers(self.group.model))

    def run(self) -> None:
        config, data, group = self.active[0].config, self.data, self.group
        n = len(data.y_train)
        batches_per_epoch = len(batch_bounds(n, config))
        factor = lr_factor(config, batches_per_epoch)
        step = 0
        for epoch in range(1, config.epochs + 1):
            # --- train one epoch
            t0 = time.perf_counter()
            group.model.train()
            loss_sum = torch.zeros(group.members, device=self.device)
            seen = 0
            # Equal seeds draw equal permutations: then each batch is gathered once for all.
            shared = len({m.config.seed for m in self.active}) == 1
            for idx in self._epoch_batches():
                x, y = self._batch(idx, shared)
                loss_sum += group.step(x, y, factor(step)).float()
                seen += len(idx[0])
                step += 1
            train_losses = (loss_sum / batches_per_epoch).tolist()  # the one sync of the epoch
            train_s = time.perf_counter() - t0
            self._leave(
                {
                    i: (TrainStatus.DIVERGED, diverged_reason("training", loss, epoch))
                    for i, loss in enumerate(train_losses)
                    if not math.isfinite(loss)
                }
            )
            train_losses = [loss for loss in train_losses if math.isfinite(loss)]
            if not self.active:
                return

            # --- validate, report
            val_losses, val_accuracies = self._validate()
            leaving: dict[int, tuple[TrainStatus, str]] = {}
            for i, member in enumerate(self.active):
                if not math.isfinite(val_losses[i]):
                    reason = diverged_reason("validation", val_losses[i], epoch)
                    leaving[i] = (TrainStatus.DIVERGED, reason)
                    continue
                metrics = EpochMetrics(
                    epoch=epoch,
                    train_loss=train_losses[i],
                    val_loss=val_losses[i],
                    val_accuracy=val_accuracies[i],
                    epoch_s=time.perf_counter() - t0,
                    samples_per_s=seen / train_s if train_s > 0 else float("inf"),
                )
                member.history.append(metrics)
                if member.on_epoch is not None and member.on_epoch(metrics) is True:
                    leaving[i] = (TrainStatus.PRUNED, pruned_reason(epoch))
            self._leave(leaving)
            if not self.active:
                return

        # --- test: running statistics, then each test batch's own statistics
        finals = final_metrics(
            group.model, data, config.batch_size, group.autocast, self._shared_inputs, group.members
        )
        probes = probe_accuracies(
            group.model, data, group.autocast, self._shared_inputs, group.members
        )
        for member, final, probe in zip(self.active, finals, probes, strict=True):
            self.results[member.index] = self._result(
                member,
                TrainStatus.OK,
                test_accuracy=final.accuracy,
                test_accuracy_batch_stats=final.accuracy_batch_stats,
                test_loss=final.loss,
                test_accuracy_by_bn_momentum=probe,
            )

    def _epoch_batches(self) -> Iterator[tuple[torch.Tensor, ...]]:
        """Each member's batch indices: its own permutation, from its own generator (drawn even
        when seeds are equal, so every generator stays where train() would have it)."""
        n = len(self.data.y_train)
        per_member = [epoch_batches(n, m.config, m.shuffle, self.device) for m in self.active]
        yield from zip(*per_member, strict=True)

    def _batch(
        self, idx: tuple[torch.Tensor, ...], shared: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Fused inputs and labels (B, K) of the members' batch indices."""
        data, group = self.data, self.group
        if shared:
            y = data.y_train[idx[0]].unsqueeze(1).expand(-1, group.members)
            return group.inputs(data.x_train[idx[0]], shared=True), y
        both = torch.stack(idx)  # (K, B)
        return group.inputs(data.x_train[both], shared=False), data.y_train[both].t()

    def _shared_inputs(self, x: torch.Tensor) -> torch.Tensor:
        return self.group.inputs(x, shared=True)

    def _validate(self) -> tuple[list[float], list[float]]:
        """Per member (val loss, val accuracy), after precise BN where a member asks for it."""
        data, group = self.data, self.group
        with group.autocast():
            self._precise_bn()
            return evaluate(group.model, data.x_val, data.y_val, self._shared_inputs, group.members)

    def _precise_bn(self) -> None:
        """``train``'s precise BN per member: its own batches (from its own generator) and count.

        All members run the cumulative average together; each member's statistics are taken
        after its own number of batches, and members without precise BN keep theirs.
        """
        wanted = [m.config.precise_bn_batches for m in self.active]
        if not self.use_precise_bn or not any(wanted):
            return
        n = len(self.data.y_train)
        chosen = {
            i: list(epoch_batches(n, m.config, m.precise_gen, self.device))[:count]
            for i, (m, count) in enumerate(zip(self.active, wanted, strict=True))
            if count > 0
        }
        counts = [len(chosen.get(i, [])) for i in range(len(self.active))]
        # For members without (or done with) precise BN: batch j of the longest list, whose size
        # matches the others' batch j (the last batch of an epoch may be smaller).
        filler = max(chosen.values(), key=len)
        layers = bn_layers(self.group.model)
        kept = [(layer.running_mean.clone(), layer.running_var.clone()) for layer in layers]  # type: ignore[union-attr]

        def batches() -> Iterator[torch.Tensor]:
            for j in range(max(counts)):
                idx = torch.stack(
                    [chosen[i][j] if j < counts[i] else filler[j] for i in range(len(counts))]
                )
                yield self.group.inputs(self.data.x_train[idx], shared=False)
                # Runs once the model has seen batch j: members whose count it was are done.
                done = [i for i, count in enumerate(counts) if count == j + 1]
                for layer, (mean, var) in zip(layers, kept, strict=True):
                    mean[done] = layer.running_mean[done]  # type: ignore[index]
                    var[done] = layer.running_var[done]  # type: ignore[index]

        recompute_bn_stats(self.group.model, batches())
        with torch.no_grad():
            for layer, (mean, var) in zip(layers, kept, strict=True):
                layer.running_mean.copy_(mean)  # type: ignore[union-attr]
                layer.running_var.copy_(var)  # type: ignore[union-attr]

    def _leave(self, leaving: dict[int, tuple[TrainStatus, str]]) -> None:
        """Members at these positions end with (status, reason) and leave the group."""
        if not leaving:
            return
        for i, (status, reason) in leaving.items():
            member = self.active[i]
            self.results[member.index] = self._result(member, status, reason=reason)
        keep = [i for i in range(len(self.active)) if i not in leaving]
        if keep:
            self.group.keep(keep)
        self.active = [self.active[i] for i in keep]

    def _result(self, member: _Member, status: TrainStatus, **fields: Any) -> TrainResult:
        return TrainResult(
            status=status,
            epochs=tuple(member.history),
            device=str(self.device),
            train_s=time.perf_counter() - self.start,
            num_classes=self.data.num_classes,
            **fields,
        )
