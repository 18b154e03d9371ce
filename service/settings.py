"""All configuration in one pydantic-settings class (environment ``BNSWEEP_*`` and ``.env``)."""

from __future__ import annotations

import functools
import os
from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from search.limits import Limits


class Settings(BaseSettings):
    """bnsweep settings; each field is read from ``BNSWEEP_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix="BNSWEEP_", env_file=".env", extra="ignore")

    database_url: str = "sqlite:///bnsweep.db"
    data_dir: Path = Path("data")
    host: str = "127.0.0.1"
    port: int = 8000
    # Auth: writes need a key unless auth is explicitly turned off (the embedded local default
    # started by `make run` sets BNSWEEP_AUTH=off). Reads are open either way.
    auth: bool = True
    max_body_bytes: int = 1_000_000
    max_n_trials: int = Field(default=10_000, ge=1)
    max_epochs: int = Field(default=1_000, ge=1)
    max_timeout_seconds: float = Field(default=7 * 24 * 3600, gt=0)
    max_parallel: int = Field(default=1_024, ge=1)
    heartbeat_interval_s: int = Field(default=5, ge=1)
    grace_period_s: int = Field(default=30, ge=2)
    reaper_interval_s: float = Field(default=10.0, gt=0)
    # Per pool (the API holds two: bnsweep's tables and Optuna's), plus as many overflow ones.
    db_pool_size: int = Field(default=5, ge=1, le=100)
    # The longest a request waits for an analysis (importance, report) being recomputed; past it
    # the stored figures are served with `stale: true` (service/analyses.py).
    analysis_wait_s: float = Field(default=1.0, ge=0, le=30)
    # Client side (CLI commands that talk to the API): default http://{host}:{port}.
    api_url: str | None = None
    api_key: str | None = None
    http_timeout_s: float = Field(default=30.0, gt=0)

    @model_validator(mode="after")
    def _grace_outlasts_heartbeats(self) -> Settings:
        # A grace period shorter than two heartbeats fails live trials as stale.
        if self.grace_period_s < 2 * self.heartbeat_interval_s:
            raise ValueError(
                f"grace_period_s ({self.grace_period_s}) must be at least twice "
                f"heartbeat_interval_s ({self.heartbeat_interval_s})"
            )
        return self

    @property
    def base_url(self) -> str:
        """Where the CLI reaches the API."""
        return (self.api_url or f"http://{self.host}:{self.port}").rstrip("/")

    @property
    def limits(self) -> Limits:
        return Limits(
            max_n_trials=self.max_n_trials,
            max_epochs=self.max_epochs,
            max_timeout_seconds=self.max_timeout_seconds,
            max_parallel=self.max_parallel,
        )


@functools.cache
def get_settings() -> Settings:
    """The process-wide settings (read once).

    ``models/`` reads its data directory from the environment (it knows nothing of settings), so a
    ``BNSWEEP_DATA_DIR`` given in ``.env`` is passed on to it here, for this process and the
    workers it starts.
    """
    settings = Settings()
    os.environ.setdefault("BNSWEEP_DATA_DIR", str(settings.data_dir))
    return settings
