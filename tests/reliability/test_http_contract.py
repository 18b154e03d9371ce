"""The HTTP contract beyond the OpenAPI document: HEAD answers on every GET route as GET does
(status and headers, no body), and every path under ``/api/`` answers JSON ``{"detail": ...}``,
the unknown ones and the wrong methods included, never the dashboard's HTML pages."""

from __future__ import annotations

import re

import pytest

from service.app import create_app
from service.settings import Settings
from tests.support import make_study, tiny_spec

# One xdist worker runs the module: one API process for it, not one per worker.
pytestmark = [pytest.mark.postgres, pytest.mark.xdist_group("test_http_contract")]


def get_paths(db_url: str, study_id: int) -> list[str]:
    """Every GET route of the app's OpenAPI document, path parameters filled in."""
    paths = create_app(Settings(database_url=db_url)).openapi()["paths"]
    return [
        re.sub(r"\{[^}]*\}", str(study_id), path)
        for path, operations in paths.items()
        if "get" in operations
    ]


@pytest.mark.scenario("13. HTTP contract: HEAD and JSON errors")
def test_head_answers_every_get_route_as_get_does_without_a_body(pg, api, figures):
    study_id = make_study(pg, tiny_spec("for-head"))
    paths = [*get_paths(pg, study_id), "/dashboard", "/api/studies", "/docs", "/healthz"]
    wrong = []
    answered = 0
    with api.client() as http:
        for path in paths:
            get, head = http.get(path), http.head(path)
            same = head.status_code == get.status_code and (
                head.headers.get("content-type") == get.headers.get("content-type")
            )
            if not same or head.content != b"":
                wrong.append((path, get.status_code, head.status_code, len(head.content)))
            answered += get.status_code == 200
    figures.update(get_routes=len(paths), get_200=answered, head_wrong=len(wrong))
    assert len(paths) >= 10 and answered >= 8
    assert wrong == []


UNKNOWN = [
    ("GET", "/api/v1/nope"),
    ("GET", "/api/v1"),
    ("GET", "/api/v1/studies/1/nope"),
    ("POST", "/api/v1/nope/deeper"),
    ("GET", "/api/nope"),
    ("GET", "/api/studies/99999"),  # the dashboard's own API: an unknown study
]
WRONG_METHOD = [
    ("PUT", "/api/v1/studies"),
    ("PATCH", "/api/v1/studies/1"),
    ("POST", "/api/v1/registry"),
    ("DELETE", "/api/v1/workers"),
    ("DELETE", "/api/meta"),  # the dashboard's: read-only here but for notes
    ("DELETE", "/api/nope/1"),
]


@pytest.mark.scenario("13. HTTP contract: HEAD and JSON errors")
@pytest.mark.parametrize(
    ("method", "path", "status"),
    [(m, p, 404) for m, p in UNKNOWN] + [(m, p, 405) for m, p in WRONG_METHOD],
)
def test_every_path_under_api_answers_json_detail(api, api_key, figures, method, path, status):
    with api.client(api_key) as http:
        response = http.request(method, path)
    figures.update(status=response.status_code, content_type=response.headers["content-type"])
    assert response.status_code == status, response.text[:300]
    assert response.headers["content-type"].startswith("application/json")
    assert isinstance(response.json()["detail"], str)
    if status == 405 and path.startswith("/api/v1"):
        assert "GET" in response.headers["allow"] or "POST" in response.headers["allow"]
