"""Confirmation runs: a planned follow-up study that checks a search study's findings.

An HPO study is observational: its sampler chose what to try from what it had seen, so its
findings can suggest, not prove (search/analysis). A confirmation study varies **one factor at a
time around the best configuration**, over **fresh seeds** (not the seed the best configuration
was selected on: that one carries the winner's curse), and is scored on the **test split**, which
no trial of either study was selected on and which is larger than the validation split for the
built-in datasets (MNIST-1D: 800 test vs 320 validation samples). Its points, for each seed:

- ``lr_grid``: each placement over a learning-rate grid (``lr_offsets`` decades) around that
  placement's own best learning rate in the parent study (placement; learning-rate stability).
  Placements: those the parent searched, plus ``none`` where the model allows it, so that BN can
  be compared with no BN.
- ``init``: every initialization with the best BN placement and without BN, each at its
  placement's own best learning rate (initialization × {BN, no BN}).
- ``batch_size``: the best configuration at ``batch_factors`` × its batch size, with the epochs
  (and warm-up) scaled so that every batch size takes the same number of optimizer steps, the
  learning rate held (with ``lr_scaling`` the effective rate scales, as the parent's does).
- ``precise_bn``: the best configuration with precise BN over one epoch's batches (capped at
  ``MAX_PRECISE_BATCHES``), against its running averages (evaluation statistics).
- ``ghost_bn``: with and without ghost batches, when the parent searched them.
- ``best``: the best configuration itself. Every run with BN also probes the running statistics
  of ``probe_momenta`` (``bn_momentum_probe``): BN momentum never enters training, so one trained
  network per seed gives the test accuracy of every momentum, nearly for free.

A point that serves several factors (the best configuration is a grid point, an ``init`` point
and the batch-size reference) runs once and carries every role. Each planned trial carries
``user_attrs["plan"] = {"index": i, "roles": [...]}``; the analysis reads planned trials only.
A planned point that fails (out of memory, an error) is not retried, and the budget (exactly the
planned points) then lets the sampler propose a point off the plan, which the analysis ignores.
Workers fuse planned points that share their shape (placement, batch size, epochs): seeds,
learning rates, initializations and precise BN differ per member.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import optuna
import sqlalchemy as sa
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.engine import Engine

from models.config import SETTINGS, Home, Init, Placement, TrainConfig, TrainStatus
from models.registry import DATASETS, MODELS
from search.db import StudyRow
from search.errors import StudyStateError
from search.limits import Limits
from search.spec import Metric, StudySpec
from search.states import StudyKind, StudyStatus
from search.studies import create_study, get_study_row

PLAN_ATTR = "plan"  # the user attr of a planned trial: {"index": i, "roles": [...]}
MIN_SEEDS, DEFAULT_SEEDS, MAX_SEEDS = 3, 3, 20
# Each placement's grid, in decades from its own best rate: up to 100x above it, where BN's edge
# lies (a grid that stopped at +1 decade left BN's upper edge open in docs/bn-report.md's run).
LR_OFFSETS = (-1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0)
PROBE_MOMENTA = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
BATCH_FACTORS = (0.5, 2.0)
MAX_PRECISE_BATCHES = 200
_NAME_MAX = 200


class Factor(StrEnum):
    """What a planned point is for (a role; one point may have several)."""

    LR_GRID = "lr_grid"  # {"placement", "offset"}: decades from the placement's best lr
    INIT = "init"  # {"init", "bn"}: at the placement's own best lr
    BATCH_SIZE = "batch_size"  # {"batch_size", "epochs", "steps"}: equal optimizer steps
    PRECISE_BN = "precise_bn"  # {"batches"}: 0 = running averages
    GHOST_BN = "ghost_bn"  # {"ghost_batch_size"}: None = plain BN
    BEST = "best"  # the best configuration: BN momentum probe, evaluation statistics


@dataclass(frozen=True)
class ConfirmOptions:
    """What a confirmation plan varies and how finely.

    Attributes:
        seeds: Fresh seeds per point (at least 3: a t interval needs a spread to estimate).
        lr_offsets: The learning-rate grid, decades from each placement's own best rate.
        probe_momenta: BN momenta probed on every run with BN (with the trained one).
        batch_factors: Batch sizes as multiples of the best one, at equal optimizer steps.
    """

    seeds: int = DEFAULT_SEEDS
    lr_offsets: tuple[float, ...] = LR_OFFSETS
    probe_momenta: tuple[float, ...] = PROBE_MOMENTA
    batch_factors: tuple[float, ...] = BATCH_FACTORS

    def __post_init__(self) -> None:
        if not MIN_SEEDS <= self.seeds <= MAX_SEEDS:
            raise ValueError(f"seeds must be {MIN_SEEDS}..{MAX_SEEDS}, got {self.seeds}")
        if 0.0 not in self.lr_offsets:
            raise ValueError("lr_offsets must include 0 (each placement's own best rate)")


@dataclass(frozen=True)
class PlannedPoint:
    """One configuration of the plan: its values of the confirmation's searched dimensions
    (spec names) and what it is for."""

    params: dict[str, Any]
    roles: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class ConfirmationPlan:
    """The confirmation study's spec and its planned points (``spec.enqueue``, in order)."""

    spec: StudySpec
    points: tuple[PlannedPoint, ...]
    best_trial: int  # the parent's trial whose configuration is confirmed
    best: dict[str, Any]  # its settings, by spec name
    seeds: tuple[int, ...]

    def enqueue_attrs(self) -> list[dict[str, Any]]:
        """The user attrs that tag each enqueued point as planned (``PLAN_ATTR``)."""
        return [{PLAN_ATTR: {"index": i, "roles": p.roles}} for i, p in enumerate(self.points)]


# --- the plan -------------------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    return value.value if isinstance(value, StrEnum) else value


def _sign(spec: StudySpec) -> float:
    return 1.0 if spec.directions[0] == "maximize" else -1.0


def _ranked(trials: Sequence[FrozenTrial], spec: StudySpec) -> list[FrozenTrial]:
    """Complete trials that trained (status ok), best first on the primary objective."""
    ok = [
        t
        for t in trials
        if t.state is TrialState.COMPLETE
        and t.values
        and t.user_attrs.get("status", TrainStatus.OK.value) == TrainStatus.OK.value
    ]
    return sorted(ok, key=lambda t: (-_sign(spec) * t.values[0], t.number))


def _effective_lr(trial: FrozenTrial, spec: StudySpec) -> float:
    raw = trial.user_attrs.get("train_config")
    if isinstance(raw, Mapping):
        known = {k: v for k, v in raw.items() if k in TrainConfig.__dataclass_fields__}
        try:
            return TrainConfig(**known).effective_learning_rate
        except (TypeError, ValueError):
            pass
    return spec.train_config(trial.params).effective_learning_rate


def _round_lr(lr: float) -> float:
    """Four significant digits, within the declared bounds: tidy, exact values in the spec."""
    return min(1000.0, float(f"{lr:.4g}"))


def _batches_per_epoch(train_size: int, batch_size: int, with_bn: bool) -> int:
    full, rest = divmod(train_size, batch_size)
    return full + (1 if rest >= (2 if with_bn else 1) else 0)


def plan_confirmation(
    parent: StudySpec,
    trials: Sequence[FrozenTrial],
    name: str,
    options: ConfirmOptions | None = None,
    limits: Limits | None = None,
) -> ConfirmationPlan:
    """The confirmation study of ``parent`` (its spec and all its trials), named ``name``.

    Raises:
        StudyStateError: the parent has no complete trial that trained.
        SpecError: the plan is over a server cap in ``limits`` (e.g. ``budget.n_trials``).
    """
    from search.validate import parse_spec  # the validator imports the registry's plug-ins

    options = options or ConfirmOptions()
    limits = limits or Limits()
    ranked = _ranked(trials, parent)
    if not ranked:
        raise StudyStateError(f"study {parent.name!r} has no complete trial that trained yet")
    best_trial = ranked[0]
    best = _settings_of(best_trial, parent)
    seeds = _fresh_seeds(trials, options.seeds)
    planner = _Planner(parent, best, ranked, seeds, options, limits)
    points = planner.points()
    spec = parse_spec(planner.spec_data(name, points), limits)
    return ConfirmationPlan(spec, points, best_trial.number, best, seeds)


def _settings_of(trial: FrozenTrial, spec: StudySpec) -> dict[str, Any]:
    """Every setting a trial ran with, by spec name: its ``train_config`` attr (the truth of what
    it ran) over the spec's reading of its params."""
    settings = {k: _plain(v) for k, v in spec.settings(trial.params).items()}
    raw = trial.user_attrs.get("train_config")
    ran = raw if isinstance(raw, Mapping) else {}
    for name, info in SETTINGS.items():
        if info.setting.home is Home.RUN:
            continue
        if name in ran:
            settings[info.spec_name] = _plain(info.check(ran[name]))
        settings.setdefault(info.spec_name, _plain(info.default))
    return settings


def _fresh_seeds(trials: Sequence[FrozenTrial], count: int) -> tuple[int, ...]:
    """The ``count`` smallest seeds no trial of the parent used."""
    used = set()
    for t in trials:
        raw = t.user_attrs.get("train_config")
        if isinstance(raw, Mapping) and isinstance(raw.get("seed"), int):
            used.add(raw["seed"])
        if isinstance(t.params.get("seed"), int):
            used.add(t.params["seed"])
    seeds: list[int] = []
    candidate = 0
    while len(seeds) < count:
        if candidate not in used:
            seeds.append(candidate)
        candidate += 1
    return tuple(seeds)


class _Planner:
    """Builds the points of one plan from the parent's spec, best settings and ranked trials."""

    def __init__(
        self,
        parent: StudySpec,
        best: dict[str, Any],
        ranked: list[FrozenTrial],
        seeds: tuple[int, ...],
        options: ConfirmOptions,
        limits: Limits,
    ) -> None:
        self.parent, self.best, self.ranked = parent, best, ranked
        self.seeds, self.options, self.limits = seeds, options, limits
        self.placement = str(best["bn_placement"])
        self.batch_size = int(best["batch_size"])
        self.epochs = int(best["epochs"])
        dataset = DATASETS.get(parent.dataset.name)
        assert dataset.train_size is not None  # the registry requires it of every dataset
        params = dataset.resolve_params(parent.dataset.params, "dataset.params")
        self.train_size = int(dataset.train_size(params))
        allowed = MODELS.get(parent.model.name).tags.get("placements", [self.placement])
        self.allowed = [str(p) for p in allowed]
        self._points: dict[str, PlannedPoint] = {}
        self.varied: dict[str, list[Any]] = {}  # set by points(): what the plan varies

    # --- which values

    def placements(self) -> list[str]:
        dim = self.parent.search_space.dimensions().get("bn_placement")
        searched = [str(v) for v in getattr(dim, "choices", [])]
        wanted = {self.placement, *searched}
        if Placement.NONE.value in self.allowed:
            wanted.add(Placement.NONE.value)
        order = [p.value for p in Placement]
        return sorted((p for p in wanted if p in self.allowed), key=order.index)

    def center_lr(self, placement: str) -> float:
        """``placement``'s own best learning rate in the parent (spec value at the best batch
        size); the best configuration's for its own placement or one the parent never ran."""
        if placement == self.placement:
            return float(self.best["learning_rate"])
        for trial in self.ranked:
            raw = trial.user_attrs.get("train_config") or {}
            if str(raw.get("bn_placement", trial.params.get("bn_placement"))) == placement:
                effective = _effective_lr(trial, self.parent)
                if self.best.get("lr_scaling"):
                    return _round_lr(effective * 256 / self.batch_size)
                return _round_lr(effective)
        return float(self.best["learning_rate"])

    def bn_arm(self) -> str | None:
        """The placement with BN whose initializations are compared with none: the best
        configuration's, or the best BN placement the parent ran."""
        if self.placement != Placement.NONE.value:
            return self.placement
        for trial in self.ranked:
            placement = str((trial.user_attrs.get("train_config") or {}).get("bn_placement", ""))
            if placement and placement != Placement.NONE.value and placement in self.allowed:
                return placement
        return next((p for p in self.placements() if p != Placement.NONE.value), None)

    def inits(self) -> list[str]:
        dim = self.parent.search_space.dimensions().get("init")
        searched = [str(v) for v in getattr(dim, "choices", [])]
        listed = searched if len(searched) >= 2 else [i.value for i in Init]
        return [str(self.best["init"]), *[i for i in listed if i != self.best["init"]]]

    # --- the points

    def add(self, role: dict[str, Any], seed: int, **changes: Any) -> None:
        settings = self.best | {"seed": seed} | changes
        key = json.dumps(settings, sort_keys=True, default=str)
        point = self._points.setdefault(key, PlannedPoint(settings))
        if role not in point.roles:
            point.roles.append(role)

    def points(self) -> tuple[PlannedPoint, ...]:
        with_bn = self.placement != Placement.NONE.value
        for seed in self.seeds:
            self.add({"factor": Factor.BEST.value}, seed)
            for placement in self.placements():
                center = self.center_lr(placement)
                for offset in self.options.lr_offsets:
                    lr = center if offset == 0 else _round_lr(center * 10**offset)
                    role = {"factor": Factor.LR_GRID.value, "placement": placement}
                    self.add(
                        role | {"offset": offset}, seed, bn_placement=placement, learning_rate=lr
                    )
            self._init_points(seed)
            self._batch_points(seed)
            if with_bn:
                self._precise_points(seed)
                self._ghost_points(seed)
        return self._finish()

    def _init_points(self, seed: int) -> None:
        arms = [self.bn_arm(), Placement.NONE.value]
        for placement in [p for p in arms if p is not None and p in self.placements()]:
            for init in self.inits():
                role = {"factor": Factor.INIT.value, "init": init, "bn": placement != "none"}
                lr = self.center_lr(placement)
                self.add(role, seed, bn_placement=placement, learning_rate=lr, init=init)

    def _batch_points(self, seed: int) -> None:
        with_bn = self.placement != Placement.NONE.value
        steps = self.epochs * _batches_per_epoch(self.train_size, self.batch_size, with_bn)
        self.add(
            {
                "factor": Factor.BATCH_SIZE.value,
                "batch_size": self.batch_size,
                "epochs": self.epochs,
                "steps": steps,
            },
            seed,
        )
        for factor in self.options.batch_factors:
            size = round(self.batch_size * factor)
            if size == self.batch_size or size < (2 if with_bn else 1) or size > self.train_size:
                continue
            per_epoch = _batches_per_epoch(self.train_size, size, with_bn)
            epochs = max(1, round(steps / per_epoch))
            if epochs > self.limits.max_epochs:
                continue
            changes: dict[str, Any] = {"batch_size": size, "epochs": epochs}
            if self.best.get("schedule") == "warmup_cosine":
                changes["warmup_epochs"] = float(self.best["warmup_epochs"]) * epochs / self.epochs
            role = {
                "factor": Factor.BATCH_SIZE.value,
                "batch_size": size,
                "epochs": epochs,
                "steps": epochs * per_epoch,
            }
            self.add(role, seed, **changes)

    def _precise_points(self, seed: int) -> None:
        own = int(self.best.get("precise_bn", 0))
        batches = own or min(
            MAX_PRECISE_BATCHES, _batches_per_epoch(self.train_size, self.batch_size, True)
        )
        self.add({"factor": Factor.PRECISE_BN.value, "batches": own}, seed)
        other = 0 if own else batches
        self.add({"factor": Factor.PRECISE_BN.value, "batches": other}, seed, precise_bn=other)

    def _ghost_points(self, seed: int) -> None:
        dim = self.parent.search_space.dimensions().get("ghost_batch_size")
        choices = [v for v in getattr(dim, "choices", []) if v is not None and v < self.batch_size]
        own = self.best.get("ghost_batch_size")
        own = own if own is not None and own < self.batch_size else None
        other = None if own is not None else (min(choices) if choices else None)
        if own is None and other is None:
            return
        self.add({"factor": Factor.GHOST_BN.value, "ghost_batch_size": own}, seed)
        role = {"factor": Factor.GHOST_BN.value, "ghost_batch_size": other}
        self.add(role, seed, ghost_batch_size=other)

    def _finish(self) -> tuple[PlannedPoint, ...]:
        """Points with only the settings that vary across the plan (the searched dimensions)."""
        settings = [p.params for p in self._points.values()]
        self.varied = {
            name: values
            for name in settings[0]
            if len(values := _distinct(s[name] for s in settings)) > 1
        }
        return tuple(
            PlannedPoint({k: p.params[k] for k in self.varied}, p.roles)
            for p in self._points.values()
        )

    # --- the spec

    def spec_data(self, name: str, points: tuple[PlannedPoint, ...]) -> dict[str, Any]:
        parent = self.parent.to_json_dict()
        space: dict[str, Any] = {}
        for dim_name in self.parent.search_space.dimensions():
            space[dim_name] = self.best[dim_name]
        for dim_name, values in self.varied.items():
            space[dim_name] = {"choices": values}
        # A setting lives in one place: what the search space holds leaves the training section.
        training = {k: v for k, v in parent["training"].items() if k not in space}
        training.pop("bn_momentum_probe", None)
        if any(p != Placement.NONE.value for p in self.placements()):
            probe = {*self.options.probe_momenta, float(self.best["bn_momentum"])}
            training["bn_momentum_probe"] = sorted(probe)
        return {
            "name": name,
            "dataset": parent["dataset"],
            "model": parent["model"],
            "search_space": space,
            "training": training,
            # Confirmation runs are read on the test split; the objective only orders the
            # dashboard's view of them.
            "objective": {"metric": Metric.VAL_ACCURACY.value},
            "sampler": {"name": "random", "seed": 0},  # only for off-plan replacements
            "pruner": {"name": "none"},  # a planned point must never stop early
            "budget": {"n_trials": len(points)},
            "execution": {"fuse": "auto"},
            "retries": parent["retries"],
            "enqueue": [p.params for p in points],
        }


def _distinct(values: Any) -> list[Any]:
    out: list[Any] = []
    for v in values:
        if not any(v == o and type(v) is type(o) for o in out):
            out.append(v)
    return out


# --- the study in the database --------------------------------------------------------------------


def confirmation_name(engine: Engine, parent_name: str) -> str:
    """``<parent>-confirm``, or ``<parent>-confirm-2``, ... if taken."""
    for n in range(1, 1000):
        suffix = "-confirm" if n == 1 else f"-confirm-{n}"
        candidate = parent_name[: _NAME_MAX - len(suffix)] + suffix
        with engine.connect() as conn:
            taken = conn.execute(sa.select(StudyRow.id).where(StudyRow.name == candidate)).first()
        if taken is None:
            return candidate
    raise StudyStateError(f"no free confirmation name for study {parent_name!r}")


def confirmations_of(engine: Engine, study_id: int) -> list[StudyRow]:
    """The confirmation studies of a study, newest first."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(*StudyRow.__table__.c)
            .where(StudyRow.parent_id == study_id, StudyRow.kind == StudyKind.CONFIRMATION.value)
            .order_by(StudyRow.id.desc())
        ).all()
    return [StudyRow(**r._mapping) for r in rows]


def prepare_confirmation(
    engine: Engine,
    storage: optuna.storages.BaseStorage,
    parent: int | str,
    options: ConfirmOptions | None = None,
    limits: Limits | None = None,
) -> tuple[StudyRow, ConfirmationPlan]:
    """The study to confirm and its confirmation plan (nothing is written).

    Raises:
        StudyNotFoundError: no such study.
        StudyStateError: the study is itself a confirmation, has an active confirmation
            already, or has no complete trial that trained.
        SpecError: the plan is over a server cap in ``limits``.
    """
    row = get_study_row(engine, parent)
    if row.kind == StudyKind.CONFIRMATION.value:
        raise StudyStateError(
            f"study {row.name!r} is a confirmation study; confirm the study it checks"
        )
    active = [c for c in confirmations_of(engine, row.id) if StudyStatus(c.status).is_active]
    if active:
        raise StudyStateError(
            f"study {row.name!r} already has an active confirmation study {active[0].name!r} "
            f"(id {active[0].id}); cancel it or wait for it to end"
        )
    spec = StudySpec.model_validate(row.spec)
    trials = storage.get_all_trials(row.optuna_study_id, deepcopy=False)
    name = confirmation_name(engine, row.name)
    return row, plan_confirmation(spec, trials, name, options, limits)


def create_planned(
    engine: Engine,
    storage: optuna.storages.BaseStorage,
    parent: StudyRow,
    plan: ConfirmationPlan,
    owner: str | None = None,
) -> StudyRow:
    """Create ``plan``'s confirmation study of ``parent`` (queued: workers run it); its planned
    points are enqueued with their ``plan`` tags."""
    return create_study(
        engine,
        storage,
        plan.spec,
        owner,
        kind=StudyKind.CONFIRMATION,
        parent_id=parent.id,
        enqueue_attrs=plan.enqueue_attrs(),
    )


def create_confirmation(
    engine: Engine,
    storage: optuna.storages.BaseStorage,
    parent: int | str,
    options: ConfirmOptions | None = None,
    limits: Limits | None = None,
    owner: str | None = None,
) -> StudyRow:
    """Plan and create the confirmation study of ``parent`` (``prepare_confirmation``, then
    ``create_planned``); raises as they do."""
    row, plan = prepare_confirmation(engine, storage, parent, options, limits)
    return create_planned(engine, storage, row, plan, owner)
