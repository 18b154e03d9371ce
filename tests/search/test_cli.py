"""`bnsweep run`, `bnsweep best --storage`, `bnsweep migrate`: exit codes and output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from service.cli import main

SPEC = """
name: cli-run
dataset: {name: synthetic, params: {n_samples: 400, shape: [8]}}
model: {name: mlp, params: {width: 16, depth: 1}}
search_space: {batch_size: {choices: [32, 64]}}
training: {epochs: 2}
budget: {n_trials: 3}
sampler: {name: tpe, seed: 0}
"""


def run_cli(args: list[str]) -> int:
    with pytest.raises(SystemExit) as info:
        main(args)
        raise SystemExit(0)
    return info.value.code or 0


def test_run_prints_the_best_config_and_best_reads_it_back(tmp_path: Path, capsys) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC)
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    assert run_cli(["run", str(spec), "--workers", "2", "--storage", url, "--device", "cpu"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["config"]["batch_size"] in (32, 64)
    assert 0.0 <= printed["values"][0] <= 1.0
    assert run_cli(["best", "cli-run", "--storage", url]) == 0
    assert json.loads(capsys.readouterr().out)["trial_number"] == printed["trial_number"]
    # Running the same spec again resumes (already complete): same best, exit 0.
    assert run_cli(["run", str(spec), "--storage", url]) == 0


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("name: x\ndataset: {name: nope}\nmodel: {name: mlp}\n", "dataset.name: unknown dataset"),
        ("name: [oops", "spec: not valid YAML"),
        (None, "cannot read"),
    ],
)
def test_bad_spec_file_exits_2_with_one_line(tmp_path: Path, capsys, content, message) -> None:
    spec = tmp_path / "spec.yaml"
    if content is not None:
        spec.write_text(content)
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    assert run_cli(["run", str(spec), "--storage", url]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_best_of_unknown_study_exits_2(tmp_path: Path, capsys) -> None:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    assert run_cli(["migrate", "--storage", url]) == 0
    assert run_cli(["best", "missing", "--storage", url]) == 2
    assert capsys.readouterr().err.strip() == "error: no study 'missing'"
