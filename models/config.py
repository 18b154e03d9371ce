"""Plain, frozen configuration and result types of one training run.

Conventions (stated once, here):
- ``learning_rate`` is the rate used at ``batch_size`` as given; with ``lr_scaling=True`` it is a
  base rate at batch size 256 and the trainer uses ``learning_rate * batch_size / 256`` (linear
  scaling rule).
- ``momentum`` is the *optimizer's* momentum (SGD momentum, or AdamW's beta1).
- ``bn_momentum`` follows PyTorch's convention: the weight of the new batch statistic in the
  running average (``running = (1 - bn_momentum) * running + bn_momentum * batch``); Keras' 0.99
  is 0.01 here.
- ``ghost_batch_size``: BN statistics computed over virtual batches of this size (None = whole
  batch).
- ``precise_bn_batches``: before each evaluation, recompute running statistics as a true average
  over this many training batches (0 = off).
- Durations are seconds (``*_s``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any


class Placement(StrEnum):
    """Where the normalization layer sits relative to the activation."""

    BEFORE_ACTIVATION = "before_activation"  # conv/linear -> BN -> act (Ioffe & Szegedy)
    AFTER_ACTIVATION = "after_activation"  # conv/linear -> act -> BN
    NONE = "none"  # no BN; conv/linear layers keep their bias
    PRE_ACTIVATION = "pre_activation"  # BN -> act -> conv (pre-activation ResNet; resnet only)


class TrainStatus(StrEnum):
    """How a training run ended. Faults are values, not exceptions."""

    OK = "ok"
    PRUNED = "pruned"  # the epoch callback asked to stop
    DIVERGED = "diverged"  # loss became NaN/inf
    OOM = "oom"  # device out of memory


class Optimizer(StrEnum):
    SGD = "sgd"
    ADAMW = "adamw"


class Schedule(StrEnum):
    CONSTANT = "constant"
    COSINE = "cosine"
    WARMUP_COSINE = "warmup_cosine"  # linear warm-up for warmup_epochs, then cosine to 0


class Init(StrEnum):
    KAIMING = "kaiming"
    XAVIER = "xavier"
    NORMAL = "normal"  # N(0, init_std)


def _frozen(mapping: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping or {}))


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides one training run."""

    # --- what is trained, on what
    model: str = "cnn1d"
    model_params: Mapping[str, Any] = field(default_factory=dict)
    dataset: str = "mnist1d"
    dataset_params: Mapping[str, Any] = field(default_factory=dict)
    # --- optimization
    batch_size: int = 128
    learning_rate: float = 0.05  # see lr_scaling
    lr_scaling: bool = False  # lr = learning_rate * batch_size / 256
    optimizer: Optimizer = Optimizer.SGD
    momentum: float = 0.9  # optimizer momentum (SGD) / beta1 (AdamW)
    nesterov: bool = False
    weight_decay: float = 5e-4
    epochs: int = 10
    schedule: Schedule = Schedule.COSINE
    warmup_epochs: float = 1.0
    # --- batch normalization
    bn_placement: Placement = Placement.BEFORE_ACTIVATION
    bn_momentum: float = 0.1  # PyTorch convention (weight of the new batch)
    bn_eps: float = 1e-5
    ghost_batch_size: int | None = None
    precise_bn_batches: int = 0
    # --- initialization and reproducibility
    init: Init = Init.KAIMING
    init_std: float = 0.02  # only for init="normal"
    seed: int = 0
    # --- execution
    device: str = "auto"  # "auto" = CUDA if present, else CPU; or "cpu", "cuda", "cuda:N"
    bf16: bool = False  # bf16 autocast, CUDA only (ignored on CPU)

    def __post_init__(self) -> None:
        object.__setattr__(self, "model_params", _frozen(self.model_params))
        object.__setattr__(self, "dataset_params", _frozen(self.dataset_params))
        for name, enum in (
            ("optimizer", Optimizer),
            ("schedule", Schedule),
            ("bn_placement", Placement),
            ("init", Init),
        ):
            object.__setattr__(self, name, enum(getattr(self, name)))

    @property
    def effective_learning_rate(self) -> float:
        """The learning rate the optimizer uses, after the optional linear scaling rule."""
        if self.lr_scaling:
            return self.learning_rate * self.batch_size / 256
        return self.learning_rate

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (enums as strings, mappings as dicts)."""
        out: dict[str, Any] = {}
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if isinstance(value, Mapping):
                value = dict(value)
            elif isinstance(value, StrEnum):
                value = value.value
            out[name] = value
        return out


@dataclass(frozen=True)
class EpochMetrics:
    """Metrics of one finished epoch (epoch numbers start at 1)."""

    epoch: int
    train_loss: float
    val_loss: float
    val_accuracy: float
    epoch_s: float
    samples_per_s: float


@dataclass(frozen=True)
class TrainResult:
    """Outcome of one training run."""

    status: TrainStatus
    epochs: tuple[EpochMetrics, ...]
    device: str
    train_s: float
    # Test metrics, measured with BN running statistics (model.eval()) and with the statistics of
    # each test batch (BN in training mode, running stats untouched): the gap is the eval-mode
    # effect.
    test_accuracy: float | None = None
    test_accuracy_batch_stats: float | None = None
    test_loss: float | None = None
    num_classes: int = 0
    reason: str = ""  # human-readable cause for non-ok statuses

    @property
    def epochs_run(self) -> int:
        return len(self.epochs)

    @property
    def last(self) -> EpochMetrics | None:
        return self.epochs[-1] if self.epochs else None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {
            "status": self.status.value,
            "epochs": [vars(e) for e in self.epochs],
            "device": self.device,
            "train_s": self.train_s,
            "test_accuracy": self.test_accuracy,
            "test_accuracy_batch_stats": self.test_accuracy_batch_stats,
            "test_loss": self.test_loss,
            "num_classes": self.num_classes,
            "reason": self.reason,
        }
