"""Trial tallies and summaries: what lets reads of a 100,000-trial study cost what they cost at 100.

Optuna's tables answer "every trial of a study" and little else: nothing orders a study's trials
by value, and counting them by state reads each of them. Beside them bnsweep keeps

- ``bnsweep_trial_tallies``: one row per study with its trials by state and its best trial;
- ``bnsweep_trial_summaries``: one row per trial (number, state, values), indexed for every page
  the API serves: by number or by value, either order, all trials or one state.

Both are derived from Optuna's tables by ``sync``, never from what one writer reports: workers,
the reaper, Optuna's own tools and the dashboard all write trials, and each of those writes is
seen. A sync reads only trials that are new (trial id above ``synced_trial_id``, the highest
finished trial already summarized) or were unfinished at the last sync: a finished trial never
changes in Optuna. That is the rule of Optuna's own ``_CachedStorage``; like it, it relies on a
trial's creation being committed long before any later-created trial of the study finishes.
So a sync costs what changed since the last one, not the study's size (the first sync of a study
that predates this table reads it once).

Who syncs: slot claims and slot finishes (already holding the study's lock: budgets are counted
from the tally), the reaper, and any read that finds the summary behind (``refresh``). Syncs of a
study are serialized by a lock on its tally row (``FOR UPDATE``; on SQLite the write lock that
``locked_transaction`` takes). A claim holds its study row first, then the tally row; nothing takes
them in the other order.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from search.db import TrialSummaryRow, TrialTallyRow
from search.states import TrialCounts, TrialStateName
from search.storage import (
    STUDY_DIRECTIONS,
    TRIAL_VALUES,
    TRIALS,
    locked_transaction,
    read_only,
    stored_value,
    trial_state_name,
)

SUMMARY = cast(sa.Table, TrialSummaryRow.__table__)
TALLY = cast(sa.Table, TrialTallyRow.__table__)
UNFINISHED = (TrialStateName.RUNNING.value, TrialStateName.WAITING.value)
_TALLY_QUERY = sa.select(TALLY).where(TALLY.c.optuna_study_id == sa.bindparam("oid"))
# States whose trials never have a value: sorting them by value is sorting them by number.
VALUELESS_STATES = frozenset({TrialStateName.FAIL, TrialStateName.RUNNING, TrialStateName.WAITING})


@dataclass(frozen=True)
class Tally:
    """A study's trials by state and its best trial (single objective), as of a sync."""

    counts: TrialCounts
    best_trial_id: int | None
    best_value: float | None

    def total(self, state: TrialStateName | None = None) -> int:
        """Trials in ``state``, or all of them."""
        if state is None:
            return sum(self.counts.as_dict().values())
        return int(getattr(self.counts, state.value))


def _tally_of(row: Any) -> Tally:
    counts = TrialCounts(
        complete=row.complete,
        pruned=row.pruned,
        fail=row.fail,
        running=row.running,
        waiting=row.waiting,
    )
    return Tally(counts, row.best_trial_id, row.best_value)


# --- reading ------------------------------------------------------------------------------------


def refresh(engine: Engine, optuna_study_id: int, conn: Connection | None = None) -> Tally:
    """The study's tally, synced first if Optuna's tables moved on (two small queries if not).

    ``conn``: a connection for the check, which the caller goes on reading with (one pool
    checkout per request); after a sync its transaction, if any, is ended, so that its next
    statement sees the sync."""
    with contextlib.nullcontext(conn) if conn else read_only(engine).connect() as reader:
        row = reader.execute(_TALLY_QUERY, {"oid": optuna_study_id}).first()
        if row is not None and not _behind(reader, optuna_study_id, row.synced_trial_id):
            return _tally_of(row)
        if reader.in_transaction():
            reader.rollback()
    with locked_transaction(engine) as writer:
        return sync(writer, optuna_study_id)


def page_trial_ids(
    conn: Connection,
    optuna_study_id: int,
    state: TrialStateName | None,
    by_value: bool,
    descending: bool,
    offset: int,
    limit: int,
) -> list[int]:
    """Trial ids of one page, in page order: by number, or by the first objective with valueless
    trials last (ties and valueless trials by number, ascending). One indexed query."""
    s = SUMMARY.c
    query = sa.select(s.trial_id).where(s.optuna_study_id == optuna_study_id)
    if state is not None:
        query = query.where(s.state == state.value)
    if by_value and state not in VALUELESS_STATES:
        query = query.order_by(s.valueless, s.value_down if descending else s.value_up, s.number)
    elif by_value:
        query = query.order_by(s.number)
    else:
        query = query.order_by(s.number.desc() if descending else s.number)
    return list(conn.execute(query.offset(offset).limit(limit)).scalars())


def front_trial_ids(conn: Connection, optuna_study_id: int) -> list[int]:
    """The trials on the Pareto front of a two-objective study (as of the last sync)."""
    s = SUMMARY.c
    query = sa.select(s.trial_id).where(s.optuna_study_id == optuna_study_id, s.on_front)
    return list(conn.execute(query).scalars())


def forget(conn: Connection, optuna_study_id: int) -> None:
    """Drop a study's tally and summaries (its Optuna study is being deleted)."""
    conn.execute(sa.delete(SUMMARY).where(SUMMARY.c.optuna_study_id == optuna_study_id))
    conn.execute(sa.delete(TALLY).where(TALLY.c.optuna_study_id == optuna_study_id))


# --- syncing ------------------------------------------------------------------------------------


def _trial_rows(conn: Connection, optuna_study_id: int, synced: int, values: bool) -> list[Any]:
    """Optuna's trials of the study that are new or were unfinished, with the state the summary
    knows them in (None: new) and, if ``values``, their first two objective values."""
    params = {"oid": optuna_study_id, "synced": synced}
    return sorted(conn.execute(_trial_rows_query(values), params).all(), key=lambda r: r.trial_id)


@functools.cache
def _trial_rows_query(values: bool) -> sa.CompoundSelect[Any]:
    """The statement of ``_trial_rows``, built once (reads run it at every request)."""
    t, s = TRIALS, SUMMARY
    oid: sa.BindParameter[int] = sa.bindparam("oid", type_=sa.Integer)
    synced: sa.BindParameter[int] = sa.bindparam("synced", type_=sa.Integer)
    columns: list[Any] = [t.c.trial_id, t.c.number, t.c.state, s.c.state.label("known")]
    joined = t.outerjoin(s, s.c.trial_id == t.c.trial_id)
    if values:
        for objective in (0, 1):
            v = TRIAL_VALUES.alias(f"v{objective}")
            joined = joined.outerjoin(
                v, sa.and_(v.c.trial_id == t.c.trial_id, v.c.objective == objective)
            )
            columns += [
                v.c.value.label(f"value{objective}"),
                v.c.value_type.label(f"type{objective}"),
            ]
    base = sa.select(*columns).select_from(joined)
    unfinished = sa.select(s.c.trial_id).where(
        s.c.optuna_study_id == oid, s.c.state.in_(UNFINISHED)
    )
    # Two index range scans (new trials by primary key, unfinished ones by our state index): an
    # OR of the two would have the planner read every trial of the study instead.
    newer = base.where(t.c.study_id == oid, t.c.trial_id > synced)
    pending = base.where(t.c.trial_id.in_(unfinished), t.c.trial_id <= synced)
    return sa.union_all(newer, pending)


def _behind(conn: Connection, optuna_study_id: int, synced: int) -> bool:
    rows = _trial_rows(conn, optuna_study_id, synced, values=False)
    return any(r.known != trial_state_name(r.state) for r in rows)


def _ensure_tally(conn: Connection, optuna_study_id: int) -> None:
    values = {
        "optuna_study_id": optuna_study_id,
        **dict.fromkeys(("complete", "pruned", "fail", "running", "waiting"), 0),
        "synced_trial_id": -1,
    }
    name = conn.dialect.name
    if name in ("mysql", "mariadb"):  # no ON CONFLICT there: INSERT IGNORE
        conn.execute(sa.insert(TALLY).values(**values).prefix_with("IGNORE"))
        return
    dialect = postgresql if name == "postgresql" else sqlite
    conn.execute(dialect.insert(TALLY).values(**values).on_conflict_do_nothing())


def _value(row: Any, objective: int) -> float | None:
    value, value_type = getattr(row, f"value{objective}"), getattr(row, f"type{objective}")
    return None if value_type is None else stored_value(value, value_type)


def sync(conn: Connection, optuna_study_id: int) -> Tally:
    """Bring the study's tally and summaries up to date from Optuna's tables, in ``conn``'s
    transaction, which must come from ``locked_transaction`` (see the module docstring)."""
    _ensure_tally(conn, optuna_study_id)
    tally = conn.execute(
        sa.select(TALLY).where(TALLY.c.optuna_study_id == optuna_study_id).with_for_update()
    ).one()
    counts = {name: getattr(tally, name) for name in TrialCounts().as_dict()}
    best: tuple[int, float] | None = None
    if tally.best_trial_id is not None:
        best = (tally.best_trial_id, tally.best_value)
    synced = tally.synced_trial_id
    if synced >= 0 and not _in_study(conn, synced, optuna_study_id):
        # Optuna's study was deleted behind our back and its id reused (SQLite reuses ids).
        forget(conn, optuna_study_id)
        _ensure_tally(conn, optuna_study_id)
        counts, best, synced = dict.fromkeys(counts, 0), None, -1
    rows = _trial_rows(conn, optuna_study_id, synced, values=True)
    inserts: list[dict[str, Any]] = []
    updates: list[dict[str, Any]] = []
    complete: list[dict[str, Any]] = []
    for row in rows:
        state = trial_state_name(row.state)
        if row.known == state:
            continue
        if row.known is not None:
            counts[row.known] -= 1
        counts[state] += 1
        if state not in UNFINISHED:
            synced = max(synced, row.trial_id)
        value, second = _value(row, 0), _value(row, 1)
        summary = {
            "trial_id": row.trial_id,
            "optuna_study_id": optuna_study_id,
            "number": row.number,
            "state": state,
            "value": value,
            "second_value": second,
            "valueless": value is None,
            "value_up": value if value is not None else 0.0,
            "value_down": -value if value is not None else 0.0,
            "on_front": False,
        }
        (inserts if row.known is None else updates).append(summary)
        if state == TrialStateName.COMPLETE and value is not None:
            complete.append(summary)
    if complete:
        directions = _directions(conn, optuna_study_id)
        if len(directions) == 1:
            best = _best(best, complete, maximize=directions[0])
        else:
            _update_front(conn, optuna_study_id, complete, directions)
    if inserts:
        conn.execute(sa.insert(SUMMARY), inserts)
    if updates:
        columns = [c.name for c in SUMMARY.c if c.name != "trial_id"]
        conn.execute(
            sa.update(SUMMARY)
            .where(SUMMARY.c.trial_id == sa.bindparam("b_trial_id"))
            .values({c: sa.bindparam(f"b_{c}") for c in columns}),
            [{f"b_{k}": v for k, v in u.items()} for u in updates],
        )
    if inserts or updates or synced != tally.synced_trial_id:
        conn.execute(
            sa.update(TALLY)
            .where(TALLY.c.optuna_study_id == optuna_study_id)
            .values(
                **counts,
                synced_trial_id=synced,
                best_trial_id=best[0] if best else None,
                best_value=best[1] if best else None,
                synced_at=sa.func.now(),
            )
        )
    return Tally(
        TrialCounts(**counts),
        best[0] if best else None,
        best[1] if best else None,
    )


def _in_study(conn: Connection, trial_id: int, optuna_study_id: int) -> bool:
    found = conn.execute(
        sa.select(TRIALS.c.study_id).where(TRIALS.c.trial_id == trial_id)
    ).scalar_one_or_none()
    return found == optuna_study_id


def _directions(conn: Connection, optuna_study_id: int) -> list[bool]:
    """Whether each objective is maximized, in objective order."""
    d = STUDY_DIRECTIONS.c
    rows = conn.execute(
        sa.select(d.direction).where(d.study_id == optuna_study_id).order_by(d.objective)
    ).scalars()
    return [getattr(r, "name", str(r)) == "MAXIMIZE" for r in rows]


def _best(
    best: tuple[int, float] | None, complete: Iterable[dict[str, Any]], maximize: bool
) -> tuple[int, float] | None:
    """The best of ``best`` and the newly complete trials; ties go to the lower trial number
    (trial ids follow numbers within a study)."""
    sign = 1.0 if maximize else -1.0
    for trial in complete:
        candidate = (trial["trial_id"], trial["value"])
        if best is None or (
            sign * candidate[1] > sign * best[1]
            or (candidate[1] == best[1] and candidate[0] < best[0])
        ):
            best = candidate
    return best


def _dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """``a`` is no worse than ``b`` in every objective and better in one (minimizing all)."""
    return all(x <= y for x, y in zip(a, b, strict=True)) and any(
        x < y for x, y in zip(a, b, strict=True)
    )


def _update_front(
    conn: Connection,
    optuna_study_id: int,
    complete: list[dict[str, Any]],
    maximize: list[bool],
) -> None:
    """Keep ``on_front`` exact as trials complete: a new trial joins the front unless a member
    dominates it, and evicts the members it dominates. Dominance is transitive, so the front
    alone decides (a trial dominated by anyone is dominated by a member), and an evicted trial
    never returns. Sets the flag on ``complete``'s dicts; writes evictions itself."""
    signs = [-1.0 if m else 1.0 for m in maximize]

    def key(value: float | None, second: float | None) -> tuple[float, ...]:
        raw = (value, second)[: len(signs)]
        return tuple(
            s * (v if v is not None else float("inf")) for s, v in zip(signs, raw, strict=True)
        )

    s = SUMMARY.c
    front: dict[int, tuple[float, ...]] = {
        r.trial_id: key(r.value, r.second_value)
        for r in conn.execute(
            sa.select(s.trial_id, s.value, s.second_value).where(
                s.optuna_study_id == optuna_study_id, s.on_front
            )
        )
    }
    members = set(front)
    for trial in complete:
        point = key(trial["value"], trial["second_value"])
        if any(_dominates(other, point) for other in front.values()):
            continue
        front = {k: v for k, v in front.items() if not _dominates(point, v)}
        front[trial["trial_id"]] = point
    for trial in complete:
        trial["on_front"] = trial["trial_id"] in front
    evicted = members - set(front)
    if evicted:
        conn.execute(sa.update(SUMMARY).where(s.trial_id.in_(evicted)).values(on_front=False))
