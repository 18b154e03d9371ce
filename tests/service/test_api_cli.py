"""CLI commands that go through the API (and keys, straight to the database), on a live server."""

from __future__ import annotations

import json

from service.settings import get_settings


def test_submit_status_and_best(cli, server, spec, worker, tmp_path):
    path = tmp_path / "study.json"
    path.write_text(json.dumps(spec("cli-study", n_trials=1)))
    code, out, _ = cli("submit", str(path))
    assert code == 0 and "cli-study" in out and "/dashboard/studies/" in out
    worker(server.db_url, "cli-study").join(timeout=60)
    code, out, _ = cli("watch", "cli-study", "--interval", "0.2")
    assert code == 0 and "completed" in out
    code, out, _ = cli("status", "cli-study")
    assert code == 0 and "progress: 1/1 finished" in out
    code, out, _ = cli("best", "cli-study")
    assert code == 0 and json.loads(out)["config"]["model"] == "mlp"
    code, out, _ = cli("trials", "cli-study", "--csv")
    assert code == 0 and out.splitlines()[0].startswith("number,state,values")
    code, out, _ = cli("report", "cli-study", "--html", str(tmp_path / "report.html"))
    assert code == 0 and "BN report on val_accuracy: cli-study (1 trials used)" in out
    assert (tmp_path / "report.html").read_text().lower().startswith("<!doctype html>")
    code, out, _ = cli("report", "cli-study", "--json", "--storage", server.db_url)
    assert code == 0 and json.loads(out)["counts"]["used"] == 1


def test_bad_spec_file_exits_2_with_one_line(cli, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: bad\ndataset: {name: nope}\nmodel: {name: mlp}\n")
    code, out, err = cli("submit", str(path))
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "dataset.name" in err and "(HTTP 422)" in err


def test_missing_study_and_unreachable_server_exit_2(cli, monkeypatch):
    code, _, err = cli("status", "no-such-study")
    assert code == 2 and err.count("\n") == 1 and "no study" in err
    monkeypatch.setenv("BNSWEEP_API_URL", "http://127.0.0.1:9")
    get_settings.cache_clear()
    code, _, err = cli("status", "1")
    assert code == 2 and err.count("\n") == 1 and "cannot reach" in err


def test_keys_create_list_revoke(cli, server, spec):
    code, key, _ = cli("keys", "create", "cli-key")
    key = key.strip()
    assert code == 0 and key.startswith("bns_")
    code, out, _ = cli("keys", "list")
    assert "cli-key" in out and key not in out and "active" in out
    assert cli("keys", "create", "cli-key")[0] == 2  # names are unique
    assert cli("keys", "revoke", "cli-key")[0] == 0
    with server.client(key=key) as http:
        assert http.post("/api/v1/studies", json=spec("by-revoked")).status_code == 403
    assert "revoked" in cli("keys", "list")[1]
    assert cli("keys", "revoke", "cli-key")[0] == 2
