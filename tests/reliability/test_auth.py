"""Every write needs a key: missing or unknown → 401, revoked → 403, for our routes (read from
the app) and the embedded dashboard's write API (read from its router). Keys are stored hashed:
the raw key appears neither in a database dump nor in the server's log."""

from __future__ import annotations

import re
import subprocess

import optuna
import optuna_dashboard
import pytest

from search.storage import get_engine
from service.app import create_app
from service.auth import create_key, revoke_key
from service.settings import Settings

pytestmark = pytest.mark.postgres

READS = {"GET", "HEAD"}


def write_endpoints(db_url: str) -> list[tuple[str, str]]:
    """(method, path) of every write: our routes (from the app's OpenAPI), then the dashboard's
    (from its router); path parameters → 1."""
    paths = create_app(Settings(database_url=db_url)).openapi()["paths"]
    ours = [
        (method.upper(), path)
        for path, operations in paths.items()
        for method in operations
        if method.upper() not in READS
    ]
    dashboard = optuna_dashboard.wsgi(optuna.storages.InMemoryStorage())
    theirs = [(r.method, r.rule) for r in dashboard.routes if r.method not in READS]
    return [(m, re.sub(r"\{[^}]*\}|<[^>]*>", "1", p)) for m, p in ours + theirs]


@pytest.mark.scenario("9. auth on every write endpoint")
def test_every_write_needs_a_valid_key_and_keys_are_stored_hashed(pg, api, api_key, figures):
    engine = get_engine(pg)
    revoked = create_key(engine, "revoked")
    revoke_key(engine, "revoked")
    endpoints = write_endpoints(pg)
    assert ("POST", "/api/v1/studies") in endpoints and ("POST", "/api/studies") in endpoints

    wrong: list[tuple[str, str, str, int]] = []
    for key, expected in ((None, 401), ("bns_not-a-key", 401), (revoked, 403)):
        with api.client(key) as http:
            for method, path in endpoints:
                response = http.request(method, path, json={})
                if response.status_code != expected or "detail" not in response.json():
                    wrong.append((method, path, str(key)[:8], response.status_code))
                elif expected == 401:
                    assert response.headers["www-authenticate"] == "Bearer"
    # The valid key gets past auth (to 404/409/422: whatever the route says, never 401/403).
    with api.client(api_key) as http:
        passed = [http.request(m, p, json={}).status_code for m, p in endpoints]
    figures.update(
        write_endpoints=len(endpoints),
        refused_as_expected=3 * len(endpoints) - len(wrong),
        wrong_answers=len(wrong),
    )
    assert wrong == []
    assert not {401, 403} & set(passed)

    dump = subprocess.run(
        ["pg_dump", "--data-only", pg.replace("postgresql+psycopg", "postgresql")],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    log = api.log_text()
    figures.update(dump_bytes=len(dump), log_bytes=len(log))
    assert "bnsweep_api_keys" in dump and "reliability" in dump  # the dump has the keys table
    for raw in (api_key, revoked):
        assert raw not in dump
        assert raw not in log
        assert raw[10:] not in dump  # not even the part after the shown prefix
