"""Workers, registry, health, metrics and database outages."""

from __future__ import annotations

import threading
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from search.worker import Worker, WorkerOptions


def test_health_reports_the_database(server):
    with server.client(key=None) as http:
        assert http.get("/healthz").json() == {"database": "ok"}


def test_registry_lists_what_a_spec_can_name(server):
    with server.client(key=None) as http:
        registry = http.get("/api/v1/registry").json()
    assert "mlp" in {m["name"] for m in registry["models"]}
    synthetic = next(d for d in registry["datasets"] if d["name"] == "synthetic")
    assert "n_samples" in {p["name"] for p in synthetic["params"]}
    assert "tpe" in registry["samplers"] and "median" in registry["pruners"]


def test_workers_show_live_ones_and_all_on_request(server, spec, wait_for):
    # Idle-exit rather than exit-when-done: the worker stays up a few seconds after its one
    # trial, so a loaded machine cannot make it come and go between two polls.
    options = WorkerOptions(
        server.db_url,
        device="cpu",
        study_name="for-workers",
        idle_exit_s=3,
        poll_s=0.2,
        heartbeat_interval_s=1,
        grace_period_s=5,
    )
    with server.client() as http:
        study = http.post("/api/v1/studies", json=spec("for-workers", n_trials=1)).json()
        thread = threading.Thread(target=Worker(options).run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 30
        while not (live := http.get("/api/v1/workers").json()["items"]):
            assert time.monotonic() < deadline, "worker never showed up"
            time.sleep(0.1)
        assert live[0]["alive"] and live[0]["device"] == "cpu" and live[0]["pid"]
        thread.join(timeout=60)
        wait_for(http, study["id"], {"completed"})
        stopped = http.get("/api/v1/workers").json()["items"]
        everyone = http.get("/api/v1/workers", params={"all": "true"}).json()["items"]
    assert live[0]["id"] not in {w["id"] for w in stopped}
    assert any(w["id"] == live[0]["id"] and w["status"] == "stopped" for w in everyone)


def test_metrics_parse_as_prometheus_text(server, spec, worker, wait_for):
    with server.client() as http:
        study = http.post("/api/v1/studies", json=spec("for-metrics", n_trials=1)).json()
        worker(server.db_url, "for-metrics").join(timeout=60)
        wait_for(http, study["id"], {"completed"})
        text = http.get("/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert set(families) >= {
        "bnsweep_studies",
        "bnsweep_trials",
        "bnsweep_trial_duration_seconds",
        "bnsweep_workers_live",
    }
    completed = [
        s.value for s in families["bnsweep_studies"].samples if s.labels == {"status": "completed"}
    ]
    assert completed[0] >= 1
    count = [
        s.value
        for s in families["bnsweep_trial_duration_seconds"].samples
        if s.name.endswith("_count")
    ]
    assert count[0] >= 1


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/healthz"),
        ("GET", "/metrics"),
        ("GET", "/api/v1/studies"),
        ("GET", "/api/v1/studies/1"),
        ("GET", "/api/v1/workers"),
        ("POST", "/api/v1/studies/1/cancel"),
        ("POST", "/api/studies"),
        ("GET", "/dashboard"),  # the dashboard is built on its first request: not without it
        ("GET", "/api/studies"),
        ("PUT", "/api/studies/1/note"),  # its one write: the key is checked in the database
    ],
)
def test_database_outage_is_503_json(server_without_database, method, path):
    response = httpx.request(
        method,
        server_without_database + path,
        timeout=30,
        headers={"Authorization": "Bearer bns_x"},
    )
    assert response.status_code == 503
    assert response.json() == {"detail": "database unavailable"}


def test_head_is_answered_as_get_without_a_body(server):
    with server.client(key=None) as http:
        for path in ("/healthz", "/api/v1/registry", "/api/v1/studies", "/dashboard"):
            get, head = http.get(path), http.head(path)
            assert (head.status_code, head.content) == (get.status_code, b""), path
            assert head.headers["content-type"] == get.headers["content-type"], path


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/api/v1/nope", 404),
        ("GET", "/api/nope", 404),
        ("PUT", "/api/v1/studies", 405),
        ("DELETE", "/api/v1/registry", 405),
    ],
)
def test_paths_under_api_answer_json_errors(server, method, path, status):
    with server.client() as http:
        response = http.request(method, path)
    assert response.status_code == status
    assert isinstance(response.json()["detail"], str)


def test_settings_refuse_a_grace_period_shorter_than_two_heartbeats():
    from pydantic import ValidationError

    from service.settings import Settings

    with pytest.raises(ValidationError, match="must be at least twice heartbeat_interval_s"):
        Settings(heartbeat_interval_s=5, grace_period_s=6)


def test_data_dir_from_dotenv_reaches_the_datasets(tmp_path, monkeypatch):
    from models.data import default_data_dir
    from service.settings import get_settings

    (tmp_path / ".env").write_text(f"BNSWEEP_DATA_DIR={tmp_path / 'datasets'}\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BNSWEEP_DATA_DIR", "")  # recorded, so teardown restores the original
    monkeypatch.delenv("BNSWEEP_DATA_DIR")
    get_settings.cache_clear()
    try:
        get_settings()
        assert default_data_dir() == tmp_path / "datasets"
    finally:
        get_settings.cache_clear()
