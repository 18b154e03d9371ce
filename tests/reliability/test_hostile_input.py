"""Hostile request bodies against the live API process: size, syntax, YAML tricks, extreme numbers,
import paths and path escapes. Each is refused with the right status and the field named, fast,
and the server keeps answering."""

from __future__ import annotations

import json
import os
import time
from typing import Any

import pytest

from tests.reliability.helpers import ApiProcess

pytestmark = pytest.mark.postgres

BASE: dict[str, Any] = {
    "dataset": {"name": "synthetic", "params": {"n_samples": 200}},
    "model": {"name": "mlp", "params": {"width": 8, "depth": 1}},
    "search_space": {"batch_size": 32},
    "training": {"epochs": 1},
    "budget": {"n_trials": 1},
}
BILLION_LAUGHS = "\n".join(
    ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    + [f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}{f',*{chr(97 + i)}' * 8}]" for i in range(8)]
    + ["name: bomb", "dataset: {name: synthetic}", "model: {name: mlp}"]
)
YAML = "application/yaml"


def spec(name: str, **overrides: Any) -> dict[str, Any]:
    return {"name": name, **BASE, **overrides}


def dumps(data: Any) -> bytes:
    return json.dumps(data).encode()


# (id, body, content type, status, loc, words in msg). loc None: only the status is checked.
CASES: list[tuple[str, bytes, str, int, list[str] | None, str]] = [
    ("malformed-json", b'{"name": "x", ', "application/json", 422, ["body", "spec"], "JSON"),
    ("json-top-level-list", b"[1, 2]", "application/json", 422, ["body", "spec"], "mapping"),
    ("invalid-utf8", b"\xff\xfe\x00{", "application/json", 422, ["body", "spec"], ""),
    ("deep-nesting", b"[" * 50_00 + b"]" * 50_00, "application/json", 422, ["body", "spec"], ""),
    ("malformed-yaml", b"name: [unclosed\n  - x", YAML, 422, ["body", "spec"], "YAML"),
    ("yaml-alias-bomb", BILLION_LAUGHS.encode(), YAML, 422, ["body", "spec"], "alias"),
    (
        "yaml-python-tag",
        b'name: !!python/object/apply:os.system ["touch /tmp/bnsweep-pwned"]\n',
        YAML, 422, ["body", "spec"], "",
    ),
    ("yaml-python-name", b"name: !!python/name:os.system\n", YAML, 422, ["body", "spec"], ""),
    ("yaml-custom-tag", b"name: !secret x\n", YAML, 422, ["body", "spec"], ""),
    (
        "lr-1e308",
        dumps(spec("lr", search_space={"learning_rate": 1e308, "batch_size": 32})),
        "application/json", 422, ["body", "search_space", "learning_rate"], "",
    ),
    (
        "lr-nan-json",
        b'{"name": "nan", "dataset": {"name": "synthetic"}, "model": {"name": "mlp"},'
        b' "search_space": {"learning_rate": NaN}}',
        "application/json", 422, ["body", "search_space", "learning_rate"], "",
    ),
    (
        "lr-nan-yaml",
        b"name: nan\ndataset: {name: synthetic}\nmodel: {name: mlp}\n"
        b"search_space: {learning_rate: .nan}\n",
        YAML, 422, ["body", "search_space", "learning_rate"], "",
    ),
    (
        "lr-infinity-range",
        dumps(spec("inf", search_space={"learning_rate": {"low": 0.1, "high": 1e400}})),
        "application/json", 422, ["body", "search_space", "learning_rate"], "",
    ),
    (
        "batch-size-2-31",
        dumps(spec("bs", search_space={"batch_size": 2**31})),
        "application/json", 422, ["body", "search_space", "batch_size"], "",
    ),
    (
        "negative-epochs",
        dumps(spec("ep", training={"epochs": -1})),
        "application/json", 422, ["body", "training", "epochs"], "",
    ),
    (
        "n-trials-10-30",
        dumps(spec("nt", budget={"n_trials": 10**30})),
        "application/json", 422, ["body", "budget", "n_trials"], "",
    ),
    (
        "model-os-system",
        dumps(spec("m1", model={"name": "os.system"})),
        "application/json", 422, ["body", "model", "name"], "",
    ),
    (
        "model-import-path",
        dumps(spec("m2", model={"name": "models.train:train"})),
        "application/json", 422, ["body", "model", "name"], "",
    ),
    (
        "model-canary-module",
        dumps(spec("m3", model={"name": "tests.reliability.import_canary"})),
        "application/json", 422, ["body", "model", "name"], "",
    ),
    (
        "dataset-canary-module",
        dumps(spec("d0", dataset={"name": "tests.reliability.import_canary:build"})),
        "application/json", 422, ["body", "dataset", "name"], "",
    ),
    (
        "dataset-passwd",
        dumps(spec("d1", dataset={"name": "../../etc/passwd"})),
        "application/json", 422, ["body", "dataset", "name"], "",
    ),
    (
        "cifar-path-dotdot",
        dumps(spec("d2", dataset={"name": "cifar10", "params": {"path": "../../etc"}})),
        "application/json", 422, ["body", "dataset", "params", "path"], "",
    ),
    (
        "cifar-path-absolute",
        dumps(spec("d3", dataset={"name": "cifar10", "params": {"path": "/etc"}})),
        "application/json", 422, ["body", "dataset", "params", "path"], "",
    ),
    (
        "cifar-path-symlink",
        dumps(spec("d4", dataset={"name": "cifar10", "params": {"path": "escape"}})),
        "application/json", 422, ["body", "dataset", "params", "path"], "",
    ),
    (
        "name-with-nul",
        dumps(spec("nul\u0000name")),
        "application/json", 422, ["body", "name"], "",
    ),
    (
        "model-name-with-nul",
        dumps(spec("nul-model", model={"name": "mlp\u0000"})),
        "application/json", 422, ["body", "model", "name"], "",
    ),
    (
        "cifar-path-with-nul",
        dumps(spec("nul-path", dataset={"name": "cifar10", "params": {"path": "a\u0000b"}})),
        "application/json", 422, ["body", "dataset", "params", "path"], "",
    ),
    (
        "unknown-field",
        dumps(spec("uf", evil={"__class__": "os.system"})),
        "application/json", 422, ["body", "evil"], "",
    ),
]  # fmt: skip


@pytest.fixture(scope="module")
def hostile_api(api: ApiProcess) -> ApiProcess:
    # A symlink inside the data directory that leads out of it.
    os.symlink("/etc", os.path.join(api.env["BNSWEEP_DATA_DIR"], "escape"))
    return api


@pytest.mark.scenario("8. hostile input corpus")
@pytest.mark.parametrize(
    ("body", "content_type", "status", "loc", "words"),
    [pytest.param(*case[1:], id=case[0]) for case in CASES],
)
def test_hostile_body_is_refused_with_the_field_named(
    hostile_api, api_key, figures, body, content_type, status, loc, words
):
    with hostile_api.client(api_key) as http:
        started = time.monotonic()
        response = http.post(
            "/api/v1/studies", content=body, headers={"Content-Type": content_type}
        )
        elapsed = time.monotonic() - started
        assert http.get("/healthz").status_code == 200  # still serving
    figures.update(status=response.status_code, seconds=round(elapsed, 3))
    assert response.status_code == status, response.text[:500]
    assert response.headers["content-type"].startswith("application/json")
    detail = response.json()["detail"]
    if loc is not None:
        assert detail[0]["loc"][: len(loc)] == loc, detail
        assert words.lower() in detail[0]["msg"].lower(), detail
    assert elapsed < 2.0
    assert "Traceback" not in response.text


@pytest.mark.scenario("8. hostile input corpus")
def test_no_request_imported_a_module_or_ran_a_yaml_tag(hostile_api):
    """Runs after the table (same module, file order): the canary module was never imported."""
    canary = hostile_api.env.get("BNSWEEP_CANARY_FILE")
    assert canary is not None
    assert not os.path.exists(canary)
    assert not os.path.exists("/tmp/bnsweep-pwned")


@pytest.mark.scenario("8. hostile input corpus")
@pytest.mark.parametrize(
    "limit_case", ["declared-length", "chunked-without-length"], ids=lambda s: s
)
def test_body_over_the_limit_is_413(hostile_api, api_key, figures, limit_case):
    big = dumps(spec("big", description="x" * 30_000))  # the API's limit is 20 kB
    with hostile_api.client(api_key) as http:
        if limit_case == "declared-length":
            response = http.post("/api/v1/studies", content=big)
        else:
            response = http.post("/api/v1/studies", content=iter([big[:10_000], big[10_000:]]))
    figures["status"] = response.status_code
    assert response.status_code == 413
    assert "larger than" in response.json()["detail"]


NAMES = [
    "'; DROP TABLE studies; --",
    "Robert'); DROP TABLE bnsweep_studies;--",
    "🧪 batchnorm sweep 🚀",
    "שלום עולם مرحبا",  # right-to-left scripts
    "‮evil‬.yaml",  # RTL override characters
    "名前 with spaces and \\ backslash",
    "%s %n {0} ${jndi:ldap://127.0.0.1/x}",
]


@pytest.mark.scenario("8. hostile input corpus")
@pytest.mark.parametrize("name", NAMES, ids=[f"name-{i}" for i in range(len(NAMES))])
def test_odd_study_names_are_stored_and_returned_verbatim(hostile_api, api_key, figures, name):
    with hostile_api.client(api_key) as http:
        created = http.post("/api/v1/studies", json=spec(name))
        assert created.status_code == 201, created.text
        study_id = created.json()["id"]
        by_id = http.get(f"/api/v1/studies/{study_id}").json()
        by_name = http.get("/api/v1/studies", params={"name": name}).json()["items"]
        assert http.get("/api/v1/studies").status_code == 200  # the table is still there
    figures["stored_verbatim"] = by_id["name"] == name
    assert by_id["name"] == name
    assert [s["id"] for s in by_name] == [study_id]
    assert by_name[0]["name"] == name


@pytest.mark.scenario("8. hostile input corpus")
def test_nul_in_a_query_parameter_is_not_a_server_error(hostile_api, figures):
    with hostile_api.client() as http:
        response = http.get("/api/v1/studies", params={"name": "a\x00b"})
    figures["status"] = response.status_code
    assert response.status_code in (200, 422), response.text
