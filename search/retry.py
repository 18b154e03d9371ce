"""Re-running trials whose worker died or was stopped, up to the spec's ``retries``."""

from __future__ import annotations

import optuna
import sqlalchemy as sa
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial

from search.db import StudyRow
from search.states import StudyStatus
from search.storage import engine_of, study_id_of

# Study user attr with what Optuna's own tools should show (name, objective, link) and what a
# retry needs (``retries``); the full spec lives in bnsweep's table. Kept small: `optuna studies`
# prints user attrs in its table.
STUDY_ATTR = "bnsweep"


class RetryFromSpec:
    """Optuna's RetryHeartbeatStaleTrialCallback with ``max_retry`` read from the study's spec.

    The storage is shared by all studies a worker runs, so the limit cannot be fixed at
    storage creation: it travels with each study. A study that has ended (its budget reached while
    the trial ran) queues no retry: no worker would run it.
    """

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if not _still_active(study):
            return
        max_retry = int(study.user_attrs.get(STUDY_ATTR, {}).get("retries", 0))
        RetryHeartbeatStaleTrialCallback(max_retry=max_retry)(study, trial)


def _still_active(study: optuna.Study) -> bool:
    """Whether bnsweep's row of ``study`` is queued, running or paused (a study without one, made
    by plain Optuna, counts as active)."""
    engine = engine_of(study)
    if engine is None:
        return True
    with engine.connect() as conn:
        status = conn.execute(
            sa.select(StudyRow.status).where(StudyRow.optuna_study_id == study_id_of(study))
        ).scalar()
    return status is None or StudyStatus(status).is_active
