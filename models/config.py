"""Every training setting, declared once, and the frozen config and result types of one run.

Each field of ``TrainConfig`` carries its type, bounds (pydantic ``Field``), help text, unit and
place in a study spec (``Setting``) as ``Annotated`` metadata. Everything else is derived from that
one declaration: the trainer's validation (``TrainConfig.__post_init__``), a study spec's search
dimensions and ``training`` section (search/spec.py), the ``bnsweep train`` flags, the spec →
config mapping and which settings may differ between the members of a fused group. Adding a
setting is one edit here plus its use in the trainer.

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
- ``bn_momentum_probe``: momenta whose running statistics are kept beside the real ones during
  training (from the same batch statistics) and evaluated on the test set at the end: training
  normalizes with batch statistics, so the weights do not depend on ``bn_momentum``; only the
  running statistics do, and one run gives them for every probed momentum.
- Durations are seconds (``*_s``).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum, StrEnum
from types import MappingProxyType, NoneType, UnionType
from typing import Annotated, Any, Union, get_args, get_origin, get_type_hints

import annotated_types
from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    Strict,
    TypeAdapter,
    ValidationError,
)

from models.errors import ConfigError, config_error


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


# --- the declaration ------------------------------------------------------------------------------


class Home(StrEnum):
    """Where a study spec sets a setting."""

    SEARCH = "search_space"  # a search dimension (fixed, choices or range), searched by default
    TRAINING = "training"  # the spec's ``training`` section (may also be searched)
    RUN = "run"  # not a spec setting: model, dataset and device come from elsewhere


@dataclass(frozen=True)
class Setting:
    """What a training setting means and where it lives (``Annotated`` metadata of a field).

    Args:
        help: One line for users (CLI help, API schema).
        home: Where a study spec sets it.
        unit: Its unit or convention, if any.
        spec_name: Its name in a study spec when that differs from the field's.
        flags: Extra ``bnsweep train`` flag names (the field's own ``--kebab-name`` always works).
        per_member: May differ between the members of a fused group (it does not shape the
            model, the data order of the group or the schedule); otherwise members share it.
        search: The default search dimension in spec form (``{"choices": [...]}`` or a range);
            None: fixed at the field's default.
    """

    help: str
    home: Home
    unit: str = ""
    spec_name: str = ""
    flags: tuple[str, ...] = ()
    per_member: bool = False
    search: Mapping[str, Any] | None = None


def _frozen(mapping: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping))


Params = Mapping[str, Any]
MAX_PROBED_MOMENTA = 32


def _momenta_from_text(value: Any) -> Any:
    """``bn_momentum_probe`` also from text, as a command-line flag gives it: ``0.01,0.1``."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


def _canonical_momenta(momenta: tuple[float, ...]) -> tuple[float, ...]:
    """Sorted, without repeats: the same probe however it is written (one fusion key)."""
    return tuple(sorted(set(momenta)))


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides one training run. Validated on construction (ConfigError)."""

    # --- what is trained, on what
    model: Annotated[
        str, Field(min_length=1, max_length=100), Setting("registered model name", Home.RUN)
    ] = "cnn1d"
    model_params: Annotated[Params, Setting("parameters of the model", Home.RUN)] = field(
        default_factory=dict
    )
    dataset: Annotated[
        str, Field(min_length=1, max_length=100), Setting("registered dataset name", Home.RUN)
    ] = "mnist1d"
    dataset_params: Annotated[Params, Setting("parameters of the dataset", Home.RUN)] = field(
        default_factory=dict
    )
    # --- optimization
    batch_size: Annotated[
        int,
        Strict(),
        Field(ge=1),
        Setting(
            "samples per optimizer step",
            Home.SEARCH,
            unit="samples",
            search={"choices": [32, 64, 128, 256]},
        ),
    ] = 128
    learning_rate: Annotated[
        float,
        Strict(),
        Field(gt=0, le=1000),
        Setting(
            "learning rate (a base rate at batch size 256 with lr_scaling)",
            Home.SEARCH,
            flags=("--lr",),
            per_member=True,
            search={"low": 1e-3, "high": 1.0, "log": True},
        ),
    ] = 0.05
    lr_scaling: Annotated[
        bool,
        Strict(),
        Setting(
            "linear scaling rule: lr = learning_rate * batch_size / 256",
            Home.SEARCH,
            per_member=True,
        ),
    ] = False
    optimizer: Annotated[Optimizer, Setting("optimizer", Home.SEARCH)] = Optimizer.SGD
    momentum: Annotated[
        float,
        Strict(),
        Field(ge=0, lt=1),
        Setting(
            "optimizer momentum (SGD) / beta1 (AdamW)",
            Home.SEARCH,
            per_member=True,
            search={"low": 0.5, "high": 0.99},
        ),
    ] = 0.9
    nesterov: Annotated[
        bool, Strict(), Setting("Nesterov momentum (SGD; needs momentum > 0)", Home.TRAINING)
    ] = False
    weight_decay: Annotated[
        float,
        Strict(),
        Field(ge=0, le=1),
        Setting("weight decay (decoupled for AdamW)", Home.SEARCH, per_member=True),
    ] = 5e-4
    epochs: Annotated[
        int, Strict(), Field(ge=1), Setting("passes over the training set", Home.TRAINING)
    ] = 10
    schedule: Annotated[
        Schedule, Setting("learning-rate schedule, stepped every batch", Home.TRAINING)
    ] = Schedule.COSINE
    warmup_epochs: Annotated[
        float,
        Strict(),
        Field(ge=0),
        Setting("linear warm-up (warmup_cosine)", Home.TRAINING, unit="epochs"),
    ] = 1.0
    # --- batch normalization
    bn_placement: Annotated[
        Placement,
        Setting(
            "where BN sits relative to the activation",
            Home.SEARCH,
            search={"choices": ["before_activation", "after_activation", "none"]},
        ),
    ] = Placement.BEFORE_ACTIVATION
    bn_momentum: Annotated[
        float,
        Strict(),
        Field(gt=0, le=1),
        Setting(
            "weight of the new batch in BN running statistics",
            Home.SEARCH,
            unit="PyTorch convention",
            per_member=True,
            search={"low": 0.01, "high": 0.5, "log": True},
        ),
    ] = 0.1
    bn_eps: Annotated[float, Strict(), Field(gt=0, le=1), Setting("BN epsilon", Home.TRAINING)] = (
        1e-5
    )
    ghost_batch_size: Annotated[
        int | None,
        Strict(),
        Field(ge=2),
        Setting("BN statistics over virtual batches of this size (null = off)", Home.SEARCH),
    ] = None
    precise_bn_batches: Annotated[
        int,
        Strict(),
        Field(ge=0, le=10_000),
        Setting(
            "recompute BN statistics over this many batches before evaluating (0 = off)",
            Home.SEARCH,
            unit="batches",
            spec_name="precise_bn",
            per_member=True,
        ),
    ] = 0
    bn_momentum_probe: Annotated[
        tuple[Annotated[float, Field(gt=0, le=1)], ...],
        Field(max_length=MAX_PROBED_MOMENTA),
        BeforeValidator(_momenta_from_text),
        AfterValidator(_canonical_momenta),
        Setting(
            "also measure test accuracy with the running statistics each of these bn_momentum "
            "values would have given (same run, same weights; empty = off)",
            Home.TRAINING,
            unit="PyTorch convention",
        ),
    ] = ()
    # --- initialization and reproducibility
    init: Annotated[Init, Setting("weight initialization", Home.SEARCH, per_member=True)] = (
        Init.KAIMING
    )
    init_std: Annotated[
        float,
        Strict(),
        Field(gt=0, le=10),
        Setting("standard deviation of init=normal", Home.TRAINING, per_member=True),
    ] = 0.02
    seed: Annotated[
        int,
        Strict(),
        Field(ge=0, le=2**31 - 1),
        Setting("seed of init, batch order and dropout", Home.TRAINING, per_member=True),
    ] = 0
    # --- execution
    device: Annotated[
        str,
        Field(pattern=r"^(auto|cpu|cuda(:\d+)?)$"),
        Setting("auto (CUDA if present, else CPU) | cpu | cuda | cuda:N", Home.RUN),
    ] = "auto"
    bf16: Annotated[
        bool, Strict(), Setting("bf16 autocast (CUDA only; ignored on CPU)", Home.TRAINING)
    ] = False

    def __post_init__(self) -> None:
        for info in SETTINGS.values():
            object.__setattr__(self, info.name, info.check(getattr(self, info.name)))
        for name in ("model_params", "dataset_params"):
            object.__setattr__(self, name, _frozen(getattr(self, name)))
        if self.nesterov and self.momentum == 0:
            raise ConfigError("nesterov", "needs momentum > 0")
        if self.bn_placement is not Placement.NONE and self.batch_size < 2:
            raise ConfigError("batch_size", "must be >= 2 with batch normalization")

    @property
    def effective_learning_rate(self) -> float:
        """The learning rate the optimizer uses, after the optional linear scaling rule."""
        if self.lr_scaling:
            return self.learning_rate * self.batch_size / 256
        return self.learning_rate

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (enums as strings, mappings as dicts)."""
        out: dict[str, Any] = {}
        for name in SETTINGS:
            value = getattr(self, name)
            if isinstance(value, Mapping):
                value = dict(value)
            elif isinstance(value, StrEnum):
                value = value.value
            out[name] = value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        """A config from plain data (YAML, JSON); ConfigError names an unknown or bad field."""
        if not isinstance(data, Mapping):
            raise ConfigError("config", f"must be a mapping of TrainConfig fields, got {data!r}")
        unknown = sorted(set(data) - set(SETTINGS))
        if unknown:
            raise ConfigError(unknown[0], f"unknown field; known: {', '.join(SETTINGS)}")
        return cls(**data)


# --- the declaration, read back -------------------------------------------------------------------


class Kind(StrEnum):
    """How a setting is searched."""

    INT = "int"
    FLOAT = "float"
    CATEGORICAL = "categorical"  # enums and booleans
    OTHER = "other"  # names, parameter mappings, the device: never searched


@dataclass(frozen=True)
class SettingInfo:
    """One declared setting with what its annotation says: type, bounds, choices, default."""

    name: str
    setting: Setting
    annotation: Any
    default: Any
    kind: Kind
    nullable: bool
    choices: tuple[Any, ...] | None
    bounds: tuple[float | None, float | None, bool, bool]  # low, high, low/high inclusive

    @property
    def spec_name(self) -> str:
        return self.setting.spec_name or self.name

    @property
    def type_name(self) -> str:
        return {Kind.INT: "int", Kind.FLOAT: "float"}.get(self.kind, "str")

    @functools.cached_property
    def adapter(self) -> TypeAdapter[Any]:
        return TypeAdapter(self.annotation)

    def check(self, value: Any, path: str | None = None) -> Any:
        """``value`` validated and converted (enum from its string, int to float) for this
        setting; ConfigError naming ``path`` (default: the setting's name) otherwise."""
        try:
            return self.adapter.validate_python(value)
        except ValidationError as exc:
            raise config_error(exc, path or self.name) from None

    def describe(self) -> dict[str, Any]:
        """JSON Schema of the setting with its help, unit and spec name (for /registry)."""
        schema = self.adapter.json_schema()
        schema.pop("title", None)
        extra = {"spec_name": self.spec_name, "home": self.setting.home.value}
        if self.setting.unit:
            extra["unit"] = self.setting.unit
        default = self.default.value if isinstance(self.default, Enum) else self.default
        return {**schema, "description": self.setting.help, "default": default, **extra}


def _info(name: str, hint: Any, default: Any) -> SettingInfo:
    base, *metadata = get_args(hint)
    setting = next(m for m in metadata if isinstance(m, Setting))
    options = get_args(base) if get_origin(base) in (Union, UnionType) else (base,)
    nullable = NoneType in options
    (core,) = [o for o in options if o is not NoneType]
    low: float | None = None
    high: float | None = None
    low_incl = high_incl = True
    for m in metadata:
        for c in getattr(m, "metadata", [m]):  # a pydantic FieldInfo holds its constraints
            if isinstance(c, annotated_types.Ge):
                low, low_incl = float(c.ge), True  # type: ignore[arg-type]
            elif isinstance(c, annotated_types.Gt):
                low, low_incl = float(c.gt), False  # type: ignore[arg-type]
            elif isinstance(c, annotated_types.Le):
                high, high_incl = float(c.le), True  # type: ignore[arg-type]
            elif isinstance(c, annotated_types.Lt):
                high, high_incl = float(c.lt), False  # type: ignore[arg-type]
    choices: tuple[Any, ...] | None = None
    if core is bool:
        kind, choices = Kind.CATEGORICAL, (False, True)
    elif isinstance(core, type) and issubclass(core, StrEnum):
        kind, choices = Kind.CATEGORICAL, tuple(e.value for e in core)
    elif core is int:
        kind = Kind.INT
    elif core is float:
        kind = Kind.FLOAT
    else:
        kind = Kind.OTHER
    return SettingInfo(
        name, setting, hint, default, kind, nullable, choices, (low, high, low_incl, high_incl)
    )


def _settings() -> dict[str, SettingInfo]:
    hints = get_type_hints(TrainConfig, include_extras=True)
    out = {}
    for f in dataclasses.fields(TrainConfig):
        factory: Any = f.default_factory  # every field has a default or a factory
        default = f.default if f.default is not dataclasses.MISSING else factory()
        out[f.name] = _info(f.name, hints[f.name], default)
    return out


SETTINGS: dict[str, SettingInfo] = _settings()
"""Every TrainConfig setting by field name, in declaration order."""

PER_MEMBER_SETTINGS: tuple[str, ...] = tuple(n for n, i in SETTINGS.items() if i.setting.per_member)
SHARED_SETTINGS: tuple[str, ...] = tuple(n for n in SETTINGS if n not in PER_MEMBER_SETTINGS)


def setting_by_spec_name(spec_name: str) -> SettingInfo | None:
    """The setting a study spec calls ``spec_name`` (e.g. ``precise_bn``), if any."""
    return _BY_SPEC_NAME.get(spec_name)


_BY_SPEC_NAME = {i.spec_name: i for i in SETTINGS.values() if i.setting.home is not Home.RUN}


# --- results --------------------------------------------------------------------------------------


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
    # With ``bn_momentum_probe``: (momentum, test accuracy with the running statistics that
    # momentum would have given) per probed momentum, ascending; empty without a probe or BN.
    test_accuracy_by_bn_momentum: tuple[tuple[float, float], ...] = ()

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
            "test_accuracy_by_bn_momentum": [list(p) for p in self.test_accuracy_by_bn_momentum],
        }
