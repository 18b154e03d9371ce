"""Re-running trials whose worker died or was stopped, up to the spec's ``retries``."""

from __future__ import annotations

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial

# Study user attr with what Optuna's own tools should show (name, objective, link) and what a
# retry needs (``retries``); the full spec lives in bnsweep's table. Kept small: `optuna studies`
# prints user attrs in its table.
STUDY_ATTR = "bnsweep"


class RetryFromSpec:
    """Optuna's RetryHeartbeatStaleTrialCallback with ``max_retry`` read from the study's spec.

    The storage is shared by all studies a worker runs, so the limit cannot be fixed at
    storage creation: it travels with each study.
    """

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        max_retry = int(study.user_attrs.get(STUDY_ATTR, {}).get("retries", 0))
        RetryHeartbeatStaleTrialCallback(max_retry=max_retry)(study, trial)
