"""All configuration in one pydantic-settings class (environment ``BNSWEEP_*`` and ``.env``)."""

from __future__ import annotations

import functools
import os
from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from search.limits import Limits

_CAPS = Limits()  # the caps' defaults, stated once


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
    # Request bodies: any body (the dashboard's notes included), and a study spec, which is a few
    # kB and costs parsing time by size. A body not complete this long after the request began
    # is refused (408), so a client that sends headers and nothing else holds no server task.
    max_body_bytes: int = Field(default=1_000_000, ge=1)
    max_spec_bytes: int = Field(default=64_000, ge=1)
    body_timeout_s: float = Field(default=10.0, gt=0)
    # Caps on a spec (search/limits.py states the defaults' reasons).
    max_n_trials: int = Field(default=_CAPS.max_n_trials, ge=1)
    max_epochs: int = Field(default=_CAPS.max_epochs, ge=1)
    max_timeout_seconds: float = Field(default=_CAPS.max_timeout_seconds, gt=0)
    max_parallel: int = Field(default=_CAPS.max_parallel, ge=1)
    max_params: int = Field(default=_CAPS.max_params, ge=1)
    max_trial_memory_bytes: int = Field(default=_CAPS.max_trial_memory_bytes, ge=1)
    max_dataset_bytes: int = Field(default=_CAPS.max_dataset_bytes, ge=1)
    # Per-key quotas (auth on); a key may have its own (`bnsweep keys create --max-...`).
    max_active_studies_per_key: int = Field(default=20, ge=0)
    max_queued_trials_per_key: int = Field(default=20_000, ge=0)
    heartbeat_interval_s: int = Field(default=5, ge=1)
    grace_period_s: int = Field(default=30, ge=2)
    reaper_interval_s: float = Field(default=10.0, gt=0)
    # Per pool (the API holds two: bnsweep's tables and Optuna's), plus as many overflow ones.
    db_pool_size: int = Field(default=5, ge=1, le=100)
    # The longest a request waits for an analysis (importance, report) being recomputed; past it
    # the stored figures are served with `stale: true` (service/analyses.py).
    analysis_wait_s: float = Field(default=10.0, ge=0, le=60)
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
        return Limits(**{name: getattr(self, name) for name in Limits.model_fields})


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
