"""Optuna's storage for the API process, opened on first use."""

from __future__ import annotations

import optuna

from search.storage import get_storage
from service.settings import Settings


class LazyStorage:
    """Opens Optuna's RDBStorage when first needed, and again after a failed attempt.

    RDBStorage queries the database as soon as it is created; opened eagerly, an outage at start-up
    would keep the API from starting at all, instead of answering 503 until the database is back.
    ``get_storage`` caches only a storage that opened, so a failed attempt is retried next time.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def get(self) -> optuna.storages.RDBStorage:
        s = self.settings
        return get_storage(
            s.database_url,
            heartbeat_interval_s=s.heartbeat_interval_s,
            grace_period_s=s.grace_period_s,
            pool_size=s.db_pool_size,
        )
