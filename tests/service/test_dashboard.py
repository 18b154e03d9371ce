"""optuna-dashboard served by the API process: pages open, writes guarded by our keys."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def study(server, spec):
    with server.client() as http:
        return http.post("/api/v1/studies", json=spec("on-dashboard")).json()


def test_dashboard_page_is_served(server):
    with server.client(key=None) as http:
        response = http.get("/dashboard")
        linked = http.get("/dashboard/studies/1")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert linked.status_code == 200


def test_dashboard_api_lists_our_studies(server, study):
    with server.client(key=None) as http:
        summaries = http.get("/api/studies").json()["study_summaries"]
    assert study["name"] in {s["study_name"] for s in summaries}
    assert study["optuna_study_id"] in {s["study_id"] for s in summaries}


def test_our_routes_win_over_the_dashboard(server):
    with server.client(key=None) as http:
        assert http.get("/api/v1/registry").json()["samplers"]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/api/studies"),
        ("DELETE", "/api/studies/{id}"),
        ("POST", "/api/studies/{id}/rename"),
        ("POST", "/api/trials/1/tell"),
        ("PUT", "/api/studies/{id}/note"),
    ],
)
def test_dashboard_writes_need_a_key(server, study, method, path):
    url = path.format(id=study["optuna_study_id"])
    with server.client(key=None) as http:
        refused = http.request(
            method, url, json={"study_name": "sneaky", "directions": ["minimize"]}
        )
    assert refused.status_code == 401
    with server.client(key=None) as http:  # the study is still there
        assert http.get(study["links"]["self"]).status_code == 200


def test_dashboard_writes_pass_with_a_key(server):
    with server.client() as http:
        created = http.post(
            "/api/studies", json={"study_name": "made-in-dashboard", "directions": ["minimize"]}
        )
    assert created.status_code == 201, created.text
