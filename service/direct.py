"""The API's reads straight from the database, for the CLI's ``--storage`` mode and ``bnsweep
run``: the same methods and models as ``service.client.Client``, no server needed."""

from __future__ import annotations

from search.db import StudyRow
from search.results import BestResult, TrialSummary
from search.states import TrialStateName
from search.storage import get_engine, get_storage
from search.studies import get_study_row
from service import queries
from service.analyses import AnalysisCache
from service.schemas import ImportancePublic, Order, ReportPublic, SortKey, StudyPublic

PAGE = 1_000  # trials per page when reading all of them


class DatabaseClient:
    """Reads of studies in the database at ``url``; study arguments accept an id or a name."""

    def __init__(self, url: str) -> None:
        self.engine = get_engine(url)
        self.storage = get_storage(url)
        # No API process to refresh analyses in the background: computed here when stale, and
        # stored for the next reader.
        self.analyses = AnalysisCache(url, self.engine, background=False)

    def _row(self, study: int | str) -> StudyRow:
        ref = int(study) if isinstance(study, str) and study.isdigit() else study
        return get_study_row(self.engine, ref)

    def get(self, study: int | str) -> StudyPublic:
        return queries.study_public(self.engine, self.storage, self._row(study))

    def all_trials(
        self,
        study: int | str,
        state: TrialStateName | None = None,
        sort: SortKey = SortKey.NUMBER,
        order: Order = Order.ASC,
    ) -> list[TrialSummary]:
        row = self._row(study)
        items: list[TrialSummary] = []
        while True:  # page by page: one page's trials in memory as Optuna builds them
            page = queries.trial_page(self.engine, row, state, sort, order, len(items), PAGE)
            items += page.items
            if len(page.items) < PAGE:
                return items

    def best(self, study: int | str) -> BestResult:
        return queries.best(self.engine, self._row(study))

    def importance(self, study: int | str) -> ImportancePublic:
        return queries.importance(self.analyses, self._row(study))

    def report(self, study: int | str) -> ReportPublic:
        return queries.report(self.analyses, self._row(study))

    def report_html(self, study: int | str) -> str:
        """The report as a self-contained HTML page."""
        return queries.report_page(self.analyses, self._row(study))[0]
