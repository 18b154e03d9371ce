"""Prometheus metrics read from the database at scrape time.

A custom collector rather than counters updated in handlers: the truth lives in the database and is
written by workers on other machines, so only the database can say how many trials ran. One
registry per app keeps test apps (and their databases) apart.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import sqlalchemy as sa
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy.engine import Engine

from search.db import StudyRow, WorkerRow
from search.states import StudyStatus, TrialStateName
from search.storage import TRIALS, trial_state_name
from service.workers import live_worker_filter

DURATION_BUCKETS_S = (1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 24 * 3600)


class DatabaseCollector(Collector):
    """Studies by status, trials by state, trial durations and live workers."""

    def __init__(self, engine: Engine, grace_period_s: float) -> None:
        self.engine = engine
        self.grace_period_s = grace_period_s

    def collect(self) -> Iterator[Metric]:
        with self.engine.connect() as conn:
            studies = dict(
                conn.execute(
                    sa.select(StudyRow.status, sa.func.count()).group_by(StudyRow.status)
                ).all()
            )
            trials = {
                trial_state_name(s): n
                for s, n in conn.execute(
                    sa.select(TRIALS.c.state, sa.func.count()).group_by(TRIALS.c.state)
                ).all()
            }
            # Durations are computed here, not in SQL: timestamp arithmetic differs per dialect.
            spans = conn.execute(
                sa.select(TRIALS.c.datetime_start, TRIALS.c.datetime_complete).where(
                    TRIALS.c.datetime_start.is_not(None), TRIALS.c.datetime_complete.is_not(None)
                )
            ).all()
            workers = conn.execute(
                sa.select(sa.func.count())
                .select_from(WorkerRow)
                .where(live_worker_filter(conn, self.grace_period_s))
            ).scalar_one()

        g = GaugeMetricFamily("bnsweep_studies", "Studies by status", labels=["status"])
        for status in StudyStatus:
            g.add_metric([status.value], studies.get(status.value, 0))
        yield g
        g = GaugeMetricFamily("bnsweep_trials", "Optuna trials by state", labels=["state"])
        for state in TrialStateName:
            g.add_metric([state.value], trials.get(state.value, 0))
        yield g
        yield _histogram([(end - start) for start, end in spans])
        yield GaugeMetricFamily(
            "bnsweep_workers_live", "Workers with a recent heartbeat", value=workers
        )


def _histogram(durations: list[timedelta]) -> HistogramMetricFamily:
    seconds = [d.total_seconds() for d in durations]
    buckets = [(str(b), sum(s <= b for s in seconds)) for b in DURATION_BUCKETS_S]
    buckets.append(("+Inf", len(seconds)))
    return HistogramMetricFamily(
        "bnsweep_trial_duration_seconds",
        "Duration of finished trials",
        buckets=buckets,
        sum_value=sum(seconds),
    )


def make_registry(engine: Engine, grace_period_s: float) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DatabaseCollector(engine, grace_period_s))
    return registry
