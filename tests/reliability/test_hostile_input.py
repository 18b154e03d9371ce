"""Hostile request bodies against the live API process: size, syntax, YAML tricks, extreme numbers,
import paths and path escapes, bodies that never come. Each is refused with the right status and
the field named, cheaply, and the server keeps answering.

"Cheaply" is the CPU time the API process spent on the request (``/proc/<pid>/stat``): wall time
on a loaded machine says more about the machine than about the server.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from typing import Any

import pytest

from tests.reliability.conftest import BODY_TIMEOUT_S, MAX_BODY_BYTES, MAX_SPEC_BYTES
from tests.reliability.helpers import ApiProcess, SchedulingSlack

# One xdist worker runs the module: one API process for it, not one per worker.
pytestmark = [pytest.mark.postgres, pytest.mark.xdist_group("test_hostile_input")]

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
def hostile_api(api: ApiProcess, api_key: str) -> ApiProcess:
    # A symlink inside the data directory that leads out of it.
    os.symlink("/etc", os.path.join(api.env["BNSWEEP_DATA_DIR"], "escape"))
    # The first spec a fresh API process parses loads the parser's modules (measured: 0.58 s of
    # CPU for the first case on a busy machine): paid here, so the bound below is for parsing.
    with api.client(api_key) as http:
        for body, content_type in ((b"{", "application/json"), (b"a: [", "application/yaml")):
            http.post("/api/v1/studies", content=body, headers={"Content-Type": content_type})
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
        cpu = hostile_api.cpu_seconds()
        started = time.monotonic()
        response = http.post(
            "/api/v1/studies", content=body, headers={"Content-Type": content_type}
        )
        elapsed = time.monotonic() - started
        cpu = hostile_api.cpu_seconds() - cpu
        assert http.get("/healthz").status_code == 200  # still serving
    figures.update(status=response.status_code, seconds=round(elapsed, 3), api_cpu_s=cpu)
    assert response.status_code == status, response.text[:500]
    assert response.headers["content-type"].startswith("application/json")
    detail = response.json()["detail"]
    if loc is not None:
        assert detail[0]["loc"][: len(loc)] == loc, detail
        assert words.lower() in detail[0]["msg"].lower(), detail
    assert cpu < 0.5
    assert "Traceback" not in response.text


IMPORTING_IDS = {
    "yaml-python-tag",
    "yaml-python-name",
    "yaml-custom-tag",
    "model-os-system",
    "model-import-path",
    "model-canary-module",
    "dataset-canary-module",
}
IMPORTING = [case for case in CASES if case[0] in IMPORTING_IDS]


@pytest.mark.scenario("8. hostile input corpus")
def test_no_request_imports_a_module_or_runs_a_yaml_tag(hostile_api, api_key, figures):
    """Self-contained (no reliance on test order or on which xdist worker ran the table): the
    bodies that name the canary module or a python tag are sent here, to this module's API
    process, whose environment names the canary file; then the file must not exist. The canary
    itself is checked first: importing it with that environment does write the file."""
    canary = hostile_api.env["BNSWEEP_CANARY_FILE"]
    subprocess.run(
        [sys.executable, "-c", "import tests.reliability.import_canary"],
        env={**hostile_api.env, "PYTHONPATH": os.getcwd()},
        check=True,
        timeout=60,
    )
    assert os.path.exists(canary), "the canary does not fire when imported"
    os.remove(canary)
    with hostile_api.client(api_key) as http:
        statuses = [
            http.post("/api/v1/studies", content=body, headers={"Content-Type": kind}).status_code
            for _, body, kind, *_ in IMPORTING
        ]
    figures.update(bodies=len(IMPORTING), statuses=sorted(set(statuses)))
    assert len(IMPORTING) == len(IMPORTING_IDS) and set(statuses) == {422}
    assert not os.path.exists(canary)
    assert not os.path.exists("/tmp/bnsweep-pwned")


@pytest.mark.scenario("8. hostile input corpus")
@pytest.mark.parametrize(
    "limit_case", ["declared-length", "chunked-without-length"], ids=lambda s: s
)
def test_spec_over_its_limit_is_413(hostile_api, api_key, figures, limit_case):
    big = dumps(spec("big", description="x" * (MAX_SPEC_BYTES + 10_000)))
    assert len(big) < MAX_BODY_BYTES  # over the spec's own limit, under the general one
    with hostile_api.client(api_key) as http:
        if limit_case == "declared-length":
            response = http.post("/api/v1/studies", content=big)
        else:
            response = http.post("/api/v1/studies", content=iter([big[:10_000], big[10_000:]]))
    figures["status"] = response.status_code
    assert response.status_code == 413
    assert f"larger than {MAX_SPEC_BYTES} bytes" in response.json()["detail"]


@pytest.mark.scenario("8. hostile input corpus")
def test_other_bodies_have_the_general_limit(hostile_api, api_key, figures):
    """A dashboard note as large as a refused spec passes; one over the general limit is 413."""
    with hostile_api.client(api_key) as http:
        study = http.post("/api/v1/studies", json=spec("noted")).json()
        note = f"/api/studies/{study['optuna_study_id']}/note"
        fits = http.put(note, json={"version": 1, "body": "x" * (MAX_SPEC_BYTES + 10_000)})
        too_big = http.put(note, json={"version": 2, "body": "x" * MAX_BODY_BYTES})
    figures.update(note_status=fits.status_code, too_big_status=too_big.status_code)
    assert fits.status_code in (200, 204), fits.text
    assert too_big.status_code == 413


def raw_exchange(
    api: ApiProcess, head: str, chunks: list[bytes], every_s: float = 0.0
) -> tuple[bytes, float, bool]:
    """Send ``head``, then ``chunks`` one per ``every_s`` until the server answers; return the
    answer, the seconds until its head came, and whether the server then closed the connection
    (without waiting for the rest of the body)."""
    sock = socket.create_connection(("127.0.0.1", api.port), timeout=60)
    started = time.monotonic()
    answer = b""
    try:
        sock.sendall(head.encode())
        pending = list(chunks)
        while b"\r\n\r\n" not in answer:
            sock.settimeout(every_s if pending else 60)
            try:
                answer += sock.recv(65536)
            except TimeoutError:
                sock.sendall(pending.pop(0))
        elapsed = time.monotonic() - started
        sock.settimeout(10)
        while more := sock.recv(65536):  # the body of the answer, then b"": closed
            answer += more
        return answer, elapsed, True
    except TimeoutError:
        return answer, time.monotonic() - started, False
    finally:
        sock.close()


def post_head(length: int, key: str | None = None) -> str:
    auth = f"Authorization: Bearer {key}\r\n" if key else ""
    return (
        f"POST /api/v1/studies HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}"
        f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    )


@pytest.mark.scenario("8. hostile input corpus")
def test_a_write_without_a_key_is_refused_before_its_body_is_read(hostile_api, figures):
    """Headers announce 10 kB, none of it is sent: the answer is 401 at once (not after the body
    timeout) and the connection is closed, so the unsent body holds nothing."""
    answer, elapsed, closed = raw_exchange(hostile_api, post_head(10_000), [])
    figures.update(status=int(answer.split(b" ", 2)[1]), seconds=round(elapsed, 3))
    assert answer.startswith(b"HTTP/1.1 401 ")
    assert elapsed < BODY_TIMEOUT_S  # did not wait for the body
    assert closed


@pytest.mark.scenario("8. hostile input corpus")
@pytest.mark.parametrize("sender", ["silent", "trickling"])
def test_a_body_that_does_not_come_is_408_at_the_body_timeout(
    hostile_api, api_key, figures, sender
):
    """With a valid key, headers then nothing (or one byte every 0.5 s): 408 once the body
    timeout has passed since the request began (not since each byte), then the connection is
    closed. The bound above is the timeout plus what this machine measured meanwhile: timer
    lateness and the latency of a request refused at once."""
    baseline = min(raw_exchange(hostile_api, post_head(10), [])[1] for _ in range(3))
    chunks = [b"{"] * 200 if sender == "trickling" else []
    with SchedulingSlack() as slack:
        answer, elapsed, closed = raw_exchange(
            hostile_api, post_head(1_000, api_key), chunks, every_s=0.5
        )
    latest = BODY_TIMEOUT_S + 0.1 + 4 * slack.worst_s + 5 * baseline
    figures.update(
        status=int(answer.split(b" ", 2)[1]),
        seconds=round(elapsed, 3),
        body_timeout_s=BODY_TIMEOUT_S,
        bound_latest_s=round(latest, 3),
    )
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert BODY_TIMEOUT_S <= elapsed <= latest
    assert closed
    with hostile_api.client() as http:
        assert http.get("/healthz").status_code == 200


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
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == ["query", "name"]
