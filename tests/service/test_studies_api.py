"""The studies API against a live server, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from typing import Any

import optuna
import pytest
import sqlalchemy as sa

from search.storage import get_engine
from search.studies import claim_slot
from service.auth import create_key, hash_key, revoke_key
from service.db import ApiKeyRow


@pytest.fixture(scope="module")
def completed_study(server: Any, spec: Any, worker: Any, wait_for: Any) -> dict[str, Any]:
    """A three-trial study submitted over HTTP and run to completion by a worker."""
    with server.client() as http:
        response = http.post("/api/v1/studies", json=spec("done", n_trials=3))
        assert response.status_code == 201, response.text
        created = response.json()
        worker(server.db_url, "done").join(timeout=120)
        return wait_for(http, created["id"], {"completed"})


# --- the main path --------------------------------------------------------------------------------


def test_submitted_study_is_run_by_a_worker_and_reports_its_best(server, completed_study):
    assert completed_study["progress"] == {"finished": 3, "n_trials": 3, "fraction": 1.0}
    assert completed_study["trials"]["complete"] == 3
    assert completed_study["best_value"] is not None
    with server.client(key=None) as http:  # reads are open
        best = http.get(completed_study["links"]["best"]).json()
    assert set(best["params"]) >= {"learning_rate", "bn_momentum"}
    assert best["config"]["model"] == "mlp"
    assert best["values"] == [completed_study["best_value"]]


def test_created_study_links_its_pages(server, spec):
    with server.client() as http:
        study = http.post("/api/v1/studies", json=spec("links")).json()
    assert study["status"] == "queued"
    assert study["links"] == {
        "self": f"/api/v1/studies/{study['id']}",
        "trials": f"/api/v1/studies/{study['id']}/trials",
        "best": f"/api/v1/studies/{study['id']}/best",
        "report": f"/api/v1/studies/{study['id']}/report",
        "report_html": f"/api/v1/studies/{study['id']}/report.html",
        "dashboard": f"/dashboard/studies/{study['optuna_study_id']}",
        "confirm": f"/api/v1/studies/{study['id']}/confirm",
        "confirmation": None,  # set once confirmation runs exist
        "parent": None,  # set on a confirmation study
    }


def test_yaml_spec_is_accepted(server, spec):
    import yaml

    with server.client() as http:
        response = http.post(
            "/api/v1/studies",
            content=yaml.safe_dump(spec("from-yaml")),
            headers={"Content-Type": "application/yaml"},
        )
    assert response.status_code == 201, response.text
    assert response.json()["name"] == "from-yaml"


def test_trials_paginate_and_sort_by_value(server, completed_study):
    url = completed_study["links"]["trials"]
    with server.client(key=None) as http:
        page = http.get(url, params={"limit": 2}).json()
        rest = http.get(url, params={"limit": 2, "offset": 2}).json()
        by_value = http.get(url, params={"sort": "value", "order": "desc"}).json()
        pruned = http.get(url, params={"state": "pruned"}).json()
    assert page["total"] == 3 and [t["number"] for t in page["items"]] == [0, 1]
    assert [t["number"] for t in rest["items"]] == [2]
    values = [t["values"][0] for t in by_value["items"]]
    assert values == sorted(values, reverse=True)
    assert values[0] == completed_study["best_value"]  # val_accuracy is maximized
    assert pruned == {"items": [], "total": 0, "offset": 0, "limit": 50}


def test_importance_of_a_finished_study(server, completed_study):
    with server.client(key=None) as http:
        result = http.get(f"{completed_study['links']['self']}/importance").json()
    assert result["target"] == "val_accuracy"
    assert result["reason"] is None
    # Every searched dimension has an importance (an empty answer fails), normalized to sum 1.
    searched = {
        name
        for name, dim in completed_study["spec"]["search_space"].items()
        if "choices" in dim or "low" in dim
    }
    assert searched and set(result["importances"]) == searched
    assert all(v >= 0 for v in result["importances"].values())
    assert sum(result["importances"].values()) == pytest.approx(1.0)


def test_report_covers_each_varied_bn_practice_and_says_three_trials_prove_nothing(
    server, completed_study
):
    with server.client(key=None) as http:
        result = http.get(completed_study["links"]["report"]).json()
        page = http.get(completed_study["links"]["report_html"])
        alias = http.get(f"{completed_study['links']['self']}/insights").json()
    assert result["metric"] == "val_accuracy" and result["counts"]["used"] == 3
    practices = {f["practice"] for f in result["findings"]}
    # The tiny spec searches BN momentum and placement; three trials support no verdict.
    assert {"bn_momentum", "placement"} <= practices
    assert {f["strength"] for f in result["findings"]} == {"insufficient data"}
    assert all(f["source"] == "study" and f["verdict"] for f in result["findings"])
    assert any("observational" in w for w in result["warnings"])
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "<svg" in page.text or "insufficient data" in page.text
    assert alias == result


def test_importance_without_trials_is_empty_with_a_reason(server, spec):
    with server.client() as http:
        study = http.post("/api/v1/studies", json=spec("no-trials-yet")).json()
        result = http.get(f"/api/v1/studies/{study['id']}/importance")
        best = http.get(study["links"]["best"])
    assert result.status_code == 200
    assert result.json()["importances"] == {} and "2 complete trials" in result.json()["reason"]
    assert best.status_code == 404


def test_list_paginates_and_filters_by_status_and_name(server, spec, completed_study):
    with server.client() as http:
        for i in range(3):
            http.post("/api/v1/studies", json=spec(f"page-{i}"))
        first = http.get("/api/v1/studies", params={"limit": 2}).json()
        second = http.get("/api/v1/studies", params={"limit": 2, "offset": 2}).json()
        done = http.get("/api/v1/studies", params={"status": "completed"}).json()
        named = http.get("/api/v1/studies", params={"name": "page-1"}).json()
        missing = http.get("/api/v1/studies", params={"name": "nope"}).json()
    assert len(first["items"]) == 2 and first["total"] >= 4
    assert not {s["id"] for s in first["items"]} & {s["id"] for s in second["items"]}
    assert [s["name"] for s in done["items"]] == ["done"]
    assert [s["name"] for s in named["items"]] == ["page-1"] and named["total"] == 1
    assert missing["total"] == 0


# --- errors ---------------------------------------------------------------------------------------


def test_unknown_study_is_404(server):
    with server.client() as http:
        for response in (
            http.get("/api/v1/studies/999999"),
            http.get("/api/v1/studies/999999/trials"),
            http.post("/api/v1/studies/999999/cancel"),
            http.delete("/api/v1/studies/999999"),
        ):
            assert response.status_code == 404
            assert response.json() == {"detail": "no study 999999"}


def test_duplicate_name_is_409(server, spec):
    with server.client() as http:
        assert http.post("/api/v1/studies", json=spec("twice")).status_code == 201
        response = http.post("/api/v1/studies", json=spec("twice"))
    assert response.status_code == 409
    assert "already exists" in response.json()["detail"]


@pytest.mark.parametrize(
    ("body", "content_type", "loc"),
    [
        (
            json.dumps(
                {
                    "name": "bad",
                    "dataset": {"name": "synthetic"},
                    "model": {"name": "mlp"},
                    "budget": {"n_trials": 0},
                }
            ),
            "application/json",
            ["body", "budget", "n_trials"],
        ),
        (
            "name: bad\ndataset: {name: nope}\nmodel: {name: mlp}\n",
            "application/yaml",
            ["body", "dataset", "name"],
        ),
        ('{"name": "bad", ', "application/json", ["body", "spec"]),
        ("name: [unclosed\n", "application/yaml", ["body", "spec"]),
        ("[1, 2]", "application/json", ["body", "spec"]),
    ],
    ids=["bad-field", "unknown-dataset", "malformed-json", "malformed-yaml", "not-a-mapping"],
)
def test_bad_spec_is_422_naming_the_field(server, body, content_type, loc):
    with server.client() as http:
        response = http.post(
            "/api/v1/studies", content=body, headers={"Content-Type": content_type}
        )
    assert response.status_code == 422
    (error,) = response.json()["detail"]
    assert error["loc"] == loc and error["type"] == "spec_error" and error["msg"]


def test_budget_caps_come_from_settings(server, spec):
    with server.client() as http:
        response = http.post("/api/v1/studies", json=spec("huge", n_trials=10**6))
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "budget", "n_trials"]


def test_writes_without_a_key_are_401(server, spec):
    with server.client(key=None) as http:
        response = http.post("/api/v1/studies", json=spec("anonymous"))
        assert http.delete("/api/v1/studies/1").status_code == 401
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    with server.client(key="bns_not-a-real-key") as http:
        assert http.post("/api/v1/studies", json=spec("anonymous")).status_code == 401


def test_revoked_key_is_403(server, spec):
    engine = get_engine(server.db_url)
    key = create_key(engine, "soon-revoked")
    with server.client(key=key) as http:
        assert http.post("/api/v1/studies", json=spec("before-revoke")).status_code == 201
        revoke_key(engine, "soon-revoked")
        response = http.post("/api/v1/studies", json=spec("after-revoke"))
    assert response.status_code == 403
    assert "revoked" in response.json()["detail"]


def test_keys_are_stored_hashed(server):
    engine = get_engine(server.db_url)
    with engine.connect() as conn:
        rows = conn.execute(sa.select(ApiKeyRow.key_hash, ApiKeyRow.prefix)).all()
    assert server.key not in {value for row in rows for value in row}
    assert hash_key(server.key) in {row.key_hash for row in rows}


def test_body_over_the_limit_is_413(server, spec):
    big = spec("big") | {"padding": "x" * (server.settings.max_body_bytes + 1)}
    with server.client() as http:
        declared = http.post("/api/v1/studies", json=big)
        # A chunked upload has no Content-Length: the streamed size is what counts.
        streamed = http.post(
            "/api/v1/studies",
            content=iter([b"{" + b" " * 10_000] * 3),
            headers={"Content-Type": "application/json"},
        )
    assert declared.status_code == 413
    assert streamed.status_code == 413
    assert "larger than" in streamed.json()["detail"]


# --- cancel and delete ----------------------------------------------------------------------------


def test_cancel_stops_a_study_once(server, spec):
    with server.client() as http:
        study = http.post("/api/v1/studies", json=spec("to-cancel")).json()
        cancelled = http.post(f"/api/v1/studies/{study['id']}/cancel")
        again = http.post(f"/api/v1/studies/{study['id']}/cancel")
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "cancelled"
    assert again.status_code == 409


def test_delete_removes_the_optuna_study_too(server, spec):
    with server.client() as http:
        study = http.post("/api/v1/studies", json=spec("to-delete")).json()
        response = http.delete(f"/api/v1/studies/{study['id']}")
        gone = http.get(f"/api/v1/studies/{study['id']}")
    assert response.status_code == 204
    assert gone.status_code == 404
    names = {s.study_name for s in optuna.get_all_study_summaries(server.db_url)}
    assert "to-delete" not in names


def test_delete_of_a_running_study_is_409(server, spec):
    with server.client() as http:
        study = http.post("/api/v1/studies", json=spec("busy")).json()
        # A worker's claim makes the study running (no need to train for this).
        assert claim_slot(get_engine(server.db_url), "test-worker", [study["id"]], 60)
        response = http.delete(f"/api/v1/studies/{study['id']}")
        assert http.get(study["links"]["self"]).json()["status"] == "running"
    assert response.status_code == 409
    assert "running" in response.json()["detail"]


def test_wrong_id_type_is_422_not_500(server):
    with server.client() as http:
        response = http.get("/api/v1/studies/not-a-number")
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["path", "study_id"]
