"""Fixtures of the models/ tests: tiny configurations and a throw-away data directory."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from models.config import TrainConfig
from models.registry import load_plugins


@pytest.fixture(autouse=True, scope="session")
def _plugins() -> None:
    load_plugins()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        # One intra-op thread per xdist worker: workers x threads beyond the cores only thrash.
        torch.set_num_threads(1)


@pytest.fixture
def tiny_config() -> TrainConfig:
    """A run of a few hundred synthetic samples: well under a second on a CPU."""
    return TrainConfig(
        model="mlp",
        model_params={"width": 32, "depth": 2},
        dataset="synthetic",
        dataset_params={"n_samples": 400, "shape": [8], "num_classes": 3},
        batch_size=32,
        learning_rate=0.05,
        epochs=3,
        device="cpu",
    )


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty data directory, also set as ``BNSWEEP_DATA_DIR``."""
    root = tmp_path / "data"
    root.mkdir()
    monkeypatch.setenv("BNSWEEP_DATA_DIR", str(root))
    return root
