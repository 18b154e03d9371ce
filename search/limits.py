"""Operator caps on what a spec may ask for (service settings fill these). Light: the settings
import it without the rest of search/."""

from __future__ import annotations

from pydantic import BaseModel


class Limits(BaseModel):
    """Server caps on budgets; a spec above one is refused naming the field."""

    max_n_trials: int = 10_000
    max_epochs: int = 1_000
    max_timeout_seconds: float = 7 * 24 * 3600
    max_parallel: int = 1_024
