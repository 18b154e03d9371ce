"""Tables of bnsweep's own that workers need, beside Optuna's in the same database.

Optuna owns its tables (``studies``, ``trials``, ...) and its ``alembic_version``; ours are prefixed
``bnsweep_`` and migrated by ``migrations/`` with a version table of their own. The service adds its
own tables (API keys) to the same ``Base.metadata``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, DateTime, ForeignKey, Index, Integer, String, Text, func
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from search.states import SlotState, StudyKind, StudyStatus, WorkerStatus


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
