"""Which workers are alive: a heartbeat within the grace period, and not stopped."""

from __future__ import annotations

from datetime import timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from search.db import WorkerRow
from search.states import WorkerStatus
from service.schemas import WorkerPublic


def live_worker_filter(conn: Connection, grace_period_s: float) -> sa.ColumnElement[bool]:
    """A WHERE clause for live workers; the threshold uses the database's clock, as workers do."""
    now = conn.execute(sa.select(sa.func.now())).scalar_one()
    threshold = now - timedelta(seconds=grace_period_s)
    return sa.and_(
        WorkerRow.status != WorkerStatus.STOPPED.value, WorkerRow.heartbeat_at >= threshold
    )


def list_workers(engine: Engine, grace_period_s: float, include_dead: bool) -> list[WorkerPublic]:
    """Live workers (or all with ``include_dead``), most recent heartbeat first."""
    with engine.connect() as conn:
        alive = live_worker_filter(conn, grace_period_s)
        query = sa.select(*WorkerRow.__table__.c, alive.label("alive"))
        if not include_dead:
            query = query.where(alive)
        rows = conn.execute(query.order_by(WorkerRow.heartbeat_at.desc())).all()
    return [WorkerPublic.model_validate({**row._mapping, "alive": bool(row.alive)}) for row in rows]
