"""Operator caps on what a spec may ask for (service settings fill these). Light: the settings
import it without the rest of search/."""

from __future__ import annotations

from pydantic import BaseModel

GIB = 1 << 30


class Limits(BaseModel):
    """Server caps; a spec above one is refused naming the field (and the estimate, for the
    resource caps: models/estimate.py). The resource defaults fit a laptop: a trial of at most
    100 M parameters and 4 GiB, on a dataset of at most 1 GiB (CIFAR-10 is 0.7 GiB)."""

    max_n_trials: int = 10_000
    max_epochs: int = 1_000
    max_timeout_seconds: float = 7 * 24 * 3600
    max_parallel: int = 1_024
    max_params: int = 100_000_000
    max_trial_memory_bytes: int = 4 * GIB
    max_dataset_bytes: int = 1 * GIB
