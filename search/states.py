"""Every status name of bnsweep, in one place: studies, slots, workers, trial outcomes and
Optuna's trial states as the API spells them. Plain enums: importing this pulls in nothing heavy.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from models.config import TrainStatus


class StudyStatus(StrEnum):
    QUEUED = "queued"  # created, no trial claimed yet
    RUNNING = "running"
    PAUSED = "paused"  # no new trials until resumed; running ones finish
    COMPLETED = "completed"  # n_trials finished, or timeout reached
    CANCELLED = "cancelled"
    FAILED = "failed"  # more failed trials than budget.max_failed

    @property
    def is_active(self) -> bool:
        """Not ended: it may still run trials (a paused study too, once resumed)."""
        return self in (StudyStatus.QUEUED, StudyStatus.RUNNING, StudyStatus.PAUSED)

    @property
    def takes_trials(self) -> bool:
        """A worker may claim a new trial of it now."""
        return self in (StudyStatus.QUEUED, StudyStatus.RUNNING)


class StudyKind(StrEnum):
    SEARCH = "search"  # an ordinary study: the sampler explores the spec's search space
    CONFIRMATION = "confirmation"  # planned runs that check another study's findings


class SlotState(StrEnum):
    ACTIVE = "active"  # a worker holds it and is running (or about to run) a trial
    DONE = "done"  # its trial finished (any state)
    RELEASED = "released"  # its worker stopped heartbeating; the slot was freed


class WorkerStatus(StrEnum):
    IDLE = "idle"
    BUSY = "busy"
    STOPPED = "stopped"


class TrialStatus(StrEnum):
    """How a trial ended, as its ``status`` user attr says: the trainer's statuses plus what only
    the worker knows."""

    OK = TrainStatus.OK.value
    PRUNED = TrainStatus.PRUNED.value
    DIVERGED = TrainStatus.DIVERGED.value
    OOM = TrainStatus.OOM.value
    CANCELLED = "cancelled"  # the study was cancelled while it trained
    INTERRUPTED = "interrupted"  # its worker was stopped or lost the database; retried
    STALE = "stale"  # failed as stale by another worker while this one still trained it
    ERROR = "error"  # the run raised: a bug or bad data


class TrialStateName(StrEnum):
    """Optuna's trial states as the API and CLI spell them (any case is accepted on input)."""

    COMPLETE = "complete"
    PRUNED = "pruned"
    FAIL = "fail"
    RUNNING = "running"
    WAITING = "waiting"

    @classmethod
    def _missing_(cls, value: object) -> TrialStateName | None:
        # Optuna's own spelling (COMPLETE) and any other case.
        if isinstance(value, str):
            return cls.__members__.get(value.upper())
        return None


@dataclass(frozen=True)
class TrialCounts:
    """Trials of a study by state."""

    complete: int = 0
    pruned: int = 0
    fail: int = 0
    running: int = 0
    waiting: int = 0

    @property
    def finished(self) -> int:
        return self.complete + self.pruned

    def as_dict(self) -> dict[str, int]:
        return {state.value: getattr(self, state.value) for state in TrialStateName}
