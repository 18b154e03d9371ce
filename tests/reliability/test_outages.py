"""Outages: PostgreSQL restarted and stopped under a running study, the API process restarted.

The PostgreSQL test stops the shared server, so it is marked ``outage``: run it alone
(``pytest -m outage``), never beside other tests.
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
    wait_for_postgres,
)
from tests.support import study_counts, wait_for

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

    # Stopped for a while: sample the API meanwhile.
    probes = [
        ("GET", "/healthz", None),
        ("GET", "/api/v1/studies", None),
        ("GET", f"/api/v1/studies/{study['id']}", None),
        ("GET", f"/api/v1/studies/{study['id']}/trials", None),
        ("GET", "/api/v1/workers", None),
        ("GET", "/metrics", None),
        ("POST", "/api/v1/studies", sleepy_spec("during-outage", n_trials=1)),
        ("POST", f"/api/v1/studies/{study['id']}/cancel", None),
        ("GET", "/api/studies", None),  # the dashboard's own API
    ]
    answers: list[tuple[str, str, int, Any]] = []
    stopped_at = time.monotonic()
    try:
        pg_ctl("stop")
        for _ in range(3):
            for method, path, body in probes:
                response = http.request(method, path, json=body, timeout=15)
                answers.append((method, path, response.status_code, _json(response)))
            time.sleep(0.5)
    finally:
        ensure_postgres_running()
    wait_for_postgres(pg)
    figures["stopped_s"] = round(time.monotonic() - stopped_at, 1)

    wrong = [
        a for a in answers if a[2] != 503 or not isinstance(a[3], dict) or "detail" not in a[3]
    ]
    figures.update(
        outage_requests=len(answers),
        outage_503=sum(a[2] == 503 for a in answers),
        outage_5xx_other=sum(a[2] >= 500 and a[2] != 503 for a in answers),
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
    assert "Traceback" not in api.log_text()
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
        assert result.duplicated_numbers == 0 and result.unretried_failures == 0
    http.close()
