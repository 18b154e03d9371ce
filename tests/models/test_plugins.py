"""Plug-ins: models and datasets from entry points and BNSWEEP_PLUGINS, in a fresh process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

PLUGIN_MODULE = """
from models.data import train_size
from models.registry import DATASETS, MODELS


@MODELS.register("tiny_linear", description="a linear model from a plug-in")
def tiny_linear(input_shape, num_classes, norm):
    import math

    from torch import nn

    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), num_classes))


@DATASETS.register(
    "plugin_data",
    description="a dataset from a plug-in",
    train_size=lambda _: train_size("synthetic", {"n_samples": 200}),
)
def plugin_data(data_dir):
    entry = DATASETS.get("synthetic")
    return entry.builder(data_dir, **entry.resolve_params({"n_samples": 200}, "dataset.params"))
"""

PROBE = """
import json
from models.registry import DATASETS, MODELS
from models.config import TrainConfig
from models.train import train

result = train(TrainConfig(model="tiny_linear", dataset="plugin_data", epochs=1, device="cpu"))
print(json.dumps({"models": MODELS.names(), "datasets": DATASETS.names(),
                  "status": result.status.value}))
"""


def _env_without_plugins() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "BNSWEEP_PLUGINS"}


def _probe(tmp_path: Path, env_extra: dict[str, str]) -> dict:
    env = _env_without_plugins() | {"PYTHONPATH": str(tmp_path)} | env_extra
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_entry_point_plugin_registers_a_model_and_a_dataset(tmp_path: Path) -> None:
    (tmp_path / "acme_bn.py").write_text(PLUGIN_MODULE)
    dist = tmp_path / "acme_bn-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-bn\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[bnsweep.models]\nacme = acme_bn\n\n[bnsweep.datasets]\nacme = acme_bn\n"
    )
    probe = _probe(tmp_path, {})
    assert "tiny_linear" in probe["models"] and "plugin_data" in probe["datasets"]
    assert probe["status"] == "ok"


def test_bnsweep_plugins_variable_imports_named_modules(tmp_path: Path) -> None:
    (tmp_path / "ops_plugin.py").write_text(PLUGIN_MODULE)
    probe = _probe(tmp_path, {"BNSWEEP_PLUGINS": "ops_plugin"})
    assert "tiny_linear" in probe["models"] and probe["status"] == "ok"


def test_without_plugins_only_builtins_are_known(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", "from models.registry import MODELS; print(MODELS.names())"],
        env=_env_without_plugins(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.stdout.strip() == "['cnn1d', 'cnn2d', 'mlp', 'resnet']"
