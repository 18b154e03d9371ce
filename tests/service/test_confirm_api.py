"""Confirmation runs over HTTP: POST /studies/{id}/confirm plans a linked study, the same workers
run its planned points (fused, and nothing off the plan), and the parent's report leads each
practice with the confirmation's findings, as JSON and as HTML.

A live server on PostgreSQL (what a service runs on), a real worker, real (tiny) training; the
same flow on a SQLite file runs through the CLI in tests/search/test_confirm_cli.py.
"""

from __future__ import annotations

import time
from typing import Any

import optuna
import pytest

from search.storage import get_storage
from search.worker import Worker, WorkerOptions

pytestmark = pytest.mark.postgres


@pytest.fixture(scope="module")
def db_url(pg_url: str) -> str:
    """This module's server runs on PostgreSQL only (see the module docstring)."""
    return pg_url


SPACE = {
    "batch_size": 32,
    "bn_placement": {"choices": ["before_activation", "none"]},
    "learning_rate": {"low": 0.01, "high": 0.5, "log": True},
    "init": {"choices": ["kaiming", "normal"]},
}


@pytest.fixture(scope="module")
def searched(server: Any, spec: Any, worker: Any, wait_for: Any) -> dict[str, Any]:
    """A small search study, run to completion."""
    body = spec("to-confirm", n_trials=4, search_space=SPACE)
    with server.client() as http:
        created = http.post("/api/v1/studies", json=body).json()
        worker(server.db_url, "to-confirm").join(timeout=120)
        return wait_for(http, created["id"], {"completed"})


def run_fused(db_url: str, study_name: str) -> None:
    """A worker that fuses up to 16 trials per model (no measuring: a test's time)."""
    options = WorkerOptions(
        db_url,
        device="cpu",
        study_name=study_name,
        exit_when_done=True,
        poll_s=0.2,
        heartbeat_interval_s=1,
        grace_period_s=5,
        fuse=16,
    )
    Worker(options).run()


@pytest.fixture(scope="module")
def confirmed(server: Any, searched: dict[str, Any], wait_for: Any) -> dict[str, Any]:
    with server.client() as http:
        # A coarse grid keeps the test short: 3 learning rates per placement.
        body = {"seeds": 3, "lr_offsets": [-0.5, 0, 0.5]}
        response = http.post(searched["links"]["confirm"], json=body)
        assert response.status_code == 201, response.text
        created = response.json()
        run_fused(server.db_url, created["name"])
        return wait_for(http, created["id"], {"completed"}, timeout_s=180)


def test_confirm_creates_a_linked_confirmation_study(server, searched, confirmed) -> None:
    assert confirmed["name"] == "to-confirm-confirm"
    assert confirmed["kind"] == "confirmation" and confirmed["parent_id"] == searched["id"]
    assert confirmed["links"]["parent"] == f"/api/v1/studies/{searched['id']}"
    assert confirmed["links"]["confirm"] is None  # a confirmation is not confirmed again
    spec = confirmed["spec"]
    assert spec["budget"]["n_trials"] == len(spec["enqueue"])
    assert confirmed["progress"]["finished"] == spec["budget"]["n_trials"]
    with server.client(key=None) as http:
        parent = http.get(f"/api/v1/studies/{searched['id']}").json()
    assert parent["links"]["confirmation"] == f"/api/v1/studies/{confirmed['id']}"


def test_its_trials_are_the_planned_points_only_fused_by_shape(server, confirmed) -> None:
    study = optuna.load_study(study_name=confirmed["name"], storage=get_storage(server.db_url))
    trials = study.get_trials()
    assert len(trials) == confirmed["spec"]["budget"]["n_trials"]
    assert all(t.state.name == "COMPLETE" and "plan" in t.user_attrs for t in trials)
    indices = sorted(t.user_attrs["plan"]["index"] for t in trials)
    assert indices == list(range(len(trials)))
    assert max(t.user_attrs["fuse_size"] for t in trials) > 1
    with_bn = [t for t in trials if t.params.get("bn_placement") != "none"]
    assert all(len(t.user_attrs["test_accuracy_by_bn_momentum"]) >= 7 for t in with_bn)


def ready(http: Any, url: str) -> Any:
    """GET ``url``, again while the stored report is first being computed (503)."""
    deadline = time.monotonic() + 60
    while (response := http.get(url)).status_code == 503 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert response.status_code == 200, response.text
    return response


def test_the_parents_report_leads_with_confirmation_findings(server, searched, confirmed) -> None:
    with server.client(key=None) as http:
        report = ready(http, searched["links"]["report"]).json()
        page = ready(http, searched["links"]["report_html"])
        own = ready(http, confirmed["links"]["report"]).json()
    sources = {(f["practice"], f["source"]) for f in report["findings"]}
    for practice in ("placement", "learning_rate_stability", "bn_momentum", "initialization"):
        assert (practice, "confirmation") in sources, practice
    first = {}
    for f in report["findings"]:
        first.setdefault(f["practice"], f["source"])
    assert first["placement"] == "confirmation"
    assert report["confirmation"]["study_id"] == confirmed["id"]
    assert report["confirmation"]["finished"] == confirmed["spec"]["budget"]["n_trials"]
    assert "source: confirmation" in page.text
    assert "<script" not in page.text
    # The confirmation study's own report is the same combined report.
    assert [f["verdict"] for f in own["findings"]] == [f["verdict"] for f in report["findings"]]


def test_confirm_refuses_what_cannot_be_confirmed(server, spec, searched, confirmed) -> None:
    with server.client() as http:
        again = http.post(confirmed["links"]["self"] + "/confirm", json={})
        empty = http.post("/api/v1/studies", json=spec("never-run")).json()
        nothing = http.post(empty["links"]["confirm"])
        few_seeds = http.post(searched["links"]["confirm"], json={"seeds": 2})
        no_center = http.post(searched["links"]["confirm"], json={"lr_offsets": [-1, 1]})
        missing = http.post("/api/v1/studies/999999/confirm")
    with server.client(key=None) as http:
        anonymous = http.post(searched["links"]["confirm"])
    assert again.status_code == 409 and "is a confirmation study" in again.json()["detail"]
    assert nothing.status_code == 409 and "no complete trial" in nothing.json()["detail"]
    assert few_seeds.status_code == 422 and no_center.status_code == 422
    assert missing.status_code == 404
    assert anonymous.status_code == 401
