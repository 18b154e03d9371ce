"""Analyses that read every trial of a study, computed once per finished-trial count.

Parameter importance and the BN report read all of a study's trials: ~10 s and ~1 GB at 10,000
trials when a request computed them. Here each is computed when the study's count of finished
trials changes, stored in ``bnsweep_analyses`` (one row per study and kind) with the count it
reflects and when it was computed, and served from there with those figures and ``stale``. A
kind may be derived from another's result by the same computation (the report's HTML page from
the report, drawn once: seconds at 10,000 trials). Large results are served as stored, without
being parsed again (the report's JSON grows with the study: ~2 MB at 10,000 trials).

Who computes: in the API, an ``AnalysisCache`` thread (one per process), for studies whose
analysis was asked for at least once (a study nobody looks at costs nothing). Small studies
(up to ``INLINE_MAX_TRIALS`` finished trials: well under a second) are computed in that thread;
larger ones in a child process of their own, at a lower CPU priority and under a memory cap, so
a recomputation never holds the API's interpreter lock nor keeps its memory (the report holds
~1 GB at 10,000 trials while it runs). API processes share the work through a lease on the row:
one computes, the others serve. After a computation, the next one waits at least
``max(MIN_INTERVAL_S, RATE × its duration)``: a study whose trials finish faster than it can be
analyzed is re-analyzed with at most 1/RATE of a core. The CLI's ``--storage`` mode has no API
process: it computes inline, when stale, and stores too.

What a request waits for (``analysis_wait_s``, default 10 s, is the bound): nothing when the
stored figures are current. When they are not, it waits, up to the bound, only if a fresh result
can be expected within it: the last computation took under half the bound and the next may start
now, or none was made yet and the study is small (``INLINE_MAX_TRIALS``). Otherwise it gets the
stored figures at once with ``stale: true`` (or, if there are none yet, a 503 with Retry-After).
A request never waits longer than the bound; typically it waits well under a second, the bound
is for a loaded machine.

New analyses plug in with one ``register(Analysis(...))``: a name, a pure function of the spec and
the trials returning JSON, which trials it reads, and the kinds derived from its result.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import multiprocessing
import os
import resource
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from multiprocessing.connection import Connection as PipeEnd
from typing import Any, cast

import optuna
import sqlalchemy as sa
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from models.errors import first_line
from search.analysis import StudyReport, analyze_study, render_html
from search.db import AnalysisRow, StudyRow
from search.spec import StudySpec
from search.storage import TRIALS, get_engine, read_only, study_trials
from search.studies import get_study_row, spec_of
from search.summary import TALLY, refresh

log = logging.getLogger("bnsweep.analyses")

ANALYSES_TABLE = cast(sa.Table, AnalysisRow.__table__)
INLINE_MAX_TRIALS = 2_000  # up to here a computation takes milliseconds: no child process
MIN_INTERVAL_S = 1.0
RATE = 3.0  # a recomputation waits RATE × the last one's duration after it
TIMEOUT_S = 1_800.0  # a computation past this is killed (and recorded as failed)
POLL_S = 1.0  # how often the thread looks for work other processes asked for
CHILD_MEMORY_FRACTION = 1 / 3  # of physical memory, for one child computation
RETRY_AFTER_FAILURE_S = 30.0  # a computation that produced nothing is retried after this


def _as_utc(value: datetime | None) -> datetime | None:
    """SQLite returns naive datetimes; every timestamp bnsweep stores is UTC."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


# --- what can be computed -----------------------------------------------------------------------


@dataclass(frozen=True)
class Analysis:
    """An analysis of all (or some) of a study's trials.

    Attributes:
        kind: its name in ``bnsweep_analyses`` (and the API's path, by convention).
        compute: ``(spec, trials) -> JSON``; pure, so it can run in another process.
        states: which trials it reads (None: all of them).
        user_attrs: the user attrs it reads (True: all; False: none).
        intermediate_values: whether it reads intermediate values.
        derived: further kinds computed from its result (e.g. an HTML page of a report), stored
            beside it for the same trials by the same computation.
    """

    kind: str
    compute: Callable[[StudySpec, Sequence[FrozenTrial]], dict[str, Any]]
    states: tuple[TrialState, ...] | None = None
    user_attrs: bool | frozenset[str] = True
    intermediate_values: bool = True
    derived: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = field(default_factory=dict)


ANALYSES: dict[str, Analysis] = {}  # by every kind it stores (its own and its derived ones)


def register(analysis: Analysis) -> Analysis:
    """Make ``analysis`` (and its derived kinds) computable and cacheable."""
    for kind in (analysis.kind, *analysis.derived):
        ANALYSES[kind] = analysis
    return analysis


def importance_of(spec: StudySpec, trials: Sequence[FrozenTrial]) -> dict[str, Any]:
    """Parameter importances (Optuna's default evaluator) for the primary objective."""
    target = spec.objective.metric.value
    if sum(t.state is TrialState.COMPLETE for t in trials) < 2:
        return {"importances": {}, "target": target, "reason": "needs at least 2 complete trials"}
    if not spec.search_space.searched():
        return {"importances": {}, "target": target, "reason": "nothing is searched"}
    # In memory: the evaluator's input.
    study = optuna.create_study(directions=spec.directions)  # type: ignore[arg-type]
    study.add_trials(trials)
    # The default evaluator (PED-ANOVA) reads the direction from a single-objective study, but
    # treats a target function as "lower is better": negate a maximized primary objective.
    sign = -1.0 if spec.objective.resolved_direction == "maximize" else 1.0
    objective = None if not spec.is_multi_objective else (lambda t: sign * t.values[0])
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*computes the importances of params")
            values = optuna.importance.get_param_importances(study, target=objective)
    except (ValueError, RuntimeError) as exc:  # e.g. every trial has the same params
        return {"importances": {}, "target": target, "reason": first_line(exc)}
    return {"importances": dict(values), "target": target, "reason": None}


def report_of(spec: StudySpec, trials: Sequence[FrozenTrial]) -> dict[str, Any]:
    """The BN report (search/analysis) as JSON."""
    return analyze_study(trials, spec).model_dump(mode="json")


def report_page_of(report: dict[str, Any]) -> dict[str, Any]:
    """The report as one self-contained HTML page (seconds to draw at 10,000 trials)."""
    return {"html": render_html(StudyReport.model_validate(report))}


IMPORTANCE = register(
    Analysis(
        "importance",
        importance_of,
        states=(TrialState.COMPLETE,),
        user_attrs=False,
        intermediate_values=False,
    )
)
REPORT = register(Analysis("report", report_of, derived={"report.html": report_page_of}))


# --- computing one ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """What one computation produced, for the trials it read."""

    trials_counted: int
    results: dict[str, dict[str, Any]] | None  # by kind: the analysis's, and its derived ones
    error: str | None
    duration_s: float


def compute(url: str, study_id: int, kind: str, wanted: Sequence[str] = ()) -> Outcome:
    """Compute, in this process, the analysis that stores ``kind`` and those of its derived
    kinds in ``wanted``: from the study's trials, or, when ``kind`` itself is not wanted, from
    its stored result (e.g. the HTML page of a report stored earlier)."""
    analysis = ANALYSES[kind]
    wanted = tuple(wanted) or (analysis.kind,)
    engine = get_engine(url)
    row = get_study_row(engine, study_id)
    started = time.perf_counter()
    if analysis.kind not in wanted:
        return _derive(engine, study_id, analysis, wanted, started)
    with engine.connect() as conn:
        trials = study_trials(
            conn,
            row.optuna_study_id,
            analysis.states,
            analysis.user_attrs,
            analysis.intermediate_values,
        )
        # Counted from what the computation read, not from a tally read at another moment.
        finished = _finished(conn, row.optuna_study_id, analysis, trials)
    try:
        result = analysis.compute(spec_of(row), trials)
        results = {analysis.kind: result}
        results |= {k: f(result) for k, f in analysis.derived.items() if k in wanted}
        error = None
    except Exception as exc:  # a bug or odd data: recorded, served as an error, retried later
        log.exception("%s of study %s failed", analysis.kind, study_id)
        results, error = None, f"{type(exc).__name__}: {first_line(exc)}"
    return Outcome(finished, results, error, time.perf_counter() - started)


def _derive(
    engine: Engine, study_id: int, analysis: Analysis, wanted: Sequence[str], started: float
) -> Outcome:
    a = ANALYSES_TABLE.c
    with engine.connect() as conn:
        stored = conn.execute(
            sa.select(a.trials_counted, a.result).where(
                a.study_id == study_id, a.kind == analysis.kind
            )
        ).first()
    if stored is None or stored.result is None:
        return Outcome(-1, None, f"no {analysis.kind} stored to derive from", 0.0)
    try:
        results = {k: analysis.derived[k](stored.result) for k in wanted}
        error = None
    except Exception as exc:
        log.exception("%s of study %s failed", ", ".join(wanted), study_id)
        results, error = None, f"{type(exc).__name__}: {first_line(exc)}"
    return Outcome(stored.trials_counted, results, error, time.perf_counter() - started)


def _finished(
    conn: Connection, optuna_study_id: int, analysis: Analysis, trials: Sequence[FrozenTrial]
) -> int:
    finished = (TrialState.COMPLETE, TrialState.PRUNED)
    if analysis.states is None or set(finished) <= set(analysis.states):
        return sum(t.state in finished for t in trials)
    # It read only some finished states; the others are counted (not read) right after, in the
    # same transaction.
    others = [s for s in finished if s not in analysis.states]
    counted = conn.execute(
        sa.select(sa.func.count())
        .select_from(TRIALS)
        .where(TRIALS.c.study_id == optuna_study_id, TRIALS.c.state.in_(others))
    ).scalar_one()
    return int(counted) + sum(t.state in finished for t in trials)


def _child(
    end: PipeEnd, url: str, study_id: int, kind: str, wanted: Sequence[str], finished: int
) -> None:
    """Entry point of the child process that computes a large study's analysis (of about
    ``finished`` finished trials)."""
    with contextlib.suppress(OSError):
        os.nice(10)  # the API and the database come first
    with contextlib.suppress(OSError, ValueError):
        # An analysis too large for this machine fails alone (MemoryError, recorded as its
        # error) rather than have the kernel pick a victim among the API and the database.
        limit = CHILD_MEMORY_FRACTION * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        resource.setrlimit(resource.RLIMIT_AS, (int(limit), int(limit)))
    started = time.perf_counter()
    try:
        end.send(compute(url, study_id, kind, wanted))
    except MemoryError:  # too large for this machine: recorded, not retried until more trials
        reason = f"MemoryError: {finished} trials need more than {CHILD_MEMORY_FRACTION:.0%} of RAM"
        end.send(Outcome(finished, None, reason, time.perf_counter() - started))
    except BaseException as exc:  # e.g. the database is away: reported, retried later
        reason = f"{type(exc).__name__}: {first_line(exc)}"
        end.send(Outcome(-1, None, reason, time.perf_counter() - started))
    finally:
        end.close()


def compute_in_child(
    url: str,
    study_id: int,
    kind: str,
    wanted: Sequence[str],
    finished: int,
    timeout_s: float,
    stop: threading.Event,
) -> Outcome:
    """``compute`` in a spawned process of its own, killed after ``timeout_s`` or on ``stop``."""
    ctx = multiprocessing.get_context("spawn")
    parent_end, child_end = ctx.Pipe(duplex=False)
    process = ctx.Process(
        target=_child,
        args=(child_end, url, study_id, kind, tuple(wanted), finished),
        name="bnsweep-analysis",
        daemon=True,
    )
    process.start()
    child_end.close()
    deadline = time.monotonic() + timeout_s
    try:
        while not parent_end.poll(0.2):
            if stop.is_set() or time.monotonic() > deadline or not process.is_alive():
                break
        if parent_end.poll(0):
            try:
                return cast(Outcome, parent_end.recv())
            except EOFError:
                pass
        if stop.is_set():
            return Outcome(-1, None, "stopped", 0.0)
        if process.is_alive():
            return Outcome(-1, None, f"timed out after {timeout_s:.0f} s", timeout_s)
        return Outcome(-1, None, f"analysis process died (exit code {process.exitcode})", 0.0)
    finally:
        if process.is_alive():
            process.kill()
        process.join(5)
        parent_end.close()


# --- the cache ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cached:
    """An analysis as stored, with how current it is."""

    result: Any  # the JSON (or its text, read raw); None: never computed (or it failed)
    error: str | None
    trials_counted: int | None
    trials_finished: int
    computed_at: datetime | None
    stale: bool

    def freshness(self) -> dict[str, Any]:
        """The fields every analysis response carries (``service.schemas.Freshness``)."""
        return {
            "computed_at": self.computed_at,
            "trials_counted": self.trials_counted,
            "trials_finished": self.trials_finished,
            "stale": self.stale,
        }


def _due_at(row: Any) -> datetime | None:
    """When the next computation of a stored analysis may start (None: now)."""
    computed_at = _as_utc(row.computed_at) if row is not None else None
    if computed_at is None:
        return None
    return computed_at + timedelta(seconds=max(MIN_INTERVAL_S, RATE * (row.duration_s or 0.0)))


class AnalysisCache:
    """Analyses served from ``bnsweep_analyses``; refreshed in the background (``start``), or
    inline when ``background`` is False (the CLI without a server)."""

    def __init__(
        self, url: str, engine: Engine, wait_s: float = 10.0, background: bool = True
    ) -> None:
        self.url = url
        self.engine = engine
        self.wait_s = wait_s
        self.background = background
        self.owner = f"{os.uname().nodename}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._done = threading.Condition()
        self._thread: threading.Thread | None = None

    # --- requests

    def get(
        self, row: StudyRow, kind: str, raw: bool = False, finished: int | None = None
    ) -> Cached:
        """The stored ``kind`` of the study, as current as the wait bound allows; with ``raw``,
        its JSON text as stored (a report of 10,000 trials is ~2 MB: parsed and validated
        again at every request it would cost ~100 ms of CPU). ``finished``: the study's count
        of finished trials, if the caller just read its tally."""
        if finished is None:
            finished = refresh(self.engine, row.optuna_study_id).counts.finished
        stored = self._read(row.id, kind)
        if stored is None or (stored.trials_counted or -1) < finished:
            self._request(row.id, kind)
            if not self.background:
                source = ANALYSES[kind].kind
                self._compute_and_store(row.id, source, lease=False, finished=finished)
                stored = self._read(row.id, kind)
            else:
                self._wake.set()
                if self._may_wait(stored, finished):
                    stored = self._wait_for(row.id, kind, finished) or stored
        result = self._result(row.id, kind, raw) if stored is not None else None
        return self._cached(stored, result, finished)

    def _may_wait(self, stored: Any, finished: int) -> bool:
        """Whether a fresh result may come within the bound: the last computation took under
        half of it (and the next may start now), or none was made yet and the study is small."""
        if stored is None or stored.computed_at is None:
            return finished <= INLINE_MAX_TRIALS
        due = _due_at(stored)
        quick = (stored.duration_s or 0.0) <= self.wait_s / 2
        return quick and (due is None or due <= datetime.now(UTC) + timedelta(seconds=self.wait_s))

    def _wait_for(self, study_id: int, kind: str, finished: int) -> Any:
        deadline = time.monotonic() + self.wait_s
        stored = None
        while (left := deadline - time.monotonic()) > 0:
            with self._done:
                self._done.wait(min(left, 0.1))  # woken by this process; polls for the others
            stored = self._read(study_id, kind)
            if stored is not None and (stored.trials_counted or -1) >= finished:
                break
        return stored

    def _cached(self, stored: Any, result: Any, finished: int) -> Cached:
        if stored is None:
            return Cached(None, None, None, finished, None, True)
        return Cached(
            result=result,
            error=stored.error,
            trials_counted=stored.trials_counted,
            trials_finished=finished,
            computed_at=_as_utc(stored.computed_at),
            stale=(stored.trials_counted or -1) < finished,
        )

    def _read(self, study_id: int, kind: str) -> Any:
        """A stored analysis's row but its result (polled while waiting: kept small)."""
        a = ANALYSES_TABLE.c
        columns = [c for c in ANALYSES_TABLE.c if c.name != "result"]
        with read_only(self.engine).connect() as conn:
            return conn.execute(
                sa.select(*columns).where(a.study_id == study_id, a.kind == kind)
            ).first()

    def _result(self, study_id: int, kind: str, raw: bool) -> Any:
        a = ANALYSES_TABLE.c
        column = sa.cast(a.result, sa.Text) if raw else a.result
        with read_only(self.engine).connect() as conn:
            return conn.execute(
                sa.select(column).where(a.study_id == study_id, a.kind == kind)
            ).scalar()

    def _request(self, study_id: int, kind: str) -> None:
        """Mark the analysis wanted (a row without a result), so refreshers compute it; a
        derived kind's source too (the refresher computes the source, which stores both)."""
        dialect = postgresql if self.engine.dialect.name == "postgresql" else sqlite
        try:
            with self.engine.begin() as conn:
                for wanted in {kind, ANALYSES[kind].kind}:
                    insert = dialect.insert(ANALYSES_TABLE).values(study_id=study_id, kind=wanted)
                    conn.execute(insert.on_conflict_do_nothing())
        except sa.exc.IntegrityError:  # the study was deleted meanwhile
            pass

    # --- computing

    def start(self) -> None:
        """Start the background thread (API processes)."""
        self._thread = threading.Thread(target=self._run, name="bnsweep-analyses", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        # What the computations import (the analysis, its plots) is imported once, now, not
        # inside the first request's wait bound.
        with contextlib.suppress(ImportError):
            importlib.import_module("matplotlib.figure")
            importlib.import_module("optuna.importance")
        while not self._stop.is_set():
            self._wake.wait(POLL_S)
            self._wake.clear()
            try:
                for study_id, kind, finished in self._due():
                    if self._stop.is_set():
                        return
                    self._compute_and_store(study_id, kind, lease=True, finished=finished)
            except Exception as exc:  # a database blip must not end the refreshes
                log.warning("analyses: %s", first_line(exc))

    def _due(self) -> list[tuple[int, str, int]]:
        """Requested analyses whose count is behind their study's tally and may start now."""
        a, s, t = ANALYSES_TABLE.c, StudyRow.__table__.c, TALLY.c
        finished = t.complete + t.pruned
        query = (
            sa.select(a.study_id, a.kind, a.computed_at, a.duration_s, a.lease_until, finished)
            .select_from(
                ANALYSES_TABLE.join(StudyRow.__table__, s.id == a.study_id).join(
                    TALLY, t.optuna_study_id == s.optuna_study_id
                )
            )
            .where(sa.or_(a.trials_counted.is_(None), a.trials_counted < finished))
            .order_by(a.requested_at)
        )
        now = datetime.now(UTC)
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        due: dict[tuple[int, str], int] = {}
        leased = {
            (r.study_id, r.kind)
            for r in rows
            if (until := _as_utc(r.lease_until)) is not None and until > now
        }
        for r in rows:
            if r.kind not in ANALYSES:  # stored by another version of bnsweep
                continue
            source = (r.study_id, ANALYSES[r.kind].kind)  # what computes it
            at = _due_at(r)
            if source not in leased and (at is None or at <= now):
                due[source] = int(r[-1])
        return [(study_id, kind, finished) for (study_id, kind), finished in due.items()]

    def _take_lease(self, study_id: int, kind: str) -> bool:
        a = ANALYSES_TABLE.c
        now = datetime.now(UTC)
        with self.engine.begin() as conn:
            taken = conn.execute(
                sa.update(ANALYSES_TABLE)
                .where(
                    a.study_id == study_id,
                    a.kind == kind,
                    sa.or_(a.lease_until.is_(None), a.lease_until < now),
                )
                .values(lease_owner=self.owner, lease_until=now + timedelta(seconds=TIMEOUT_S))
            )
        return taken.rowcount == 1

    def _compute_and_store(self, study_id: int, kind: str, lease: bool, finished: int) -> None:
        if lease and not self._take_lease(study_id, kind):
            return
        started = time.monotonic()
        stored = False
        try:
            wanted = self._wanted(study_id, kind, finished)
            if finished <= INLINE_MAX_TRIALS or not self.background:
                outcome = compute(self.url, study_id, kind, wanted)
            else:
                outcome = compute_in_child(
                    self.url, study_id, kind, wanted, finished, TIMEOUT_S, self._stop
                )
            stored = self._store(study_id, wanted, outcome)
        finally:
            if lease:
                # After a computation that produced nothing, the lease stays until the retry,
                # as long as the attempt took RATE times over (at least RETRY_AFTER_FAILURE_S).
                wasted = RATE * (time.monotonic() - started)
                self._release(study_id, kind, 0.0 if stored else max(RETRY_AFTER_FAILURE_S, wasted))
            with self._done:
                self._done.notify_all()

    def _wanted(self, study_id: int, kind: str, finished: int) -> tuple[str, ...]:
        """What to compute for the analysis stored under ``kind``: itself and its derived kinds,
        if it is behind; else only the derived kinds behind, from its stored result."""
        analysis = ANALYSES[kind]
        a = ANALYSES_TABLE.c
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(a.kind, a.trials_counted).where(
                    a.study_id == study_id, a.kind.in_([analysis.kind, *analysis.derived])
                )
            ).all()
        behind = {r.kind for r in rows if (r.trials_counted or -1) < finished}
        if analysis.kind in behind or analysis.kind not in {r.kind for r in rows}:
            # All derived kinds with it, asked for or not: the report's page is drawn with the
            # report, so the first request for it finds it ready.
            return (analysis.kind, *analysis.derived)
        return tuple(sorted(behind)) or (analysis.kind,)

    def _store(self, study_id: int, wanted: Sequence[str], outcome: Outcome) -> bool:
        """Store the results (or the error the analysis raised) under the ``wanted`` kinds;
        False if there is none to store (stopped, killed, the database away): the figures
        already stored stay as they are."""
        if outcome.trials_counted < 0:
            log.warning("%s of study %s produced nothing: %s", wanted, study_id, outcome.error)
            return False
        a = ANALYSES_TABLE.c
        dialect = postgresql if self.engine.dialect.name == "postgresql" else sqlite
        with self.engine.begin() as conn:
            for each in wanted:
                result = outcome.results.get(each) if outcome.results else None
                conn.execute(
                    dialect.insert(ANALYSES_TABLE)
                    .values(study_id=study_id, kind=each)
                    .on_conflict_do_nothing()
                )
                conn.execute(
                    sa.update(ANALYSES_TABLE)
                    .where(a.study_id == study_id, a.kind == each)
                    .values(
                        trials_counted=outcome.trials_counted,
                        result=result,
                        error=outcome.error,
                        computed_at=sa.func.now(),
                        duration_s=outcome.duration_s,
                    )
                )
        return True

    def _release(self, study_id: int, kind: str, after_s: float) -> None:
        a = ANALYSES_TABLE.c
        until = datetime.now(UTC) + timedelta(seconds=after_s) if after_s else None
        with self.engine.begin() as conn:
            conn.execute(
                sa.update(ANALYSES_TABLE)
                .where(a.study_id == study_id, a.kind == kind, a.lease_owner == self.owner)
                .values(lease_owner=None if until is None else self.owner, lease_until=until)
            )
