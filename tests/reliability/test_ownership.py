"""Ownership and quotas: a study belongs to the key that created it; only that key or an admin key
may cancel, pause, resume or delete it; owners are not shown to anonymous readers; per-key quotas
on active studies and queued trials answer 429, and hold under concurrent submissions to two API
processes."""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from search.storage import get_engine
from service.auth import create_key
from tests.support import make_study, tiny_spec

# One xdist worker runs the module: one API process for it, not one per worker.
pytestmark = [pytest.mark.postgres, pytest.mark.xdist_group("test_ownership")]


def spec(name: str, n_trials: int = 2) -> dict[str, Any]:
    return {
        "name": name,
        "dataset": {"name": "synthetic", "params": {"n_samples": 200}},
        "model": {"name": "mlp", "params": {"width": 8, "depth": 1}},
        "search_space": {"batch_size": 32},
        "training": {"epochs": 1},
        "budget": {"n_trials": n_trials},
    }


@pytest.fixture(scope="module")
def keys(pg: str) -> dict[str, str]:
    engine = get_engine(pg)
    return {
        "alice": create_key(engine, "alice"),
        "bob": create_key(engine, "bob"),
        "root": create_key(engine, "root", admin=True),
    }


@pytest.mark.scenario("12. ownership and quotas")
def test_only_the_owner_or_an_admin_key_may_change_a_study(api, keys, pg, figures):
    clients = {name: api.client(key) for name, key in keys.items()}
    alice, bob, root = clients["alice"], clients["bob"], clients["root"]
    created = alice.post("/api/v1/studies", json=spec("owned-by-a"))
    assert created.status_code == 201, created.text
    study = created.json()
    base = f"/api/v1/studies/{study['id']}"
    refused = {}
    for action in ("cancel", "pause", "resume"):
        refused[action] = bob.post(f"{base}/{action}").status_code
    refused["delete"] = bob.delete(base).status_code
    assert refused == {"cancel": 403, "pause": 403, "resume": 403, "delete": 403}
    untouched = alice.get(base).json()["status"]
    steps = [
        ("alice pauses", alice.post(f"{base}/pause").status_code),
        ("bob resumes", bob.post(f"{base}/resume").status_code),
        ("root resumes", root.post(f"{base}/resume").status_code),
        ("alice cancels", alice.post(f"{base}/cancel").status_code),
        ("bob deletes", bob.delete(base).status_code),
        ("root deletes", root.delete(base).status_code),
    ]
    # A study without an owner (made locally, or with auth off): admin keys only.
    ownerless = make_study(pg, tiny_spec("ownerless"))
    steps += [
        ("alice cancels ownerless", alice.post(f"/api/v1/studies/{ownerless}/cancel").status_code),
        ("root cancels ownerless", root.post(f"/api/v1/studies/{ownerless}/cancel").status_code),
    ]
    detail = bob.post(f"{base}/cancel").json()["detail"]  # gone: 404 before any owner check
    figures.update(refused_to_another_key=refused, steps=dict(steps))
    for client in clients.values():
        client.close()
    assert untouched == "queued"
    assert dict(steps) == {
        "alice pauses": 200,
        "bob resumes": 403,
        "root resumes": 200,
        "alice cancels": 200,
        "bob deletes": 403,
        "root deletes": 204,
        "alice cancels ownerless": 403,
        "root cancels ownerless": 200,
    }
    assert "no study" in detail


@pytest.mark.scenario("12. ownership and quotas")
def test_owners_are_shown_to_callers_with_a_key_only(api, keys, figures):
    with api.client(keys["alice"]) as alice:
        study = alice.post("/api/v1/studies", json=spec("whose")).json()
    shown: dict[str, Any] = {}
    for who, key in (("anonymous", None), ("unknown key", "bns_nope"), ("bob", keys["bob"])):
        with api.client(key) as http:
            one = http.get(f"/api/v1/studies/{study['id']}")
            listed = http.get("/api/v1/studies", params={"name": "whose"}).json()["items"]
            dashboard = http.get("/api/studies").text + http.get("/api/v1/studies").text
            assert one.status_code == 200  # reads are open
            shown[who] = (one.json()["owner"], listed[0]["owner"], "alice" in dashboard)
    figures.update({who: list(seen) for who, seen in shown.items()})
    assert shown["anonymous"] == (None, None, False)
    assert shown["unknown key"] == (None, None, False)
    assert shown["bob"][:2] == ("alice", "alice")


@pytest.mark.scenario("12. ownership and quotas")
def test_quotas_per_key_answer_429_and_free_up_when_a_study_ends(api, pg, figures):
    engine = get_engine(pg)
    few = create_key(engine, "few-studies", max_active_studies=2)
    small = create_key(engine, "few-trials", max_queued_trials=10)
    with api.client(few) as http:
        first = [http.post("/api/v1/studies", json=spec(f"few-{i}")).status_code for i in range(3)]
        over = http.post("/api/v1/studies", json=spec("few-over"))
        http.post("/api/v1/studies/{}/cancel".format(_id(http, "few-0")))
        after_cancel = http.post("/api/v1/studies", json=spec("few-after")).status_code
    with api.client(small) as http:
        trials = [
            http.post("/api/v1/studies", json=spec(f"trials-{n}", n_trials=n)).status_code
            for n in (6, 5, 4)
        ]
        too_many = http.post("/api/v1/studies", json=spec("trials-x", n_trials=1))
    figures.update(
        active_studies=first,
        after_cancel=after_cancel,
        queued_trials=trials,
        studies_429=over.json()["detail"],
        trials_429=too_many.json()["detail"],
    )
    assert first == [201, 201, 429]
    assert over.status_code == 429 and "quota of 2" in over.json()["detail"]
    assert after_cancel == 201
    assert trials == [201, 429, 201]  # 6 + 5 > 10, 6 + 4 fits
    assert too_many.status_code == 429 and "quota of 10" in too_many.json()["detail"]


def _id(http: httpx.Client, name: str) -> int:
    return int(http.get("/api/v1/studies", params={"name": name}).json()["items"][0]["id"])


@pytest.mark.scenario("12. ownership and quotas")
def test_concurrent_submissions_to_two_api_processes_cannot_overrun_a_quota(
    api, api_process, pg, figures
):
    """12 submissions at once with one key whose quota is 3 active studies, half to each of two
    API processes: exactly 3 are created (the quota check and the creation hold a per-key lock,
    across processes an advisory lock of PostgreSQL)."""
    key = create_key(get_engine(pg), "racer", max_active_studies=3)
    second = api_process().start()

    def submit(i: int) -> int:
        with (api if i % 2 else second).client(key) as http:
            return http.post("/api/v1/studies", json=spec(f"race-{i}")).status_code

    with ThreadPoolExecutor(max_workers=12) as pool:
        statuses = list(pool.map(submit, range(12)))
    with api.client(key) as http:
        listed = http.get("/api/v1/studies", params={"limit": 500}).json()["items"]
    owned = [s for s in listed if s["owner"] == "racer"]
    figures.update(created=statuses.count(201), refused_429=statuses.count(429), owned=len(owned))
    assert sorted(statuses) == [201] * 3 + [429] * 9
    assert len(owned) == 3


@pytest.mark.scenario("12. ownership and quotas")
def test_keys_cli_creates_admin_keys_with_their_own_quotas(pg, figures):
    def cli(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "service", "keys", *args, "--storage", pg],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    raw = cli("create", "ops", "--admin", "--max-active-studies", "5", "--max-queued-trials", "50")
    listing = {line.split("\t")[0]: line.split("\t") for line in cli("list").splitlines()}
    figures["listed"] = "\t".join(listing["ops"][1:])
    assert raw.strip().startswith("bns_")
    assert listing["ops"][2:] == ["admin", "studies 5, trials 50", "active"]
