"""The service's own table (API keys), on the same metadata as search/db.py's studies, slots and
workers, so one Alembic history migrates them all."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, DateTime, Integer, String, false, func
from sqlalchemy.orm import Mapped, mapped_column

from search.db import Base


class ApiKeyRow(Base):
    """An API key. Only its SHA-256 hash is stored; the raw key is shown once at creation."""

    __tablename__ = "bnsweep_api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))  # first characters, to recognise a key
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # An admin key may cancel or delete any study; others only the studies they created.
    admin: Mapped[bool] = mapped_column(Boolean, server_default=false())
    # Quotas of this key; None = the server's default (settings).
    max_active_studies: Mapped[int | None] = mapped_column(Integer, nullable=True)
    max_queued_trials: Mapped[int | None] = mapped_column(Integer, nullable=True)
