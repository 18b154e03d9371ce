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


# The dashboard's own writes that would detach Optuna's study from ours.
DETACHING_WRITES = [
    ("POST", "/api/studies"),
    ("DELETE", "/api/studies/{id}"),
    ("POST", "/api/studies/{id}/rename"),
    ("POST", "/api/trials/1/tell"),
]


@pytest.mark.parametrize(("method", "path"), [*DETACHING_WRITES, ("PUT", "/api/studies/{id}/note")])
def test_dashboard_writes_need_a_key(server, study, method, path):
    url = path.format(id=study["optuna_study_id"])
    with server.client(key=None) as http:
        refused = http.request(
            method, url, json={"study_name": "sneaky", "directions": ["minimize"]}
        )
    assert refused.status_code == 401
    with server.client(key=None) as http:  # the study is still there
        assert http.get(study["links"]["self"]).status_code == 200


@pytest.mark.parametrize(("method", "path"), DETACHING_WRITES)
def test_dashboard_cannot_create_rename_delete_or_tell_even_with_a_key(server, study, method, path):
    url = path.format(id=study["optuna_study_id"])
    with server.client() as http:
        refused = http.request(method, url, json={"study_name": "x", "directions": ["minimize"]})
        assert refused.status_code == 405
        assert "read-only here except notes" in refused.json()["detail"]
        assert http.get(study["links"]["self"]).json()["name"] == study["name"]


def test_dashboard_notes_pass_with_a_key(server, study):
    with server.client() as http:
        saved = http.put(
            f"/api/studies/{study['optuna_study_id']}/note", json={"version": 1, "body": "BN!"}
        )
    assert saved.status_code in (200, 204), saved.text
