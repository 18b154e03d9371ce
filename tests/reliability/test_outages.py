"""Outages: PostgreSQL restarted and stopped under a running study, the API process restarted.

The PostgreSQL test stops the shared server, so it is marked ``outage``: run it alone
(``pytest -m outage``), never beside other tests.

Every kind of route is loaded *before* the database stops (ours, the dashboard's pages and its
API), so that the dashboard is built and its pooled connections exist when the outage comes: the
answers checked are those of a server that was serving, not of one that has never reached the
database.
"""

from __future__ import annotations

import signal
import time
from typing import Any

import httpx
import pytest

from tests.reliability.helpers import (
    assert_accounted_for,
    audit,
    ensure_postgres_running,
    pg_ctl,
    wait_for,
    wait_for_postgres,
)
from tests.support import study_counts

pytestmark = pytest.mark.postgres


def sleepy_spec(name: str, n_trials: int, epochs: int = 3) -> dict[str, Any]:
    """A study mapping as a client would POST it (test model: 0.05 s per batch)."""
    return {
        "name": name,
        "dataset": {"name": "synthetic", "params": {"n_samples": 400, "shape": [8]}},
        "model": {"name": "sleepy_mlp", "params": {"delay_s": 0.05}},
        "search_space": {"batch_size": {"choices": [32, 64]}},
        "training": {"epochs": epochs},
        "sampler": {"name": "random", "seed": 0},
        "budget": {"n_trials": n_trials},
        "retries": 5,  # an outage longer than the grace period fails running trials as stale
    }


# --- 3. PostgreSQL restarted / stopped ----------------------------------------------------------


@pytest.mark.outage
@pytest.mark.scenario("3. PostgreSQL restarted and stopped mid-study")
def test_postgres_outage_answers_503_and_the_study_completes(
    pg, api_process, api_key, workers, figures
):
    api = api_process().start()
    http = api.client(api_key)
    name = "outage"
    study = http.post("/api/v1/studies", json=sleepy_spec(name, n_trials=10)).json()
    procs = workers.start(pg, "--study", name, "--idle-exit", "5", n=3)
    wait_for(lambda: study_counts(pg, name).finished >= 2, timeout=120)

    # A real restart (fast shutdown: every connection is cut), under running trials.
    restarted = time.monotonic()
    try:
        pg_ctl("restart")
    finally:
        ensure_postgres_running()
    wait_for_postgres(pg)
    figures["restart_s"] = round(time.monotonic() - restarted, 1)

    # Every kind of route answers before the outage (the dashboard is built on its first request).
    sid, oid = study["id"], study["optuna_study_id"]
    needs_database = [
        ("GET", "/healthz", None),
        ("GET", "/metrics", None),
        ("GET", "/api/v1/studies", None),
        ("GET", f"/api/v1/studies/{sid}", None),
        ("GET", f"/api/v1/studies/{sid}/trials", None),
        ("GET", f"/api/v1/studies/{sid}/best", None),
        ("GET", "/api/v1/workers", None),
        ("HEAD", f"/api/v1/studies/{sid}", None),
        ("GET", "/dashboard", None),  # its pages check the schema version first
        ("GET", f"/dashboard/studies/{oid}", None),
        ("GET", "/api/studies", None),  # the dashboard's own API
        ("GET", f"/api/studies/{oid}", None),
        ("GET", f"/api/studies/{oid}/param_importances", None),
    ]
    writes = [
        ("POST", "/api/v1/studies", sleepy_spec("during-outage", n_trials=1)),
        ("POST", f"/api/v1/studies/{sid}/cancel", None),
        ("PUT", f"/api/studies/{oid}/note", {"version": 1, "body": "during the outage"}),
    ]
    # No database needed: they keep answering as before.
    static = [
        ("GET", "/static/bundle.js", None),  # the dashboard's
        ("GET", "/api/meta", None),
        ("GET", "/api/v1/registry", None),
        ("GET", "/openapi.json", None),
    ]
    before = {
        (method, path): http.request(method, path, timeout=30).status_code
        for method, path, _ in needs_database + static
    }
    figures["routes_loaded_before"] = len(before)
    assert all(status < 500 for status in before.values()), before

    # Stopped for a while: sample the API meanwhile.
    answers: list[tuple[str, str, int, Any]] = []
    stopped_at = time.monotonic()
    try:
        pg_ctl("stop")
        for _ in range(3):
            for method, path, body in needs_database + writes + static:
                response = http.request(method, path, json=body, timeout=15)
                answers.append((method, path, response.status_code, _json(response)))
            time.sleep(0.5)
    finally:
        ensure_postgres_running()
    wait_for_postgres(pg)
    figures["stopped_s"] = round(time.monotonic() - stopped_at, 1)

    static_paths = {path for _, path, _ in static}
    unavailable = {"detail": "database unavailable"}
    wrong = [
        a
        for a in answers
        if (a[1] in static_paths and a[2] != before[(a[0], a[1])])
        or (a[1] not in static_paths and a[0] != "HEAD" and (a[2], a[3]) != (503, unavailable))
        or (a[0] == "HEAD" and a[2] != 503)
    ]
    figures.update(
        outage_requests=len(answers),
        outage_503=sum(a[2] == 503 for a in answers),
        outage_5xx_other=sum(a[2] >= 500 and a[2] != 503 for a in answers),
        outage_static_served=sum(a[1] in static_paths and a[2] == 200 for a in answers),
    )
    assert wrong == [], wrong
    assert all("Traceback" not in str(a[3]) for a in answers)

    # Back: the API answers again, workers carry on (none died), the study completes.
    wait_for(lambda: _status(http, "/healthz") == 200, timeout=30, every=0.5)
    alive_after = sum(p.poll() is None for p in procs)
    figures["workers_alive_after_outage"] = alive_after
    workers.wait(timeout=240)
    assert [p.returncode for p in procs] == [0, 0, 0]
    assert alive_after >= 1  # some worker was still there to finish the study
    log = open(workers.log.name, errors="replace").read()  # noqa: SIM115
    figures["worker_backoff_lines"] = log.count("retry in")
    assert "Traceback" not in log
    final = http.get(f"/api/v1/studies/{study['id']}").json()
    assert final["status"] == "completed"
    assert_accounted_for(pg, name, 10, figures)
    api_log = api.log_text()
    figures["api_log_outage_lines"] = api_log.count("database unavailable")
    # No stack trace: neither Python's nor the dashboard's own ("Exception: ..." + frames).
    assert "Traceback" not in api_log
    assert 'File "' not in api_log and "Exception:" not in api_log
    http.close()


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text[:200]


def _status(http: httpx.Client, path: str) -> int:
    try:
        return http.get(path, timeout=5).status_code
    except httpx.TransportError:
        return 0


# --- 4. the API restarted -----------------------------------------------------------------------


def listing(http: httpx.Client) -> dict[str, dict[int, tuple[str, Any]]]:
    """Every study by name, with its trials as {number: (state, value)}."""
    studies = http.get("/api/v1/studies", params={"limit": 500}).json()["items"]
    out: dict[str, dict[int, tuple[str, Any]]] = {}
    for study in studies:
        trials = http.get(f"/api/v1/studies/{study['id']}/trials", params={"limit": 500}).json()
        out[study["name"]] = {t["number"]: (t["state"], t.get("values")) for t in trials["items"]}
    return out


@pytest.mark.scenario("4. API process restarted mid-study")
def test_api_restart_mid_study_keeps_every_study_and_trial(
    pg, api_process, api_key, workers, figures
):
    api = api_process().start()
    http = api.client(api_key)
    specs = {"api-restart-a": 8, "api-restart-b": 4}
    for name, n in specs.items():
        assert http.post("/api/v1/studies", json=sleepy_spec(name, n, epochs=2)).status_code == 201
    workers.start(pg, "--idle-exit", "3", n=2)  # any study
    wait_for(lambda: study_counts(pg, "api-restart-a").finished >= 2, timeout=120)
    before = listing(http)

    api.stop(signal.SIGKILL)  # no graceful shutdown
    down_at = time.monotonic()
    finished_at_kill = sum(study_counts(pg, n).finished for n in specs)
    # Workers need only the database: they carry on while the API is down.
    wait_for(lambda: sum(study_counts(pg, n).finished for n in specs) > finished_at_kill, 60)
    progressed = sum(study_counts(pg, n).finished for n in specs) - finished_at_kill
    api.start()
    figures.update(api_down_s=round(time.monotonic() - down_at, 1), trials_while_down=progressed)
    after = listing(http)

    missing_studies = set(before) - set(after)
    missing_trials = [
        (name, number) for name, trials in before.items() for number in trials
        if number not in after.get(name, {})
    ]  # fmt: skip
    changed = [
        (name, number)
        for name, trials in before.items()
        for number, (state, values) in trials.items()
        if state in ("complete", "pruned", "fail")
        and after.get(name, {}).get(number) != (state, values)
    ]
    figures.update(
        studies_before=len(before),
        trials_before=sum(map(len, before.values())),
        studies_missing=len(missing_studies),
        trials_missing=len(missing_trials),
        finished_trials_changed=len(changed),
    )
    assert not missing_studies and not missing_trials and not changed

    workers.wait(timeout=180)
    audits = [audit(pg, name, n) for name, n in specs.items()]
    figures.update({k: sum(a.figures()[k] for a in audits) for k in audits[0].figures()})
    for name in specs:
        study = http.get("/api/v1/studies", params={"name": name}).json()["items"][0]
        assert study["status"] == "completed"
    for result in audits:
        assert result.finished == result.expected and result.running == 0
        assert result.finished_twice == 0 and result.unretried_failures == 0
        assert result.waiting == 0
    http.close()
