"""``bnsweep train``: flags, YAML file, JSON output, one-line errors with exit code 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from service.cli import main

TINY = [
    "train", "--model", "mlp", "--dataset", "synthetic", "--dataset-param", "n_samples=200",
    "--dataset-param", "shape=[6]", "--model-param", "width=16", "--epochs", "2",
    "--batch-size", "32", "--device", "cpu",
]  # fmt: skip


def run(argv: list[str]) -> int:
    try:
        main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def test_train_prints_epoch_table_and_test_accuracies(capsys: pytest.CaptureFixture) -> None:
    assert run(TINY) == 0
    out = capsys.readouterr().out
    assert "val acc" in out and "status: ok" in out
    assert "test accuracy (running stats)" in out and "test accuracy (batch stats)" in out


def test_json_output_is_the_train_result(capsys: pytest.CaptureFixture) -> None:
    assert (
        run([*TINY, "--json", "--bn-placement", "after_activation", "--ghost-batch-size", "8"]) == 0
    )
    result = json.loads(capsys.readouterr().out)
    assert result["status"] == "ok" and len(result["epochs"]) == 2


def test_yaml_config_file_is_used_and_flags_override_it(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    config = tmp_path / "run.yaml"
    config.write_text(
        "model: mlp\ndataset: synthetic\ndataset_params: {n_samples: 200, shape: [6]}\n"
        "epochs: 5\nbatch_size: 32\ndevice: cpu\nbn_momentum: 0.2\n"
    )
    assert run(["train", "--config", str(config), "--epochs", "1", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["epochs"]) == 1


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["train", "--epochs", "many"], "--epochs"),
        (["train", "--model", "transformer", "--device", "cpu"], "unknown model 'transformer'"),
        (["train", "--bn-placement", "sideways"], "bn_placement"),
        (["train", "--model-param", "width"], "key=value"),
    ],
)
def test_bad_input_exits_2_with_one_line(
    argv: list[str], needle: str, capsys: pytest.CaptureFixture
) -> None:
    assert run(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err


@pytest.mark.parametrize(
    ("content", "needle"),
    [("epochs: [1\n", "not valid YAML"), ("colour: red\n", "colour"), ("epochs: ten\n", "epochs")],
)
def test_bad_config_file_exits_2(
    tmp_path: Path, content: str, needle: str, capsys: pytest.CaptureFixture
) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(content)
    assert run(["train", "--config", str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err
