"""The one HTTP client of the bnsweep API (the CLI uses it; so can notebooks and scripts)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import httpx

from search.results import BestResult, TrialSummary
from search.states import TrialStateName
from service.schemas import (
    ImportancePublic,
    Order,
    Page,
    RegistryPublic,
    ReportPublic,
    SortKey,
    StudyPublic,
    StudySummary,
    WorkerList,
)
from service.settings import Settings, get_settings


class ApiError(Exception):
    """An error answer from the API (or no answer: status 0). ``str()`` is one line."""

    def __init__(self, status: int, detail: Any) -> None:
        super().__init__(status, detail)
        self.status = status
        self.detail = detail

    def __str__(self) -> str:
        detail = self.detail
        if isinstance(detail, list) and detail and isinstance(detail[0], Mapping):
            # 422: name the field, as the CLI does for a local spec error
            first = detail[0]
            where = ".".join(str(p) for p in first.get("loc", [])[1:]) or "spec"
            detail = f"{where}: {first.get('msg')}"
        text = " ".join(str(detail).split())
        return f"{text} (HTTP {self.status})" if self.status else text


class Client:
    """Methods mirror the API and return its models; study arguments accept an id or a name."""

    def __init__(self, base_url: str, api_key: str | None = None, timeout: float = 30.0) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> Client:
        """From ``BNSWEEP_API_URL`` (default ``http://{host}:{port}``) and ``BNSWEEP_API_KEY``."""
        s = settings or get_settings()
        return cls(s.base_url, s.api_key, s.http_timeout_s)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # --- transport

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """The response, or ApiError for an error answer or no answer."""
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ApiError(
                0, f"cannot reach {self.base_url}: {exc or type(exc).__name__}"
            ) from None
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail", response.text)
            except (ValueError, AttributeError):
                detail = response.text or response.reason_phrase
            raise ApiError(response.status_code, detail)
        return response

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._send(method, path, **kwargs)
        return response.json() if response.content else None

    def study_id(self, study: int | str) -> int:
        """An id as given, or the id of the study named ``study``."""
        if isinstance(study, int) or (isinstance(study, str) and study.isdigit()):
            return int(study)
        items = self._request("GET", "/api/v1/studies", params={"name": study})["items"]
        if not items:
            raise ApiError(404, f"no study {study!r}")
        return int(items[0]["id"])

    # --- studies

    def submit(self, spec: str | Mapping[str, Any]) -> StudyPublic:
        """Create a study from a spec: YAML/JSON text or a mapping."""
        if isinstance(spec, str):
            headers = {"Content-Type": "application/yaml"}  # JSON is YAML too
            body = self._request("POST", "/api/v1/studies", content=spec, headers=headers)
        else:
            headers = {"Content-Type": "application/json"}
            body = self._request(
                "POST", "/api/v1/studies", content=json.dumps(spec), headers=headers
            )
        return StudyPublic.model_validate(body)

    def get(self, study: int | str) -> StudyPublic:
        return StudyPublic.model_validate(self._request("GET", self._path(study)))

    def list_studies(
        self, status: str | None = None, offset: int = 0, limit: int = 50
    ) -> Page[StudySummary]:
        params = {"offset": offset, "limit": limit} | ({"status": status} if status else {})
        body = self._request("GET", "/api/v1/studies", params=params)
        return Page[StudySummary].model_validate(body)

    def trials(
        self,
        study: int | str,
        state: TrialStateName | None = None,
        sort: SortKey = SortKey.NUMBER,
        order: Order = Order.ASC,
        offset: int = 0,
        limit: int = 500,
    ) -> Page[TrialSummary]:
        params: dict[str, Any] = {"sort": sort, "order": order, "offset": offset, "limit": limit}
        if state:
            params["state"] = state.value
        body = self._request("GET", f"{self._path(study)}/trials", params=params)
        return Page[TrialSummary].model_validate(body)

    def all_trials(
        self,
        study: int | str,
        state: TrialStateName | None = None,
        sort: SortKey = SortKey.NUMBER,
        order: Order = Order.ASC,
    ) -> list[TrialSummary]:
        """Every trial, page by page."""
        study_id, offset, items = self.study_id(study), 0, []
        while True:
            page = self.trials(study_id, state, sort, order, offset=offset)
            items.extend(page.items)
            offset += len(page.items)
            if not page.items or offset >= page.total:
                return items

    def best(self, study: int | str) -> BestResult:
        return BestResult.model_validate(self._request("GET", f"{self._path(study)}/best"))

    def importance(self, study: int | str) -> ImportancePublic:
        body = self._request("GET", f"{self._path(study)}/importance")
        return ImportancePublic.model_validate(body)

    def report(self, study: int | str) -> ReportPublic:
        return ReportPublic.model_validate(self._request("GET", f"{self._path(study)}/report"))

    def report_html(self, study: int | str) -> str:
        """The report as a self-contained HTML page."""
        return self._send("GET", f"{self._path(study)}/report.html").text

    def confirm(
        self, study: int | str, seeds: int = 3, lr_offsets: list[float] | None = None
    ) -> StudyPublic:
        """Plan and start confirmation runs of a study; returns the new confirmation study."""
        payload: dict[str, Any] = {"seeds": seeds}
        if lr_offsets is not None:
            payload["lr_offsets"] = lr_offsets
        body = self._request("POST", f"{self._path(study)}/confirm", json=payload)
        return StudyPublic.model_validate(body)

    def cancel(self, study: int | str) -> StudyPublic:
        return StudyPublic.model_validate(self._request("POST", f"{self._path(study)}/cancel"))

    def pause(self, study: int | str) -> StudyPublic:
        return StudyPublic.model_validate(self._request("POST", f"{self._path(study)}/pause"))

    def resume(self, study: int | str) -> StudyPublic:
        return StudyPublic.model_validate(self._request("POST", f"{self._path(study)}/resume"))

    def delete(self, study: int | str) -> None:
        self._request("DELETE", self._path(study))

    def _path(self, study: int | str) -> str:
        return f"/api/v1/studies/{self.study_id(study)}"

    # --- system

    def workers(self, include_dead: bool = False) -> WorkerList:
        body = self._request("GET", "/api/v1/workers", params={"all": include_dead})
        return WorkerList.model_validate(body)

    def registry(self) -> RegistryPublic:
        return RegistryPublic.model_validate(self._request("GET", "/api/v1/registry"))

    def health(self) -> dict[str, Any]:
        return dict(self._request("GET", "/healthz"))
