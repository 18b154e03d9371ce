"""Reads of one study as wire models, shared by the API routes and the CLI's ``--storage`` mode
(so both answer with the same models, from the same code).

None of them reads more of a study than it returns: counts, progress and the best trial come from
the study's tally, a page of trials from an indexed query on the trial summaries and then Optuna's
rows of that page's trials only (search/summary.py); importance and the report are computed once
per count of finished trials and served from storage (service/analyses.py). Each read first brings
the tally up to date with Optuna's tables (two small queries when nothing changed).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from datetime import UTC, datetime
from typing import Any

import optuna
from sqlalchemy.engine import Connection, Engine

from search.analysis import StudyReport, analyze_confirmation, combine_reports, render_html
from search.confirm import confirmations_of
from search.db import StudyRow
from search.errors import NotFoundError, StudyNotFoundError
from search.results import BestResult, TrialSummary, best_result
from search.states import StudyKind, TrialStateName
from search.storage import read_only, study_trials, trials_by_id
from search.studies import get_study_row, spec_of
from search.summary import Tally, front_trial_ids, page_trial_ids, refresh
from service.analyses import IMPORTANCE, REPORT, AnalysisCache, Cached
from service.schemas import (
    Freshness,
    ImportancePublic,
    Order,
    Page,
    ReportPublic,
    SortKey,
    StudyPublic,
)

REPORT_PAGE = "report.html"


class AnalysisPendingError(RuntimeError):
    """An analysis has never been computed for this study and was not ready within the wait
    bound (HTTP 503 with Retry-After)."""

    retry_after_s = 5


def study_public(
    engine: Engine, storage: optuna.storages.BaseStorage, row: StudyRow
) -> StudyPublic:
    """A study with its counts and best value so far (single-objective studies only).
    ``storage`` is unused: the tally answers (kept for the write routes' calls)."""
    tally = refresh(engine, row.optuna_study_id)
    best_value = None if spec_of(row).is_multi_objective else tally.best_value
    public = StudyPublic.build(row, tally.counts, best_value)
    if row.kind == StudyKind.CONFIRMATION.value:
        return public
    latest = confirmations_of(engine, row.id)
    if not latest:
        return public
    links = public.links.model_copy(update={"confirmation": f"/api/v1/studies/{latest[0].id}"})
    return public.model_copy(update={"links": links})


def trial_page(
    engine: Engine,
    row: StudyRow,
    state: TrialStateName | None = None,
    sort: SortKey = SortKey.NUMBER,
    order: Order = Order.ASC,
    offset: int = 0,
    limit: int = 50,
) -> Page[TrialSummary]:
    """A page of a study's trials; sorting by value puts trials without one last (ties and
    valueless trials by number)."""
    with read_only(engine).connect() as conn:
        tally = refresh(engine, row.optuna_study_id, conn)
        return _page(conn, row, tally, state, sort, order, offset, limit)


def trial_page_json(
    engine: Engine,
    row: StudyRow,
    state: TrialStateName | None = None,
    sort: SortKey = SortKey.NUMBER,
    order: Order = Order.ASC,
    offset: int = 0,
    limit: int = 50,
) -> bytes:
    """``trial_page`` as the JSON the API sends. A page whose trials have all finished is kept
    (per process, ``PAGES``) for as long as the study's tally is the same: a finished trial never
    changes, and any trial that starts or ends changes the tally's counts, so a kept page is the
    page a new read would make. Pages are ~2 kB a trial: encoding one took most of the API's time
    for it (docs/benchmarks.md, scale)."""
    with read_only(engine).connect() as conn:
        tally = refresh(engine, row.optuna_study_id, conn)
        counts = tuple(tally.counts.as_dict().values())
        key = (row.id, row.created_at, state, sort, order, offset, limit, counts)
        if (kept := PAGES.get(key)) is not None:
            return kept
        page = _page(conn, row, tally, state, sort, order, offset, limit)
    body = page.model_dump_json().encode()
    if all(TrialStateName(t.state) in FINISHED_STATES for t in page.items):
        PAGES.put(key, body)
    return body


def _page(
    conn: Connection,
    row: StudyRow,
    tally: Tally,
    state: TrialStateName | None,
    sort: SortKey,
    order: Order,
    offset: int,
    limit: int,
) -> Page[TrialSummary]:
    ids = page_trial_ids(
        conn,
        row.optuna_study_id,
        state,
        by_value=sort is SortKey.VALUE,
        descending=order is Order.DESC,
        offset=offset,
        limit=limit,
    )
    trials = trials_by_id(conn, ids, details=False)
    items = [TrialSummary.of(trials[i]) for i in ids if i in trials]
    return Page[TrialSummary](items=items, total=tally.total(state), offset=offset, limit=limit)


FINISHED_STATES = frozenset({TrialStateName.COMPLETE, TrialStateName.PRUNED, TrialStateName.FAIL})


class KeptPages:
    """Encoded trial pages, the most recently used ``size`` of them (thread-safe)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._pages: OrderedDict[tuple[Any, ...], bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[Any, ...]) -> bytes | None:
        with self._lock:
            body = self._pages.get(key)
            if body is not None:
                self._pages.move_to_end(key)
            return body

    def put(self, key: tuple[Any, ...], body: bytes) -> None:
        with self._lock:
            self._pages[key] = body
            self._pages.move_to_end(key)
            while len(self._pages) > self.size:
                self._pages.popitem(last=False)


PAGES = KeptPages(256)  # ~115 kB a page of 50: ~30 MB at most


def best(engine: Engine, row: StudyRow) -> BestResult:
    """The best trial (or Pareto front) with a config ready to train; NotFoundError if none."""
    spec = spec_of(row)
    with read_only(engine).connect() as conn:
        tally = refresh(engine, row.optuna_study_id, conn)
        if spec.is_multi_objective:
            ids = front_trial_ids(conn, row.optuna_study_id)
            front = trials_by_id(conn, ids, details=False).values()
            sign = 1 if spec.directions[0] == "maximize" else -1
            trials = sorted(front, key=lambda t: (-sign * t.values[0], t.number))
        else:
            ids = [] if tally.best_trial_id is None else [tally.best_trial_id]
            trials = list(trials_by_id(conn, ids, details=False).values())
    result = best_result(spec, trials)
    if result is None:
        raise NotFoundError(f"study {row.name!r} has no complete trial yet")
    return result


def importance(cache: AnalysisCache, row: StudyRow) -> ImportancePublic:
    """Parameter importances (Optuna's default evaluator) for the primary objective, as stored
    for the latest count of finished trials the wait bound allows."""
    spec = spec_of(row)
    target = spec.objective.metric.value
    tally = refresh(cache.engine, row.optuna_study_id)
    if tally.counts.complete < 2:  # nothing to compute: no need to store it either
        reason = "needs at least 2 complete trials"
        return ImportancePublic(importances={}, target=target, reason=reason)
    cached = cache.get(row, IMPORTANCE.kind, finished=tally.counts.finished)
    if cached.result is None:
        reason = cached.error or (
            f"being computed for {cached.trials_finished} finished trials; retry shortly"
        )
        return ImportancePublic(importances={}, target=target, reason=reason, **cached.freshness())
    return ImportancePublic.model_validate({**cached.result, **cached.freshness()})


def report(cache: AnalysisCache, row: StudyRow) -> ReportPublic:
    """Which BN practices mattered, each with a verdict, an effect and its 95% interval, and the
    caveats of reading an adaptive sampler's trials (search/analysis), as stored for the latest
    count of finished trials the wait bound allows."""
    if (confirmed := confirmed_report(cache, row)) is not None:
        return confirmed[0]
    cached = cache.get(row, REPORT.kind)
    return ReportPublic.model_validate({**_result(cached, row, "report"), **cached.freshness()})


def report_json(cache: AnalysisCache, row: StudyRow) -> bytes:
    """``report`` as the JSON the API sends (a ``ReportPublic``), from the stored text: the
    freshness fields, then the report as stored, neither parsed nor validated again."""
    if (confirmed := confirmed_report(cache, row)) is not None:
        return confirmed[0].model_dump_json().encode()
    cached = cache.get(row, REPORT.kind, raw=True)
    stored = str(_result(cached, row, "report")).strip()
    head = Freshness.model_validate(cached.freshness()).model_dump_json()
    assert stored.startswith("{") and head.endswith("}")
    body = head if stored == "{}" else f"{head[:-1]},{stored[1:]}"
    return body.encode()


def report_page(cache: AnalysisCache, row: StudyRow) -> tuple[str, Cached]:
    """The report as one self-contained HTML page, drawn when the report was computed."""
    if (confirmed := confirmed_report(cache, row)) is not None:
        return render_html(confirmed[0]), confirmed[1]
    cached = cache.get(row, REPORT_PAGE)
    return str(_result(cached, row, "report page")["html"]), cached


def confirmed_report(cache: AnalysisCache, row: StudyRow) -> tuple[ReportPublic, Cached] | None:
    """The report of a study that has a confirmation study (search/confirm.py), combined with its
    latest one: per practice the controlled findings first, then the study's own; or the report
    of a confirmation study itself (combined with its parent's, if that still exists). None for a
    study never confirmed. With the freshness of the parent's stored report.

    The confirmation part is computed on every call, from one read of the confirmation's trials:
    a confirmation study is a few hundred planned runs at most, milliseconds of arithmetic (t
    intervals), and it must show runs as they finish, which the parent's count does not see.
    """
    if row.kind == StudyKind.CONFIRMATION.value:
        confirmation, parent = row, _parent_of(cache.engine, row)
    else:
        children = confirmations_of(cache.engine, row.id)
        if not children:
            return None
        confirmation, parent = children[0], row
    with read_only(cache.engine).connect() as conn:
        trials = study_trials(conn, confirmation.optuna_study_id, intermediate_values=False)
    confirmed = analyze_confirmation(trials, spec_of(confirmation), status=confirmation.status)
    if confirmed.confirmation is not None:
        info = confirmed.confirmation.model_copy(update={"study_id": confirmation.id})
        confirmed = confirmed.model_copy(update={"confirmation": info})
    if parent is None:  # deleted: the confirmation's findings alone, current as of now
        finished = confirmed.confirmation.finished if confirmed.confirmation else 0
        cached = Cached(None, None, finished, finished, datetime.now(UTC), False)
        return ReportPublic.model_validate({**dict(confirmed), **cached.freshness()}), cached
    cached = cache.get(parent, REPORT.kind)
    study = StudyReport.model_validate(_result(cached, parent, "report"))
    combined = combine_reports(study, confirmed)
    return ReportPublic.model_validate({**dict(combined), **cached.freshness()}), cached


def _parent_of(engine: Engine, row: StudyRow) -> StudyRow | None:
    if row.parent_id is None:
        return None
    try:
        return get_study_row(engine, row.parent_id)
    except StudyNotFoundError:
        return None


def _result(cached: Cached, row: StudyRow, what: str) -> Any:
    if cached.error is not None:
        raise RuntimeError(f"the {what} of study {row.name!r} failed: {cached.error}")
    if cached.result is None:
        raise AnalysisPendingError(
            f"the {what} of study {row.name!r} is being computed for "
            f"{cached.trials_finished} finished trials; retry in a few seconds"
        )
    return cached.result
