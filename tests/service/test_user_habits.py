"""What Optuna, W&B Sweeps and Ray Tune users expect, against a live server (SQLite and
PostgreSQL): Optuna's own tools on a bnsweep study, state names in any case, pause and resume,
a best config that trains as is, reads straight from the database, a log line per trial."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml

from search.storage import get_storage


@pytest.fixture(scope="module")
def finished(server: Any, spec: Any, worker: Any, wait_for: Any) -> dict[str, Any]:
    """A three-trial study run to its end."""
    with server.client() as http:
        created = http.post("/api/v1/studies", json=spec("habits", n_trials=3)).json()
        worker(server.db_url, "habits").join(timeout=120)
        return wait_for(http, created["id"], {"completed"})


def test_optunas_own_tools_read_a_bnsweep_study(server, finished):
    study = optuna.load_study(study_name="habits", storage=get_storage(server.db_url))
    assert study.metric_names == ["val_accuracy"]  # the dashboard's objective name
    attrs = study.user_attrs["bnsweep"]
    assert attrs["link"] == f"/api/v1/studies/{finished['id']}" and attrs["retries"] == 1
    assert len(json.dumps(study.user_attrs)) < 200  # `optuna studies` stays a narrow table
    frame = study.trials_dataframe()
    assert len(frame) == 3 and "params_bn_placement" in frame.columns
    figure = optuna.visualization.plot_optimization_history(study)
    assert len(figure.data) >= 1


@pytest.mark.parametrize("state", ["COMPLETE", "complete", "Complete"])
def test_trial_states_in_any_case(server, finished, cli, state):
    with server.client(key=None) as http:
        page = http.get(finished["links"]["trials"], params={"state": state})
    assert page.status_code == 200 and page.json()["total"] == 3
    code, out, _ = cli("trials", "habits", "--state", state)
    assert code == 0 and len(json.loads(out)) == 3


def test_best_yaml_trains_as_is(finished, cli, tmp_path: Path):
    code, out, _ = cli("best", "habits", "--yaml")
    assert code == 0
    config = tmp_path / "best.yaml"
    config.write_text(out)
    assert yaml.safe_load(out)["model"] == "mlp"
    code, out, _ = cli("train", "--config", str(config), "--device", "cpu", "--json")
    assert code == 0 and json.loads(out)["status"] == "ok"


@pytest.mark.parametrize("command", ["status", "best", "trials", "report"])
def test_reads_work_from_the_database_without_a_server(server, finished, cli, command):
    via_api = cli(command, "habits", *(["--json"] if command in ("status", "report") else []))
    direct = cli(
        command, "habits", "--storage", server.db_url,
        *(["--json"] if command in ("status", "report") else []),
    )  # fmt: skip
    assert via_api[0] == direct[0] == 0
    assert json.loads(via_api[1]) == json.loads(direct[1])


def test_pause_stops_new_trials_and_resume_lets_them_run(server, spec, worker, wait_for, cli):
    with server.client() as http:
        created = http.post("/api/v1/studies", json=spec("paused", n_trials=2)).json()
    code, out, _ = cli("pause", "paused")
    assert code == 0 and "paused" in out
    code, _, err = cli("pause", "paused")
    assert code == 2 and "already paused" in err
    # A worker for this study finds nothing to claim while it is paused ...
    with server.client() as http:
        runner = worker(server.db_url, "paused")
        runner.join(timeout=3)
        assert runner.is_alive()  # waiting, not running, not gone
        assert http.get(created["links"]["self"]).json()["progress"]["finished"] == 0
        code, out, _ = cli("resume", "paused")
        assert code == 0 and "queued" in out
        runner.join(timeout=120)
        assert wait_for(http, created["id"], {"completed"})["progress"]["finished"] == 2


def test_every_finished_trial_is_one_log_line(server, spec, worker, caplog):
    with server.client() as http:
        http.post("/api/v1/studies", json=spec("logged", n_trials=2))
    with caplog.at_level(logging.INFO, logger="bnsweep.worker"):
        worker(server.db_url, "logged").join(timeout=120)
    lines = [r.getMessage() for r in caplog.records if r.name == "bnsweep.worker"]
    finished = [line for line in lines if line.startswith("study 'logged' trial ")]
    assert len(finished) == 2
    assert all("COMPLETE value" in line and "learning_rate" in line for line in finished)


HEAVY = ("torch", "scipy", "optuna", "sqlalchemy", "numpy", "matplotlib", "pandas")
PROBE = """
import json, sys
from service.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print(json.dumps(sorted(m for m in {heavy!r} if m in sys.modules)))
"""


@pytest.mark.parametrize("argv", [["--help"], ["status", "habits"], ["best", "habits"]])
def test_api_commands_start_without_torch_optuna_or_sqlalchemy(server, finished, argv):
    """`bnsweep --help` and the API commands import only what talking HTTP needs (measured
    start-up: README, "CLI"); a fresh process, so nothing this test process imported counts."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, BNSWEEP_API_URL=server.url)
    out = subprocess.run(
        [sys.executable, "-c", PROBE.format(heavy=HEAVY), *argv],
        env=env, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
