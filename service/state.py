"""Optuna's storage for the API process, opened on first use."""

from __future__ import annotations

import threading

import optuna

from search.storage import get_storage
from service.settings import Settings


class LazyStorage:
    """Opens Optuna's RDBStorage when first needed, and again after a failed attempt.

    RDBStorage queries the database as soon as it is created; opened eagerly, an outage at start-up
    would keep the API from starting at all, instead of answering 503 until the database is back.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._storage: optuna.storages.RDBStorage | None = None
        self._lock = threading.Lock()

    def get(self) -> optuna.storages.RDBStorage:
        with self._lock:
            if self._storage is None:
                s = self.settings
                self._storage = get_storage(
                    s.database_url,
                    heartbeat_interval_s=s.heartbeat_interval_s,
                    grace_period_s=s.grace_period_s,
                )
            return self._storage
