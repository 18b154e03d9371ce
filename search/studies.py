"""Study lifecycle in the database: create, claim a slot, finish it, cancel, delete, count.

Status: queued → running → completed | cancelled | failed. Exact budgets come from slot claims
taken while holding a lock on the study row (``SELECT ... FOR UPDATE`` on PostgreSQL, the database
write lock of ``BEGIN IMMEDIATE`` on SQLite): a read-then-write without the lock would let racing
workers all see "one slot left" and all take it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import optuna
import sqlalchemy as sa
from optuna.trial import TrialState
from pydantic import ValidationError
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError

from models.errors import first_line
from search import summary
from search.db import AnalysisRow, SlotRow, StudyRow, clock_now
from search.errors import StudyNotFoundError, StudyStateError
from search.optuna_map import distributions, make_pruner, make_sampler
from search.retry import STUDY_ATTR
from search.spec import StudySpec
from search.states import SlotState, StudyKind, StudyStatus, TrialCounts, TrialStatus
from search.storage import (
    TRIAL_HEARTBEATS,
    TRIALS,
    distribution_contains,
    fail_waiting_trials,
    locked_transaction,
    study_id_of,
)


@dataclass(frozen=True)
class Claim:
    """The right to run one trial of a study."""

    slot_id: int
    study_id: int
    study_name: str
    spec: StudySpec


# --- create / read ------------------------------------------------------------------------------


def create_study(
    engine: Engine,
    storage: optuna.storages.BaseStorage,
    spec: StudySpec,
    owner: str | None = None,
    *,
    kind: StudyKind = StudyKind.SEARCH,
    parent_id: int | None = None,
    enqueue_attrs: Sequence[Mapping[str, Any]] = (),
) -> StudyRow:
    """Create the Optuna study and our row for a validated spec.

    The spec's ``enqueue`` configurations, then ``warm_start``'s (the best of an earlier study),
    are queued to be evaluated first; ``enqueue_attrs[i]`` are extra user attrs of the i-th
    enqueued configuration (a confirmation study tags its planned points; a retry inherits
    them). ``kind`` and ``parent_id`` link a confirmation study to the study it checks. Raises
    StudyStateError if the name is taken, StudyNotFoundError if the warm-start study does not
    exist. If anything fails after Optuna's study was made, it is deleted again, so nothing is
    left half-written.
    """
    if _find_row(engine, spec.name) is not None:
        raise StudyStateError(f"a study named {spec.name!r} already exists")
    seeds = [*spec.enqueue, *_warm_start_points(engine, storage, spec)]
    extra = [*enqueue_attrs, *[{}] * (len(seeds) - len(enqueue_attrs))]
    try:
        study = optuna.create_study(
            study_name=spec.name,
            storage=storage,
            directions=spec.directions,  # type: ignore[arg-type]  # "maximize" | "minimize"
            sampler=make_sampler(spec),
            pruner=make_pruner(spec),
        )
    except optuna.exceptions.DuplicatedStudyError:
        raise StudyStateError(f"a study named {spec.name!r} already exists") from None
    try:
        study.set_metric_names([t.metric.value for t in spec.objective.targets])
        for params, attrs in zip(seeds, extra, strict=True):
            study.enqueue_trial(params, user_attrs={"enqueued": True, **attrs})
        with engine.begin() as conn:
            study_id = conn.execute(
                sa.insert(StudyRow)
                .values(
                    name=spec.name,
                    spec=spec.to_json_dict(),
                    status=StudyStatus.QUEUED.value,
                    status_reason="",
                    owner=owner,
                    optuna_study_id=study_id_of(study),
                    kind=kind.value,
                    parent_id=parent_id,
                )
                .returning(StudyRow.id)
            ).scalar_one()
        study.set_user_attr(
            STUDY_ATTR,
            {
                "study_id": study_id,
                "objective": spec.objective.metric.value,
                "link": f"/api/v1/studies/{study_id}",
                "retries": spec.retries,
            },
        )
    except BaseException as exc:
        optuna.delete_study(study_name=spec.name, storage=storage)
        if isinstance(exc, IntegrityError):
            raise StudyStateError(f"a study named {spec.name!r} already exists") from None
        raise
    return get_study_row(engine, study_id)


def _warm_start_points(
    engine: Engine, storage: optuna.storages.BaseStorage, spec: StudySpec
) -> list[dict[str, Any]]:
    """The searched params of the ``top_k`` best finished trials of ``warm_start.from_study``,
    keeping only values inside this study's search space (a trial outside it is skipped)."""
    if spec.warm_start is None:
        return []
    source = get_study_row(engine, spec.warm_start.from_study)
    sign = 1.0 if spec_of(source).directions[0] == "maximize" else -1.0
    complete = storage.get_all_trials(
        source.optuna_study_id, deepcopy=False, states=(TrialState.COMPLETE,)
    )
    ranked = sorted(
        (t for t in complete if t.values and t.user_attrs.get("status") == TrialStatus.OK),
        key=lambda t: -sign * t.values[0],
    )
    dists = distributions(spec)
    points: list[dict[str, Any]] = []
    for trial in ranked:
        point = {k: v for k, v in trial.params.items() if k in dists}
        if (
            all(distribution_contains(dists[k], v) for k, v in point.items())
            and point not in points
        ):
            points.append(point)
        if len(points) == spec.warm_start.top_k:
            break
    return points


def _find_row(engine: Engine, name: str) -> StudyRow | None:
    with engine.connect() as conn:
        row = conn.execute(sa.select(*StudyRow.__table__.c).where(StudyRow.name == name)).first()
    return _to_row(row) if row else None


def _to_row(row: Any) -> StudyRow:
    return StudyRow(**row._mapping)


def get_study_row(engine: Engine, study: int | str) -> StudyRow:
    """Our row of a study, by id or name; StudyNotFoundError otherwise."""
    column = StudyRow.id if isinstance(study, int) else StudyRow.name
    with engine.connect() as conn:
        row = conn.execute(sa.select(*StudyRow.__table__.c).where(column == study)).first()
    if row is None:
        raise StudyNotFoundError(f"no study {study!r}")
    return _to_row(row)


def list_study_rows(
    engine: Engine,
    status: str | None = None,
    name: str | None = None,
    offset: int = 0,
    limit: int = 50,
) -> tuple[list[StudyRow], int]:
    """A page of studies (newest first), optionally filtered by status and exact name, and the
    total count."""
    query = sa.select(*StudyRow.__table__.c)
    count = sa.select(sa.func.count()).select_from(StudyRow)
    for column, value in ((StudyRow.status, status), (StudyRow.name, name)):
        if value is not None:
            query = query.where(column == value)
            count = count.where(column == value)
    with engine.connect() as conn:
        total = conn.execute(count).scalar_one()
        rows = conn.execute(query.order_by(StudyRow.id.desc()).offset(offset).limit(limit)).all()
    return [_to_row(r) for r in rows], total


def spec_of(row: StudyRow) -> StudySpec:
    """The stored spec (validated when the study was created, so trusted here)."""
    return StudySpec.model_validate(row.spec)


def trial_counts(conn: Connection, optuna_study_id: int) -> TrialCounts:
    """Optuna's trials of a study by state, exact as of now: the study's tally synced in the
    caller's ``locked_transaction`` (reads only trials changed since the last sync, not all)."""
    return summary.sync(conn, optuna_study_id).counts


def counts_for(engine: Engine, optuna_study_id: int) -> TrialCounts:
    return summary.refresh(engine, optuna_study_id).counts


# --- claims -------------------------------------------------------------------------------------


def _db_now(conn: Connection) -> datetime:
    return conn.execute(sa.select(sa.func.now())).scalar_one()


def _lock_study(conn: Connection, study_id: int) -> Any:
    return conn.execute(
        sa.select(*StudyRow.__table__.c).where(StudyRow.id == study_id).with_for_update()
    ).first()


def _release_stale_slots(conn: Connection, study_id: int, grace_period_s: float) -> None:
    """Free slots whose worker stopped heartbeating (it crashed or lost the database)."""
    threshold = _db_now(conn) - timedelta(seconds=grace_period_s)
    conn.execute(
        sa.update(SlotRow)
        .where(
            SlotRow.study_id == study_id,
            SlotRow.state == SlotState.ACTIVE.value,
            SlotRow.heartbeat_at < threshold,
        )
        .values(state=SlotState.RELEASED.value, finished_at=clock_now())
    )


def _active_slots(conn: Connection, study_id: int) -> int:
    return conn.execute(
        sa.select(sa.func.count())
        .select_from(SlotRow)
        .where(SlotRow.study_id == study_id, SlotRow.state == SlotState.ACTIVE.value)
    ).scalar_one()


def _set_status(conn: Connection, study_id: int, status: StudyStatus, reason: str = "") -> None:
    """Set a study's status; one that ends also fails the trials still queued in it (a retry or
    an enqueued configuration no worker will run), so that nothing is left WAITING."""
    values: dict[str, Any] = {"status": status.value, "status_reason": reason}
    if not status.is_active:
        values["finished_at"] = sa.func.now()
    conn.execute(sa.update(StudyRow).where(StudyRow.id == study_id).values(**values))
    if not status.is_active:
        oid = conn.execute(
            sa.select(StudyRow.optuna_study_id).where(StudyRow.id == study_id)
        ).scalar_one()
        why = f"the study ended ({status.value}: {reason}) before this queued trial ran"
        fail_waiting_trials(conn, oid, why)


def _timed_out(conn: Connection, row: Any, spec: StudySpec) -> bool:
    timeout = spec.budget.timeout_seconds
    if timeout is None or row.started_at is None:
        return False
    started = row.started_at
    now = _db_now(conn)
    if started.tzinfo is None and now.tzinfo is not None:
        now = now.replace(tzinfo=None)
    elif started.tzinfo is not None and now.tzinfo is None:
        started = started.replace(tzinfo=None)
    return bool(now - started >= timedelta(seconds=timeout))


def _settle(conn: Connection, row: Any, spec: StudySpec, active: int) -> StudyStatus:
    """Move an active study to its terminal status when its budget says so; return the status."""
    status = StudyStatus(row.status)
    if not status.is_active:
        return status
    counts = trial_counts(conn, row.optuna_study_id)
    if counts.finished >= spec.budget.n_trials:
        _set_status(conn, row.id, StudyStatus.COMPLETED, f"{counts.finished} trials finished")
        return StudyStatus.COMPLETED
    if counts.fail > spec.budget.failure_limit:
        _set_status(
            conn,
            row.id,
            StudyStatus.FAILED,
            f"{counts.fail} failed trials (more than budget.max_failed="
            f"{spec.budget.failure_limit})",
        )
        return StudyStatus.FAILED
    if active == 0 and _timed_out(conn, row, spec):
        _set_status(conn, row.id, StudyStatus.COMPLETED, "timeout reached")
        return StudyStatus.COMPLETED
    return status


def claim_slot(
    engine: Engine, worker_id: str, study_ids: Sequence[int], grace_period_s: float
) -> Claim | None:
    """Take one trial's slot in the first of ``study_ids`` that has budget left, atomically."""
    for study_id in study_ids:
        with locked_transaction(engine) as conn:
            row = _lock_study(conn, study_id)
            if row is None or not StudyStatus(row.status).takes_trials:
                continue
            try:
                spec = StudySpec.model_validate(row.spec)
            except ValidationError as exc:  # stored by an older bnsweep with another schema
                reason = f"stored spec is no longer valid: {first_line(exc)}"
                _set_status(conn, study_id, StudyStatus.FAILED, reason)
                continue
            if _capacity(conn, row, spec, grace_period_s) < 1:
                continue
            (slot_id,) = _insert_slots(conn, row, worker_id, 1)
            return Claim(slot_id, study_id, row.name, spec)
    return None


def claim_more_slots(
    engine: Engine, worker_id: str, claim: Claim, count: int, grace_period_s: float
) -> list[int]:
    """Up to ``count`` more slots of ``claim``'s study for the members of a fused group, taken
    under the same lock as any claim: the group never overshoots ``n_trials``, ``max_parallel``
    or the timeout. Returns the new slots' ids (possibly none)."""
    if count < 1:
        return []
    with locked_transaction(engine) as conn:
        row = _lock_study(conn, claim.study_id)
        if row is None or not StudyStatus(row.status).takes_trials:
            return []
        granted = min(count, _capacity(conn, row, claim.spec, grace_period_s))
        return _insert_slots(conn, row, worker_id, granted) if granted > 0 else []


def _capacity(conn: Connection, row: Any, spec: StudySpec, grace_period_s: float) -> int:
    """How many more slots the locked study can grant now (0 once it is settled or timed out)."""
    _release_stale_slots(conn, row.id, grace_period_s)
    active = _active_slots(conn, row.id)
    if not _settle(conn, row, spec, active).takes_trials or _timed_out(conn, row, spec):
        return 0
    finished = trial_counts(conn, row.optuna_study_id).finished
    max_parallel = spec.budget.max_parallel or spec.budget.n_trials
    return max(0, min(max_parallel - active, spec.budget.n_trials - finished - active))


def _insert_slots(conn: Connection, row: Any, worker_id: str, count: int) -> list[int]:
    """``count`` active slots of the locked study for ``worker_id``; a queued study starts."""
    slot_ids = [
        conn.execute(
            sa.insert(SlotRow)
            .values(
                study_id=row.id,
                worker_id=worker_id,
                state=SlotState.ACTIVE.value,
                claimed_at=clock_now(),
            )
            .returning(SlotRow.id)
        ).scalar_one()
        for _ in range(count)
    ]
    if row.status == StudyStatus.QUEUED.value:
        conn.execute(
            sa.update(StudyRow)
            .where(StudyRow.id == row.id)
            .values(status=StudyStatus.RUNNING.value, started_at=sa.func.now())
        )
    return slot_ids


def active_study_ids(
    engine: Engine, study_name: str | None = None, claimable_only: bool = True
) -> list[int]:
    """Ids of studies that take trials now (queued/running), or with ``claimable_only=False``
    of every study that has not ended (paused too); oldest first, optionally just the named one.
    """
    wanted = [s.value for s in StudyStatus if (s.takes_trials if claimable_only else s.is_active)]
    query = sa.select(StudyRow.id).where(StudyRow.status.in_(wanted))
    if study_name is not None:
        query = query.where(StudyRow.name == study_name)
    with engine.connect() as conn:
        return list(conn.execute(query.order_by(StudyRow.id)).scalars())


def set_slot_trial(engine: Engine, slot_id: int, trial_number: int) -> None:
    with engine.begin() as conn:
        conn.execute(
            sa.update(SlotRow)
            .where(SlotRow.id == slot_id)
            .values(trial_number=trial_number, heartbeat_at=sa.func.now())
        )


def heartbeat_slot(engine: Engine, slot_id: int) -> None:
    with engine.begin() as conn:
        conn.execute(
            sa.update(SlotRow)
            .where(SlotRow.id == slot_id, SlotRow.state == SlotState.ACTIVE.value)
            .values(heartbeat_at=sa.func.now())
        )


def finish_slot(engine: Engine, slot_id: int, trial_state: str | None) -> None:
    """Close a slot after its trial was told, then settle the study's status."""
    with locked_transaction(engine) as conn:
        slot = conn.execute(sa.select(SlotRow.study_id).where(SlotRow.id == slot_id)).first()
        if slot is None:  # the study was deleted meanwhile
            return
        row = _lock_study(conn, slot.study_id)
        conn.execute(
            sa.update(SlotRow)
            .where(SlotRow.id == slot_id)
            .values(state=SlotState.DONE.value, trial_state=trial_state, finished_at=clock_now())
        )
        if row is not None:
            spec = StudySpec.model_validate(row.spec)
            _settle(conn, row, spec, _active_slots(conn, slot.study_id))


def study_status(engine: Engine, study_id: int) -> StudyStatus | None:
    """Current status, or None if the study no longer exists."""
    with engine.connect() as conn:
        status = conn.execute(sa.select(StudyRow.status).where(StudyRow.id == study_id)).scalar()
    return StudyStatus(status) if status else None


def adopt_orphaned_trials(
    engine: Engine, study_id: int, optuna_study_id: int, own_slot_id: int | None = None
) -> int:
    """Give RUNNING trials that have no heartbeat row one; return how many.

    ``study.ask()`` makes a trial RUNNING before its worker records the first heartbeat. A worker
    killed in between leaves a trial that ``fail_stale_trials`` never fails (Optuna skips trials
    without a heartbeat row): it stays RUNNING forever and is never retried. Its worker held a slot
    not yet linked to a trial, and that slot's heartbeat stopped when the worker died; the orphan
    gets the newest heartbeat of such slots, so it goes stale exactly when a dead worker's slot
    does, and never while an unlinked slot is still heartbeating (a live worker between its ask
    and its first heartbeat). The caller's own slot (claimed, not yet linked) does not count.
    Both clocks are the database's, as for Optuna's own heartbeats.
    """
    trials, beats = TRIALS, TRIAL_HEARTBEATS
    try:
        with engine.begin() as conn:
            orphans = (
                conn.execute(
                    sa.select(trials.c.trial_id).where(
                        trials.c.study_id == optuna_study_id,
                        trials.c.state == TrialState.RUNNING,
                        ~sa.exists().where(beats.c.trial_id == trials.c.trial_id),
                    )
                )
                .scalars()
                .all()
            )
            if not orphans:
                return 0
            newest_unlinked = conn.execute(
                sa.select(sa.func.max(SlotRow.heartbeat_at)).where(
                    SlotRow.study_id == study_id,
                    SlotRow.trial_number.is_(None),
                    SlotRow.state != SlotState.DONE.value,
                    SlotRow.id != (own_slot_id or 0),
                )
            ).scalar()
            dated = newest_unlinked or conn.execute(sa.select(sa.func.now())).scalar_one()
            conn.execute(sa.insert(beats), [{"trial_id": t, "heartbeat": dated} for t in orphans])
    except IntegrityError:  # its worker recorded the first heartbeat meanwhile: not an orphan
        return 0
    return len(orphans)


# --- cancel / delete / reap ---------------------------------------------------------------------


def fail_study(engine: Engine, study_id: int, reason: str) -> None:
    """End an active study as failed, e.g. when no trial of it can even be started."""
    with locked_transaction(engine) as conn:
        row = _lock_study(conn, study_id)
        if row is not None and StudyStatus(row.status).is_active:
            _set_status(conn, study_id, StudyStatus.FAILED, reason)


def cancel_study(engine: Engine, study: int | str) -> StudyRow:
    """Stop a study that has not ended: no new trials; running ones stop at the next epoch."""
    active = {s for s in StudyStatus if s.is_active}
    return _change_status(engine, study, StudyStatus.CANCELLED, "cancelled by request", active)


def pause_study(engine: Engine, study: int | str) -> StudyRow:
    """Pause a queued or running study: no new trials; running ones finish and are counted."""
    takes = {s for s in StudyStatus if s.takes_trials}
    return _change_status(engine, study, StudyStatus.PAUSED, "paused by request", takes)


def resume_study(engine: Engine, study: int | str) -> StudyRow:
    """Let a paused study take trials again (running if it had started, else queued)."""
    row = get_study_row(engine, study)
    to = StudyStatus.RUNNING if row.started_at is not None else StudyStatus.QUEUED
    return _change_status(engine, study, to, "resumed by request", {StudyStatus.PAUSED})


def _change_status(
    engine: Engine, study: int | str, to: StudyStatus, reason: str, allowed: set[StudyStatus]
) -> StudyRow:
    """Move a study from one of ``allowed`` to ``to``, under its lock; StudyStateError else."""
    row = get_study_row(engine, study)
    with locked_transaction(engine) as conn:
        locked = _lock_study(conn, row.id)
        if locked is None:
            raise StudyNotFoundError(f"no study {study!r}")
        if StudyStatus(locked.status) not in allowed:
            raise StudyStateError(f"study {row.name!r} is already {locked.status}")
        _set_status(conn, row.id, to, reason)
    return get_study_row(engine, row.id)


def delete_study(
    engine: Engine,
    storage: optuna.storages.BaseStorage,
    study: int | str,
    grace_period_s: float,
) -> None:
    """Delete Optuna's study and our row. Refused while the study runs or a live worker still
    holds one of its trials (a dead worker's slot is released first)."""
    row = get_study_row(engine, study)
    with locked_transaction(engine) as conn:
        locked = _lock_study(conn, row.id)
        if locked is None:
            raise StudyNotFoundError(f"no study {study!r}")
        _release_stale_slots(conn, row.id, grace_period_s)
        if locked.status in (StudyStatus.RUNNING.value, StudyStatus.PAUSED.value):
            raise StudyStateError(f"study {row.name!r} is {locked.status}; cancel it first")
        if _active_slots(conn, row.id) > 0:
            raise StudyStateError(f"study {row.name!r} still has a trial stopping; retry shortly")
        if locked.status == StudyStatus.QUEUED.value:  # no worker may claim it from here on
            _set_status(conn, row.id, StudyStatus.CANCELLED, "being deleted")
    # Optuna's study first: if that fails, our row is still there and DELETE can be retried. The
    # other order could strand Optuna's study, and its name, with no row left to reach it.
    with contextlib.suppress(KeyError):  # already gone (an earlier attempt)
        optuna.delete_study(study_name=row.name, storage=storage)
    with engine.begin() as conn:
        conn.execute(sa.delete(SlotRow).where(SlotRow.study_id == row.id))
        conn.execute(sa.delete(AnalysisRow).where(AnalysisRow.study_id == row.id))
        summary.forget(conn, row.optuna_study_id)
        conn.execute(sa.delete(StudyRow).where(StudyRow.id == row.id))


def reap(engine: Engine, storage: optuna.storages.BaseStorage, grace_period_s: float) -> None:
    """Housekeeping for studies whose workers may all be dead.

    Fails trials with a stale heartbeat (Optuna does so only when a worker starts a trial, so a
    study whose workers all died would keep a RUNNING trial forever), queues their retries, frees
    stale slots, and settles statuses (timeouts). Covers active studies and ended ones (e.g.
    cancelled) that a dead worker still holds a slot of.
    """
    with engine.connect() as conn:
        held = set(
            conn.execute(
                sa.select(SlotRow.study_id).where(SlotRow.state == SlotState.ACTIVE.value)
            ).scalars()
        )
    for study_id in sorted(set(active_study_ids(engine)) | held):
        row = get_study_row(engine, study_id)
        study = optuna.load_study(study_name=row.name, storage=storage)
        adopt_orphaned_trials(engine, study_id, row.optuna_study_id)
        optuna.storages.fail_stale_trials(study)
        with locked_transaction(engine) as conn:
            locked = _lock_study(conn, study_id)
            if locked is None:
                continue
            _release_stale_slots(conn, study_id, grace_period_s)
            _settle(conn, locked, spec_of(row), _active_slots(conn, study_id))
