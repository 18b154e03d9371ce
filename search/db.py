"""Tables of bnsweep's own that workers need, beside Optuna's in the same database.

Optuna owns its tables (``studies``, ``trials``, ...) and its ``alembic_version``; ours are prefixed
``bnsweep_`` and migrated by ``migrations/`` with a version table of their own. The service adds its
own tables (API keys) to the same ``Base.metadata``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Double,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    func,
)
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

from search.states import SlotState, StudyKind, StudyStatus, WorkerStatus


class clock_now(FunctionElement[datetime]):  # an SQL function, named like func.now
    """The database's clock when the statement runs, below the second: for claim and finish
    times, which must order as the claims did. PostgreSQL's ``now()`` is the transaction's start
    (before a claim waited for the study's lock); SQLite's ``CURRENT_TIMESTAMP`` has whole
    seconds."""

    type = DateTime(timezone=True)
    inherit_cache = True


@compiles(clock_now)
def _clock_now(element: clock_now, compiler: SQLCompiler, **kw: Any) -> str:
    return "CURRENT_TIMESTAMP(6)"  # MySQL/MariaDB: the statement's time, in microseconds


@compiles(clock_now, "postgresql")
def _clock_now_postgresql(element: clock_now, compiler: SQLCompiler, **kw: Any) -> str:
    return "clock_timestamp()"


@compiles(clock_now, "sqlite")
def _clock_now_sqlite(element: clock_now, compiler: SQLCompiler, **kw: Any) -> str:
    return "strftime('%Y-%m-%d %H:%M:%f', 'now')"


class Base(DeclarativeBase):
    pass


class StudyRow(Base):
    """A study as the service knows it: the spec, the status and the link to Optuna's study."""

    __tablename__ = "bnsweep_studies"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), default=StudyStatus.QUEUED.value, index=True)
    status_reason: Mapped[str] = mapped_column(Text, default="")
    owner: Mapped[str | None] = mapped_column(String(200), nullable=True)
    # Optuna's study name equals ``name``; its numeric id is kept for direct queries.
    optuna_study_id: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(16), server_default=StudyKind.SEARCH.value)
    # A confirmation study checks the findings of this one.
    parent_id: Mapped[int | None] = mapped_column(
        ForeignKey("bnsweep_studies.id", name="fk_bnsweep_studies_parent", ondelete="SET NULL"),
        nullable=True,
    )
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class SlotRow(Base):
    """One claim of one trial's worth of budget. Claims are taken under a lock on the study row,
    so ``max_parallel`` and ``n_trials`` hold however many workers race."""

    __tablename__ = "bnsweep_slots"
    __table_args__ = (Index("ix_bnsweep_slots_study_state", "study_id", "state"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("bnsweep_studies.id", ondelete="CASCADE"))
    worker_id: Mapped[str] = mapped_column(String(200))
    state: Mapped[str] = mapped_column(String(16), default=SlotState.ACTIVE.value)
    trial_number: Mapped[int | None] = mapped_column(Integer, nullable=True)
    trial_state: Mapped[str | None] = mapped_column(String(16), nullable=True)
    claimed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    heartbeat_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class WorkerRow(Base):
    """A worker process, for ``GET /workers``; heartbeats say whether it is alive."""

    __tablename__ = "bnsweep_workers"

    id: Mapped[str] = mapped_column(String(200), primary_key=True)
    host: Mapped[str] = mapped_column(String(200))
    pid: Mapped[int] = mapped_column(Integer)
    device: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default=WorkerStatus.IDLE.value)
    current_study_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    current_trial_number: Mapped[int | None] = mapped_column(Integer, nullable=True)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    heartbeat_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )


# --- what reads of large studies use (search/summary.py, service/analyses.py) ---------------------


class TrialTallyRow(Base):
    """Per Optuna study: its trials by state and its best trial, as of the last sync of
    ``search/summary.py``, so that counts and the best trial are one row, whatever the study's
    size. Written only under a lock on this row."""

    __tablename__ = "bnsweep_trial_tallies"

    optuna_study_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    complete: Mapped[int] = mapped_column(Integer, default=0)
    pruned: Mapped[int] = mapped_column(Integer, default=0)
    fail: Mapped[int] = mapped_column(Integer, default=0)
    running: Mapped[int] = mapped_column(Integer, default=0)
    waiting: Mapped[int] = mapped_column(Integer, default=0)
    # Every trial up to this Optuna trial id is summarized; only later ones and unfinished ones
    # are read again (Optuna's own _CachedStorage uses the same rule).
    synced_trial_id: Mapped[int] = mapped_column(Integer, default=-1)
    best_trial_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    best_value: Mapped[float | None] = mapped_column(Double, nullable=True)
    synced_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class TrialSummaryRow(Base):
    """One Optuna trial of a bnsweep study, reduced to what pages sort and filter on, with the
    indexes that let a page read only its own rows. ``value_up`` / ``value_down`` are the first
    objective (and its negation) with valueless trials at 0 and ``valueless`` set, so both sort
    orders put valueless trials last with plain ascending indexes on SQLite and PostgreSQL."""

    __tablename__ = "bnsweep_trial_summaries"
    __table_args__ = (
        Index("ix_bnsweep_trial_summaries_number", "optuna_study_id", "number"),
        Index("ix_bnsweep_trial_summaries_state", "optuna_study_id", "state", "number"),
        Index(
            "ix_bnsweep_trial_summaries_up", "optuna_study_id", "valueless", "value_up", "number"
        ),
        Index(
            "ix_bnsweep_trial_summaries_down",
            "optuna_study_id",
            "valueless",
            "value_down",
            "number",
        ),
        Index(
            "ix_bnsweep_trial_summaries_state_up",
            "optuna_study_id",
            "state",
            "valueless",
            "value_up",
            "number",
        ),
        Index(
            "ix_bnsweep_trial_summaries_state_down",
            "optuna_study_id",
            "state",
            "valueless",
            "value_down",
            "number",
        ),
        Index("ix_bnsweep_trial_summaries_front", "optuna_study_id", "on_front"),
    )

    trial_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    optuna_study_id: Mapped[int] = mapped_column(Integer)
    number: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(8))  # TrialStateName
    value: Mapped[float | None] = mapped_column(Double, nullable=True)  # first objective
    second_value: Mapped[float | None] = mapped_column(Double, nullable=True)
    valueless: Mapped[bool] = mapped_column(Boolean)
    value_up: Mapped[float] = mapped_column(Double)
    value_down: Mapped[float] = mapped_column(Double)
    on_front: Mapped[bool] = mapped_column(Boolean, default=False)  # two objectives: Pareto front


class AnalysisRow(Base):
    """An analysis of a study (importance, insights, the report ...) computed once for a count of
    finished trials and served from here; ``service/analyses.py`` refreshes it in the
    background when the count changes. A lease keeps API processes from computing it twice."""

    __tablename__ = "bnsweep_analyses"

    study_id: Mapped[int] = mapped_column(
        ForeignKey("bnsweep_studies.id", ondelete="CASCADE"), primary_key=True
    )
    kind: Mapped[str] = mapped_column(String(32), primary_key=True)
    trials_counted: Mapped[int | None] = mapped_column(Integer, nullable=True)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    computed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    duration_s: Mapped[float | None] = mapped_column(Double, nullable=True)
    requested_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    lease_owner: Mapped[str | None] = mapped_column(String(200), nullable=True)
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
