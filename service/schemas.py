"""The wire format: plain pydantic models built from rows and trials, never ORM objects.

Ladder: ``StudySummary`` (list item) → ``StudyPublic`` (one study: counts, progress, best, spec).
Timestamps are UTC; SQLite returns naive datetimes, which are marked UTC here.
"""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any, Generic, Self, TypeVar

from pydantic import BaseModel, Field, model_validator

from search.analysis import StudyReport
from search.results import BestResult, TrialSummary, UtcDatetime
from search.states import StudyKind, StudyStatus, TrialCounts, WorkerStatus

if TYPE_CHECKING:
    from search.db import StudyRow

T = TypeVar("T")


class SortKey(StrEnum):
    NUMBER = "number"
    VALUE = "value"


class Order(StrEnum):
    ASC = "asc"
    DESC = "desc"


class Page(BaseModel, Generic[T]):
    """One page of a list, with the total across all pages."""

    items: list[T]
    total: int
    offset: int
    limit: int


# --- studies --------------------------------------------------------------------------------------


class StudyLinks(BaseModel):
    self: str
    trials: str
    best: str
    report: str
    report_html: str
    dashboard: str
    confirm: str | None = Field(
        default=None,
        description="POST here to plan and start confirmation runs (search studies only)",
    )
    confirmation: str | None = Field(
        default=None, description="this study's latest confirmation study, if any"
    )
    parent: str | None = Field(
        default=None, description="the study a confirmation study checks (if it still exists)"
    )


class StudySummary(BaseModel):
    """A study as listed."""

    id: int
    name: str
    status: StudyStatus
    status_reason: str
    owner: str | None = Field(
        description="the key that created it; null for readers without a valid key, and for "
        "studies created with auth off"
    )
    optuna_study_id: int
    n_trials: int
    created_at: UtcDatetime | None
    started_at: UtcDatetime | None
    finished_at: UtcDatetime | None
    kind: StudyKind = Field(
        default=StudyKind.SEARCH,
        description="search, or confirmation: planned runs that check a search study's findings",
    )
    parent_id: int | None = Field(default=None, description="the study a confirmation checks")
    links: StudyLinks

    @classmethod
    def from_row(cls, row: StudyRow, **extra: Any) -> StudySummary:
        base = f"/api/v1/studies/{row.id}"
        kind = StudyKind(row.kind or StudyKind.SEARCH.value)
        links = StudyLinks(
            self=base,
            trials=f"{base}/trials",
            best=f"{base}/best",
            report=f"{base}/report",
            report_html=f"{base}/report.html",
            dashboard=f"/dashboard/studies/{row.optuna_study_id}",
            confirm=f"{base}/confirm" if kind is StudyKind.SEARCH else None,
            parent=f"/api/v1/studies/{row.parent_id}" if row.parent_id is not None else None,
        )
        return cls(
            id=row.id,
            name=row.name,
            status=StudyStatus(row.status),
            status_reason=row.status_reason or "",
            owner=row.owner,
            optuna_study_id=row.optuna_study_id,
            n_trials=row.spec["budget"]["n_trials"],
            created_at=row.created_at,
            started_at=row.started_at,
            finished_at=row.finished_at,
            kind=kind,
            parent_id=row.parent_id,
            links=links,
            **extra,
        )

    def for_reader(self, reader: object | None) -> Self:
        """As shown to ``reader`` (a valid key, or None): owners only to callers with a key."""
        return self if reader is not None else self.model_copy(update={"owner": None})


class ConfirmCreate(BaseModel):
    """What ``POST /studies/{id}/confirm`` takes (every field optional; ``{}`` or no body)."""

    seeds: int = Field(default=3, ge=3, le=20, description="fresh seeds per planned point (3..20)")
    lr_offsets: list[Annotated[float, Field(ge=-4, le=4)]] | None = Field(
        default=None,
        min_length=1,
        max_length=16,
        description="the learning-rate grid of each placement, in decades from its own best rate "
        "(must include 0); default -1, -0.5, 0, 0.5, 1, 1.5, 2",
    )

    @model_validator(mode="after")
    def _grid_has_its_center(self) -> ConfirmCreate:
        if self.lr_offsets is not None and 0 not in self.lr_offsets:
            raise ValueError("lr_offsets must include 0 (each placement's own best rate)")
        return self


class Progress(BaseModel):
    finished: int = Field(description="complete + pruned trials")
    n_trials: int
    fraction: float


class StudyPublic(StudySummary):
    """One study in full."""

    trials: dict[str, int] = Field(description="trials by state")
    progress: Progress
    best_value: float | None = Field(description="best objective so far (single-objective only)")
    spec: dict[str, Any]

    @classmethod
    def build(cls, row: StudyRow, counts: TrialCounts, best_value: float | None) -> StudyPublic:
        n_trials = row.spec["budget"]["n_trials"]
        progress = Progress(
            finished=counts.finished,
            n_trials=n_trials,
            fraction=min(1.0, counts.finished / n_trials),
        )
        summary = StudySummary.from_row(row)
        return cls(
            **summary.model_dump(),
            trials=counts.as_dict(),
            progress=progress,
            best_value=best_value,
            spec=row.spec,
        )


# --- trials and results ---------------------------------------------------------------------------


TrialPublic = TrialSummary
BestPublic = BestResult


class Freshness(BaseModel):
    """How current an analysis is: each is computed once per count of finished trials, in the
    background, and served from storage (service/analyses.py)."""

    computed_at: UtcDatetime | None = Field(
        default=None, description="when these figures were computed; null: not yet"
    )
    trials_counted: int | None = Field(
        default=None, description="finished (complete + pruned) trials the figures reflect"
    )
    trials_finished: int | None = Field(default=None, description="finished trials now")
    stale: bool = Field(
        default=False,
        description="trials finished since: a recomputation is queued; the figures are those of "
        "trials_counted",
    )


class ImportancePublic(Freshness):
    """Parameter importances; empty with a reason when they cannot be computed yet."""

    importances: dict[str, float]
    target: str
    reason: str | None = None


class ReportPublic(StudyReport, Freshness):
    """The BN report (search/analysis) with how current it is."""


# --- system ---------------------------------------------------------------------------------------


class WorkerPublic(BaseModel):
    id: str
    host: str
    pid: int
    device: str
    status: WorkerStatus
    alive: bool
    current_study_id: int | None
    current_trial_number: int | None
    started_at: UtcDatetime | None
    heartbeat_at: UtcDatetime | None


class WorkerList(BaseModel):
    items: list[WorkerPublic]


class RegistryPublic(BaseModel):
    settings: dict[str, dict[str, Any]] = Field(
        description="training settings by spec name: JSON Schema, help, unit, home"
    )
    models: list[dict[str, Any]]
    datasets: list[dict[str, Any]]
    samplers: list[str]
    pruners: list[str]


class Health(BaseModel):
    database: str


class ErrorBody(BaseModel):
    """Every error: ``detail`` is a string, or a list of field errors for 422."""

    detail: str | list[dict[str, Any]]
